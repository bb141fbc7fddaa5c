"""From per-material line integrals to images: polyenergetic detector signals, quantum noise, the single-energy
attenuation image and the dual-energy pair by weighted log subtraction.

Quantities (per pixel):
  se   = -ln(S_se / S0_se), the attenuation image of the single-energy protocol (dimensionless).
  bone = (p_L - w_s p_H) / k_b, bone-equivalent areal density (g/cm^2 of ICRU-44 cortical bone).
  soft = (p_L - w_b p_H) / k_s, water-equivalent areal density of the soft tissues (g/cm^2).
with p_L, p_H the low/high-kVp attenuations. w_s cancels soft tissue, w_b cancels bone; both are fitted on
noise-free polyenergetic slab transmissions (docs/synth.md, "Dual-energy weighting").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dexrt import _core
from dexrt.synth.materials import BASIS, mu_rho, water_in_basis
from dexrt.synth.spectra import Detector, Exposure, Protocol, energy_grid, expose

# Calibration ranges (g/cm^2): water over the range of a chest's path lengths; bone on a mid-chest water
# background.
SOFT_CAL_G_CM2 = (2.0, 30.0)
BONE_CAL_G_CM2 = (0.0, 3.0)
BONE_CAL_BACKGROUND_G_CM2 = 15.0
LIN_MAX_G_CM2 = 60.0  # linearisation table range of water thickness


@dataclass
class PhysicsConfig:
    se: Protocol = field(default_factory=lambda: Protocol("se", 120.0, al_mm=3.0, cu_mm=0.1, kerma_ugy=100.0))
    low: Protocol = field(default_factory=lambda: Protocol("low", 60.0, al_mm=3.0, cu_mm=0.0, kerma_ugy=100.0))
    high: Protocol = field(default_factory=lambda: Protocol("high", 120.0, al_mm=3.0, cu_mm=0.5, kerma_ugy=50.0))
    detector: Detector = field(default_factory=Detector)
    noise: bool = True


@dataclass(frozen=True)
class DEWeights:
    w_soft: float  # cancels soft tissue: bone = (p_L - w_soft p_H) / k_bone
    k_bone: float  # d(p_L - w_soft p_H) / d(bone g/cm^2)
    w_bone: float  # cancels bone: soft = (p_L - w_bone p_H) / k_soft
    k_soft: float  # d(p_L - w_bone p_H) / d(soft g/cm^2); negative, so soft comes out positive


class Physics:
    """Spectra, detector and DE weights for one imaging geometry (the pixel area fixes the photon counts)."""

    def __init__(self, config: PhysicsConfig, sid_mm: float, sdd_mm: float, pixel_area_mm2: float,
                 threads: int = 0) -> None:
        self.config = config
        self.threads = threads
        kvp_max = max(config.se.kvp, config.low.kvp, config.high.kvp)
        self.energies = energy_grid(kvp_max)
        self.mu = np.stack([mu_rho(name, self.energies) for name in BASIS])  # (3, E) cm^2/g
        self.exposures: dict[str, Exposure] = {
            p.name: expose(p, self.energies, config.detector, sid_mm, sdd_mm, pixel_area_mm2)
            for p in (config.se, config.low, config.high)
        }
        order = [config.se.name, config.low.name, config.high.name]
        self._order = order
        # (6, E): absorbed-energy weights of SE, low, high, then their variance weights.
        self.weights = np.stack([self.exposures[n].signal_weights for n in order]
                                + [self.exposures[n].variance_weights for n in order])
        self.flat = np.array([self.exposures[n].flat_signal for n in order])
        self.de = self._calibrate()

    # (C=3, ...) g/cm^2 -> (3, ...) attenuations -ln(S/S0) of SE, low, high, noise-free.
    def attenuation(self, line: np.ndarray) -> np.ndarray:
        s = _core.drr_polyenergetic(np.ascontiguousarray(line, np.float32), self.mu, self.weights[:3], self.threads)
        return -np.log(s / self.flat.reshape((3,) + (1,) * (s.ndim - 1)))

    def signals(self, line: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean absorbed energy, its variance), each (3, ...) for SE, low, high, in keV per pixel."""
        s = _core.drr_polyenergetic(np.ascontiguousarray(line, np.float32), self.mu, self.weights, self.threads)
        return s[:3], s[3:]

    def images(self, line: np.ndarray, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        """(3, H, W) material line integrals (g/cm^2) -> {"se", "bone", "soft"} (H, W) float32 images.

        With `rng`, each exposure gets quantum noise: the absorbed energy is a compound-Poisson sum over
        photons; it is drawn as Poisson(N_eff) x (mean / N_eff) with N_eff = mean^2 / variance, which keeps the
        exact mean and variance of the energy-integrating signal (the Swank factor included).
        """
        mean, var = self.signals(line)
        if rng is not None:
            n_eff = mean * mean / np.maximum(var, 1e-300)
            counts = rng.poisson(n_eff).astype(np.float64)
            mean = np.maximum(counts, 0.5) * (mean / n_eff)  # an empty pixel reads half a quantum, not log(0)
        p = -np.log(mean / self.flat[:, None, None])
        bone, soft = self.subtract(p[1], p[2])
        return {"se": p[0].astype(np.float32), "bone": bone.astype(np.float32), "soft": soft.astype(np.float32)}

    def linearize(self, p_low: np.ndarray, p_high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Attenuations -> water-equivalent thickness (g/cm^2) through each protocol's own calibration
        curve (beam-hardening linearisation); linear extrapolation beyond the calibrated range."""
        t, lo, hi = self._lin_table
        out = []
        for p, curve in ((p_low, lo), (p_high, hi)):
            slope = (t[-1] - t[-2]) / (curve[-1] - curve[-2])
            v = np.interp(p, curve, t)
            out.append(np.where(p > curve[-1], t[-1] + (p - curve[-1]) * slope, v))
        return out[0], out[1]

    def subtract(self, p_low: np.ndarray, p_high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted log subtraction on linearised logs -> (bone g/cm^2, soft g/cm^2)."""
        a_lo, a_hi = self.linearize(p_low, p_high)
        d = self.de
        return (a_lo - d.w_soft * a_hi) / d.k_bone, (a_lo - d.w_bone * a_hi) / d.k_soft

    def _slab_attenuation(self, water: np.ndarray, bone: np.ndarray) -> np.ndarray:
        """Attenuations of water slabs (g/cm^2) with bone (g/cm^2) on top; water as its basis combination."""
        w = water_in_basis() / water_in_basis().sum()
        water, bone = np.broadcast_arrays(water, bone)
        line = np.stack([water * w[0], water * w[1], water * w[2] + bone]).astype(np.float32)
        return self.attenuation(line)

    def _calibrate(self) -> DEWeights:
        """Linearisation tables and least-squares weights on noise-free slabs (derivation: docs/synth.md)."""
        t = np.linspace(0.0, LIN_MAX_G_CM2, 241)
        _, lo, hi = self._slab_attenuation(t, np.zeros_like(t))
        self._lin_table = (t, lo, hi)
        # Water alone: both linearised logs equal its thickness; fitted anyway so the weight is what the
        # calibration measured, not an assumption.
        ts = np.linspace(*SOFT_CAL_G_CM2, 57)
        _, lo_s, hi_s = self._slab_attenuation(ts, np.zeros_like(ts))
        a_lo_s, a_hi_s = self.linearize(lo_s, hi_s)
        w_soft = float(np.polyfit(a_hi_s, a_lo_s, 1)[0])
        b = np.linspace(*BONE_CAL_G_CM2, 31)
        bg = np.full_like(b, BONE_CAL_BACKGROUND_G_CM2)
        _, lo_b, hi_b = self._slab_attenuation(bg, b)
        a_lo_b, a_hi_b = self.linearize(lo_b, hi_b)
        w_bone = float(np.polyfit(a_hi_b, a_lo_b, 1)[0])
        k_bone = float(np.polyfit(b, a_lo_b - w_soft * a_hi_b, 1)[0])
        k_soft = float(np.polyfit(ts, a_lo_s - w_bone * a_hi_s, 1)[0])
        return DEWeights(w_soft=w_soft, k_bone=k_bone, w_bone=w_bone, k_soft=k_soft)

    def describe(self) -> dict:
        d = self.de
        return {
            "energy_grid_kev": [float(self.energies[0]), float(self.energies[-1]), 1.0],
            "detector": {"type": "energy-integrating indirect flat panel, CsI:Tl",
                         "csi_mm": self.config.detector.csi_mm, "fill": self.config.detector.fill},
            "protocols": {n: self.exposures[n].describe() for n in self._order},
            "dual_energy": {
                "method": "weighted log subtraction of water-linearised logs (beam-hardening correction), weights by least squares on polyenergetic water/bone slabs",
                "bone": "(A_low - w_soft * A_high) / k_bone", "soft": "(A_low - w_bone * A_high) / k_soft", "A": "water-equivalent thickness (g/cm^2) of each attenuation from its water calibration curve",
                "w_soft": d.w_soft, "k_bone": d.k_bone, "w_bone": d.w_bone, "k_soft": d.k_soft,
                "soft_calibration_g_cm2": list(SOFT_CAL_G_CM2), "bone_calibration_g_cm2": list(BONE_CAL_G_CM2),
                "bone_calibration_background_g_cm2": BONE_CAL_BACKGROUND_G_CM2,
            },
            "noise": ("compound Poisson per exposure: Poisson(N_eff) * mean / N_eff, N_eff = mean^2 / var of the "
                      "absorbed energy; flat field noise-free" if self.config.noise else None),
            "scatter": None,
        }
