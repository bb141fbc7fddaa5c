"""DICOM radiographs through `dexrt infer`'s machinery: value mapping, orientation, encodings, derived instances."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid

from dexrt import Engine, InputError
from dexrt._errors import MissingExtraError
from dexrt.pipelines.convert import Converter
from dexrt.io.layout import find_images
from dexrt.io.images import read_radiograph
from dexrt.inputs.resample import working_size
from dexrt.runtime.pixel_spacing import model_spacing_mm
from helpers import build_bundle
from infer_helpers import deflate_bomb, make_dicom, make_identity_onnx, marked_image, raw_dicom

SHAPE = (45, 70)  # not a multiple of the engine's 64: padding and cropping back are exercised


@pytest.fixture(scope="module")
def identity_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    folder = tmp_path_factory.mktemp("identity")
    bundle = build_bundle(make_identity_onnx(folder / "identity.onnx"), folder / "identity.dexrt", size_multiple=64)
    with Engine(bundle) as engine:
        yield engine


def convert_one(engine: Engine, source: Path, out: Path, **options) -> list[Path]:
    [outcome] = Converter(engine, out, **options).run([source])
    assert outcome.ok, outcome.error
    return outcome.outputs


CASES = [
    # modality, photometric, bits, signed, transfer syntax
    ("CR", "MONOCHROME1", 12, False, None),
    ("DX", "MONOCHROME2", 16, False, None),
    ("DX", "MONOCHROME2", 8, False, uid.RLELossless),
    ("DX", "MONOCHROME1", 16, False, uid.RLELossless),
    ("CR", "MONOCHROME1", 12, False, uid.JPEGLSLossless),
    ("DX", "MONOCHROME2", 14, False, uid.JPEG2000Lossless),
    ("DX", "MONOCHROME2", 16, True, None),
]


@pytest.mark.parametrize(("modality", "photometric", "bits", "signed", "syntax"), CASES,
                         ids=[f"{m}-{p[-1]}-{b}bit{'-signed' if s else ''}-{t.name if t else 'uncompressed'}"
                              for m, p, b, s, t in CASES])
def test_round_trip(identity_engine: Engine, tmp_path: Path, modality: str, photometric: str, bits: int,
                    signed: bool, syntax: str | None) -> None:
    low = -(1 << (bits - 1)) if signed else 0
    high = low + (1 << bits) - 1
    stored = marked_image(SHAPE, high, low)
    source = make_dicom(tmp_path / "in.dcm", stored, photometric=photometric, bits=bits, modality=modality,
                        syntax=syntax, signed=signed)
    bone_path, soft_path = convert_one(identity_engine, source, tmp_path / "out")
    assert (bone_path.name, soft_path.name) == ("in_bone.dcm", "in_soft.dcm")
    src = pydicom.dcmread(source)
    bone, soft = pydicom.dcmread(bone_path), pydicom.dcmread(soft_path)
    # The identity engine returns SE as bone and its inverse as soft: the stored values come back exactly,
    # in the same orientation, photometric interpretation, bit depth and signedness.
    np.testing.assert_array_equal(bone.pixel_array, stored)
    np.testing.assert_array_equal(soft.pixel_array, low + high - stored)
    for out in (bone, soft):
        assert out.PhotometricInterpretation == photometric
        assert (out.BitsStored, out.BitsAllocated, out.PixelRepresentation) == (
            src.BitsStored, src.BitsAllocated, src.PixelRepresentation)
        assert out.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID  # lossless syntaxes mirrored
        assert (out.Rows, out.Columns) == SHAPE
        assert out.SOPClassUID == src.SOPClassUID and out.Modality == modality


@pytest.mark.parametrize("syntax", [uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian],
                         ids=["implicit", "deflated"])
def test_uncompressed_syntaxes_are_mirrored(identity_engine: Engine, tmp_path: Path, syntax: str) -> None:
    stored = marked_image(SHAPE, 4095)
    path = make_dicom(tmp_path / "in.dcm", stored, bits=12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    bone = pydicom.dcmread(convert_one(identity_engine, path, tmp_path / "out")[0])
    assert bone.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(bone.pixel_array, stored)


def test_derived_instances(identity_engine: Engine, tmp_path: Path) -> None:
    series = uid.generate_uid()
    sources = [make_dicom(tmp_path / f"im{i}.dcm", marked_image(SHAPE, 4095, seed=i), bits=12, series_uid=series)
               for i in range(2)]
    outcomes = list(Converter(identity_engine, tmp_path / "out").run(sources))
    assert all(o.ok for o in outcomes)
    outputs = {o.source.name: [pydicom.dcmread(p) for p in o.outputs] for o in outcomes}
    src = pydicom.dcmread(sources[0])
    bone0, soft0 = outputs["im0.dcm"]
    bone1, _ = outputs["im1.dcm"]
    for out in (bone0, soft0):
        assert out.SOPInstanceUID != src.SOPInstanceUID
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.SeriesInstanceUID != src.SeriesInstanceUID
        assert (out.PatientName, out.PatientID, out.StudyInstanceUID) == (src.PatientName, src.PatientID,
                                                                          src.StudyInstanceUID)
        assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert out.DerivationDescription.startswith("dexrt ")
        assert identity_engine.manifest["model"]["onnx_sha256"] in out.DerivationDescription
        assert identity_engine.path.name in out.DerivationDescription
        assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert "WindowCenter" in out and float(out.WindowWidth) > 0  # the source's SE window is not kept
    assert list(bone0.ImageType)[2] == "BONE" and list(soft0.ImageType)[2] == "SOFT"
    # One new series per output kind: both bone images share one, distinct from the soft series.
    assert bone0.SeriesInstanceUID == bone1.SeriesInstanceUID != soft0.SeriesInstanceUID
    assert bone0.SOPInstanceUID != bone1.SOPInstanceUID
    assert bone0.SeriesNumber != soft0.SeriesNumber


def test_monochrome1_and_2_give_the_engine_the_same_picture(tmp_path: Path) -> None:
    attenuation = marked_image(SHAPE, 4095)  # bright = attenuating
    mono2 = make_dicom(tmp_path / "m2.dcm", attenuation, photometric="MONOCHROME2", bits=12)
    mono1 = make_dicom(tmp_path / "m1.dcm", 4095 - attenuation, photometric="MONOCHROME1", bits=12,
                       syntax=uid.RLELossless)
    a, b = read_radiograph(mono2), read_radiograph(mono1)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.frames.dtype == np.uint16 and a.frames.shape == (1, *SHAPE)
    # 12 bits span the engine's whole 16-bit range; the bright block is the brightest part.
    assert a.frames.max() == 65535 and a.frames[0, 0, 0] == 65535


def test_negative_rescale_slope_counts_as_inverted(tmp_path: Path) -> None:
    attenuation = marked_image(SHAPE, 4095)
    plain = make_dicom(tmp_path / "p.dcm", attenuation, bits=12)
    flipped = make_dicom(tmp_path / "f.dcm", 4095 - attenuation, bits=12,
                         extra={"RescaleSlope": -1, "RescaleIntercept": 4095})
    np.testing.assert_array_equal(read_radiograph(plain).frames, read_radiograph(flipped).frames)


def test_multiframe_rf(identity_engine: Engine, tmp_path: Path) -> None:
    frames = np.stack([marked_image(SHAPE, 1023, seed=s) for s in range(3)])
    frames[1] = frames[1, ::-1]  # frames differ, so their order is checked too
    source = make_dicom(tmp_path / "fluoro.dcm", frames, modality="RF", bits=10, syntax=uid.JPEGLSLossless)
    image = read_radiograph(source)
    assert image.frames.shape == (3, *SHAPE)
    bone_path, soft_path, preview = convert_one(identity_engine, source, tmp_path / "out", preview=True)
    bone = pydicom.dcmread(bone_path)
    assert int(bone.NumberOfFrames) == 3 and bone.FrameTime == 33.3
    np.testing.assert_array_equal(bone.pixel_array, frames)
    np.testing.assert_array_equal(pydicom.dcmread(soft_path).pixel_array, 1023 - frames)
    assert preview == tmp_path / "out" / "fluoro_preview.png" and preview.is_file()


def test_extensionless_dicom_is_found_and_named(identity_engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    folder.mkdir()
    make_dicom(folder / "IM0001", marked_image(SHAPE, 255), bits=8)
    make_dicom(folder / "1.2.840.5", marked_image(SHAPE, 255), bits=8)
    (folder / "README").write_text("not DICOM")
    found = find_images(folder)
    assert [p.name for p in found] == ["1.2.840.5", "IM0001"]
    outcomes = list(Converter(identity_engine, tmp_path / "out").run(found))
    assert sorted(p.name for o in outcomes for p in o.outputs) == [
        "1.2.840.5_bone", "1.2.840.5_soft", "IM0001_bone", "IM0001_soft"]


def retag(path: Path, **values) -> Path:
    ds = pydicom.dcmread(path)
    for key, value in values.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def rgb_dicom(path: Path) -> Path:
    return raw_dicom(path, np.zeros((8, 8, 3), np.uint8), "RGB", 8)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (rgb_dicom, "RGB images with 3 samples per pixel are not supported"),
        (lambda p: make_dicom(p, marked_image((8, 8), 4095), modality="CT", bits=12),
         "modality CT is not a projection radiograph"),
        (lambda p: p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage") and p, "DICOM with no pixel data"),
        (lambda p: p.write_bytes(b"plain text, not DICOM") and p, "not a DICOM file"),
        (lambda p: retag(make_dicom(p, marked_image((8, 8), 4095), bits=12), BitsAllocated=32),
         "12 bits stored in 32 allocated are not supported"),
    ],
    ids=["rgb", "ct", "corrupt", "not-dicom", "32-bit"],
)
def test_refused_with_reason(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "bad.dcm"
    make(path)
    with pytest.raises(InputError, match=message) as info:
        read_radiograph(path)
    assert str(path) in str(info.value)


def test_unknown_transfer_syntax(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "x.dcm", marked_image((8, 8), 4095), bits=12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML  # video: no pixel decoder for it
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3 not decodable"])
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputError, match=f"{path}: transfer syntax .* is not supported"):
        read_radiograph(path)


def test_missing_codec_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    from pydicom.pixels.decoders import JPEG2000LosslessDecoder

    path = make_dicom(tmp_path / "j.dcm", marked_image((64, 64), 4095), bits=12, syntax=uid.JPEG2000Lossless)
    monkeypatch.setattr(type(JPEG2000LosslessDecoder), "is_available", property(lambda self: False))
    with pytest.raises(InputError, match=r"needs a codec that is not installed: pip install 'dexrt\[dicom\]'"):
        read_radiograph(path)


def test_without_pydicom_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    path = make_dicom(tmp_path / "p.dcm", marked_image((8, 8), 4095), bits=12)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(MissingExtraError,
                       match=r"needs pydicom, which is not installed .*; install it with: pip install pydicom"):
        read_radiograph(path)


def test_lossy_jpeg_input(identity_engine: Engine, tmp_path: Path) -> None:
    """8-bit JPEG baseline (lossy) decodes through libjpeg; outputs are written uncompressed, marked lossy."""
    import io

    from PIL import Image

    pixels = marked_image((48, 64), 255).astype(np.uint8)
    path = make_dicom(tmp_path / "jpeg.dcm", pixels, bits=8)
    ds = pydicom.dcmread(path)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    ds.PixelData = pydicom.encaps.encapsulate([buffer.getvalue()])
    ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)
    decoded = read_radiograph(path).frames[0]
    assert np.abs(decoded.astype(np.int64) - pixels.astype(np.int64) * 257).max() < 12 * 257
    bone_path, _ = convert_one(identity_engine, path, tmp_path / "out")
    bone = pydicom.dcmread(bone_path)
    assert bone.file_meta.TransferSyntaxUID == uid.ExplicitVRLittleEndian
    assert bone.LossyImageCompression == "01"
    np.testing.assert_array_equal(bone.pixel_array, decoded // 257)


def test_small_jpeg2000_output_falls_back_to_uncompressed(tmp_path: Path) -> None:
    from dexrt.io.dicom import write_dicom

    stored = marked_image((16, 16), 4095)  # OpenJPEG refuses to encode images this small
    image = read_radiograph(make_dicom(tmp_path / "tiny.dcm", stored, bits=12))
    image.dicom.transfer_syntax = uid.JPEG2000Lossless  # as if the input had come JPEG 2000 compressed
    provenance = {"software": "dexrt", "channel": "bone",
                  "engine": {"file": "x.dexrt", "backend": "openvino", "precision": "fp32", "onnx_sha256": "0"}}
    write_dicom(tmp_path / "out.dcm", image.dicom, image.frames, "bone", 0, provenance)
    back = pydicom.dcmread(tmp_path / "out.dcm")
    assert back.file_meta.TransferSyntaxUID == uid.ExplicitVRLittleEndian
    np.testing.assert_array_equal(back.pixel_array, stored)


def test_truncated_compressed_pixels(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "t.dcm", marked_image((64, 64), 4095), bits=12, syntax=uid.JPEG2000Lossless)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(InputError, match=f"{path}: DICOM with no pixel data .or a file truncated"):
        read_radiograph(path)


class PanicException(BaseException):
    """What pyo3 raises when a Rust codec (pylibjpeg-rle) panics: a BaseException of this name."""


def test_decoder_panic_is_an_input_error(tmp_path: Path, monkeypatch) -> None:
    path = make_dicom(tmp_path / "r.dcm", marked_image((16, 16), 4095), bits=12, syntax=uid.RLELossless)

    def panic(self):  # noqa: ANN001, ANN202
        raise PanicException("index out of bounds: the len is 960 but the index is 961")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(panic))
    with pytest.raises(InputError, match=f"{path}: cannot decode pixel data .*decoder panic: index out of bounds"):
        read_radiograph(path)

    def interrupted(self):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(interrupted))
    with pytest.raises(KeyboardInterrupt):  # other BaseExceptions still end the run
        read_radiograph(path)


# -- geometry -------------------------------------------------------------------------------------------------
def test_spacing_from_tags(tmp_path: Path) -> None:
    pixels = marked_image((8, 8), 4095)
    calibrated = make_dicom(tmp_path / "a.dcm", pixels, bits=12, spacing=(0.2, 0.25), imager_spacing=(0.3, 0.3))
    detector = make_dicom(tmp_path / "b.dcm", pixels, bits=12, imager_spacing=(0.15, 0.15),
                          extra={"EstimatedRadiographicMagnificationFactor": 1.5})
    none = make_dicom(tmp_path / "c.dcm", pixels, bits=12)
    assert read_radiograph(calibrated).spacing_mm == (0.2, 0.25)
    assert read_radiograph(detector).spacing_mm == pytest.approx((0.1, 0.1))
    assert read_radiograph(none).spacing_mm is None


def test_model_spacing_lookup() -> None:
    assert model_spacing_mm({"model": {"config": {"ngf": 64}}}) is None
    assert model_spacing_mm({"pixel_spacing_mm": 0.5}) == 0.5
    assert model_spacing_mm({"model": {"config": {"pixel_spacing_mm": 0.4}}}) == 0.4
    assert model_spacing_mm({"pixel_spacing_mm": -1}) is None
    assert working_size((100, 200), (0.1, 0.1), 0.2) == (50, 100)
    assert working_size((100, 200), (0.2, 0.2), 0.201) is None  # within 1%: left alone
    assert working_size((100, 200), None, 0.2) is None


def test_resampled_round_trip(identity_engine: Engine, tmp_path: Path) -> None:
    # A smooth picture at 0.1 mm through a "model" at 0.2 mm: inference at half size, outputs at full size.
    y, x = np.mgrid[0:90, 0:120]
    stored = np.rint(2000 + 1500 * np.sin(x / 19.0) * np.cos(y / 23.0)).astype(np.int64)
    source = make_dicom(tmp_path / "fine.dcm", stored, bits=12, spacing=(0.1, 0.1))
    converter = Converter(identity_engine, tmp_path / "out", model_spacing_mm=0.2)
    [outcome] = converter.run([source])
    assert outcome.ok, outcome.error
    assert outcome.geometry["resampled"] and outcome.geometry["working_size"] == [45, 60]
    bone = pydicom.dcmread(outcome.outputs[0]).pixel_array
    assert bone.shape == stored.shape
    inner = (slice(4, -4), slice(4, -4))  # borders of a down/up resampling are smoother
    assert np.abs(bone[inner].astype(np.int64) - stored[inner]).max() < 60  # of 4095: a smooth field survives
    assert "resampled to 0.2 mm" in pydicom.dcmread(outcome.outputs[0]).DerivationDescription
    # Turned off: exact again.
    [exact] = Converter(identity_engine, tmp_path / "off", resample=False).run([source])
    assert not exact.geometry["resampled"]
    np.testing.assert_array_equal(pydicom.dcmread(exact.outputs[0]).pixel_array, stored)


def test_engine_without_spacing_is_not_resampled(identity_engine: Engine, tmp_path: Path) -> None:
    converter = Converter(identity_engine, tmp_path)
    assert converter.model_spacing_mm is None
    assert "records no training pixel spacing" in converter.resampling_note


def test_unknown_value_representation_is_an_input_error(tmp_path: Path) -> None:
    """Found by the fuzz test: a damaged VR in the header made pydicom raise NotImplementedError."""
    path = make_dicom(tmp_path / "v.dcm", marked_image((16, 16), 4095), bits=12)
    data = path.read_bytes()
    tag = b"(\x00\x04\x00CS"  # (0028,0004) Photometric Interpretation, explicit VR little endian
    assert data.count(tag) == 1
    path.write_bytes(data.replace(tag, b"(\x00\x04\x00C\x00"))
    with pytest.raises(InputError, match=f"{path}: corrupt or truncated DICOM .NotImplementedError"):
        read_radiograph(path)


@pytest.mark.parametrize(("where", "value"), [
    ("StudyInstanceUID", "../x"),
    ("SeriesInstanceUID", "1.2.840." + "1" * 60),  # 68 characters
    ("FrameOfReferenceUID", "1.2..3"),
    ("ReferencedSOPInstanceUID", "1.2.3/../../etc"),  # inside a sequence
    ("MediaStorageSOPInstanceUID", "1.2.3 4"),  # the file meta
], ids=["study-path", "series-too-long", "empty-component", "nested", "file-meta"])
def test_invalid_uid_anywhere_is_refused(tmp_path: Path, where: str, value: str) -> None:
    """Every UID read from the file is checked (PS3.5 9.1: digits and dots, at most 64 characters): the outputs
    copy the study's and series' UIDs, and a DICOM node names files after them."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    path = make_dicom(tmp_path / "bad.dcm", marked_image((8, 8), 4095), bits=12)
    ds = pydicom.dcmread(path)
    if where == "ReferencedSOPInstanceUID":
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", value
        ds.ReferencedImageSequence = Sequence([item])
    elif where.startswith("MediaStorage"):
        setattr(ds.file_meta, where, value)
    else:
        setattr(ds, where, value)
    ds.save_as(path, enforce_file_format=False)
    with pytest.raises(InputError, match=f"{where} .* is not a valid UID") as info:
        read_radiograph(path)
    assert str(path) in str(info.value)


def test_leading_zero_uid_component_is_tolerated(tmp_path: Path) -> None:
    """Seen from real devices; harmless (digits and dots only), so not a reason to refuse a patient's image."""
    path = make_dicom(tmp_path / "ok.dcm", marked_image((8, 8), 4095), bits=12, study_uid="1.2.840.0113.07")
    assert read_radiograph(path).dicom.dataset.StudyInstanceUID == "1.2.840.0113.07"


@pytest.mark.parametrize("rows", [64, 16384], ids=["small-image", "largest-image"])
def test_deflate_bomb_is_refused_in_bounded_memory(tmp_path: Path, rows: int) -> None:
    """About 1 MB of deflated DICOM inflating to 1 GiB (pydicom alone: a 1 GiB allocation before any check):
    refused by dexrt infer's reader with the limit in the message, at a cost far below 256 MiB, also when the
    header declares the largest image dexrt converts (16384 x 16384, 512 MiB of pixels)."""
    import tracemalloc

    from click.testing import CliRunner

    from dexrt.cli import cli
    from dexrt.io.dicom import written_by_dexrt

    bomb = deflate_bomb(tmp_path / "bomb.dcm", 1 << 30, rows, rows)
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"inflates to more than \d+ bytes, more than its header declares"):
            read_radiograph(bomb)
        assert not written_by_dexrt(bomb)  # the folder scan's look at the header does not inflate it either
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 << 20, f"{peak >> 20} MiB"
    result = CliRunner().invoke(cli, ["infer", str(bomb), "-o", str(tmp_path / "out")])
    assert result.exit_code != 0 and "refused as a decompression bomb" in result.output


def test_truncated_deflated_data_set(tmp_path: Path) -> None:
    path = deflate_bomb(tmp_path / "d.dcm", 32 * 32 * 2, 32, 32)  # a well-formed deflated 32 x 32 image ...
    assert read_radiograph(path).frames.shape == (1, 32, 32)
    path.write_bytes(path.read_bytes()[:-40])  # ... cut short
    with pytest.raises(InputError, match="truncated deflated data set|corrupt deflated"):
        read_radiograph(path)
