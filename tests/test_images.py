"""PNG16 / TIFF reading and writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dexrt import InputError
from dexrt.io.images import read_image, read_metadata, write_image


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("a.png", np.uint16), ("a.tif", np.uint16), ("a.tiff", np.float32)],
    ids=["png16", "tif16", "tiff-float"],
)
def test_round_trip(tmp_path: Path, name: str, dtype) -> None:
    image = (np.random.default_rng(0).random((33, 47)) * 65535).astype(dtype)
    write_image(tmp_path / name, image, {"k": "v"})
    back = read_image(tmp_path / name)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, image)
    assert read_metadata(tmp_path / name) == {"k": "v"}


def test_extremes_survive(tmp_path: Path) -> None:
    image = np.array([[0, 1, 32768, 65534, 65535]], np.uint16)
    write_image(tmp_path / "x.png", image)
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), image)


def test_8bit_grayscale_is_widened_exactly(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.array([[0, 1, 128, 255]], np.uint8)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), [[0, 257, 128 * 257, 65535]])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_colour_png_refused(tmp_path: Path, mode: str) -> None:
    from PIL import Image

    Image.new(mode, (4, 4)).save(tmp_path / "c.png")
    with pytest.raises(InputError, match=f"{tmp_path / 'c.png'}: PNG mode {mode}"):
        read_image(tmp_path / "c.png")


def test_jpeg_named_png_refused(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (4, 4)).save(tmp_path / "j.png", format="JPEG")
    with pytest.raises(InputError, match="not PNG"):
        read_image(tmp_path / "j.png")


def test_multipage_tiff_refused(tmp_path: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "m.tif", np.zeros((3, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(InputError, match="m.tif"):
        read_image(tmp_path / "m.tif")


def test_unsupported_tiff_dtype(tmp_path: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "i.tif", np.zeros((8, 8), np.int32))
    with pytest.raises(InputError, match="int32"):
        read_image(tmp_path / "i.tif")


def test_png_output_must_be_uint16(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint16"):
        write_image(tmp_path / "f.png", np.zeros((4, 4), np.float32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (64, 65)], ids=str)
def test_png16_encoder_reads_back_with_pillow(tmp_path: Path, shape) -> None:
    from PIL import Image

    image = (np.random.default_rng(1).random(shape) * 65536).astype(np.uint16)
    image.flat[0], image.flat[-1] = 0, 65535
    write_image(tmp_path / "e.png", image, {"note": "Grüße, µm"})
    with Image.open(tmp_path / "e.png") as img:
        assert img.mode in ("I;16", "I;16B") and img.size == shape[::-1]
        np.testing.assert_array_equal(np.array(img).astype(np.uint16), image)
    assert read_metadata(tmp_path / "e.png") == {"note": "Grüße, µm"}


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    write_image(tmp_path / "p.png", np.zeros((4, 4), np.uint16))
    assert (tmp_path / "p.png").stat().st_mode & 0o777 == 0o666 & ~mask
