"""Materials: ICRU-44 tissue compositions, their mass attenuation mu/rho(E) from xraydb, and the HU -> partial
density model that splits every voxel into adipose, soft tissue and cortical bone.

The model (docs/synth.md, "Materials") is a volume-mixture model in the spirit of Schneider et al. (2000): each
basis tissue has a CT number computed from its own composition at the CT's effective energy; between two
neighbouring tissues a voxel is a mixture whose volume fractions follow linearly from its HU. Air and lung are
mixtures of air and soft tissue (ICRU lung and soft tissue differ by < 1 % in mu/rho over 15-150 keV). Above
the cortical-bone CT number, bone is taken as denser bone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Mass fractions and densities (g/cm^3), ICRU Report 44 (1989), as tabulated by NIST (Hubbell & Seltzer,
# "X-Ray Mass Attenuation Coefficients", NISTIR 5632, Table 2).
ICRU44: dict[str, tuple[float, dict[str, float]]] = {
    "adipose": (0.95, {"H": 0.114, "C": 0.598, "N": 0.007, "O": 0.278, "Na": 0.001, "S": 0.001, "Cl": 0.001}),
    "soft": (1.06, {"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.708, "Na": 0.002, "P": 0.003, "S": 0.003,
                    "Cl": 0.002, "K": 0.003}),
    "bone": (1.92, {"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002, "P": 0.103,
                    "S": 0.003, "Ca": 0.225}),
    "lung": (1.05, {"H": 0.103, "C": 0.105, "N": 0.031, "O": 0.749, "Na": 0.002, "P": 0.002, "S": 0.003,
                    "Cl": 0.003, "K": 0.002}),
    "water": (1.00, {"H": 0.111894, "O": 0.888106}),
    "air": (0.001205, {"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827}),
}
# Scintillator of the energy-integrating detector.
CSI = (4.51, {"Cs": 0.511549, "I": 0.488451})

BASIS = ("adipose", "soft", "bone")  # channel order of every material volume and line-integral image


def mass_attenuation(composition: dict[str, float], energies_kev: np.ndarray) -> np.ndarray:
    """mu/rho (cm^2/g), total with coherent scattering (narrow-beam primary), from xraydb's Elam tables."""
    import xraydb

    e_ev = np.asarray(energies_kev, dtype=np.float64) * 1000.0
    total = sum(frac / sum(composition.values()) * np.asarray(xraydb.mu_elam(el, e_ev, kind="total"))
                for el, frac in composition.items())
    return np.asarray(total, dtype=np.float64)


@lru_cache(maxsize=32)
def _mu_cached(name: str, energies: tuple[float, ...]) -> np.ndarray:
    comp = CSI[1] if name == "csi" else ICRU44[name][1]
    return mass_attenuation(comp, np.array(energies))


def mu_rho(name: str, energies_kev: np.ndarray) -> np.ndarray:
    """mu/rho (cm^2/g) of a named material ("adipose", "soft", "bone", "lung", "water", "air", "csi")."""
    return _mu_cached(name, tuple(float(e) for e in np.asarray(energies_kev).ravel()))


@lru_cache(maxsize=1)
def _water_in_basis() -> tuple[float, float, float]:
    from scipy.optimize import nnls

    e = np.arange(15.0, 150.0)
    basis = np.stack([mu_rho(n, e) for n in BASIS], axis=1)  # (E, 3) cm^2/g
    target = mu_rho("water", e) * ICRU44["water"][0]  # (E,) 1/cm
    x, _ = nnls(basis / target[:, None], np.ones_like(e))  # relative error, so no energy dominates
    return (float(x[0]), float(x[1]), float(x[2]))


def water_in_basis() -> np.ndarray:
    """Partial densities (adipose, soft, bone), g/cm^3, whose mu(E) best matches 1 cm^3 of water over 15-150 keV
    (non-negative least squares on relative error; about 0.08 adipose + 0.93 soft tissue, within 0.6 %)."""
    return np.array(_water_in_basis())


@dataclass(frozen=True)
class MaterialModel:
    """HU -> partial densities (g/cm^3) of adipose, soft tissue and cortical bone.

    `ct_kev` is the effective energy at which the CT's Hounsfield scale is evaluated (about 70 keV for a
    120 kVp CT); the basis tissues' CT numbers follow from their compositions at that energy.
    """

    ct_kev: float = 70.0
    lung_knot_hu: float = -200.0  # below: air/soft-tissue mixtures (lung); above: towards adipose

    def tissue_hu(self, name: str) -> float:
        e = np.array([self.ct_kev])
        rho, _ = ICRU44[name]
        mu_w = float(mu_rho("water", e)[0]) * ICRU44["water"][0]
        return float(1000.0 * (rho * float(mu_rho(name, e)[0]) / mu_w - 1.0))

    def knots(self) -> tuple[np.ndarray, np.ndarray]:
        """(HU knots (K,), partial densities at the knots (K, 3)); linear interpolation in between."""
        hu_a, hu_s, hu_b = self.tissue_hu("adipose"), self.tissue_hu("soft"), self.tissue_hu("bone")
        rho_air, rho_a, rho_s, rho_b = ICRU44["air"][0], ICRU44["adipose"][0], ICRU44["soft"][0], ICRU44["bone"][0]
        if not (self.lung_knot_hu < hu_a < 0.0 < hu_s < hu_b):
            raise ValueError(f"ct_kev={self.ct_kev} gives unordered tissue CT numbers ({hu_a}, {hu_s}, {hu_b})")

        def air_soft(hu: float) -> float:  # volume mixture of air (-1000 HU) and soft tissue
            return rho_air + (hu + 1000.0) / (hu_s + 1000.0) * (rho_s - rho_air)

        hu = np.array([-1000.0, self.lung_knot_hu, hu_a, 0.0, hu_s, hu_b, 3071.0])
        rho = np.array([
            [0.0, rho_air, 0.0],
            [0.0, air_soft(self.lung_knot_hu), 0.0],
            [rho_a, 0.0, 0.0],
            water_in_basis(),  # 0 HU is water by definition of the Hounsfield scale
            [0.0, rho_s, 0.0],
            [0.0, 0.0, rho_b],
            [0.0, 0.0, rho_b * (1000.0 + 3071.0) / (1000.0 + hu_b)],  # denser bone: density scales with 1 + HU/1000
        ])
        return hu, rho

    def partial_densities(self, hu: np.ndarray) -> np.ndarray:
        """(...,) HU -> (..., 3) float32 partial densities (adipose, soft, bone), g/cm^3."""
        k_hu, k_rho = self.knots()
        flat = np.clip(np.asarray(hu, dtype=np.float32).ravel(), k_hu[0], k_hu[-1])
        out = np.empty((flat.size, 3), np.float32)
        for c in range(3):
            out[:, c] = np.interp(flat, k_hu, k_rho[:, c])
        return out.reshape(*np.shape(hu), 3)

    def describe(self) -> dict:
        k_hu, k_rho = self.knots()
        return {
            "model": "piecewise-linear volume mixture in HU (Schneider-style), basis adipose/soft/cortical bone",
            "basis": list(BASIS),
            "compositions": "ICRU Report 44 (NIST NISTIR 5632 Table 2); mu/rho from xraydb (Elam), total incl. coherent",
            "ct_effective_kev": self.ct_kev,
            "tissue_hu": {n: round(self.tissue_hu(n), 1) for n in ("adipose", "soft", "bone", "lung")},
            "knots_hu": [round(float(h), 1) for h in k_hu],
            "knots_partial_density_g_cm3": np.round(k_rho, 5).tolist(),
            "densities_g_cm3": {n: ICRU44[n][0] for n in ("adipose", "soft", "bone", "lung")},
            "water_in_basis_g_cm3": np.round(water_in_basis(), 5).tolist(),
        }
