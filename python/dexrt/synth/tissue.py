"""What is patient, what is bone and what is contrast-enhanced blood, from HU alone (no label map needed).

All three work on the binned HU grid the material volume is built on (`dexrt.synth.volume`), in millimetres, so
they behave the same for any voxel size; operations "per slice" act in the axial plane only (slices can be
thick). A label map, when given, wins over them (volume.py).

* `body_mask`: the patient only. Tissue above -400 HU, holes filled slice by slice (lungs, airways), an opening
  of 5 mm radius in each slice (cuts sheets thinner than 10 mm: couch shells, blankets, cables, ECG leads), the
  largest 3-D component (drops the couch, mattress and devices that do not touch the patient); then a
  **couch band**: a run of rows at the anterior or posterior end of the mask, at most 60 mm thick, whose left and
  right edges stay put (sd <= 1.5 mm) through every slice, is a flat, extruded object the patient lies on
  (a thick tabletop or a gel pad in contact), and is removed. Bodies change width from slice to slice; tables do
  not.
* `enhanced_blood`: iodinated blood. Candidates are 150-700 HU inside the body. Blood is homogeneous (a local sd
  of 10-30 HU in a 3 x 3 in-plane window) where trabecular bone is textured (60-130 HU: measured on the example
  CT's TotalSegmentator labels; a smooth reconstruction kernel makes bone look as smooth, so this alone does not
  decide); seeds are candidates with local sd < 40 HU opened by 3 mm. A seed region is blood when its own median
  sd is <= 30 HU and what surrounds it (a 3 mm shell beyond its partial-volume rim) is not bone-like: a median
  below 110 HU (130 HU for a region at least 45 mm long, which no single vertebral body is), at least 60 HU
  below the region's, and under 35 % of it above 400 HU (fat, lung, myocardium and vessel walls around blood, and
  the spine where the aorta lies against it; intervertebral discs, cortex and more bone around a vertebral core,
  whose shells measure 116-162 HU and whose regions are at most 28 mm long on the example and pyradiomics CTs).
  Nor is the region walled by cortex: blood's partial-volume rim (candidates within 4 voxels) falls from the
  region's value towards what surrounds it, where a vertebral core's rim is its cortex, brighter than the marrow
  inside. Under 10 % of the rim may be more than 100 HU above the region's median (blood on the example and
  TotalSegmentator CTAs: at most 0.07; smooth vertebral cores of the platipy CT: 0.12-0.25). This is what
  decides for a smooth reconstruction kernel, where marrow is as homogeneous as blood and a thin cortex blurs
  below 400 HU at 2 mm.
  Blood regions are grown by up to 3 voxels through candidates with local sd < 80 HU, and by one more voxel
  through any candidate (the partial-volume rim).
  Enhancement is **detected** when one such region holds at least 30 ml (a heart chamber, the aorta: 43-268 ml on
  the example and TotalSegmentator CTAs; a single vertebral core is at most about 26 ml, which matters on grids of
  3-4 mm, where a cortex blurs into its surroundings and one core in eight passed the rim test): only then is
  anything replaced, so a non-contrast CT is left alone.
* `bone_mask`: where bone may be. Connected regions of at least 120 HU (enhanced blood excluded) that reach
  500 HU somewhere (cortex), grown by one voxel for partial volume. Outside it the HU model's bone part counts
  as soft tissue: enhanced organs and vessels, whatever their HU, never reach the bone target.

  When enhancement is detected, the blood found spreads through every candidate connected to it that is more
  than 4 mm from anything at cortex level (500 HU, outside the blood) and outside the cortex-walled regions
  (rims included): contrast mixing in the right heart and in veins is heterogeneous, but it is not bone, and a
  vertebra's cortex is a wall it does not cross. Undiluted contrast above 700 HU (a bolus in the superior vena
  cava or an arm vein) is taken for blood too where it touches the blood found, holds at least 5 ml and is solid (it fills its
  vein; cortex is a shell around marrow below 700 HU).

What HU alone cannot tell apart is left as it is and documented (docs/synth.md): a dense bolus that does not
touch the blood found, or that touches bone (a vein along the clavicle), stays bone unless a label map says
otherwise; in an arterial-phase CT, enhanced tissue that is not blood (myocardium, organs at 120-200 HU) joins the
bone mask where it touches bone, and so does blood the detector did not find (the heart of
`totalsegmentator-cta`); where blood and bone share a voxel of the binned grid, CT voxels of the enhanced range
within two binned voxels of the blood are taken for blood (a few hundredths of a g/cm^2 of bone at the contact).
"""

from __future__ import annotations

import numpy as np

from dexrt._errors import InputError

BODY_HU = -400.0  # above: tissue
OPEN_MM = 5.0  # per-slice opening radius of the body mask
BAND_MAX_MM = 60.0  # a couch band is at most this thick
BAND_EDGE_SD_MM = 1.5  # ... and its edges move less than this from slice to slice
ENHANCED_HU = (150.0, 700.0)  # iodinated blood outside bone
SEED_SD_HU, GROW_SD_HU, BLOOD_SD_HU = 40.0, 80.0, 30.0
SHELL_HU, SHELL_CONTRAST_HU, SHELL_BONE_HU, SHELL_BONE_FRACTION = 110.0, 60.0, 400.0, 0.35
VESSEL_MM, SHELL_VESSEL_HU = 45.0, 130.0  # a region this long is a vessel or a heart, never one vertebral body
RIM_CORTEX_HU, RIM_CORTEX_FRACTION = 100.0, 0.10  # a rim brighter than the core by this much is a cortex
MIN_REGION_ML, DETECT_ML = 1.0, 30.0
BONE_MIN_HU, BONE_EVIDENCE_HU = 120.0, 500.0
DENSE_MIN_ML, DENSE_SOLIDITY = 5.0, 0.8
BARRIER_HU, BARRIER_MM = 500.0, 4.0  # enhancement spreads through candidates no closer than this to cortex


def _axes(affine: np.ndarray) -> tuple[int, int, int, np.ndarray]:
    """(axial, anterior-posterior, left-right) index axes and the spacing, of a voxel -> world affine."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = np.abs(affine[:3, :3]) / spacing
    ax = int(np.argmax(direction[2]))
    plane = [a for a in range(3) if a != ax]
    ap = plane[int(np.argmax(direction[1, plane]))]
    lr = plane[0] if plane[1] == ap else plane[1]
    return ax, ap, lr, spacing


def _plane_cross(ax: int) -> np.ndarray:
    s = np.zeros((3, 3, 3), bool)
    idx = [slice(None)] * 3
    idx[ax] = 1  # type: ignore[call-overload]
    s[tuple(idx)] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    return s


def _disc(radius_mm: float, spacing: np.ndarray, ax: int) -> np.ndarray:
    """An in-plane disc of `radius_mm` (at least a 3 x 3 cross), size 1 along the axial axis."""
    half = [0 if a == ax else max(1, int(radius_mm / spacing[a])) for a in range(3)]
    grid = np.meshgrid(*[np.arange(-h, h + 1) * spacing[a] for a, h in enumerate(half)], indexing="ij")
    return sum(g**2 for g in grid) <= max(radius_mm, float(np.max(spacing[[a for a in range(3) if a != ax]]))) ** 2


def _largest(mask: np.ndarray) -> np.ndarray | None:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def body_mask(hu: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The patient (bool, like `hu`): couch, mattress, blankets and devices removed (module docstring)."""
    from scipy import ndimage

    ax, _, _, spacing = _axes(affine)
    cross = _plane_cross(ax)
    filled = ndimage.binary_fill_holes(hu > BODY_HU, structure=cross)  # lungs and airways, slice by slice
    opened = ndimage.binary_opening(filled, structure=_disc(OPEN_MM, spacing, ax))
    body = _largest(opened)
    if body is None:
        raise InputError("the CT holds no tissue above -400 HU thicker than 10 mm: nothing to image")
    band = couch_band(body, affine)
    if band is not None:
        body = _largest(body & ~band)
        if body is None:
            raise InputError("the CT holds nothing but a couch")
    body = ndimage.binary_fill_holes(body, structure=cross)
    return ndimage.binary_dilation(body, structure=cross)  # keep the skin's partial-volume voxels


def couch_band(mask: np.ndarray, affine: np.ndarray) -> np.ndarray | None:
    """The rows of a flat, extruded object under (or over) the patient, or None (module docstring)."""
    ax, ap, lr, spacing = _axes(affine)
    m = np.transpose(mask, (lr, ap, ax))  # (left-right, anterior-posterior, slices)
    n_lr, n_ap, n_z = m.shape
    if n_z < 8 or n_z * spacing[ax] < 40.0:
        return None  # too short a scan to tell a table from a body
    present: np.ndarray = np.any(m, axis=0)  # (ap, z)
    left = np.argmax(m, axis=0) * spacing[lr]
    right = (n_lr - 1 - np.argmax(m[::-1], axis=0)) * spacing[lr]
    tol = max(BAND_EDGE_SD_MM, float(spacing[lr]))
    rows = np.flatnonzero(present.any(axis=1))

    def extruded(r: int) -> bool:
        z = present[r]
        return bool(z.mean() >= 0.9 and np.std(left[r, z]) <= tol and np.std(right[r, z]) <= tol)

    band: list[int] = []
    for r, step in ((int(rows[0]), 1), (int(rows[-1]), -1)):
        run = []
        while 0 <= r < n_ap and present[r].any() and extruded(r):
            run.append(r)
            r += step
        # A band stops at the patient: rows that are still there but change from slice to slice.
        if run and len(run) * spacing[ap] <= BAND_MAX_MM and 0 <= r < n_ap and present[r].any():
            band += run
    if not band:
        return None
    out = np.zeros_like(m)
    out[:, band, :] = True
    return np.transpose(out, np.argsort((lr, ap, ax)))


def local_sd(hu: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Standard deviation of HU in a 3 x 3 in-plane window (float32)."""
    from scipy import ndimage

    ax = _axes(affine)[0]
    size = [1 if a == ax else 3 for a in range(3)]
    h = hu.astype(np.float32)
    mean = ndimage.uniform_filter(h, size)
    return np.sqrt(np.maximum(ndimage.uniform_filter(h * h, size) - mean * mean, 0.0))


def enhanced_blood(hu: np.ndarray, body: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, dict]:
    """(mask of contrast-enhanced blood, record): empty unless enhancement is detected (module docstring)."""
    from scipy import ndimage

    ax, _, _, spacing = _axes(affine)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sd = local_sd(hu, affine)
    cand = body & (hu >= ENHANCED_HU[0]) & (hu <= ENHANCED_HU[1])
    seeds = ndimage.binary_opening(cand & (sd < SEED_SD_HU), structure=_disc(3.0, spacing, ax))
    labels, _ = ndimage.label(seeds)
    grow_within = cand & (sd < GROW_SD_HU)
    shell_disc = _disc(3.0, spacing, ax)
    blood = np.zeros(hu.shape, bool)
    marrow = np.zeros(hu.shape, bool)  # regions walled by cortex, rims included: never blood
    regions = []
    for i, box in enumerate(ndimage.find_objects(labels), 1):
        if box is None:
            continue
        seed = labels[box] == i
        if seed.sum() * voxel_ml < MIN_REGION_ML:
            continue
        pad = tuple(slice(max(s.start - 6, 0), s.stop + 6) for s in box)
        seed = labels[pad] == i
        # What surrounds the region: beyond its partial-volume rim (candidates reached in 4 steps)
        reach = ndimage.binary_dilation(seed, iterations=4, mask=cand[pad]) | seed
        shell = hu[pad][ndimage.binary_dilation(reach, structure=shell_disc) & ~reach]
        # What is replaced: the homogeneous region grown by 3 steps, and its rim (1 step through candidates)
        grown = ndimage.binary_dilation(seed, iterations=3, mask=grow_within[pad]) | seed
        grown |= ndimage.binary_dilation(grown, mask=cand[pad])
        sd_med = float(np.median(sd[pad][seed]))
        rim = hu[pad][reach & ~seed]
        rim_cortex = float(np.mean(rim > float(np.median(hu[pad][seed])) + RIM_CORTEX_HU)) if rim.size else 0.0
        shell_med = float(np.median(shell)) if shell.size else 0.0
        shell_bone = float(np.mean(shell >= SHELL_BONE_HU)) if shell.size else 0.0
        median = float(np.median(hu[pad][grown]))
        along = [a for a in range(3) if a != ax]
        z_mm = float(np.ptp(np.flatnonzero(seed.any(axis=tuple(along)))) + 1) * float(spacing[ax])
        # A vessel runs on (z_mm), so its shell may hold more (against the spine, the mediastinum's muscle)
        bone_like = shell_med >= (SHELL_HU if z_mm < VESSEL_MM else SHELL_VESSEL_HU)
        is_blood = (sd_med <= BLOOD_SD_HU and not bone_like and median - shell_med >= SHELL_CONTRAST_HU
                    and shell_bone < SHELL_BONE_FRACTION and rim_cortex < RIM_CORTEX_FRACTION)
        ml = float(grown.sum()) * voxel_ml
        regions.append({"ml": round(ml, 2), "z_mm": round(z_mm, 1), "median_hu": round(median, 1),
                        "sd_hu": round(sd_med, 1), "shell_median_hu": round(shell_med, 1),
                        "shell_bone_fraction": round(shell_bone, 3), "rim_cortex_fraction": round(rim_cortex, 3),
                        "blood": is_blood})
        if is_blood:
            blood[pad] |= grown
        elif rim_cortex >= RIM_CORTEX_FRACTION:
            marrow[pad] |= grown
    blood &= ~marrow  # where a blood region's rim reached into a walled one
    largest = max((r["ml"] for r in regions if r["blood"]), default=0.0)
    detected = largest >= DETECT_ML
    dense_ml = 0.0
    if detected:
        # Heterogeneous enhancement (contrast mixing in the right heart, veins): every candidate connected to the
        # blood found, kept 4 mm away from anything at cortex level (a barrier that blood never crosses into bone;
        # a dense bolus is part of the barrier too, so nothing spreads from it) and out of the cortex-walled
        # regions (marrow whose cortex a smooth kernel blurs below the barrier's level)
        cortex = (hu >= BARRIER_HU) & ~blood
        dense = _dense_contrast(hu, body, blood, affine)
        dense_ml = float(dense.sum()) * voxel_ml
        far = ndimage.distance_transform_edt(~cortex, sampling=spacing) > BARRIER_MM
        blood = ndimage.binary_propagation(blood, mask=blood | (cand & far & ~marrow)) | dense
    else:
        blood[:] = False
    regions.sort(key=lambda r: -r["ml"])
    record = {"method": "HU", "detected": detected, "enhanced_ml": round(float(blood.sum()) * voxel_ml, 1),
              "dense_ml": round(dense_ml, 1),
              "median_hu": round(float(np.median(hu[blood])), 1) if blood.any() else None,
              "largest_blood_region_ml": round(largest, 1), "regions": regions[:8]}
    return blood, record


def _dense_contrast(hu: np.ndarray, body: np.ndarray, blood: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undiluted contrast above the enhanced range (a bolus in the superior vena cava or an arm vein): solid
    regions above 700 HU that touch the blood found, at least 5 ml (more than a fragment of cortex). Cortex is a
    shell around marrow below 700 HU (filled slice by slice, it more than doubles); a bolus fills its vein
    (solidity >= 0.8)."""
    from scipy import ndimage

    ax, _, _, spacing = _axes(affine)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    dense = body & (hu > ENHANCED_HU[1])
    labels, _ = ndimage.label(dense, structure=np.ones((3, 3, 3), bool))
    near = ndimage.binary_dilation(blood, iterations=2)
    out = np.zeros(hu.shape, bool)
    for i in np.unique(labels[near & dense]):
        if i == 0:
            continue
        box = ndimage.find_objects((labels == i).astype(np.int8))[0]
        region = labels[box] == i
        if region.sum() * voxel_ml < DENSE_MIN_ML:
            continue
        filled = ndimage.binary_fill_holes(region, structure=_plane_cross(ax))
        if region.sum() >= DENSE_SOLIDITY * filled.sum():
            out[box] |= region
    return out


def bone_mask(hu: np.ndarray, body: np.ndarray, affine: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Where bone may be (module docstring); `exclude` (enhanced blood) never is."""
    from scipy import ndimage

    cand = body & (hu >= BONE_MIN_HU)
    if exclude is not None:
        cand &= ~exclude
    labels, n = ndimage.label(cand, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return cand
    peak = ndimage.maximum(hu, labels, index=np.arange(1, n + 1))
    keep = np.zeros(n + 1, bool)
    keep[1:] = np.asarray(peak) >= BONE_EVIDENCE_HU
    bone = ndimage.binary_dilation(keep[labels]) & body
    if exclude is not None:
        bone &= ~exclude
    return bone
