"""Reading and writing single-channel radiographs: 16-bit PNG, TIFF and (through `dexrt.io.dicom`) DICOM.

Readers return (H, W) arrays: uint16 for integer images (8-bit grayscale is widened exactly, v * 257, so
0..255 spans 0..65535), float32 for floating-point TIFF. Colour, multi-page and other layouts are refused with
an `InputError` naming the file and the reason. Writers are atomic and keep provenance in the file's own
metadata (a PNG iTXt chunk / the TIFF ImageDescription), as JSON.

`read_radiograph` reads any supported file, DICOM included, as (F, H, W) frames in the engine's convention
(bright = attenuating) with its pixel spacing when the file records one.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._atomic import atomic_write
from dexrt.io.png import encode_png16
from dexrt._errors import InputError
from dexrt._limits import check_image_size
from dexrt.io.dicom import DICOM_SUFFIXES, DicomSource, is_dicom_file, read_dicom
from dexrt.io.dicom import written_by_dexrt as dicom_written_by_dexrt

PNG_SUFFIXES = (".png",)
TIFF_SUFFIXES = (".tif", ".tiff")
SUFFIXES = PNG_SUFFIXES + TIFF_SUFFIXES  # what read_image reads
METADATA_KEY = "dexrt"


def image_kind(path: Path) -> str | None:
    """``"png"``, ``"tiff"`` or ``"dicom"`` from the suffix; a file with another or no suffix is DICOM if it has
    the DICOM preamble (clinical archives often store DICOM without a suffix); otherwise None."""
    suffix = path.suffix.lower()
    if suffix in PNG_SUFFIXES:
        return "png"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in DICOM_SUFFIXES or is_dicom_file(path):
        return "dicom"
    return None


@dataclass
class Radiograph:
    """A decoded input file, ready for the engine."""

    path: Path
    kind: str  # "png", "tiff" or "dicom"
    frames: np.ndarray  # (F, H, W) uint16 or float32, bright = attenuating
    spacing_mm: tuple[float, float] | None = None  # (row, col) at the patient, when the header gives a usable one
    dicom: DicomSource | None = None  # the header to mirror in DICOM outputs


def read_radiograph(path: str | os.PathLike[str]) -> Radiograph:
    """Read a PNG, TIFF or DICOM radiograph. PNG and TIFF carry no trusted pixel spacing (their resolution tags
    are display settings more often than not): their spacing comes from the user or an estimate
    (dexrt.inputs.spacing)."""
    path = Path(path)
    kind = image_kind(path)
    if kind == "dicom":
        frames, spacing, source = read_dicom(path)
        return Radiograph(path, kind, frames, spacing, source)
    if kind is None:
        raise InputError(f"{path}: not a supported image type (use DICOM, PNG or TIFF)")
    return Radiograph(path, kind, read_image(path)[np.newaxis])


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


def _png_header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR chunk, which the format puts first; None if the file is not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc})") from exc
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return height, width


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    size = _png_header_size(path)
    if size is not None:
        check_image_size(path, *size)
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
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{path}: image too large for the PNG decoder ({exc})") from exc
    except UnidentifiedImageError as exc:
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
            shape = series.get_shape(squeeze=True)
            if shape and len(shape) != 2:
                raise InputError(
                    f"{path}: TIFF image of shape {series.shape} ({series.axes}); expected one grayscale plane "
                    "(colour and multi-page TIFF are not supported)"
                )
            check_image_size(path, *(shape or (1, 1)))  # from the tags, nothing decoded yet; () is a 1x1 image
            array = series.asarray().reshape(shape or (1, 1))  # squeezed, but a 1x1 image stays 2-D
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile file drives tifffile's parser into any error (TypeError, struct.error, ...)
        raise InputError(f"{path}: corrupt or truncated TIFF ({type(exc).__name__}: {exc})") from exc
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
        data = encode_png16(image, {METADATA_KEY: text} if text else None)
        with atomic_write(path) as f:
            f.write(data)
    elif suffix in TIFF_SUFFIXES:
        import tifffile

        if image.dtype not in (np.uint16, np.float32):
            raise ValueError(f"{path}: TIFF output must be uint16 or float32, got {image.dtype}")
        with atomic_write(path) as f:
            tifffile.imwrite(f, image, photometric="minisblack", description=text, metadata=None)
    else:
        raise ValueError(f"{path}: unsupported output type (use .png, .tif or .tiff)")


def written_by_dexrt(path: str | os.PathLike[str]) -> bool:
    """True for a file dexrt wrote (an output of `dexrt infer`): its provenance names dexrt. Reads headers only."""
    path = Path(path)
    kind = image_kind(path)
    if kind == "dicom":
        return dicom_written_by_dexrt(path)
    if kind is None:
        return False
    try:
        if kind == "png":  # dexrt writes its iTXt chunk before the pixels: Image.open reads it without decoding
            from PIL import Image

            with Image.open(path) as img:
                text = img.info.get(METADATA_KEY)
        else:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                text = tif.pages.first.description
        software = json.loads(text).get("software", "") if text else ""
    except Exception:  # noqa: BLE001 - an unreadable or foreign file is not one of dexrt's outputs
        return False
    return isinstance(software, str) and software.startswith("dexrt ")


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


def write_preview(path: str | os.PathLike[str], panels: list[np.ndarray], metadata: dict[str, Any] | None = None,
                  max_height: int = 512) -> None:
    """An 8-bit PNG of (H, W) images side by side (SE | bone | soft), each windowed to its own 0.5-99.5
    percentiles, at most `max_height` pixels high; for looking at, not for measuring."""
    from PIL import Image, PngImagePlugin

    h, w = panels[0].shape
    scale = min(1.0, max_height / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    gap = 4
    sheet = np.zeros((size[1], len(panels) * (size[0] + gap) - gap), np.uint8)
    for i, panel in enumerate(panels):
        lo, hi = np.percentile(panel, (0.5, 99.5))
        view = np.clip((panel.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255)
        small = Image.fromarray(view.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
        x = i * (size[0] + gap)
        sheet[:, x:x + size[0]] = np.clip(np.rint(np.asarray(small)), 0, 255).astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    if metadata:
        info.add_itxt(METADATA_KEY, json.dumps(metadata, sort_keys=True))
    with atomic_write(path) as f:
        Image.fromarray(sheet).save(f, format="PNG", pnginfo=info)
