"""X-ray spectra (spekpy) and the energy-integrating detector.

All spectra share one energy grid: 1 keV bins, centres 1.5, 2.5, ... keV up to the highest kVp in use. A
protocol's exposure is set by its air kerma free in air at the isocentre (no patient, no backscatter), from
which the tube load (mAs) and the photon fluence per detector pixel follow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from dexrt.synth.materials import CSI, mu_rho

ANODE_ANGLE_DEG = 12.0  # tungsten anode
_SPEK_Z_CM = 100.0  # spekpy reports fluence and kerma per mAs at this distance from the focal spot


@dataclass(frozen=True)
class Protocol:
    """One exposure: tube voltage, total filtration, and the air kerma it delivers at the isocentre."""

    name: str
    kvp: float
    al_mm: float = 3.0
    cu_mm: float = 0.0
    kerma_ugy: float = 100.0  # incident air kerma at the isocentre, free in air, per image

    def validate(self) -> None:
        if not (40.0 <= self.kvp <= 150.0):
            raise ValueError(f"{self.name}: tube voltage must be 40..150 kVp, got {self.kvp}")
        if not (0.0 <= self.al_mm <= 50.0 and 0.0 <= self.cu_mm <= 5.0):
            raise ValueError(f"{self.name}: filtration must be 0..50 mm Al and 0..5 mm Cu")
        if not (self.kerma_ugy > 0.0 and np.isfinite(self.kerma_ugy)):
            raise ValueError(f"{self.name}: air kerma must be > 0 uGy, got {self.kerma_ugy}")


@dataclass(frozen=True)
class Detector:
    """An indirect flat panel: CsI:Tl scintillator of given thickness and packing fraction. The signal is the
    energy it absorbs (energy-integrating); absorbed energy per photon is approximated by E x efficiency(E)."""

    csi_mm: float = 0.6
    fill: float = 0.75

    def efficiency(self, energies_kev: np.ndarray) -> np.ndarray:
        areal = CSI[0] * self.fill * self.csi_mm / 10.0  # g/cm^2
        return 1.0 - np.exp(-mu_rho("csi", energies_kev) * areal)


def energy_grid(kvp_max: float) -> np.ndarray:
    """Bin centres (keV), 1 keV wide, from 1.5 keV to just below `kvp_max`."""
    return np.arange(1, int(np.ceil(kvp_max))) + 0.5


@lru_cache(maxsize=256)
def _spek_tube(kvp: float):
    """The unfiltered tube output at `kvp` (building it is the slow part of spekpy, ~0.5 s; filters are cheap)."""
    import spekpy

    return spekpy.Spek(kvp=kvp, th=ANODE_ANGLE_DEG, dk=1.0, z=_SPEK_Z_CM)


@lru_cache(maxsize=2048)
def _spek(kvp: float, al_mm: float, cu_mm: float) -> tuple[np.ndarray, np.ndarray, float]:
    import copy

    s = copy.deepcopy(_spek_tube(kvp))  # filtering changes the object in place
    filters = [("Al", al_mm)] + ([("Cu", cu_mm)] if cu_mm > 0 else [])
    s.multi_filter(filters)
    k, phi = s.get_spectrum()  # keV bin centres; photons / cm^2 / mAs / keV at z
    return np.asarray(k, float), np.asarray(phi, float), float(s.get_kerma())  # kerma: uGy / mAs at z


def fluence_per_mas(protocol: Protocol, energies_kev: np.ndarray) -> tuple[np.ndarray, float]:
    """(photons / cm^2 / mAs per 1 keV bin at 1 m on `energies_kev`, air kerma uGy / mAs at 1 m)."""
    protocol.validate()
    k, phi, kerma = _spek(float(protocol.kvp), float(protocol.al_mm), float(protocol.cu_mm))
    out = np.zeros(len(energies_kev))
    idx = np.round(k - energies_kev[0]).astype(int)
    ok = (idx >= 0) & (idx < len(energies_kev))
    out[idx[ok]] = phi[ok]
    return out, kerma


@dataclass
class Exposure:
    """What one protocol puts on one detector pixel, on the shared energy grid."""

    protocol: Protocol
    mas: float
    photons: np.ndarray  # (E,) incident photons per pixel per energy bin, at the detector, no patient
    signal_weights: np.ndarray  # (E,) absorbed energy per pixel (keV) per unit transmission
    variance_weights: np.ndarray  # (E,) keV^2: variance of the absorbed energy per unit transmission
    detected: np.ndarray  # (E,) photons absorbed by the scintillator per pixel, no patient
    mean_kev: float

    @property
    def flat_signal(self) -> float:
        return float(self.signal_weights.sum())

    def describe(self) -> dict:
        return {**asdict(self.protocol), "mas": round(self.mas, 4), "mean_kev": round(self.mean_kev, 2),
                "incident_photons_per_pixel": float(f"{self.photons.sum():.4g}"),
                "detected_photons_per_pixel": float(f"{self.detected.sum():.4g}")}


def expose(protocol: Protocol, energies_kev: np.ndarray, detector: Detector, sid_mm: float, sdd_mm: float,
           pixel_area_mm2: float) -> Exposure:
    """Photons and detector weights for one pixel of area `pixel_area_mm2` at the detector."""
    phi_1m, kerma_1m = fluence_per_mas(protocol, energies_kev)
    iso_scale = (1000.0 / sid_mm) ** 2  # inverse square from 1 m to the isocentre
    mas = protocol.kerma_ugy / (kerma_1m * iso_scale)
    photons = phi_1m * mas * (1000.0 / sdd_mm) ** 2 * pixel_area_mm2 / 100.0  # /cm^2 -> per pixel
    eff = detector.efficiency(energies_kev)
    signal = photons * eff * energies_kev
    variance = photons * eff * energies_kev**2
    mean_kev = float((phi_1m * energies_kev).sum() / phi_1m.sum())
    return Exposure(protocol, mas, photons, signal, variance, photons * eff, mean_kev)
