"""The package's layers hold (import-linter's contracts in pyproject.toml; docs/architecture.md draws them)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    if importlib.util.find_spec("importlinter") is None:
        pytest.skip("needs import-linter (the test extra)")
    run = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                          "sys.exit(lint_imports_command())", "--no-cache", str(ROOT / "pyproject.toml")],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Contracts: 3 kept, 0 broken." in run.stdout, run.stdout


def test_the_contracts_catch_a_lower_layer_importing_a_higher_one(tmp_path: Path) -> None:
    """The layers contract is not vacuous: a copy of the config pointed at a package where io imports pipelines
    is broken."""
    if importlib.util.find_spec("importlinter") is None:
        pytest.skip("needs import-linter (the test extra)")
    pkg = tmp_path / "dexrt"
    for layer in ("cli", "pipelines", "build", "synth", "evaluation", "io", "inputs", "runtime"):
        (pkg / layer).mkdir(parents=True)
        (pkg / layer / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "io" / "reader.py").write_text("from dexrt.pipelines import convert\n")
    (pkg / "pipelines" / "convert.py").write_text("")
    (pkg / "pipelines" / "bench.py").write_text("def peers():\n    import torch\n")  # the one allowed
    (tmp_path / "dexrt_train").mkdir()
    (tmp_path / "dexrt_train" / "__init__.py").write_text("")
    config = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(config[config.index("\n[tool.importlinter]\n"):])
    run = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                          "sys.exit(lint_imports_command())", "--no-cache", "pyproject.toml"],
                         capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}, check=False)
    assert run.returncode != 0
    assert "dexrt.io.reader -> dexrt.pipelines.convert" in run.stdout, run.stdout
