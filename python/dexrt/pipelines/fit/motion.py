"""What changes between the planning CT and a treatment fraction, for `dexrt fit`: the patient's setup (a rigid
shift and rotation about the isocentre) and breathing (lungs and diaphragm moving along the body axis).

Setup is applied exactly, by changing the material volume's voxel-to-world matrix (no resampling): a point x of the
planned patient is imaged at R (x - iso) + aim + t, with R the rotation, t the translation and aim the point the
imager looks at (the isocentre the view belongs to is moved onto it, so one renderer serves several isocentres).

Breathing is a smooth displacement field d(x) = phase * amplitude / 2 * w(x) * (inferior + 0.25 anterior) with
phase in [-1, 1] (0: the CT's own state, +1: inspiration), applied by trilinear resampling of the volume. The weight
w is 0 at the lung apex, rises linearly to 1 at each column's lung base (the diaphragm), stays 1 across it and
decays below (over `DECAY_MM`, the upper abdomen that the diaphragm pushes), inside the thoracic cross-section (the
lungs' footprint, closed and filled), smoothed over `SMOOTH_MM`, and 0 in bone and outside the body: ribs and spine
stay, the lungs and what lies under the diaphragm slide past them. It is the simplest field with the two motions a
kV image shows (diaphragm and lung structures moving cranio-caudally, the largest at the base), not a
biomechanical model; the amplitude is the diaphragm's peak-to-peak excursion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dexrt.synth.materials import BASIS
from dexrt.synth.volume import MaterialVolume

DECAY_MM = 60.0
SMOOTH_MM = 6.0
CLOSING_MM = 30.0
STATIC_BONE_G_CM3 = 0.15  # voxels with more cortical bone than this do not move
ANTERIOR_SHARE = 0.25
MIN_LUNG_SHARE = 0.1


@dataclass(frozen=True)
class PatientState:
    """One fraction's patient: the isocentre imaged, the breathing phase and the setup error. Recorded per view
    (as `anatomy` in the dataset manifest)."""

    id: int
    isocentre_mm: tuple[float, float, float]  # RAS, of the planned patient
    breathing: float  # phase in [-1, 1]
    shift_mm: tuple[float, float, float]  # setup translation, RAS
    rotation_deg: tuple[float, float, float]  # setup rotation about the RAS x, y, z axes through the isocentre
    kind: str = "train"  # train, val or test
    bone_density: float = 1.0  # the renderer scales the bone line integral by this

    def record(self) -> dict:
        return {"fit_state": self.id, "kind": self.kind, "isocentre_ras_mm": list(self.isocentre_mm),
                "breathing_phase": self.breathing, "setup_shift_mm": list(self.shift_mm),
                "setup_rotation_deg": list(self.rotation_deg)}

    def move_lesion(self, lesion: object) -> object:
        raise NotImplementedError("dexrt fit renders the patient's own anatomy: no synthetic lesions")

    def rotation(self) -> np.ndarray:
        from scipy.spatial.transform import Rotation

        return Rotation.from_euler("xyz", self.rotation_deg, degrees=True).as_matrix()


def rigid(volume: MaterialVolume, state: PatientState, aim_mm: np.ndarray) -> MaterialVolume:
    """The volume moved by the state's setup error, its isocentre brought onto `aim_mm` (the renderer's)."""
    r = state.rotation()
    iso = np.asarray(state.isocentre_mm, float)
    affine = volume.affine.copy()
    affine[:3, :3] = r @ volume.affine[:3, :3]
    affine[:3, 3] = r @ volume.affine[:3, 3] + np.asarray(aim_mm, float) + np.asarray(state.shift_mm) - r @ iso
    return MaterialVolume(volume.data, affine, volume.body, volume.lung, volume.bin, dict(volume.info))


class Breathing:
    """The breathing field of one material volume (built once), and the volume at any phase."""

    def __init__(self, volume: MaterialVolume, amplitude_mm: float) -> None:
        self.volume = volume
        self.amplitude_mm = float(amplitude_mm)
        self.weight, self.box = _weight(volume)
        m = volume.affine[:3, :3]
        # world direction of the displacement per unit weight at phase +1 (inferior and a little anterior)
        direction = np.array([0.0, ANTERIOR_SHARE, -1.0]) * (self.amplitude_mm / 2.0)
        self.step_index = np.linalg.solve(m, direction)  # the same in voxel indices
        self.moving = self.box is not None and self.amplitude_mm > 0

    def describe(self) -> dict:
        return {"amplitude_mm": self.amplitude_mm, "model": "cranio-caudal sliding of lungs and diaphragm, "
                "0 at the apex to 1 at the lung base, decaying over 60 mm below it; bone and chest wall static",
                "moving_voxels": int((self.weight > 0.01).sum()) if self.weight is not None else 0}

    def at(self, phase: float) -> MaterialVolume:
        if not self.moving or phase == 0.0:
            return self.volume
        from scipy import ndimage

        assert self.box is not None and self.weight is not None
        box = self.box
        w = self.weight[box]
        coords = np.indices(w.shape, dtype=np.float32)
        for axis in range(3):  # backward mapping: a voxel takes what lay at x - d(x)
            coords[axis] += np.float32(box[axis].start) - np.float32(phase * self.step_index[axis]) * w
        data = self.volume.data.copy()
        for ch in range(data.shape[3]):
            data[box + (ch,)] = ndimage.map_coordinates(self.volume.data[..., ch], coords, order=1, mode="nearest")
        info = {**self.volume.info, "breathing_phase": phase}
        return MaterialVolume(np.ascontiguousarray(data), self.volume.affine, self.volume.body, self.volume.lung,
                              self.volume.bin, info)


def lung_mask(volume: MaterialVolume) -> np.ndarray | None:
    """The lungs of the volume's lung mask: its large connected parts away from the skin. Without a label map the
    mask is all air inside the body (HU < -400), which also holds the air of the skin's partial-volume rim, bowel
    gas and the airways' smaller pockets; the lungs are the components of at least `MIN_LUNG_SHARE` of the largest."""
    from scipy import ndimage

    inner = volume.lung & ndimage.binary_erosion(volume.body, iterations=2)
    labels, n = ndimage.label(inner)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    keep = np.zeros(n + 1, bool)
    keep[1:] = sizes >= MIN_LUNG_SHARE * sizes.max()
    return keep[labels]


def _weight(volume: MaterialVolume) -> tuple[np.ndarray | None, tuple[slice, slice, slice] | None]:
    """The (n0, n1, n2) weight field and the box that holds its non-zero part (None, None without lungs)."""
    from scipy import ndimage

    lung = lung_mask(volume)
    if lung is None:
        return None, None
    spacing = volume.spacing
    # axis 2 runs along the body (build_volume makes it so); +k is superior when the affine says so
    superior = 1 if volume.affine[2, 2] >= 0 else -1
    n2 = lung.shape[2]
    ks = np.nonzero(lung.any(axis=(0, 1)))[0]
    apex = ks.max() if superior > 0 else ks.min()
    # per column, the lung's inferior end (the diaphragm under it); columns without lung take the lowest one
    has = lung.any(axis=2)
    k = np.arange(n2)
    if superior > 0:
        base = np.where(has, np.argmax(lung, axis=2), ks.min())
    else:
        base = np.where(has, n2 - 1 - np.argmax(lung[:, :, ::-1], axis=2), ks.max())
    radius = max(1, int(round(CLOSING_MM / float(min(spacing[0], spacing[1])))))
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk = (xx * xx + yy * yy) <= radius * radius
    footprint = ndimage.binary_fill_holes(ndimage.binary_closing(has, structure=disk, iterations=1,
                                                                 border_value=0))
    # distance from the apex towards the base, as a fraction of the column's lung height; beyond the base, decay
    height = np.maximum(np.abs(base - apex), 1).astype(np.float32)
    along = (apex - k[None, None, :]) * superior  # voxels inferior of the apex
    frac = along / height[:, :, None]
    below_mm = (frac - 1.0) * height[:, :, None] * spacing[2]
    w = np.where(frac <= 1.0, np.clip(frac, 0.0, 1.0), np.exp(-np.maximum(below_mm, 0.0) / DECAY_MM))
    w = (w * footprint[:, :, None]).astype(np.float32)
    w[volume.data[..., BASIS.index("bone")] > STATIC_BONE_G_CM3] = 0.0
    w = ndimage.gaussian_filter(w, sigma=[SMOOTH_MM / s for s in spacing], mode="constant")
    w[~volume.body] = 0.0
    w[volume.data[..., BASIS.index("bone")] > STATIC_BONE_G_CM3] = 0.0
    nz = np.argwhere(w > 1e-3)
    if nz.size == 0:
        return None, None
    lo, hi = nz.min(0), nz.max(0) + 1
    box = (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2])))
    return w, box
