"""Helpers for the `dexrt infer` tests: an identity engine and DICOM files built with pydicom."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def make_identity_onnx(path: Path) -> Path:
    """A 1x1 convolution generator whose bone output is its input and whose soft output is the negated input,
    so through the default windows bone == SE and soft == 65535 - SE: intensities and orientation can be
    checked exactly through the whole file-to-file path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.array([1.0, -1.0], np.float32).reshape(2, 1, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["out"], kernel_shape=[1, 1])],
        "identity_generator",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(2, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def marked_image(shape: tuple[int, int], high: int, low: int = 0, seed: int = 0) -> np.ndarray:
    """An asymmetric test picture: a gradient, noise, and a bright block in the top-left corner only, so a
    flip or transpose anywhere would show."""
    rng = np.random.default_rng(seed)
    h, w = shape
    base = np.linspace(0.1, 0.6, w)[np.newaxis, :] + np.linspace(0.0, 0.2, h)[:, np.newaxis]
    image = base + rng.random(shape) * 0.15
    image[: h // 4, : w // 5] = 1.0
    return np.rint(low + image / image.max() * (high - low)).astype(np.int64)


def make_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits: int = 16,
               modality: str = "DX", syntax: str | None = None, signed: bool = False,
               spacing: tuple[float, float] | None = None, imager_spacing: tuple[float, float] | None = None,
               series_uid: str | None = None, study_uid: str = "1.2.826.0.1.3680043.8.498.1",
               extra: dict | None = None) -> Path:
    """Write a radiograph DICOM file: (H, W) or (F, H, W) stored values, optionally compressed."""
    from pydicom import uid
    from pydicom.dataset import FileMetaDataset, Dataset

    sop_class = {"CR": uid.ComputedRadiographyImageStorage, "RF": uid.XRayRadiofluoroscopicImageStorage,
                 "CT": uid.CTImageStorage}.get(modality, uid.DigitalXRayImageStorageForPresentation)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid.generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "Test^Patient"
    ds.PatientID = "P0001"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or uid.generate_uid()
    ds.SeriesNumber = 3
    ds.InstanceNumber = 1
    ds.SeriesDescription = "PA chest"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    if spacing:
        ds.PixelSpacing = list(spacing)
    if imager_spacing:
        ds.ImagerPixelSpacing = list(imager_spacing)
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    dtype = (np.int8 if signed else np.uint8) if bits <= 8 else (np.int16 if signed else np.uint16)
    ds.set_pixel_data(pixels.astype(dtype), photometric, bits, generate_instance_uid=False)
    if pixels.ndim == 3 and modality == "RF":
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
    if syntax is not None:
        ds.compress(syntax, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return path


def chest_phantom(shape: tuple[int, int] = (200, 240), body_px: float = 180.0, seed: int = 0) -> np.ndarray:
    """A frontal chest in the engine's convention (bright = attenuating), float 0..1: an elliptic body
    `body_px` wide at its lower lung zones, two air-filled lungs either side of a denser mediastinum and spine,
    ribs, and noise. What dexrt.inputs.chest measures (body width, lung contrast) is known by construction."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    a = body_px / 2
    u = (x - (w - 1) / 2) / a  # -1..1 across the body
    v = (y - 0.5 * h) / (0.47 * h)  # rows 3 %..97 %
    chord = lambda d2: np.sqrt(np.clip(1 - d2, 0, None))  # noqa: E731 - thickness of an ellipse along the beam
    body = chord(u ** 2) * (np.abs(v) < 1)
    lungs = sum(chord(((u - c) / 0.3) ** 2 + ((y - 0.45 * h) / (0.32 * h)) ** 2) for c in (-0.45, 0.45))
    spine = (np.abs(u) < 0.12) * (np.abs(v) < 1) * 0.35
    ribs = 0.04 * (np.sin(y / h * 60) > 0.6) * (lungs > 0)
    image = body - 0.55 * lungs + spine + ribs + rng.normal(0, 0.01, shape) * (body > 0)
    return np.clip(image, 0, None) / max(image.max(), 1e-9)


def to_stored(image: np.ndarray, high: int = 4095, low_fraction: float = 0.05) -> np.ndarray:
    """A 0..1 attenuation picture as stored MONOCHROME2 values (air at `low_fraction` of the range)."""
    return np.rint((low_fraction + (1 - low_fraction) * image) * high).astype(np.int64)


# Files whose headers declare any size over a few bytes of pixel data: decompression bombs when the size is huge.
def png_declaring(path: Path, height: int, width: int) -> Path:
    """A tiny PNG whose IHDR declares height x width 16-bit pixels; its IDAT holds (at most) one row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(min(2 * width + 1, 1 << 16)))) + chunk(b"IEND", b""))
    return path


def tiff_declaring(path: Path, height: int, width: int) -> Path:
    """A tiny zlib-compressed TIFF whose tags declare height x width uint16 in one strip of a few bytes."""
    strip = zlib.compress(bytes(64))
    tags = [(256, 4, width), (257, 4, height), (258, 3, 16), (259, 3, 8), (262, 3, 1), (273, 4, 0),
            (277, 3, 1), (278, 4, height), (279, 4, len(strip))]
    ifd_offset = 8 + len(strip)
    entries = b"".join(struct.pack("<HHII", tag, kind, 1, value if tag != 273 else 8) for tag, kind, value in tags)
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_offset) + strip + struct.pack("<H", len(tags)) + entries
                     + struct.pack("<I", 0))
    return path


def dicom_declaring(path: Path, height: int, width: int) -> Path:
    """An RLE DICOM whose header declares height x width (the pixel data is a few bytes)."""
    import pydicom
    from pydicom.uid import RLELossless

    make_dicom(path, np.zeros((8, 8), np.uint16), syntax=RLELossless)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = height, width
    ds.save_as(path)
    return path


DECLARING = {"png": png_declaring, "tiff": tiff_declaring, "dicom": dicom_declaring}


def raw_dicom(path: Path, pixels: np.ndarray, photometric: str, bits: int, **extra) -> Path:
    """A DX instance holding `pixels` as they are, in any photometric interpretation (colour ones included)."""
    from pydicom import uid
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.Modality = "DX"
    ds.set_pixel_data(pixels, photometric, bits, generate_instance_uid=False)
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def deflate_bomb(path: Path, inflated_bytes: int = 1 << 30, rows: int = 64, columns: int = 64) -> Path:
    """A Deflated Explicit VR Little Endian DX instance of about a megabyte whose data set inflates to
    `inflated_bytes`: a valid header declaring `rows` x `columns` 16-bit pixels, then a Pixel Data element that
    claims, and holds, `inflated_bytes` of zeros. Built in well under a second: after a full flush, every
    megabyte of zeros deflates to the same bytes, which are repeated."""
    import io

    from pydicom import uid
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filereader import read_dataset, read_preamble

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.Modality, ds.PatientID = "DX", "BOMB"
    ds.set_pixel_data(np.zeros((8, 8), np.uint16), "MONOCHROME2", 16, generate_instance_uid=False)
    ds.Rows, ds.Columns = rows, columns
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    stream = io.BytesIO(raw)
    read_preamble(stream, False)
    read_dataset(stream, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2)
    prefix, body = raw[: stream.tell()], zlib.decompress(raw[stream.tell():], -zlib.MAX_WBITS)
    at = body.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    head = body[:at] + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", inflated_bytes)
    block, compressor = bytes(1 << 20), zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)]
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)  # no reference to earlier bytes
    megabytes, rest = divmod(inflated_bytes, 1 << 20)
    parts.extend([repeated] * megabytes)
    parts.append(compressor.compress(bytes(rest)) + compressor.flush())
    path.write_bytes(prefix + b"".join(parts))
    return path
