"""Reading and writing single-channel radiographs: 16-bit PNG and TIFF.

Readers return (H, W) arrays: uint16 for integer images (8-bit grayscale is widened exactly, v * 257, so
0..255 spans 0..65535), float32 for floating-point TIFF. Colour, multi-page and other layouts are refused with
an `InputError` naming the file and the reason. Writers are atomic and keep provenance in the file's own
metadata (a PNG iTXt chunk / the TIFF ImageDescription), as JSON.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._atomic import atomic_write
from dexrt._errors import InputError

PNG_SUFFIXES = (".png",)
TIFF_SUFFIXES = (".tif", ".tiff")
SUFFIXES = PNG_SUFFIXES + TIFF_SUFFIXES
METADATA_KEY = "dexrt"


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one grayscale radiograph as (H, W) uint16 or float32."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PNG_SUFFIXES:
        image = _read_png(path)
    elif suffix in TIFF_SUFFIXES:
        image = _read_tiff(path)
    else:
        raise InputError(f"{path}: not a supported image type (use PNG or TIFF)")
    if image.ndim != 2 or image.size == 0:
        raise InputError(f"{path}: expected one grayscale image, got an array of shape {image.shape}")
    return image


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.format != "PNG":
                    raise InputError(f"{path}: the file is {img.format or 'not an image'}, not PNG")
                mode = img.mode
                img.load()
                array = np.array(img)
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{path}: not a readable PNG image ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InputError(f"{path}: corrupt or truncated PNG ({exc})") from exc
    if mode in ("I;16", "I;16B", "I;16L"):
        return array.astype(np.uint16, copy=False)
    if mode == "I":
        if array.min() < 0 or array.max() > 65535:
            raise InputError(f"{path}: 32-bit integer PNG values outside 0..65535")
        return array.astype(np.uint16)
    if mode == "L":
        return array.astype(np.uint16) * np.uint16(257)
    raise InputError(f"{path}: PNG mode {mode} is not a grayscale radiograph (need 16-bit or 8-bit grayscale)")


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.series) != 1 or len(tif.series[0].shape) > 3:
                raise InputError(f"{path}: TIFF with {len(tif.series)} image series; expected one grayscale image")
            series = tif.series[0]
            if series.get_shape(squeeze=True) and len(series.get_shape(squeeze=True)) != 2:
                raise InputError(
                    f"{path}: TIFF image of shape {series.shape} ({series.axes}); expected one grayscale plane "
                    "(colour and multi-page TIFF are not supported)"
                )
            array = series.asarray()
    except InputError:
        raise
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as exc:
        raise InputError(f"{path}: corrupt or truncated TIFF ({exc})") from exc
    array = np.squeeze(array)
    if array.dtype == np.uint16:
        return array
    if array.dtype == np.uint8:
        return array.astype(np.uint16) * np.uint16(257)
    if array.dtype in (np.float32, np.float64, np.float16):
        return array.astype(np.float32, copy=False)
    raise InputError(f"{path}: TIFF sample type {array.dtype} is not supported (uint8, uint16 or float)")


def write_image(path: str | os.PathLike[str], image: np.ndarray, metadata: dict[str, Any] | None = None) -> None:
    """Write (H, W) uint16 as PNG or TIFF, or float32 as TIFF; atomically, with JSON provenance."""
    path = Path(path)
    suffix = path.suffix.lower()
    if image.ndim != 2:
        raise ValueError(f"write_image takes (H, W), got {image.shape}")
    text = json.dumps(metadata, sort_keys=True) if metadata else None
    if suffix in PNG_SUFFIXES:
        if image.dtype != np.uint16:
            raise ValueError(f"{path}: PNG output must be uint16, got {image.dtype} (use TIFF for float32)")
        from PIL import Image, PngImagePlugin

        info = PngImagePlugin.PngInfo()
        if text:
            info.add_itxt(METADATA_KEY, text)
        with atomic_write(path) as f:
            Image.fromarray(np.ascontiguousarray(image)).save(f, format="PNG", pnginfo=info)
    elif suffix in TIFF_SUFFIXES:
        import tifffile

        if image.dtype not in (np.uint16, np.float32):
            raise ValueError(f"{path}: TIFF output must be uint16 or float32, got {image.dtype}")
        with atomic_write(path) as f:
            tifffile.imwrite(f, image, photometric="minisblack", description=text, metadata=None)
    else:
        raise ValueError(f"{path}: unsupported output type (use .png, .tif or .tiff)")


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON provenance dexrt wrote into an image, or None."""
    path = Path(path)
    if path.suffix.lower() in PNG_SUFFIXES:
        from PIL import Image

        with Image.open(path) as img:
            text = img.text.get(METADATA_KEY) if hasattr(img, "text") else None
    else:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            text = tif.pages.first.description or None
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None
