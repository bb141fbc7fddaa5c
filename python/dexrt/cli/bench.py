"""`dexrt bench`: compare dexrt's engine with its peers on one generator; table, JSON and plot."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from dexrt._errors import require_extra
from dexrt.pipelines.bench import SCHEMA


@click.command()
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Generator to benchmark (default: a random-weight U-Net of width --ngf; needs the train extra).")
@click.option("--ngf", type=click.IntRange(1, 256), default=64, show_default=True,
              help="Width of the default random-weight U-Net.")
@click.option("--quick", is_flag=True, help="256x256 at batch 1 and 4, short runs (about a minute).")
@click.option("--sizes", default=None, help="Comma-separated image sizes (default 256,512,1024; quick: 256).")
@click.option("--batches", default=None, help="Comma-separated batch sizes (default 1,4,8; quick: 1,4).")
@click.option("--engines", default=None,
              help="Comma-separated subset of: dexrt, openvino-python, openvino-python-default, onnxruntime, "
                   "torch-eager, torch-channels-last; with --calibration also dexrt-int8, openvino-python-int8; "
                   "on a CUDA GPU also torch-cuda-fp32, torch-cuda-fp16, dexrt-tensorrt-fp16.")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path), default=None,
              help="A `dexrt synth` dataset (or folder of SE images): adds dexrt's INT8 engine and OpenVINO's own "
                   "INT8 (NNCF PTQ) of the same ONNX, and feeds every engine a real image of it (needs the "
                   "quantize extra).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("dexrt-bench.json"),
              show_default=True, help=f"Results file (JSON, schema {SCHEMA}).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Latency-vs-size plot (PNG; default: next to the results file).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout instead of a table.")
def bench(onnx_path: Path | None, ngf: int, quick: bool, sizes: str | None, batches: str | None,
          engines: str | None, calibration: Path | None, output: Path, plot_path: Path | None,
          as_json: bool) -> None:
    """Benchmark dexrt against OpenVINO's Python API, ONNX Runtime and torch eager on the same weights
    (and, on a CUDA GPU, torch eager FP16/FP32 there and dexrt's TensorRT engine)."""
    from dexrt.pipelines.bench import format_table, plot, run_suite, save

    if calibration is not None:
        require_extra("quantize", "INT8 benchmarks (--calibration)", "nncf")

    size_list = _ints(sizes) if sizes else ([256] if quick else [256, 512, 1024])
    batch_list = _ints(batches) if batches else ([1, 4] if quick else [1, 4, 8])
    module = None
    with tempfile.TemporaryDirectory(prefix="dexrt-bench-") as tmp:
        if onnx_path is None:
            module, onnx_path = _random_unet(ngf, Path(tmp))
        # Libraries print progress on stdout (NNCF's bars while quantizing, OpenVINO's native messages): stdout
        # holds the results only, so while the suite runs everything written to it goes to stderr.
        with _stdout_to_stderr():
            report = run_suite(onnx_path, sizes=size_list, batches=batch_list, torch_module=module,
                               engines=engines.split(",") if engines else None, min_seconds=0.5 if quick else 2.0,
                               calibration=calibration,
                               progress=lambda s: click.echo(f"  {s}", err=True))
    report["model"]["ngf"] = ngf if module is not None else None
    save(report, output)
    plot(report, plot_path or output.with_suffix(".png"))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_table(report))
        click.echo(f"Saved {output} and {plot_path or output.with_suffix('.png')}", err=True)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Python's sys.stdout and the process's file descriptor 1 (native code writes there) both to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def _random_unet(ngf: int, folder: Path):  # noqa: ANN202
    require_extra("train", "the default benchmark model (or pass --onnx MODEL.onnx)", "torch", "dexrt_train")
    import torch

    from dexrt_train.export import export_onnx
    from dexrt_train.networks import GeneratorConfig, define_G

    torch.manual_seed(0)
    config = GeneratorConfig(ngf=ngf)
    module = define_G(config).eval()
    path = folder / f"unet_ngf{ngf}.onnx"
    export_onnx(module, config, path)
    print(f"benchmark model: random-weight U-Net, ngf {ngf}", file=sys.stderr)
    return module, path
