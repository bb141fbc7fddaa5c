"""Geometry: resampling radiographs to the model's training pixel spacing and back.

The generator learned anatomy at one pixel spacing (mm per pixel); a detector with finer pixels shows the same
anatomy over more pixels. When both spacings are known, each image is resampled to the training spacing before
inference and the outputs are resampled back to the input's size, so outputs always match their input pixel for
pixel. Resampling is separable and pixel-centre aligned, linear with a support widened by the scale factor when
shrinking (so it averages the area under each output pixel instead of aliasing); it runs in float32 in Pillow's
C resampler (no extra dependency).
"""

from __future__ import annotations

import numpy as np

from dexrt import _core

# The resampling tolerance and the largest working side live with the runtime that applies them (fullres.h).
TOLERANCE: float = _core.resample_tolerance  # below this relative change an image runs at its own size
MAX_WORKING_SIDE: int = _core.max_working_side  # the largest side an image may have at the model's spacing


def working_size(shape: tuple[int, int], spacing_mm: tuple[float, float] | None,
                 model_mm: float | None) -> tuple[int, int] | None:
    """The (H, W) at the model's spacing for an image of `shape` at `spacing_mm` (row, col), or None when no
    resampling is needed or possible: the size `dexrt.Engine.infer(..., spacing_mm=...)` runs the network at."""
    if spacing_mm is None or model_mm is None:
        return None
    h, w = shape
    target = tuple(_core.working_size(h, w, (float(spacing_mm[0]), float(spacing_mm[1])), float(model_mm)))
    return None if target == (h, w) else (int(target[0]), int(target[1]))


def resample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) -> `size` (H', W') float32."""
    from PIL import Image

    h, w = size
    src = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))  # mode "F"
    return np.asarray(src.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def to_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 back to the input's dtype: uint16 rounded half to even and clipped, like the engine's outputs."""
    if dtype == np.uint16:
        return np.clip(np.rint(image), 0, 65535).astype(np.uint16)
    return image.astype(dtype, copy=False)
