"""The randomised single-energy imaging chain (docs/synth.md, "Imaging-chain randomisation").

Each view with a chain gets a `ViewChain`: a protocol and imaging chain drawn from the view's own seed (tube
voltage and filtration, dose, scatter and grid, heel effect, collimation and lead markers, detector blur and
electronic noise, CR/DX post-processing, magnification and detector offset). It is recorded in the manifest,
so a view re-renders bit for bit. The chain shapes only the SE image; the dual-energy targets stay ideal:
noise-free, scatter-free, unprocessed, from the same line integrals.

Signal model per pixel (energy-integrating detector, keV absorbed):
  primary  P = F(x) * dose-scaled sum_E N(E) eta(E) E exp(-sum_m mu_m(E) L_m)   (F: heel, collimator, markers)
  scatter  S = c * G_sigma * (P * tau),  tau = -ln(primary transmission); c sets the asked scatter-to-primary
           ratio over the body (sum S / sum P); behind a grid P *= T_p, S *= T_s
  quantum noise on P + S (compound Poisson, as dexrt.synth.physics), then detector blur (Gaussian PSF), then
  electronic noise (additive Gaussian); se_raw = -ln(signal / open-field signal on the central ray).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

import numpy as np

from dexrt import _core
from dexrt.synth.materials import BASIS, mu_rho
from dexrt.synth.processing import (MARKER_TRANSMISSION, collimation_mask, heel_profile, post_process, smooth,
                                    stamp)
from dexrt.synth.spectra import Detector, Protocol, energy_grid, expose

Range = tuple[float, float]
# A 10:1 focused grid in a chest beam: primary transmission ~0.7, scatter transmission ~0.1 (Tp, Ts as IEC 60627
# defines them; values of the order Chan, Higashida & Doi measured, Med. Phys. 12:449, 1985).
GRID_PRIMARY_T = 0.70
GRID_SCATTER_T = 0.10
BODY_TAU = 0.2  # pixels whose primary attenuation exceeds this are "behind the body" for the SPR
KVP_STEP = 2.0  # drawn tube voltages are rounded to this, so spectra are computed once per value
CU_STEP = 0.05
LUTS = ("linear", "gamma", "log", "sigmoid")
MARKER_TEXT = ("L", "R")
ANNOTATION_CHARS = "ABCDEFGHKLMPRST0123456789"


# ChainConfig range field -> (name in messages, lowest low, highest high)
_RANGE_LIMITS = {
    "kvp": ("kVp", 40.0, 150.0), "cu_mm": ("copper (mm)", 0.0, 5.0), "dose_ugy": ("dose (uGy)", 0.1, 1e5),
    "spr": ("scatter-to-primary", 0.0, 20.0), "scatter_sigma_mm": ("scatter kernel (mm)", 1.0, 1000.0),
    "blur_mm": ("blur (mm)", 0.0, 20.0), "electronic": ("electronic noise", 0.0, 10.0), "heel": ("heel", 0.0, 0.9),
    "collimation_margin": ("collimation margin", 0.0, 0.3), "gamma": ("gamma", 0.1, 10.0),
    "magnification": ("magnification", 1.0, 5.0), "sdd_mm": ("SDD (mm)", 100.0, 10000.0),
}


@dataclass(frozen=True)
class ChainConfig:
    """Ranges the per-view chain is drawn from; a range of None switches that randomisation off (the fixed
    protocol's value is used). Probabilities are per view; `prob` is the share of views that go through the
    chain at all (the others are rendered with the fixed protocol, as without a chain)."""

    prob: float = 1.0

    kvp: Range | None = (70.0, 140.0)
    cu_mm: Range | None = (0.0, 0.3)  # added copper of the SE protocol (aluminium stays the protocol's)
    dose_ugy: Range | None = (20.0, 400.0)  # log-uniform air kerma at the isocentre
    spr: Range | None = (0.3, 1.5)  # scatter-to-primary ratio over the body without a grid
    scatter_sigma_mm: Range = (40.0, 120.0)  # Gaussian scatter kernel at the detector
    grid_prob: float = 0.5
    blur_mm: Range | None = (0.1, 2.0)  # Gaussian PSF sigma at the detector
    electronic: Range | None = (0.0, 0.05)  # additive noise sd / quantum noise sd of the open field
    heel: Range | None = (0.0, 0.3)  # fluence drop at the anode-side detector edge
    collimation_prob: float = 0.5
    collimation_margin: Range = (0.0, 0.15)  # per side, fraction of the detector side
    marker_prob: float = 0.5
    annotation_prob: float = 0.3  # burnt-in text, processed views only
    processing_prob: float = 0.7
    gamma: Range = (0.5, 2.0)
    magnification: Range | None = (1.2, 1.5)
    sdd_mm: Range = (1500.0, 1800.0)
    offset_mm: float = 30.0  # patient offset from the central ray, uniform in +-this per detector axis

    def validate(self) -> None:
        for field, (name, lo, hi) in _RANGE_LIMITS.items():
            r = getattr(self, field)
            if r is not None and not (len(r) == 2 and lo <= r[0] <= r[1] <= hi):
                raise ValueError(f"chain {name} range must satisfy {lo} <= low <= high <= {hi}, got {r}")
        for name in ("prob", "grid_prob", "collimation_prob", "marker_prob", "annotation_prob", "processing_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"chain {name.replace('_', ' ')} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.offset_mm <= 500.0:
            raise ValueError(f"chain offset must be 0..500 mm, got {self.offset_mm}")


@dataclass
class ViewChain:
    """One view's drawn protocol and imaging chain (recorded per view in the manifest as `chain`)."""

    kvp: float
    al_mm: float
    cu_mm: float
    dose_ugy: float
    spr: float | None  # without the grid
    scatter_sigma_mm: float
    grid: bool
    blur_mm: float
    electronic: float
    heel: dict | None  # {"anode_edge": fluence, "axis": "rows+"...}
    collimation: dict | None  # {"margins": [t, b, l, r], "rotation_deg": ...}
    marker: dict | None  # {"text", "height_mm", "corner"}
    processing: dict | None
    annotation: dict | None
    sid_mm: float
    sdd_mm: float
    offset_mm: tuple[float, float] = (0.0, 0.0)  # patient shift along detector rows, columns
    seed: int = 0
    measured: dict = field(default_factory=dict)  # filled when rendered: window, effective SPR, ...

    def record(self) -> dict:
        d = asdict(self)
        d["offset_mm"] = list(self.offset_mm)
        d["spr_with_grid"] = (None if self.spr is None else
                              round(self.spr * (GRID_SCATTER_T / GRID_PRIMARY_T if self.grid else 1.0), 6))
        d["se_stored"] = "processed" if self.processing else "attenuation"
        return d


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def draw_chain(cfg: ChainConfig, base: Protocol, sid_mm: float, sdd_mm: float, body_radius_mm: float,
               seed: int) -> ViewChain:
    """The view's chain, drawn from `seed` alone (the same seed gives the same chain)."""
    rng = np.random.default_rng([seed, 0xC4A1])
    kvp = base.kvp
    if cfg.kvp is not None:  # rounded to the step, but never outside the asked range
        kvp = min(max(round(_uniform(rng, cfg.kvp) / KVP_STEP) * KVP_STEP, cfg.kvp[0]), cfg.kvp[1])
    cu = base.cu_mm
    if cfg.cu_mm is not None:
        cu = round(min(max(round(_uniform(rng, cfg.cu_mm) / CU_STEP) * CU_STEP, cfg.cu_mm[0]), cfg.cu_mm[1]), 4)
    dose = base.kerma_ugy if cfg.dose_ugy is None else float(np.exp(_uniform(rng, tuple(np.log(cfg.dose_ugy)))))
    spr = None if cfg.spr is None else _uniform(rng, cfg.spr)
    sigma = _uniform(rng, cfg.scatter_sigma_mm)
    grid = bool(rng.uniform() < cfg.grid_prob) if spr is not None else False
    blur = 0.0 if cfg.blur_mm is None else _uniform(rng, cfg.blur_mm)
    electronic = 0.0 if cfg.electronic is None else _uniform(rng, cfg.electronic)
    heel = None
    if cfg.heel is not None:
        axis = ("rows+", "rows-", "cols+", "cols-")[int(rng.integers(4))]
        heel = {"anode_edge": round(1.0 - _uniform(rng, cfg.heel), 6), "axis": axis}
    collimation = None
    if rng.uniform() < cfg.collimation_prob:
        collimation = {"margins": [round(_uniform(rng, cfg.collimation_margin), 6) for _ in range(4)],
                       "rotation_deg": round(float(rng.uniform(-3.0, 3.0)), 4)}
    marker = None
    if rng.uniform() < cfg.marker_prob:
        marker = {"text": MARKER_TEXT[int(rng.integers(2))], "height_mm": round(float(rng.uniform(10, 20)), 3),
                  "corner": [round(float(v), 4) for v in rng.uniform(0.1, 0.9, 2)]}
    processing = _draw_processing(cfg, rng) if rng.uniform() < cfg.processing_prob else None
    annotation = None
    if processing is not None and rng.uniform() < cfg.annotation_prob:
        n = int(rng.integers(2, 7))
        annotation = {"text": "".join(rng.choice(list(ANNOTATION_CHARS), n)),
                      "height_mm": round(float(rng.uniform(6, 14)), 3),
                      "corner": [round(float(rng.choice([0.03, 0.97])), 4), round(float(rng.uniform(0.05, 0.95)), 4)]}
    sid, sdd, offset = sid_mm, sdd_mm, (0.0, 0.0)
    if cfg.magnification is not None:
        sdd = _uniform(rng, cfg.sdd_mm)
        # The body's bounding sphere must stay between the source and the detector: magnification has a floor.
        mag = max(_uniform(rng, cfg.magnification), sdd / max(sdd - body_radius_mm - 10.0, 1.0))
        sid = sdd / mag
        if sid <= body_radius_mm + 10.0:
            raise ValueError(f"no magnification in {cfg.magnification} at SDD {sdd:.0f} mm keeps the body "
                             f"(radius {body_radius_mm:.0f} mm) between source and detector")
    if cfg.offset_mm > 0:
        dr, dc = rng.uniform(-cfg.offset_mm, cfg.offset_mm, 2)
        offset = (round(float(dr), 4), round(float(dc), 4))
    return ViewChain(kvp=float(kvp), al_mm=base.al_mm, cu_mm=float(cu), dose_ugy=round(dose, 6),
                     spr=None if spr is None else round(spr, 6), scatter_sigma_mm=round(sigma, 4), grid=grid,
                     blur_mm=round(blur, 6), electronic=round(electronic, 6), heel=heel, collimation=collimation,
                     marker=marker, processing=processing, annotation=annotation, sid_mm=round(sid, 4),
                     sdd_mm=round(sdd, 4), offset_mm=offset, seed=int(seed))


def _draw_processing(cfg: ChainConfig, rng: np.random.Generator) -> dict:
    lut = LUTS[int(rng.integers(len(LUTS)))]
    param = {"linear": 1.0, "gamma": _uniform(rng, cfg.gamma), "log": float(rng.uniform(2.0, 20.0)),
             "sigmoid": float(rng.uniform(3.0, 10.0))}[lut]
    p: dict = {"window_pct": [round(float(rng.uniform(0.0, 3.0)), 4), round(float(rng.uniform(97.0, 100.0)), 4)],
               "lut": lut, "lut_param": round(param, 5), "equalise": None, "unsharp": None, "multiscale": None,
               "shutter": "black" if rng.uniform() < 0.3 else "white"}
    if rng.uniform() < 0.5:
        p["equalise"] = {"sigma_mm": round(float(rng.uniform(20, 60)), 3),
                         "strength": round(float(rng.uniform(0.2, 0.7)), 4)}
    detail = rng.uniform()
    if detail < 0.4:
        p["unsharp"] = {"sigma_mm": round(float(rng.uniform(2, 15)), 3), "gain": round(float(rng.uniform(0.3, 1.5)), 4)}
    elif detail < 0.7:
        p["multiscale"] = {"base_mm": round(float(rng.uniform(1.5, 4.0)), 3),
                           "gains": [round(float(g), 4) for g in rng.uniform(0.8, 2.5, 4)]}
    return p


@lru_cache(maxsize=512)
def unit_exposure(kvp: float, al_mm: float, cu_mm: float, detector: Detector) -> tuple[np.ndarray, np.ndarray]:
    """(mu (3, E) cm^2/g of the basis, weights (2, E): absorbed energy and its variance per pixel) for 1 uGy at
    the isocentre, SID = SDD and a 1 mm^2 pixel; photon numbers scale with kerma * (SID/SDD)^2 * pixel area."""
    energies = energy_grid(kvp)
    e = expose(Protocol("se", kvp, al_mm=al_mm, cu_mm=cu_mm, kerma_ugy=1.0), energies, detector, 1000.0, 1000.0, 1.0)
    mu = np.stack([mu_rho(n, energies) for n in BASIS])
    return mu, np.stack([e.signal_weights, e.variance_weights])


def se_image(line: np.ndarray, ch: ViewChain, detector: Detector, pixel_mm: float, rng: np.random.Generator | None,
             threads: int = 0, parts: bool = False, bone_free: bool = False) -> dict[str, np.ndarray]:
    """(3, H, W) material line integrals -> {"se_raw", "se"} through the view's chain; with `parts` also the
    noise-free "primary" and "scatter" (keV per pixel), the primary "fluence" factor (heel, collimator, markers),
    the final linear "signal", and the open field's mean and quantum variance ("open_field", "open_var").

    With `bone_free` also "se_bone_free": the SE image ("se") without its bone, and "attenuation": the
    noise-free attenuation of the primary alone (no scatter, heel, collimator or markers). The bone's part of
    the raw image is the difference of two noise-free renderings through this chain, with and without the bone
    line integral (so scatter, blur, heel and beam hardening act on it as on the SE image); the raw image less
    that part keeps the SE image's own noise, and a processed view's goes through the same processing, window
    and annotation as its SE image did."""
    rows, cols = line.shape[1:]
    mu, w = unit_exposure(ch.kvp, ch.al_mm, ch.cu_mm, detector)
    unit = _core.drr_polyenergetic(np.ascontiguousarray(line, np.float32), mu, w, threads)  # (2, H, W)
    scale = ch.dose_ugy * (ch.sid_mm / ch.sdd_mm) ** 2 * pixel_mm**2
    flat, flat_var = float(w[0].sum()) * scale, float(w[1].sum()) * scale
    fluence = np.ones((rows, cols))
    if ch.heel:
        fluence *= heel_profile(rows, cols, pixel_mm, ch.sdd_mm, ch.heel["anode_edge"], ch.heel["axis"])
    field = np.ones((rows, cols), bool)
    if ch.collimation:
        coll = collimation_mask(rows, cols, pixel_mm, ch.sdd_mm, tuple(ch.collimation["margins"]),
                                ch.collimation["rotation_deg"])
        fluence *= coll
        field = coll > 0.5
    if ch.marker:
        m = stamp((rows, cols), ch.marker["text"], max(6, round(ch.marker["height_mm"] / pixel_mm)),
                  tuple(ch.marker["corner"]))
        fluence = np.where(m, fluence * MARKER_TRANSMISSION, fluence)
    primary = unit[0] * scale * fluence
    p_var = unit[1] * scale * fluence
    scatter = np.zeros_like(primary)
    tau = -np.log(np.clip(unit[0] / float(w[0].sum()), 1e-12, 1.0))  # attenuation of the primary
    body = (tau > BODY_TAU) & field & (primary > 0)
    if ch.spr and body.any():
        spread = smooth(primary * tau, ch.scatter_sigma_mm / pixel_mm)
        if spread[body].sum() > 0:
            scatter = ch.spr * float(primary[body].sum()) / float(spread[body].sum()) * np.maximum(spread, 0.0)
    t_p, t_s = (GRID_PRIMARY_T, GRID_SCATTER_T) if ch.grid else (1.0, 1.0)
    mean = t_p * primary + t_s * scatter
    # Scattered quanta are about as energetic as the primary ones: their variance per unit signal is the flat
    # field's.
    var = t_p * p_var + t_s * scatter * (flat_var / flat)
    signal = mean
    if rng is not None:
        n_eff = mean * mean / np.maximum(var, 1e-300)
        signal = np.maximum(rng.poisson(n_eff).astype(np.float64), 0.5) * (mean / np.maximum(n_eff, 1e-300))
    signal = smooth(signal, ch.blur_mm / pixel_mm) if ch.blur_mm > 0 else signal
    if rng is not None and ch.electronic > 0:
        signal = signal + rng.normal(0.0, ch.electronic * math.sqrt(t_p * flat_var), signal.shape)
    open_field = t_p * flat
    floor = 0.5 * flat_var / flat  # half a detected quantum's energy (var/mean): the log stays finite
    se_raw = -np.log(np.maximum(signal, floor) / open_field)
    ch.measured = {}
    if ch.spr and body.any():
        ch.measured["spr_body"] = round(float((t_s * scatter[body]).sum() / (t_p * primary[body]).sum()), 5)
    out = {"se_raw": se_raw.astype(np.float32), "se": se_raw.astype(np.float32)}
    if bone_free:
        unchained = replace(ch, processing=None, annotation=None, measured={})
        clean = [se_image(material, unchained, detector, pixel_mm, None, threads)["se_raw"].astype(np.float64)
                 for material in (line, _without_bone(line))]
        free = se_raw - (clean[0] - clean[1])
        out.update(se_bone_free=free.astype(np.float32), attenuation=tau.astype(np.float32))
    if ch.processing:
        processed, used = post_process(se_raw, field, ch.processing, pixel_mm)
        ch.measured["window"] = {"lo": round(used["lo"], 5), "hi": round(used["hi"], 5)}
        text = None
        if ch.annotation:
            a = ch.annotation
            text = stamp((rows, cols), a["text"], max(6, round(a["height_mm"] / pixel_mm)), tuple(a["corner"]))
        out["se"] = _annotated(processed, text, used)
        if bone_free:
            out["se_bone_free"] = _annotated(post_process(free, field, ch.processing, pixel_mm, like=used)[0], text,
                                             used)
    if parts:
        out.update(primary=t_p * primary, scatter=t_s * scatter, fluence=fluence, signal=signal,
                   open_field=np.float64(open_field), open_var=np.float64(t_p * flat_var))
    return out


def _annotated(image: np.ndarray, text: np.ndarray | None, used: dict) -> np.ndarray:
    """A processed image with the burnt-in annotation (the window's top, as recorded) where `text` is set."""
    return np.asarray(image if text is None else np.where(text, round(used["hi"], 5), image), np.float32)


def _without_bone(line: np.ndarray) -> np.ndarray:
    out = np.array(line, np.float32)
    out[BASIS.index("bone")] = 0.0
    return out
