"""Geometry: resampling radiographs to the model's training pixel spacing and back.

The generator learned anatomy at one pixel spacing (mm per pixel); a detector with finer pixels shows the same
anatomy over more pixels. When both spacings are known, each image is resampled to the training spacing before
inference and the outputs are resampled back to the input's size, so outputs always match their input pixel for
pixel. Resampling is separable and pixel-centre aligned, linear with a support widened by the scale factor when
shrinking (so it averages the area under each output pixel instead of aliasing); it runs in float32 in Pillow's
C resampler (no extra dependency).
"""

from __future__ import annotations

import math

import numpy as np

from dexrt._errors import InputError

# Below this relative change the resampling is skipped: a 1% scale change is within the spread of the
# training data, and an exact identity keeps pixel values bit-for-bit.
TOLERANCE = 0.01
# The largest side an image may have after resampling to the model's spacing (docs/infer.md). A 43 cm detector at
# the default model's 1.477 mm is 291 pixels; 4096 leaves room for fine-spacing models while keeping one U-Net
# pass within a few GB (a 9.9 mm PixelSpacing on a 1024-pixel image asked for 6912 pixels and std::bad_alloc).
MAX_WORKING_SIDE = 4096


def working_size(shape: tuple[int, int], spacing_mm: tuple[float, float] | None,
                 model_mm: float | None) -> tuple[int, int] | None:
    """The (H, W) at the model's spacing for an image of `shape` at `spacing_mm` (row, col), or None when no
    resampling is needed or possible."""
    if spacing_mm is None or model_mm is None:
        return None
    h, w = shape
    # Computed in floats first: a hostile spacing must give a clear error, never an OverflowError from round().
    scaled = (h * spacing_mm[0] / model_mm, w * spacing_mm[1] / model_mm)
    if not all(math.isfinite(v) and v <= MAX_WORKING_SIDE for v in scaled):
        raise InputError(
            f"resampling {h}x{w} pixels of {spacing_mm[0]:g}x{spacing_mm[1]:g} mm to the model's {model_mm:g} mm "
            f"would make {scaled[0]:.0f}x{scaled[1]:.0f} pixels, more than the {MAX_WORKING_SIDE} per side dexrt "
            "allows; check the pixel spacing, or convert with --no-resample")
    target = (max(1, round(scaled[0])), max(1, round(scaled[1])))
    if abs(target[0] / h - 1) <= TOLERANCE and abs(target[1] / w - 1) <= TOLERANCE:
        return None
    return target


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
