"""`dexrt bench`: results file, plot and table, with every engine checked against the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dexrt.pipelines.bench import conv_flops, measure_rounds, round_ratios
from dexrt.cli import cli


def test_bench_quick_writes_comparable_results(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["bench", "--ngf", "4", "--sizes", "256", "--batches", "1,2", "-o", str(out),
                                      "--engines", "dexrt,onnxruntime,torch-eager"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["schema"] == "dexrt-bench/2"
    engines = {(r["engine"], r["batch"]) for r in report["results"]}
    assert engines == {(e, b) for e in ("dexrt", "onnxruntime", "torch-eager") for b in (1, 2)}
    for r in report["results"]:
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] * 0.999
        assert r["max_abs_error"] <= 2e-3
        assert r["gflops"] > 0
        q1, q3 = r["ratio_quartiles"]
        assert 0 < q1 <= r["ratio_to_reference"] <= q3
        assert r["repeats"] >= 5
    reference = [r for r in report["results"] if r["engine"] == "dexrt"]
    assert all(r["ratio_to_reference"] == 1.0 for r in reference)  # each round's ratio to itself
    same_rounds = {r["batch"]: r["repeats"] for r in reference}
    assert all(r["repeats"] == same_rounds[r["batch"]] for r in report["results"])  # interleaved: one count a round
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dexrt" in result.stdout and "GFLOP/s" in result.stdout


def test_bench_with_calibration_adds_the_int8_engines(tmp_path: Path) -> None:
    """--calibration: dexrt's INT8 engine and OpenVINO's own NNCF INT8 join, fed a real image of the set, and each
    is checked against FP32 within the INT8 bound; OpenVINO's f32 call matches dexrt's FP32 tightly."""
    pytest.importorskip("nncf")
    from dexrt.io.images import write_image

    folder = tmp_path / "calibration"
    folder.mkdir()
    y, x = np.mgrid[0:256, 0:256] / 256
    for i in range(6):
        image = 0.5 + 0.3 * np.sin(2 * np.pi * ((i + 1) * x + y)) * np.cos(3 * np.pi * y)
        write_image(folder / f"se_{i}.png", (image * 60000).astype(np.uint16))
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["bench", "--ngf", "4", "--sizes", "256", "--batches", "1", "-o", str(out),
                                      "--calibration", str(folder), "--engines",
                                      "dexrt,dexrt-int8,openvino-python,openvino-python-int8"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = {r["engine"]: r for r in report["results"]}
    assert set(rows) == {"dexrt", "dexrt-int8", "openvino-python", "openvino-python-int8"}
    assert report["model"]["calibration"] == str(folder)
    assert rows["openvino-python"]["max_abs_error"] <= 2e-3
    assert all(0 < rows[e]["max_abs_error"] <= 0.15 for e in ("dexrt-int8", "openvino-python-int8"))


def test_interleaved_rounds_rotate_the_order_and_pair_the_times() -> None:
    calls: list[str] = []
    runners = {name: (lambda x, n=name: calls.append(n)) for name in ("a", "b", "c")}
    times = measure_rounds(runners, None, min_seconds=0.0, min_rounds=3)  # type: ignore[arg-type]
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    median, (q1, q3) = round_ratios([2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 2.0, 4.0])
    assert median == 2.0 and q1 == 2.0 and q3 == 2.25


def test_conv_flops_of_the_unet(unet_onnx: Path) -> None:
    from dexrt_train.networks import GeneratorConfig

    # Independent count for the ngf=8 depth-8 U-Net at 256x256: encoder convs then decoder transposed convs.
    c = GeneratorConfig(ngf=8)
    widths = [c.ngf * min(2**i, 8) for i in range(c.depth)]
    expected = 0.0
    size = 256
    cin = 1
    for w in widths:  # conv 4x4 stride 2: output size halves
        size //= 2
        expected += 2 * 16 * cin * w * size * size
        cin = w
    for i in reversed(range(c.depth)):  # transposed conv 4x4 stride 2 from size to 2*size
        cin = widths[i] * (1 if i == c.depth - 1 else 2)
        cout = 2 if i == 0 else widths[i - 1]
        expected += 2 * 16 * cin * cout * size * size
        size *= 2
    assert conv_flops(unet_onnx, 256, 256) == expected


def test_bench_json_prints_only_json_on_stdout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the suite's libraries print while it runs (NNCF's progress bars while quantizing for
    --calibration) goes to stderr: `dexrt bench --json` prints the results and nothing else on stdout."""
    import dexrt.pipelines.bench as bench

    def noisy_suite(onnx_path: Path, **kwargs: object) -> dict:
        print("Statistics collection ━━━━━━━━ 100% 25/25")  # as NNCF's rich progress does
        return {"schema": bench.SCHEMA, "model": {}, "results": []}

    monkeypatch.setattr(bench, "run_suite", noisy_suite)
    monkeypatch.setattr(bench, "save", lambda report, path: None)
    monkeypatch.setattr(bench, "plot", lambda report, path: None)
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"")  # never read: the suite is replaced
    result = CliRunner().invoke(cli, ["bench", "--onnx", str(onnx_path), "--json",
                                      "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["schema"] == bench.SCHEMA
    assert "Statistics collection" in result.stderr
