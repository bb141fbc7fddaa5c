"""Geometry: the size a radiograph runs at, at the model's training pixel spacing.

The generator learned anatomy at one pixel spacing (mm per pixel); a detector with finer pixels shows the same
anatomy over more pixels. When both spacings are known, the engine's full-resolution call
(`dexrt.Engine.infer(frame, spacing_mm=...)`, docs/runtime.md) brings each image to the training spacing for the
network and its outputs back to the input's size, so outputs always match their input pixel for pixel. The
resampling itself, the tolerance and the limit live in the runtime (cpp/include/dexrt/fullres.h); this module
gives Python the working size the runtime will use, for planning and for the provenance of each file.
"""

from __future__ import annotations

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
