"""Benchmark fixtures: random-weight U-Net generators built once per session, and a ratio summary.

Run: ``python -m pytest benchmarks/`` (pytest-benchmark). ``--ngf`` picks the generator width (default 32).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

_MEDIANS: dict[str, dict[str, float]] = defaultdict(dict)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--ngf", type=int, default=32, help="U-Net generator width for the benchmarks")


@pytest.fixture(scope="session")
def ngf(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--ngf"))


@pytest.fixture(scope="session")
def unet_onnx_bench(tmp_path_factory: pytest.TempPathFactory, ngf: int) -> Path:
    import torch

    from dexrt_train.export import export_onnx
    from dexrt_train.networks import GeneratorConfig, define_G

    torch.manual_seed(0)
    config = GeneratorConfig(ngf=ngf)
    path = tmp_path_factory.mktemp("bench") / f"unet_ngf{ngf}.onnx"
    export_onnx(define_G(config), config, path)
    return path


@pytest.fixture(scope="session")
def unet_bundle_bench(unet_onnx_bench: Path) -> Path:
    from helpers import build_bundle  # tests/helpers.py

    return build_bundle(unet_onnx_bench, unet_onnx_bench.with_suffix(".dexrt"))


@pytest.fixture
def record(benchmark):  # noqa: ANN001 - pytest-benchmark fixture
    """Call after a benchmark ran: keeps its median for the ratio summary of its group."""

    def _record(name: str) -> None:
        _MEDIANS[benchmark.group or "default"][name] = benchmark.stats.stats.median

    return _record


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    if not _MEDIANS:
        return
    terminalreporter.section("dexrt ratios (median time / first entry of the group)")
    for group, medians in _MEDIANS.items():
        base_name, base = next(iter(medians.items()))
        for name, median in medians.items():
            terminalreporter.write_line(f"{group:40s} {name:32s} {median * 1e3:9.2f} ms  x{median / base:6.3f} "
                                        f"(vs {base_name})")
