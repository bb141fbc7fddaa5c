"""Anatomy variation from one CT (docs/synth.md, "Anatomy variation"): synthetic patients made by a global
affine deformation (body size, width/depth/height proportions, shear) about the body centre, a smooth elastic
displacement field, and a bone-density factor.

The affine part changes only the voxel-to-world matrix of the material volume (no resampling: a larger patient is
more tissue, at the same densities). The elastic part resamples the volume (trilinear) through a displacement
field interpolated (natural cubic spline, separably) from random control-point displacements. Bone density
scales the bone channel; line integrals are linear in it, so it is applied to the traced bone line integral,
exactly. Each anatomy is drawn from its own seed and shared by a group of consecutive views (building an elastic
one costs about 3 s on the example CT at 256 x 256, 13 s at 512 x 512; a view costs a fraction of that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dexrt.synth.lesions import Lesion
from dexrt.synth.volume import MaterialVolume

Range = tuple[float, float]


@dataclass(frozen=True)
class AnatomyConfig:
    scale: Range | None = (0.9, 1.1)  # overall linear body size
    proportions: float = 0.05  # independent extra scaling of width, depth and height, uniform in 1 +- this
    shear: float = 0.03  # off-diagonal terms of the deformation, uniform in +- this
    bone_density: Range | None = (0.85, 1.15)
    elastic_mm: float = 5.0  # sd of the control-point displacements; 0: no elastic deformation
    elastic_grid_mm: float = 60.0
    views_per_anatomy: int = 16

    def validate(self) -> None:
        if self.scale is not None and not (0.5 <= self.scale[0] <= self.scale[1] <= 2.0):
            raise ValueError(f"anatomy scale range must satisfy 0.5 <= low <= high <= 2, got {self.scale}")
        if self.bone_density is not None and not (0.1 <= self.bone_density[0] <= self.bone_density[1] <= 3.0):
            raise ValueError(f"bone density range must satisfy 0.1 <= low <= high <= 3, got {self.bone_density}")
        if not (0.0 <= self.proportions <= 0.3 and 0.0 <= self.shear <= 0.2):
            raise ValueError("anatomy proportions must be in [0, 0.3] and shear in [0, 0.2]")
        if not (0.0 <= self.elastic_mm <= 30.0 and 10.0 <= self.elastic_grid_mm <= 500.0):
            raise ValueError(f"elastic displacement must be 0..30 mm on a 10..500 mm grid, got "
                             f"{self.elastic_mm} mm on {self.elastic_grid_mm} mm")
        if not 1 <= self.views_per_anatomy <= 100_000:
            raise ValueError(f"views per anatomy must be >= 1, got {self.views_per_anatomy}")


@dataclass(frozen=True)
class Anatomy:
    """One synthetic patient: recorded per view in the manifest as `anatomy`."""

    id: int
    seed: int
    matrix: tuple[tuple[float, ...], ...]  # (3, 3) world deformation about `centre_mm`
    centre_mm: tuple[float, float, float]
    bone_density: float
    elastic_mm: float
    elastic_grid_mm: float

    def record(self) -> dict:
        return {"id": self.id, "seed": self.seed, "matrix": [list(r) for r in self.matrix],
                "centre_mm": list(self.centre_mm), "bone_density": self.bone_density,
                "elastic_mm": self.elastic_mm, "elastic_grid_mm": self.elastic_grid_mm}

    def move_lesion(self, les: Lesion) -> Lesion:
        """The lesion carried through the affine part, exactly (an ellipsoid stays an ellipsoid); the elastic
        part (a few mm) is not applied to lesions."""
        m = np.array(self.matrix)
        c = np.array(self.centre_mm)
        u, s, _ = np.linalg.svd(m @ les.rotation @ np.diag(les.axes_mm))
        return Lesion(c + m @ (les.centre_mm - c), s, u, les.delta)


def draw_anatomy(cfg: AnatomyConfig, anatomy_id: int, seed: int, centre_mm: np.ndarray) -> Anatomy:
    rng = np.random.default_rng([seed, anatomy_id, 0xA7])
    size = float(rng.uniform(*cfg.scale)) if cfg.scale is not None else 1.0
    m = np.diag(size * (1.0 + rng.uniform(-cfg.proportions, cfg.proportions, 3)))
    off = rng.uniform(-cfg.shear, cfg.shear, (3, 3))
    np.fill_diagonal(off, 0.0)
    m = m @ (np.eye(3) + off)
    bone = float(rng.uniform(*cfg.bone_density)) if cfg.bone_density is not None else 1.0
    return Anatomy(anatomy_id, int(seed), tuple(tuple(round(float(v), 6) for v in row) for row in m),
                   (round(float(centre_mm[0]), 4), round(float(centre_mm[1]), 4), round(float(centre_mm[2]), 4)),
                   round(bone, 6), float(cfg.elastic_mm), float(cfg.elastic_grid_mm))


def deform(volume: MaterialVolume, anatomy: Anatomy) -> MaterialVolume:
    """The anatomy's material volume (bone density excepted: the renderer scales the bone line integral)."""
    m = np.array(anatomy.matrix)
    c = np.array(anatomy.centre_mm)
    affine = volume.affine.copy()
    affine[:3, :3] = m @ volume.affine[:3, :3]
    affine[:3, 3] = c + m @ (volume.affine[:3, 3] - c)
    data = volume.data
    if anatomy.elastic_mm > 0:
        data = _elastic(data, volume.spacing, anatomy)
    info = {**volume.info, "anatomy": anatomy.id}
    return MaterialVolume(data, affine, volume.body, volume.lung, volume.bin, info)


def _upsample_matrix(n: int, c: int) -> np.ndarray:
    """(n, c): cubic-spline interpolation from c control points spanning the axis to its n voxels."""
    from scipy.interpolate import CubicSpline

    return CubicSpline(np.linspace(0.0, n - 1.0, c), np.eye(c), bc_type="natural")(np.arange(n, dtype=float))


def _elastic(data: np.ndarray, spacing: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng([anatomy.seed, anatomy.id, 0xE1])
    shape = data.shape[:3]
    ctrl = [max(int(np.ceil(n * s / anatomy.elastic_grid_mm)) + 1, 2) for n, s in zip(shape, spacing)]
    # The dense field is separable in the control grid: one small matrix per axis instead of a 3-D zoom (which
    # costs seconds on a chest volume).
    w = [_upsample_matrix(n, c) for n, c in zip(shape, ctrl)]
    coords = np.indices(shape, dtype=np.float32)
    for axis in range(3):
        d = rng.normal(0.0, anatomy.elastic_mm / spacing[axis], ctrl)  # voxels
        field = np.einsum("ia,abc->ibc", w[0], d)
        field = np.einsum("jb,ibc->ijc", w[1], field)
        coords[axis] += np.einsum("kc,ijc->ijk", w[2], field).astype(np.float32)
    out = np.empty_like(data)
    for ch in range(data.shape[3]):
        out[..., ch] = ndimage.map_coordinates(data[..., ch], coords, order=1, mode="constant", cval=0.0)
    return np.ascontiguousarray(np.maximum(out, 0.0), np.float32)
