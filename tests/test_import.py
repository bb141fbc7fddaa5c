"""The runtime does not need torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def test_import_and_infer_without_torch(plain_engine_path: Path) -> None:
    code = BLOCK_TORCH + f"""
import numpy as np
import dexrt
engine = dexrt.Engine({str(plain_engine_path)!r})
bone, soft = engine.infer(np.zeros((64, 64), np.uint16))
assert bone.shape == (64, 64)
assert "torch" not in sys.modules
print("ok", dexrt.__version__)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")


def test_cli_infer_help_without_torch() -> None:
    code = BLOCK_TORCH + """
from click.testing import CliRunner
from dexrt.cli import cli
result = CliRunner().invoke(cli, ["infer", "--help"])
assert result.exit_code == 0, result.output
assert "torch" not in sys.modules
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
