"""The material volume the projector traces: partial densities of (adipose, soft, bone) per voxel, binned to
about the detector's resolution at the isocentre, with body and lung masks.

Without a label map, HU decide alone (`dexrt.synth.tissue`): the body mask drops the couch and everything else
outside the patient, contrast-enhanced blood is detected and (with contrast "remove", the default) set to blood
(40 HU), and bone exists only within a bone mask found from HU; elsewhere the HU model's bone part counts as soft
tissue.

Label maps win over HU: labels listed as `blood` (contrast-filled heart and vessels) are set to blood (40 HU),
labels listed as `soft` never hold bone (their HU excess above soft tissue is kept as soft-tissue density), and
`lung` labels give the lung mask that lesions are placed in. When `bone` labels are given, bone exists only within
them (grown by 2 voxels); elsewhere HU is capped at `BLOOD_HU` + 60, which removes unlabelled iodinated contrast
(e.g. the bolus in an arm vein) that the HU model would call bone. A rule the labels do not give (no bone labels,
no blood labels) is taken from HU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dexrt import _core
from dexrt.synth.ct import CTVolume
from dexrt.synth.materials import BASIS, MaterialModel
from dexrt.synth.tissue import (
    BODY_HU,
    BONE_EVIDENCE_HU,
    BONE_MIN_HU,
    ENHANCED_HU,
    body_mask,
    bone_mask,
    enhanced_blood,
)

BLOOD_HU = 40.0
LUNG_HU = -400.0  # below, inside the body: air spaces (lungs, airways)
CONTRAST_MODES = ("remove", "keep")


def parse_ids(text: str | None) -> frozenset[int]:
    """'10-14,16' -> {10, 11, 12, 13, 14, 16}."""
    if not text:
        return frozenset()
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                ids.update(range(a, b + 1))
            else:
                ids.add(int(part))
        except ValueError:
            raise ValueError(f"label ids must look like '10-14,16', got {text!r}") from None
    return frozenset(ids)


@dataclass(frozen=True)
class LabelRules:
    lung: frozenset[int] = frozenset()
    blood: frozenset[int] = frozenset()
    soft: frozenset[int] = frozenset()
    bone: frozenset[int] = frozenset()

    def describe(self) -> dict:
        return {k: sorted(getattr(self, k)) for k in ("lung", "blood", "soft", "bone")}


# TotalSegmentator (v1) ids, the label map shipped with the example CT: lungs 10-14; heart and great vessels
# 51-68 (contrast-enhanced in that CT); organs 1-24, vessels 51-68 and muscles/cord/brain 79-90 hold no bone;
# vertebrae 25-50, limb and girdle bones 69-78, skull 91, ribs, sternum, carpals and costal cartilages 92-118.
EXAMPLE_RULES = LabelRules(lung=parse_ids("10-14"), blood=parse_ids("51-68"), soft=parse_ids("1-24,51-68,79-90"),
                           bone=parse_ids("25-50,69-78,91-118"))
NON_BONE_CAP_HU = BLOOD_HU + 60.0
RULE_PRESETS = {"totalsegmentator-v1": EXAMPLE_RULES}  # catalogue label maps name their preset


@dataclass
class MaterialVolume:
    data: np.ndarray  # (n0, n1, n2, 3) float32 partial densities, g/cm^3, channels BASIS
    affine: np.ndarray  # (4, 4) index -> world mm
    body: np.ndarray  # (n0, n1, n2) bool
    lung: np.ndarray  # (n0, n1, n2) bool
    bin: tuple[int, int, int]
    info: dict = field(default_factory=dict)

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def world(self, idx: np.ndarray) -> np.ndarray:
        """(..., 3) voxel indices -> (..., 3) world mm."""
        return np.asarray(idx, float) @ self.affine[:3, :3].T + self.affine[:3, 3]

    def body_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        idx = np.argwhere(self.body)
        lo, hi = idx.min(0) - 0.5, idx.max(0) + 0.5
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        w = self.world(corners)
        return w.min(0), w.max(0)

    def line_integrals(self, views: list, threads: int = 0) -> np.ndarray:
        """(N, 3, rows, cols) float32 areal densities (g/cm^2) of each basis material along every ray."""
        return _core.drr_project(self.data, self.affine, views, threads) * np.float32(0.1)  # mm -> cm


def axial_axis(affine: np.ndarray) -> int:
    """The voxel index axis closest to the patient's superior axis."""
    return int(np.argmax(np.abs(affine[2, :3]) / np.linalg.norm(affine[:3, :3], axis=0)))


def _lookup(labels: np.ndarray, ids: frozenset[int]) -> np.ndarray:
    """labels in ids, by table lookup (np.isin sorts the whole volume)."""
    table = np.zeros(max(int(labels.max()), max(ids)) + 1, bool)
    table[list(ids)] = True
    return table[labels]


def auto_bin(spacing: np.ndarray, pixel_at_iso_mm: float) -> tuple[int, int, int]:
    """Bin factors that bring each voxel side close to the detector pixel at the isocentre, never finer."""
    return tuple(max(1, int(round(pixel_at_iso_mm / s))) for s in spacing)  # type: ignore[return-value]


def _block_mean(a: np.ndarray, b: tuple[int, int, int]) -> np.ndarray:
    n = [s // f for s, f in zip(a.shape[:3], b)]
    a = a[: n[0] * b[0], : n[1] * b[1], : n[2] * b[2]]
    shape = (n[0], b[0], n[1], b[1], n[2], b[2]) + a.shape[3:]
    return a.reshape(shape).mean(axis=(1, 3, 5), dtype=np.float32)


def _upsample(mask: np.ndarray, b: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """A mask on the binned grid repeated onto the CT's voxels (`shape`; voxels past the last whole bin: False)."""
    up = mask
    for axis, f in enumerate(b):
        if f > 1:
            up = np.repeat(up, f, axis=axis)
    out = np.zeros(shape, bool)
    out[: up.shape[0], : up.shape[1], : up.shape[2]] = up[: shape[0], : shape[1], : shape[2]]
    return out


def build_volume(ct: CTVolume, model: MaterialModel, pixel_at_iso_mm: float, *, bin: tuple[int, int, int] | None = None,
                 rules: LabelRules = LabelRules(), keep_outside_body: bool = False,
                 contrast: str = "remove") -> MaterialVolume:
    """HU (+ labels) -> binned partial-density volume with body and lung masks (module docstring)."""
    if contrast not in CONTRAST_MODES:
        raise ValueError(f"contrast must be one of {CONTRAST_MODES}, got {contrast!r}")
    b = bin if bin is not None else auto_bin(ct.spacing, pixel_at_iso_mm)
    if any(f < 1 for f in b) or any(s // f < 2 for s, f in zip(ct.hu.shape, b)):
        raise ValueError(f"bin factors {b} do not fit the CT shape {ct.hu.shape}")
    step = b[0] * max(1, 32 // b[0])
    n0 = (ct.hu.shape[0] // b[0]) * b[0]
    affine = ct.affine.copy()
    affine[:3, :3] = ct.affine[:3, :3] * np.array(b, float)
    # The binned voxel's centre is the mean of its members' centres.
    affine[:3, 3] = ct.affine[:3, :3] @ ((np.array(b, float) - 1.0) / 2.0) + ct.affine[:3, 3]
    # HU on the binned grid decide what is body, bone and enhanced blood; partial densities are computed per CT
    # voxel and then binned, so partial-volume voxels keep exact mass.
    hu_b = np.concatenate([_block_mean(ct.hu[i:i + step], b) for i in range(0, n0, step)])
    body = body_mask(hu_b, affine)
    labelled = ct.labels is not None
    hu_blood = hu_bone = None
    contrast_info: dict = {"mode": contrast}
    if labelled and rules.blood:
        blood_hu = ct.hu[_lookup(ct.labels, rules.blood)] if ct.labels is not None else np.zeros(0)
        median = float(np.median(blood_hu)) if blood_hu.size else None
        contrast_info.update({"method": "labels " + str(sorted(rules.blood)), "median_hu": median,
                              "detected": median is not None and median >= 100.0})
    else:
        hu_blood, record = enhanced_blood(hu_b, body, affine)
        contrast_info.update(record)
    contrast_info["action"] = ("set to blood, 40 HU" if contrast == "remove" and contrast_info.get("detected")
                               else "none")
    if not (labelled and rules.bone):
        hu_bone = bone_mask(hu_b, body, affine, exclude=hu_blood)
    chunks, lungs = [], []
    blood_zone = None
    if hu_blood is not None and contrast_info.get("detected"):
        from scipy import ndimage

        blood_zone = ndimage.binary_dilation(hu_blood, iterations=2)
    bone_zone = None
    if ct.labels is not None and rules.bone:
        from scipy import ndimage

        bone_zone = ndimage.binary_dilation(_lookup(ct.labels, rules.bone), iterations=2)
    for start in range(0, n0, step):
        hu = ct.hu[start:start + step].copy()
        lab = ct.labels[start:start + step] if ct.labels is not None else None
        sl = slice(start // b[0], (start + step) // b[0])
        if bone_zone is not None:
            outside = ~bone_zone[start:start + step]
            hu[outside] = np.minimum(hu[outside], NON_BONE_CAP_HU)
        iodine = None
        if blood_zone is not None and hu_blood is not None:
            # The binned mask, and around it each CT voxel of the enhanced range (bins that blood shares with
            # bone, against the spine, are decided voxel by voxel)
            zone = _upsample(blood_zone[sl], b, hu.shape) & (hu >= ENHANCED_HU[0]) & (hu <= ENHANCED_HU[1])
            iodine = _upsample(hu_blood[sl], b, hu.shape) | zone
        if contrast == "remove":
            if lab is not None and rules.blood:
                hu[_lookup(lab, rules.blood)] = BLOOD_HU
            elif iodine is not None:
                hu[iodine] = BLOOD_HU
        rho = model.partial_densities(hu)  # (n, n1, n2, 3)
        if lab is not None and rules.soft:
            soft = _lookup(lab, rules.soft)
            rho[soft, 1] += rho[soft, 2]  # density above soft tissue stays, as soft tissue
            rho[soft, 2] = 0.0
        if hu_bone is not None:
            soft = ~_upsample(hu_bone[sl], b, hu.shape)
            if iodine is not None:
                soft |= iodine  # kept (contrast "keep"), iodinated blood is dense soft tissue, never bone
            rho[soft, 1] += rho[soft, 2]
            rho[soft, 2] = 0.0
        chunks.append(_block_mean(rho, b))
        if lab is not None and rules.lung:
            lungs.append(_block_mean(_lookup(lab, rules.lung).astype(np.float32), b) > 0.5)
    data = np.concatenate(chunks)
    lung = np.concatenate(lungs) if lungs else (body & (hu_b < LUNG_HU))
    removed_ml = float(np.sum((hu_b > BODY_HU) & ~body)) * float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    if not keep_outside_body:
        data[~body] = 0.0  # table, blankets and air are not part of the patient
        # Crop to the body's box (+1 voxel): rays then skip the empty margin of the CT's field of view.
        idx = np.argwhere(body)
        lo, hi = np.maximum(idx.min(0) - 1, 0), np.minimum(idx.max(0) + 2, body.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        data, body, lung = data[box], body[box], lung[box]
        affine[:3, 3] = affine[:3, :3] @ lo.astype(float) + affine[:3, 3]
    ax = axial_axis(ct.affine)
    if ax != 2:  # the projector walks detector columns row by row: make the long axis the contiguous one
        perm = [a for a in range(3) if a != ax] + [ax]
        data = np.ascontiguousarray(data.transpose(perm + [3]))
        body, lung = body.transpose(perm), lung.transpose(perm)
        affine[:3, :3] = affine[:3, perm]
    info = {
        "bin": list(b), "shape": list(data.shape[:3]), "spacing_mm": np.round(np.linalg.norm(affine[:3, :3], axis=0), 4).tolist(),
        "outside_body": ("kept" if keep_outside_body
                         else "removed (dexrt.synth.tissue.body_mask: couch, blankets, devices)"),
        "outside_body_tissue_ml": round(removed_ml, 1),
        "lung_mask": "labels " + str(sorted(rules.lung)) if lungs else f"HU < {LUNG_HU} inside the body",
        "label_rules": rules.describe() if ct.labels is not None else None,
        "bone": ("labels " + str(sorted(rules.bone)) if hu_bone is None
                 else f"HU: regions >= {BONE_MIN_HU:.0f} HU reaching {BONE_EVIDENCE_HU:.0f} HU "
                      "(dexrt.synth.tissue.bone_mask)"),
        "contrast": contrast_info,
        "channels": list(BASIS),
    }
    return MaterialVolume(np.ascontiguousarray(data, np.float32), affine, body, lung, b, info)
