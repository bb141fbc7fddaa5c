"""The typed public API: `py.typed`, stubs of `dexrt._core` generated from the module (never stale), and a type
checker over `python/dexrt`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUBS = ROOT / "python" / "dexrt" / "_core"


def test_package_is_marked_typed() -> None:
    assert (ROOT / "python" / "dexrt" / "py.typed").is_file()


def test_core_stubs_are_those_the_module_generates(tmp_path: Path) -> None:
    """Regenerate the stubs with pybind11-stubgen and compare: a binding changed without `pybind11-stubgen
    dexrt._core -o python` fails here."""
    if importlib.util.find_spec("pybind11_stubgen") is None:
        pytest.skip("needs pybind11-stubgen (the test extra)")
    from dexrt import _core

    if not _core.cuda.compiled:
        pytest.skip("the checked-in stubs describe a build with the CUDA bindings; this build has none")
    run = subprocess.run([sys.executable, "-m", "pybind11_stubgen", "dexrt._core", "-o", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    fresh = {p.relative_to(tmp_path / "dexrt" / "_core"): p.read_text() for p in (tmp_path / "dexrt" / "_core").rglob("*.pyi")}
    kept = {p.relative_to(STUBS): p.read_text() for p in STUBS.rglob("*.pyi")}
    assert sorted(fresh) == sorted(kept)
    stale = [str(name) for name in fresh if fresh[name] != kept[name]]
    assert not stale, f"stale stubs {stale}: regenerate with `pybind11-stubgen dexrt._core -o python`"


def test_type_checker_passes_over_the_package() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("needs mypy (the test extra)")
    from mypy import api

    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", "/dev/null",
                                str(ROOT / "python" / "dexrt")])
    assert status == 0, out + err
