"""Size limits on images, checked from a file's header before any pixel is decoded.

A few megabytes of zlib-tiled TIFF or deflated DICOM can declare 40000x40000 pixels: decoding first and
checking after would allocate gigabytes for a file that is refused anyway. Readers therefore call
`check_image_size` with the dimensions their header declares, before decoding; the engine checks arrays again.
"""

from __future__ import annotations

import os

from dexrt._errors import InputError

MAX_SIDE = 16384  # pixels per side: the engine's limit (docs/runtime.md)
MAX_PIXELS = 1 << 28  # in one file, all frames together: 512 MiB of uint16 (16384 x 16384, or 64 frames of 2048^2)


def check_image_size(path: str | os.PathLike[str], height: int, width: int, frames: int = 1) -> None:
    """InputError naming `path`, the declared size and the limit, when the declared image is too large to convert
    (or has no pixels)."""
    if height < 1 or width < 1 or frames < 1:
        raise InputError(f"{path}: the header declares an empty image ({frames} frame(s) of {height}x{width})")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise InputError(f"{path}: image too large: {height}x{width} pixels, more than the {MAX_SIDE} per side "
                         "dexrt converts")
    if frames * height * width > MAX_PIXELS:
        raise InputError(f"{path}: image too large: {frames} frames of {height}x{width} pixels, more than the "
                         f"{MAX_PIXELS} pixels per file dexrt converts")
