"""One CT, one imaging set-up: geometry, material volume, physics. Renders views to float images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dexrt import _core
from dexrt.synth.ct import CTVolume, resample_axial
from dexrt.synth.lesions import Lesion, LesionSampler, project_lesions
from dexrt.synth.materials import MaterialModel
from dexrt.synth.physics import Physics, PhysicsConfig
from dexrt.synth.tissue import body_mask
from dexrt.synth.volume import CONTRAST_MODES, LabelRules, MaterialVolume, build_volume

if TYPE_CHECKING:
    from dexrt.synth.anatomy import Anatomy
    from dexrt.synth.chain import ViewChain


@dataclass
class ImagingConfig:
    size: tuple[int, int] = (256, 256)  # (rows, cols)
    sid_mm: float = 1000.0
    sdd_mm: float = 1500.0
    detector_mm: float | None = None  # square detector side; None: fit the body (+5 %) at the isocentre
    iso_mm: tuple[float, float, float] | None = None  # None: centre of the body's bounding box
    bin: tuple[int, int, int] | None = None  # CT voxel binning; None: about one detector pixel at the isocentre
    keep_outside_body: bool = False
    contrast: str = "remove"  # contrast-enhanced blood: "remove" (set to unenhanced blood) or "keep"
    rules: LabelRules = field(default_factory=LabelRules)
    model: MaterialModel = field(default_factory=MaterialModel)
    physics: PhysicsConfig = field(default_factory=PhysicsConfig)
    threads: int = 0

    def validate(self) -> None:
        rows, cols = self.size
        if not (16 <= rows <= 4096 and 16 <= cols <= 4096):
            raise ValueError(f"image size must be 16..4096 pixels per side, got {rows}x{cols}")
        if not (self.sid_mm > 0 and self.sdd_mm > self.sid_mm):
            raise ValueError(f"need 0 < source-isocentre ({self.sid_mm} mm) < source-detector ({self.sdd_mm} mm)")
        if self.detector_mm is not None and not (10.0 <= self.detector_mm <= 2000.0):
            raise ValueError(f"detector side must be 10..2000 mm, got {self.detector_mm}")
        if self.contrast not in CONTRAST_MODES:
            raise ValueError(f"contrast must be one of {', '.join(CONTRAST_MODES)}, got {self.contrast!r}")


@dataclass
class View:
    id: str
    gantry_deg: float
    couch_deg: float = 0.0
    tilt_deg: float = 0.0
    noise_seed: int | None = None
    lesions: list[Lesion] = field(default_factory=list)
    # Imaging-chain randomisation (dexrt.synth.chain, dexrt.synth.anatomy); None: the fixed protocol and CT.
    chain: ViewChain | None = None
    anatomy: Anatomy | None = None


class Renderer:
    def __init__(self, ct: CTVolume, config: ImagingConfig) -> None:
        config.validate()
        self.config = config
        rows, cols = config.size
        mag = config.sdd_mm / config.sid_mm
        self.detector_mm = config.detector_mm if config.detector_mm is not None else fit_detector_mm(ct, config)
        self.pixel_mm = self.detector_mm / max(rows, cols)
        # Thick slices are interpolated to about the pixel at the isocentre (no stair-steps in the targets).
        self.ct = ct = resample_axial(ct, self.pixel_mm / mag)
        self.volume: MaterialVolume = build_volume(ct, config.model, self.pixel_mm / mag, bin=config.bin,
                                                   rules=config.rules, keep_outside_body=config.keep_outside_body,
                                                   contrast=config.contrast)
        if config.iso_mm is not None:
            self.iso = np.array(config.iso_mm, float)
        else:
            blo, bhi = self.volume.body_bounds()
            self.iso = (blo + bhi) / 2.0
        self.physics = Physics(config.physics, config.sid_mm, config.sdd_mm, self.pixel_mm**2, config.threads)
        self._sampler: LesionSampler | None = None
        self._anatomy: tuple[Anatomy, MaterialVolume] | None = None  # the last deformed volume and its anatomy
        blo, bhi = self.volume.body_bounds()
        # Radius of the sphere about the isocentre that holds the body's box: the chain keeps it between the
        # source and the detector when it draws a magnification.
        corners = np.array([[a, b, c] for a in (blo[0], bhi[0]) for b in (blo[1], bhi[1]) for c in (blo[2], bhi[2])])
        self.body_radius_mm = float(np.max(np.linalg.norm(corners - self.iso, axis=1)))

    def cone_beam(self, view: View) -> _core.ConeBeam:
        rows, cols = self.config.size
        sid, sdd, iso = self.config.sid_mm, self.config.sdd_mm, self.iso
        ch = view.chain
        if ch is not None:
            sid, sdd = ch.sid_mm, ch.sdd_mm
            if any(ch.offset_mm):  # aim the central ray off the body centre, along the detector's rows and columns
                f = _core.ConeBeam(sid_mm=sid, sdd_mm=sdd, rows=rows, cols=cols, pixel_row_mm=self.pixel_mm,
                                   pixel_col_mm=self.pixel_mm, gantry_deg=view.gantry_deg, couch_deg=view.couch_deg,
                                   tilt_deg=view.tilt_deg, iso_mm=iso.tolist()).frame()
                unit = [np.asarray(f[k], float) / np.linalg.norm(f[k]) for k in ("row_step", "col_step")]
                iso = iso + ch.offset_mm[0] * unit[0] + ch.offset_mm[1] * unit[1]
        return _core.ConeBeam(sid_mm=sid, sdd_mm=sdd, rows=rows, cols=cols, pixel_row_mm=self.pixel_mm,
                              pixel_col_mm=self.pixel_mm, gantry_deg=view.gantry_deg, couch_deg=view.couch_deg,
                              tilt_deg=view.tilt_deg, iso_mm=list(iso))

    def volume_for(self, view: View) -> MaterialVolume:
        """The material volume of the view's anatomy (built once per anatomy, kept for the next view)."""
        if view.anatomy is None:
            return self.volume
        if self._anatomy is None or self._anatomy[0] != view.anatomy:
            from dexrt.synth.anatomy import deform

            self._anatomy = (view.anatomy, deform(self.volume, view.anatomy))
        return self._anatomy[1]

    def lesion_sampler(self, diameter_mm: tuple[float, float]) -> LesionSampler:
        if self._sampler is None or self._sampler.diameter_mm != diameter_mm:
            self._sampler = LesionSampler(self.volume, self.config.model, diameter_mm)
        return self._sampler

    def line_integrals(self, view: View) -> tuple[np.ndarray, np.ndarray]:
        """(3, H, W) areal densities (g/cm^2) of adipose, soft, bone with lesions, and the (H, W) lesion mask."""
        cb = self.cone_beam(view)
        line = self.volume_for(view).line_integrals([cb], self.config.threads)[0]
        lesions = view.lesions
        if view.anatomy is not None:
            line[2] *= np.float32(view.anatomy.bone_density)
            lesions = [view.anatomy.move_lesion(les) for les in lesions]
        delta, mask = project_lesions(lesions, cb.frame(), cb.rows, cb.cols)
        if lesions:
            line = np.maximum(line + delta, 0.0)
        return line, mask

    def render(self, view: View, noise: bool | None = None) -> dict[str, np.ndarray]:
        """{"se", "se_raw", "bone", "soft", "bone_processed", "soft_processed", "bone_ideal", "soft_ideal",
        "mask"} for one view (H, W). "se_raw" is the SE attenuation before post-processing (the same image as "se"
        without a chain); with a chain the DE pair is noise-free. "*_processed" are the DE pair as the view's
        processing shows it (`processed_targets`)."""
        line, mask = self.line_integrals(view)
        use_noise = self.config.physics.noise if noise is None else noise
        rng = np.random.default_rng(view.noise_seed) if use_noise and view.noise_seed is not None else None
        if use_noise and rng is None:
            raise ValueError(f"{view.id}: noise is on but the view has no noise seed")
        if view.chain is not None:
            from dexrt.synth.chain import se_image

            # The DE targets stay ideal: no noise, scatter or processing; only the SE goes through the chain.
            out = self.physics.images(line, None)
            out.update(se_image(line, view.chain, self.config.physics.detector, self.pixel_mm, rng,
                                self.config.threads, bone_free=True))
        else:
            out = self.physics.images(line, rng)
            out["se_raw"] = out["se"]
        out.update(processed_targets(out))
        out["bone_ideal"] = line[2].astype(np.float32)  # g/cm^2 cortical bone
        out["soft_ideal"] = (line[0] + line[1]).astype(np.float32)  # g/cm^2 adipose + soft tissue
        out["mask"] = mask
        return out

    def describe(self) -> dict:
        rows, cols = self.config.size
        return {
            "convention": "world RAS+ mm; gantry about the superior axis, 0 = source anterior (AP), 90 = source at "
                          "the patient's left; couch about the anterior axis; tilt about the detector column axis, "
                          "positive = source towards the head; image rows run head -> feet, columns patient "
                          "right -> left at gantry 0 (beam's-eye view, as a radiograph is read)",
            "projector": "Siddon exact radiological path (Jacobs incremental), C++ std::thread",
            "sid_mm": self.config.sid_mm, "sdd_mm": self.config.sdd_mm, "rows": rows, "cols": cols,
            "detector_mm": round(self.detector_mm, 3), "pixel_mm": round(self.pixel_mm, 5),
            "pixel_at_iso_mm": round(self.pixel_mm * self.config.sid_mm / self.config.sdd_mm, 5),
            "iso_mm": np.round(self.iso, 3).tolist(), "volume": self.volume.info,
        }


def body_extent_mm(ct: CTVolume) -> float:
    """The largest side of the box around the patient's body, from a coarse (about 4 mm) body mask."""
    stride = tuple(max(1, int(4.0 // sp)) for sp in ct.spacing)
    coarse = ct.hu[::stride[0], ::stride[1], ::stride[2]]
    affine = ct.affine.copy()
    affine[:3, :3] = ct.affine[:3, :3] * np.array(stride, float)
    body = np.zeros(ct.hu.shape, bool)
    body[::stride[0], ::stride[1], ::stride[2]] = body_mask(coarse, affine)
    lo, hi = ct.world_bounds(body)
    return float(np.max(hi - lo))


def fit_detector_mm(ct: CTVolume, config: ImagingConfig) -> float:
    """The detector side that shows the whole body at the isocentre with a 5 % margin."""
    return 1.05 * body_extent_mm(ct) * config.sdd_mm / config.sid_mm


def processed_targets(images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The DE pair as the view's SE processing shows it ("bone_processed", "soft_processed", g/cm^2).

    Through a chain (collimation, markers, scatter, processing) the SE image is no longer a linear mix of the
    ideal DE pair, so that pair is no target a network can reach from it. Its bone-free image is: the SE image
    rendered without the bone's part, keeping its noise, scatter, markers and processing
    (`dexrt.synth.chain.se_image`); the bone image is the SE image less that. Both are mapped to g/cm^2 by the
    view's fit of its primary attenuation (`dexrt.runtime.contract.decomposition`), so SE = a + kb bone + ks soft holds
    exactly for them. A view without a chain keeps its ideal pair.
    """
    if "se_bone_free" not in images:
        return {"bone_processed": images["bone"], "soft_processed": images["soft"]}
    from dexrt.runtime.contract import decomposition

    a, kb, ks = decomposition(images.pop("attenuation"), images["bone"], images["soft"])
    free = images.pop("se_bone_free").astype(np.float64)
    return {"bone_processed": ((images["se"] - free) / kb).astype(np.float32),
            "soft_processed": ((free - a) / ks).astype(np.float32)}
