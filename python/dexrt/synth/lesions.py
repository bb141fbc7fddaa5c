"""Lung lesions: soft-tissue ellipsoids (5-30 mm) placed inside the lungs, projected analytically.

A lesion replaces the lung tissue it occupies. Its contribution to each ray is exact for the ellipsoid:
chord length x (lesion partial densities - mean partial densities of the lung it displaces), added to the
traced line integrals. The projected mask is every pixel whose ray crosses the lesion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dexrt.synth.materials import MaterialModel
from dexrt.synth.volume import MaterialVolume

LESION_HU = 40.0  # solid soft-tissue nodule


@dataclass(frozen=True)
class Lesion:
    centre_mm: np.ndarray  # (3,) world
    axes_mm: np.ndarray  # (3,) semi-axes
    rotation: np.ndarray  # (3, 3) columns: the semi-axes' directions in world
    delta: np.ndarray  # (3,) partial densities added (lesion minus displaced lung), g/cm^3

    def describe(self) -> dict:
        return {"centre_mm": np.round(self.centre_mm, 2).tolist(), "semi_axes_mm": np.round(self.axes_mm, 2).tolist(),
                "diameter_mm": round(float(2.0 * np.cbrt(np.prod(self.axes_mm))), 2)}


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


class LesionSampler:
    """Draws lesions whose whole ellipsoid lies inside the lung mask."""

    def __init__(self, volume: MaterialVolume, model: MaterialModel, diameter_mm: tuple[float, float] = (5.0, 30.0)):
        from scipy import ndimage

        lo, hi = diameter_mm
        if not (0 < lo <= hi <= 100):
            raise ValueError(f"lesion diameters must satisfy 0 < min <= max <= 100 mm, got {diameter_mm}")
        self.volume = volume
        self.diameter_mm = (float(lo), float(hi))
        self.lesion_rho = model.partial_densities(np.array([LESION_HU]))[0].astype(np.float64)
        # Distance (mm) from each lung voxel to the nearest non-lung voxel.
        depth = ndimage.distance_transform_edt(volume.lung, sampling=volume.spacing)
        self._cand = np.argwhere(depth > self.diameter_mm[0] / 2.0 + 1.0)  # (K, 3) voxels deep enough for any
        self._depth = depth[tuple(self._cand.T)]  # (K,)

    def available(self) -> bool:
        return len(self._cand) > 0

    def sample(self, rng: np.random.Generator) -> Lesion:
        d = rng.uniform(*self.diameter_mm)
        ratios = rng.uniform(0.75, 1.0, size=3)
        axes = 0.5 * d * ratios / np.cbrt(np.prod(ratios))  # volume-equivalent diameter d
        needed = float(axes.max()) + 1.0
        if not self.available():
            raise ValueError("no lung region deep enough for a lesion")
        candidates = self._cand[self._depth > needed]
        if len(candidates) == 0:  # the lungs are too thin for this one: shrink to what fits
            needed = float(self._depth.max())
            axes = axes * max(needed - 1.0, 0.5) / float(axes.max())
            candidates = self._cand[self._depth >= needed]
        idx = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, size=3)
        centre = self.volume.world(idx)
        rotation = _random_rotation(rng)
        return Lesion(centre, axes, rotation, self.lesion_rho - self._displaced(idx, float(axes.mean())))

    def _displaced(self, idx: np.ndarray, radius_mm: float) -> np.ndarray:
        """Mean partial densities of the volume inside a sphere around voxel `idx`."""
        sp = self.volume.spacing
        r = np.ceil(radius_mm / sp).astype(int)
        c = np.round(idx).astype(int)
        lo = np.maximum(c - r, 0)
        hi = np.minimum(c + r + 1, self.volume.data.shape[:3])
        block = self.volume.data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
        inside = np.linalg.norm((grid - idx) * sp, axis=-1) <= radius_mm
        if not inside.any():
            return block.reshape(-1, 3).mean(0).astype(np.float64)
        return block[inside].mean(0).astype(np.float64)


def project_lesions(lesions: list[Lesion], frame: dict, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(3, rows, cols) float32 added areal densities (g/cm^2) and a (rows, cols) bool mask, for one view."""
    delta = np.zeros((3, rows, cols), np.float32)
    mask = np.zeros((rows, cols), bool)
    if not lesions:
        return delta, mask
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    pixels = frame["origin"] + c[..., None] * frame["col_step"] + r[..., None] * frame["row_step"]  # (H, W, 3)
    src = frame["source"]
    ray = pixels - src  # alpha in [0, 1] runs from the source to the pixel
    ray_len_cm = np.linalg.norm(ray, axis=-1) / 10.0
    for les in lesions:
        # Into the unit-sphere frame of the ellipsoid: q(alpha) = q0 + alpha * q1.
        q0 = ((src - les.centre_mm) @ les.rotation) / les.axes_mm
        q1 = (ray @ les.rotation) / les.axes_mm
        a = np.einsum("hwk,hwk->hw", q1, q1)
        b = q1 @ q0
        disc = b * b - a * (q0 @ q0 - 1.0)
        hit = disc > 0.0
        chord_cm = np.where(hit, 2.0 * np.sqrt(np.maximum(disc, 0.0)) / a, 0.0) * ray_len_cm
        delta += (les.delta[:, None, None] * chord_cm[None]).astype(np.float32)
        mask |= hit
    return delta, mask
