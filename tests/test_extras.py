"""Every command whose optional extra is missing fails the same way: one `Error:` line naming the extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import dexrt
from dexrt.cli import cli

EXAMPLES = Path(__file__).parent.parent / "examples"

# command line, the module hidden, the extra the message must name
CASES = {
    "train": (["train", "DATA", "-o", "RUN"], "torch", "train"),
    "export": (["export", "CKPT", "-o", "m.onnx"], "torch", "train"),
    "synth": (["synth", "--ct", "example", "-o", "NEW"], "xraydb", "synth"),
    "bench": (["bench", "--quick"], "torch", "train"),
    "build-engine int8": (["build-engine", "MODEL", "--precision", "int8", "--calibration", str(EXAMPLES), "-o",
                           "x.dexrt"], "nncf", "quantize"),
    "infer --ray": (["infer", str(EXAMPLES), "-o", "OUT", "--ray", "local"], "ray", "ray"),
    "serve": (["serve", "--port", "11112", "--ae-title", "DEXRT", "--allow-ae", "PACS", "--spool", "SPOOL"],
              "pynetdicom", "serve"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_missing_extra_is_one_error_line(case: str, tmp_path: Path, plain_onnx: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    args, module, extra = CASES[case]
    args = [str(plain_onnx) if a == "MODEL" else str(tmp_path / a) if a.isupper() else a for a in args]
    for given in ("DATA", "CKPT"):  # inputs that must exist before the extra is looked for
        (tmp_path / given).mkdir()
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert f"pip install 'dexrt[{extra}]'" in errors[0]
    assert "Traceback" not in result.output


def test_missing_extra_error_is_a_dexrt_error_and_an_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from dexrt._errors import MissingExtraError, require_extra

    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'dexrt\[quantize\]'") as info:
        require_extra("quantize", "INT8 engines", "nncf")
    assert isinstance(info.value, dexrt.DexrtError) and isinstance(info.value, ImportError)
