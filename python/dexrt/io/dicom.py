"""DICOM radiographs in and out: stored pixel values <-> the engine's uint16, derived instances with provenance.

Value mapping (see docs/infer.md): the representable range of the stored values (``BitsStored``,
``PixelRepresentation``) maps linearly onto 0..65535, so 16-bit unsigned data is taken as is and 8-bit data
is widened exactly (v * 257, like 8-bit PNG). MONOCHROME1 images (and a negative Rescale Slope) are inverted
so that the engine always sees bright = attenuating, like the single-energy images it was trained on. The
Modality LUT is linear, so apart from its sign it changes nothing after this normalisation. Outputs go back
through the inverse mapping: same photometric interpretation, bit depth and signedness as the input.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._atomic import atomic_write
from dexrt._errors import InputError, require_package
from dexrt._limits import check_image_size
from dexrt.io.deflated import DEFLATED, read_deflated

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
# Projection radiographs; a CT or MR slice is not what the generator was trained on.
MODALITIES = ("CR", "DX", "RF", "XA", "MG", "PX", "IO", "OT")
_INSTALL_CODECS = "pip install 'dexrt[dicom]'"
MAX_SEQUENCE_DEPTH = 16  # radiograph headers nest 3 or 4 levels; 100 levels broke copying the header
# PS3.5 9.1: a UID is numeric components separated by dots, at most 64 characters (stored padded with one NUL to
# an even length). A component with a leading zero breaks the rule's letter, is seen from real devices and harms
# nothing; letters, slashes, spaces or empty components never reach a file name, a log line or a destination.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_UID_LENGTH = 64


def _pydicom() -> Any:
    # pydicom is a dependency of dexrt, but an environment can lose it
    return require_package("pydicom", "reading DICOM", f"install it with: pip install pydicom (and for compressed "
                           f"files {_INSTALL_CODECS})")


def check_uid(value: Any, what: str = "UID") -> str:
    """`value` as a UID (trailing NUL or space padding removed); InputError naming `what` unless it is digits and
    dots (PS3.5 9.1), at most 64 characters. Every UID read from outside goes through here before it is used."""
    uid = str(value).rstrip("\0 ")
    if len(uid) > MAX_UID_LENGTH or not _UID.fullmatch(uid):
        raise InputError(f"{what} {uid[:80]!r} is not a valid UID (digits and dots, at most {MAX_UID_LENGTH} "
                         "characters)")
    return uid


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file: the 128-byte preamble followed by ``DICM``."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def written_by_dexrt(path: Path) -> bool:
    """True for a DICOM file dexrt wrote (its SoftwareVersions names dexrt and it is DERIVED); header only."""
    try:
        pydicom = _pydicom()
        if _syntax(pydicom, path) == DEFLATED:  # dexrt never writes a deflated file; and never inflate to find out
            return False
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SoftwareVersions", "ImageType"])
        software, image_type = str(ds.get("SoftwareVersions", "")), list(ds.get("ImageType", []) or [])
    except Exception:  # noqa: BLE001 - any unreadable header is simply not one of dexrt's outputs
        return False
    return software.startswith("dexrt ") and image_type[:1] == ["DERIVED"]


@dataclass
class DicomSource:
    """What is needed to write outputs mirroring one input: its header (no pixel data) and value mapping."""

    dataset: Any  # pydicom FileDataset without PixelData
    bits_stored: int
    signed: bool
    invert: bool  # MONOCHROME1 xor a negative rescale slope
    transfer_syntax: Any  # pydicom UID

    @property
    def low(self) -> int:
        return -(1 << (self.bits_stored - 1)) if self.signed else 0

    @property
    def span(self) -> int:
        return (1 << self.bits_stored) - 1

    def to_engine(self, stored: np.ndarray) -> np.ndarray:
        """(F, H, W) stored values -> (F, H, W) uint16, bright = attenuating."""
        if self.bits_stored == 16 and not self.signed:
            values = stored.astype(np.uint16, copy=False)
        else:
            clipped = np.clip(stored.astype(np.float64), self.low, self.low + self.span)
            values = np.rint((clipped - self.low) * (65535 / self.span)).astype(np.uint16)
        return np.subtract(np.uint16(65535), values) if self.invert else values

    def from_engine(self, values: np.ndarray) -> np.ndarray:
        """(F, H, W) uint16 engine output -> stored values in the input's convention and dtype."""
        if self.invert:
            values = np.subtract(np.uint16(65535), values)
        if self.bits_stored == 16 and not self.signed:
            return values.astype(np.uint16, copy=False)
        stored = np.rint(values.astype(np.float64) * (self.span / 65535)) + self.low
        dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}
        return stored.astype(dtype[(int(self.dataset.BitsAllocated), self.signed)])


def read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, DicomSource]:
    """Read a DICOM radiograph: (F, H, W) uint16 in the engine's convention, pixel spacing (row, col) in mm or
    None, and the header needed to write outputs. Colour, wrong rank and unsupported encodings are refused.

    pydicom parses elements lazily, so a damaged file can fail at any attribute access: every parser error
    on the way is reported as an InputError naming the file."""
    pydicom = _pydicom()
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        return _read_dicom(pydicom, path)
    except InputError:  # a valid file dexrt does not support, already named for what it is (a ValueError too)
        raise
    except InvalidDicomError as exc:
        raise InputError(f"{path}: not a DICOM file ({exc})") from exc
    except (BytesLengthException, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            OverflowError, struct.error, NotImplementedError) as exc:  # NotImplementedError: an unknown VR
        raise InputError(f"{path}: corrupt or truncated DICOM ({type(exc).__name__}: {exc})") from exc


def _syntax(pydicom: Any, path: Path) -> str:
    """The transfer syntax in the file meta ('' if none), read without touching the data set."""
    return str(pydicom.filereader.read_file_meta_info(path).get("TransferSyntaxUID", ""))


def _read_dicom(pydicom: Any, path: Path) -> tuple[np.ndarray, tuple[float, float] | None, DicomSource]:
    # pydicom inflates a deflated data set whole before anything can be checked: dexrt.io.deflated bounds it.
    ds = read_deflated(path) if _syntax(pydicom, path) == DEFLATED else pydicom.dcmread(path)
    _check_header(path, ds)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise InputError(f"{path}: DICOM file without a Transfer Syntax UID")
    _check_decoder(path, syntax)
    try:
        stored = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:  # a codec that gave up on this file
        raise InputError(f"{path}: cannot decode pixel data in {syntax.name} ({exc})") from exc
    except BaseException as exc:
        # Codecs written in Rust (pylibjpeg-rle) panic on some damaged streams; pyo3 raises the panic as
        # PanicException, a BaseException, which would end a whole folder run instead of failing this file.
        if type(exc).__name__ != "PanicException":
            raise
        raise InputError(f"{path}: cannot decode pixel data in {syntax.name} (decoder panic: {exc})") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1 and stored.ndim == 2:
        stored = stored[np.newaxis]
    if stored.ndim != 3 or stored.shape[0] != frames:
        raise InputError(f"{path}: pixel data of shape {stored.shape} is not {frames} grayscale frame(s)")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    source = DicomSource(
        dataset=ds,
        bits_stored=int(ds.BitsStored),
        signed=int(ds.PixelRepresentation) == 1,
        invert=(ds.PhotometricInterpretation == "MONOCHROME1") != (slope < 0),
        transfer_syntax=syntax,
    )
    images = source.to_engine(stored)
    spacing = _spacing(ds)
    del ds.PixelData  # the header is kept for the outputs; the pixels are not needed twice
    return images, spacing, source


def _check_header(path: Path, ds: Any) -> None:
    if "PixelData" not in ds:
        what = ("float pixel data" if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds)
                else "no pixel data (or a file truncated before its end)")
        raise InputError(f"{path}: DICOM with {what}; expected an integer grayscale radiograph")
    modality = str(ds.get("Modality", "")).upper()
    if modality and modality not in MODALITIES:
        raise InputError(f"{path}: modality {modality} is not a projection radiograph "
                         f"(accepted: {', '.join(MODALITIES)})")
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"{path}: {photometric or 'unknown'} images with {samples} samples per pixel are not "
                         "supported; expected a grayscale (MONOCHROME1/MONOCHROME2) radiograph")
    allocated, bits = int(ds.get("BitsAllocated", 0)), int(ds.get("BitsStored", 0))
    if allocated not in (8, 16) or not 1 <= bits <= allocated:
        raise InputError(f"{path}: {bits} bits stored in {allocated} allocated are not supported "
                         "(8 to 16 bits per pixel)")
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        raise InputError(f"{path}: DICOM without SOP Instance/Class UID; outputs could not reference it")
    if "ModalityLUTSequence" in ds:
        raise InputError(f"{path}: a non-linear Modality LUT (ModalityLUTSequence) is not supported")
    # The header's claims, checked before any pixel is decoded or the network runs (docs/infer.md).
    check_image_size(path, int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0),
                     int(ds.get("NumberOfFrames", 1) or 1))
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        value = ds.get(keyword)
        try:
            number = default if value is None or value == "" else float(value)
        except (TypeError, ValueError):
            raise InputError(f"{path}: {keyword} {str(value)!r} is not a number") from None
        if not math.isfinite(number) or (keyword == "RescaleSlope" and number == 0):
            raise InputError(f"{path}: {keyword} {number!r} is not a usable "
                             + ("(finite, non-zero) slope" if keyword == "RescaleSlope" else "finite intercept"))
    _check_elements(path, ds)


def _check_elements(path: Path, ds: Any) -> None:
    """Walk the header once, iteratively (copying or writing a deeply nested header recurses once per level in
    pydicom and Python's copy): sequences nested at most MAX_SEQUENCE_DEPTH deep, and every UID, in the file meta
    and at any depth, valid (the outputs copy the study's and series' UIDs, a node names files by them). Private
    elements are not checked: the outputs drop them."""
    stack = [(ds.file_meta, 0), (ds, 0)] if getattr(ds, "file_meta", None) is not None else [(ds, 0)]
    while stack:
        dataset, depth = stack.pop()
        if depth > MAX_SEQUENCE_DEPTH:
            raise InputError(f"{path}: sequences nested more than {MAX_SEQUENCE_DEPTH} deep; no radiograph header "
                             "needs that (a hostile or broken file)")
        for element in dataset:
            if element.VR == "SQ":
                stack.extend((item, depth + 1) for item in element.value)
            elif element.VR == "UI" and not element.tag.is_private and not element.is_empty:
                values = element.value if element.VM > 1 else [element.value]
                for value in values:
                    check_uid(value, f"{path}: {element.keyword or element.tag}")


def _check_decoder(path: Path, syntax: Any) -> None:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise InputError(f"{path}: transfer syntax {syntax.name} ({syntax}) is not supported") from None
    if not decoder.is_available:
        raise InputError(f"{path}: decoding {syntax.name} needs a codec that is not installed: {_INSTALL_CODECS}")


def _spacing(ds: Any) -> tuple[float, float] | None:
    """Pixel spacing (row, col) in mm at the patient when the header gives a usable one (dexrt.inputs.spacing has the
    rules); None otherwise, and the converter resolves or estimates it."""
    from dexrt.inputs.spacing import header_spacing

    found = header_spacing(ds).spacing
    return found.mm if found is not None else None


_LOSSY = (
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",  # JPEG baseline, extended
    "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91",  # JPEG-LS near-lossless, JPEG 2000 (lossy allowed)
    "1.2.840.10008.1.2.4.203",  # HTJ2K (lossy allowed)
)


# Lossless syntaxes an output can mirror when an encoder is installed; lossy inputs are written uncompressed
# (re-encoding lossily would compound the loss).
def _output_syntax(source: DicomSource) -> Any:
    from pydicom import uid
    from pydicom.pixels import get_encoder

    mirrored = (uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless)
    if source.transfer_syntax in mirrored and get_encoder(source.transfer_syntax).is_available:
        return source.transfer_syntax
    if source.transfer_syntax in (uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian):
        return source.transfer_syntax
    return uid.ExplicitVRLittleEndian


def write_dicom(path: Path, source: DicomSource, images: np.ndarray, channel: str, index: int,
                provenance: dict[str, Any]) -> None:
    """Write (F, H, W) uint16 engine output as a new DICOM instance derived from `source`.

    New SOP Instance UID, one new series per output channel (same patient and study), ImageType
    DERIVED\\SECONDARY, DerivationDescription naming dexrt, the model and its hash. UIDs are derived from the
    source UIDs, the channel and the engine, so a rerun (or another worker) gives the same series.
    """
    from pydicom import uid
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    src = source.dataset
    ds = copy.deepcopy(src)
    ds.remove_private_tags()
    for keyword in ("IconImageSequence", "VOILUTSequence", "WindowCenter", "WindowWidth",
                    "WindowCenterWidthExplanation"):
        if keyword in ds:
            delattr(ds, keyword)
    for tag in [t for t in ds.keys() if 0x6000 <= t.group <= 0x60FF and t.group % 2 == 0]:  # overlays
        del ds[tag]
    engine_id = str(provenance["engine"].get("model_hash") or provenance["engine"].get("onnx_sha256"))
    identity = [engine_id, str(provenance["engine"]["precision"]), channel]
    ds.SOPInstanceUID = uid.generate_uid(entropy_srcs=[str(src.SOPInstanceUID), *identity])
    ds.SeriesInstanceUID = uid.generate_uid(entropy_srcs=[str(src.get("SeriesInstanceUID", "")), *identity])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber = int(src.get("SeriesNumber", 0) or 0) + 1000 * (index + 1)
    flag = "" if (provenance.get("domain") or {}).get("in_domain", True) else " [out of domain]"
    base = f"{src.get('SeriesDescription', '') or src.get('Modality', '')}"[:64 - len(f" dexrt {channel}{flag}")]
    ds.SeriesDescription = f"{base} dexrt {channel}{flag}".strip()
    ds.ImageType = ["DERIVED", "SECONDARY", channel.upper()]
    ds.DerivationDescription = _derivation(provenance)[:1024]
    comments = _comments(provenance)
    if comments:
        ds.ImageComments = (f"{ds.get('ImageComments', '')} | " if ds.get("ImageComments") else "") + comments
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    ds.SourceImageSequence = Sequence([ref])
    now = _dt.datetime.now()
    ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SoftwareVersions = provenance["software"]
    if source.transfer_syntax in _LOSSY:
        ds.LossyImageCompression = "01"  # derived from lossily compressed pixels

    stored = source.from_engine(images)
    _set_window(ds, stored)
    syntax = _output_syntax(source)
    if ds.file_meta.TransferSyntaxUID.is_compressed or not ds.file_meta.TransferSyntaxUID.is_little_endian:
        ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    multiframe = "NumberOfFrames" in src
    pixels = stored if stored.shape[0] > 1 else stored[0]
    ds.set_pixel_data(pixels, str(src.PhotometricInterpretation), source.bits_stored, generate_instance_uid=False)
    if syntax.is_compressed:
        try:
            ds.compress(syntax, pixels, generate_instance_uid=False)
        except (RuntimeError, ValueError) as exc:  # e.g. OpenJPEG refuses images smaller than its tiles
            log.warning("%s: cannot encode as %s (%s); writing it uncompressed", path, syntax.name, exc)
    if multiframe:
        ds.NumberOfFrames = stored.shape[0]  # Type 1 in the multi-frame module even for one frame
    with atomic_write(path) as f:
        ds.save_as(f, enforce_file_format=True)


def _set_window(ds: Any, stored: np.ndarray) -> None:
    """A VOI window for viewers from the output itself (the source's window was for the SE image)."""
    lo, hi = np.percentile(stored, (0.5, 99.5))
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    ds.WindowCenter = f"{(lo + hi) / 2:.2f}"
    ds.WindowWidth = f"{max(hi - lo, 1.0):.2f}"


def _derivation(provenance: dict[str, Any]) -> str:
    e = provenance["engine"]
    model = e.get("model_hash") or f"onnx sha256:{e.get('onnx_sha256')}"
    text = (f"{provenance['software']} dual-energy {provenance['channel']} image from a single-energy radiograph; "
            f"model {model}; engine {e['file']} ({e['backend']}, {e['precision']})")
    geometry = provenance.get("geometry") or {}
    spacing = geometry.get("input_spacing")
    if spacing:
        text += f"; input pixel spacing {spacing['col_mm']:.4g} mm {'ASSUMED, ' if spacing['estimated'] else ''}" \
                f"from {spacing['detail']}"
    if geometry.get("resampled"):
        text += f"; resampled to {geometry['model_spacing_mm']} mm for inference and back"
    domain = provenance.get("domain") or {}
    if domain and not domain.get("in_domain", True):
        text += "; OUT OF DOMAIN: " + "; ".join(domain.get("reasons", []))
    return text


def _comments(provenance: dict[str, Any]) -> str:
    """ImageComments for a reader who sees only the viewer: what was assumed, what looks wrong (LT, 10240 chars)."""
    parts = []
    domain = provenance.get("domain") or {}
    if domain and not domain.get("in_domain", True):
        parts.append("dexrt: the input does not look like a frontal chest radiograph, the only input the model was "
                     "trained on; this image is unreliable (" + "; ".join(domain.get("reasons", [])) + ")")
    spacing = (provenance.get("geometry") or {}).get("input_spacing") or {}
    if spacing.get("estimated"):
        parts.append(f"dexrt: pixel spacing {spacing['col_mm']:.4g} mm was estimated ({spacing['detail']})")
    return ". ".join(parts)[:10240]
