"""The material volume the projector traces: partial densities of (adipose, soft, bone) per voxel, binned to
about the detector's resolution at the isocentre, with body and lung masks.

Label maps refine the HU model: labels listed as `blood` (contrast-filled heart and vessels) are set to blood
(40 HU), labels listed as `soft` never hold bone (their HU excess above soft tissue is kept as soft-tissue
density), and `lung` labels give the lung mask that lesions are placed in. When `bone` labels are given, bone
exists only within them (grown by 2 voxels); elsewhere HU is capped at `BLOOD_HU` + 60, which removes
unlabelled iodinated contrast (e.g. the bolus in an arm vein) that the HU model would call bone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dexrt import _core
from dexrt._errors import InputError
from dexrt.synth.ct import CTVolume
from dexrt.synth.materials import BASIS, MaterialModel

BLOOD_HU = 40.0
BODY_HU = -400.0  # above: tissue; the body is the largest connected component of it, holes filled
LUNG_HU = -400.0  # below, inside the body: air spaces (lungs, airways)


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


def _body_mask(hu: np.ndarray, axial_axis: int, spacing: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    # An opening of about 3 mm cuts thin links to the table and blankets, and keeps the chest wall.
    iterations = max(1, int(round(3.0 / float(np.min(spacing)))))
    tissue = ndimage.binary_opening(hu > BODY_HU, iterations=iterations)
    labels, n = ndimage.label(tissue)
    if n == 0:
        raise InputError("the CT holds no tissue above -400 HU: nothing to image")
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    body = labels == (1 + int(np.argmax(sizes)))
    # Fill the lungs and airways slice by slice (in 3-D they connect to the outside through the trachea).
    body = np.moveaxis(body, axial_axis, 0)
    body = np.stack([ndimage.binary_fill_holes(s) for s in body])
    body = np.moveaxis(body, 0, axial_axis)
    return ndimage.binary_dilation(body, iterations=1)  # keep the skin's partial-volume voxels


def build_volume(ct: CTVolume, model: MaterialModel, pixel_at_iso_mm: float, *, bin: tuple[int, int, int] | None = None,
                 rules: LabelRules = LabelRules(), keep_outside_body: bool = False) -> MaterialVolume:
    """HU (+ labels) -> binned partial-density volume with body and lung masks."""
    b = bin if bin is not None else auto_bin(ct.spacing, pixel_at_iso_mm)
    if any(f < 1 for f in b) or any(s // f < 2 for s, f in zip(ct.hu.shape, b)):
        raise ValueError(f"bin factors {b} do not fit the CT shape {ct.hu.shape}")
    chunks, lungs, hus = [], [], []
    bone_zone = None
    if ct.labels is not None and rules.bone:
        from scipy import ndimage

        bone_zone = ndimage.binary_dilation(_lookup(ct.labels, rules.bone), iterations=2)
    step = b[0] * max(1, 32 // b[0])
    for start in range(0, (ct.hu.shape[0] // b[0]) * b[0], step):
        hu = ct.hu[start:start + step].copy()
        lab = ct.labels[start:start + step] if ct.labels is not None else None
        if bone_zone is not None:
            outside = ~bone_zone[start:start + step]
            hu[outside] = np.minimum(hu[outside], NON_BONE_CAP_HU)
        if lab is not None and rules.blood:
            hu[_lookup(lab, rules.blood)] = BLOOD_HU
        rho = model.partial_densities(hu)  # (n, n1, n2, 3)
        if lab is not None and rules.soft:
            soft = _lookup(lab, rules.soft)
            rho[soft, 1] += rho[soft, 2]  # density above soft tissue stays, as soft tissue
            rho[soft, 2] = 0.0
        chunks.append(_block_mean(rho, b))
        hus.append(_block_mean(hu, b))
        if lab is not None and rules.lung:
            lungs.append(_block_mean(_lookup(lab, rules.lung).astype(np.float32), b) > 0.5)
    data = np.concatenate(chunks)
    hu_b = np.concatenate(hus)
    affine = ct.affine.copy()
    affine[:3, :3] = ct.affine[:3, :3] * np.array(b, float)
    # The binned voxel's centre is the mean of its members' centres.
    affine[:3, 3] = ct.affine[:3, :3] @ ((np.array(b, float) - 1.0) / 2.0) + ct.affine[:3, 3]
    axial_axis = int(np.argmax(np.abs(ct.affine[2, :3]) / ct.spacing))  # the index axis closest to superior
    body = _body_mask(hu_b, axial_axis, np.linalg.norm(affine[:3, :3], axis=0))
    if not keep_outside_body:
        data[~body] = 0.0  # table, blankets and air are not part of the patient
    lung = np.concatenate(lungs) if lungs else (body & (hu_b < LUNG_HU))
    info = {
        "bin": list(b), "shape": list(data.shape[:3]), "spacing_mm": np.round(np.linalg.norm(affine[:3, :3], axis=0), 4).tolist(),
        "outside_body": "kept" if keep_outside_body else "removed (largest tissue component, holes filled)",
        "lung_mask": "labels " + str(sorted(rules.lung)) if lungs else f"HU < {LUNG_HU} inside the body",
        "label_rules": rules.describe() if ct.labels is not None else None,
        "channels": list(BASIS),
    }
    return MaterialVolume(np.ascontiguousarray(data, np.float32), affine, body, lung, b, info)
