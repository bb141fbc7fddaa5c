"""The clinical call: a detector frame (uint16, 1024-3072 px a side, with its pixel spacing) -> full-size bone and
soft images, `Engine.infer(frame, spacing_mm=...)`, against, in the same interleaved rounds:

- network only: `Engine.infer` on the frame already at the working size (the model's pixel spacing), the network
  with its per-image windows and nothing else: what the full-resolution work adds is the ratio to it;
- decode included: reading the frame from a 16-bit PNG file, then the clinical call;
- the old path: what `dexrt.pipelines.convert` did before the full-resolution call existed, in memory: Pillow
  resampling in float32 down to the working size, the engine at that size, Pillow back up, rounding in numpy,
  soft = input - bone in float64. (Its normalisation now runs in C++ inside the engine, so this baseline is a little
  faster than the path it stands for.)

The frame is the project's own 2048 x 2048 example DX frame (0.184 mm at the patient), brought to the other sizes over
the same field of view. Stages of the clinical call come from the engine's own statistics: pre (area averaging, the
window), infer (the network), post (guided upsampling, soft, the outputs). Every round checks its outputs (shape,
dtype, the same as the first round's) once its clock has stopped. Engines: the bundled default (FP16 weights) and an
INT8 build of it when given.

    python benchmarks/bench_clinical.py --int8 /tmp/default-int8.dexrt -o clinical.json   # table, JSON and plot
    DEXRT_BENCH_INT8=/tmp/default-int8.dexrt python -m pytest benchmarks/bench_clinical.py -s   # 2048, asserts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import dexrt

SIZES = (1024, 1536, 2048, 2560, 3072)
TARGETS_2048 = {"int8_p50_ms": 40.0, "ratio_to_network": 2.5, "speedup_over_old_path": 5.0}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cores = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("CPU(s):")), "?")
                return f"{line.split(':', 1)[1].strip()} ({cores} CPUs)"
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


# 2048^2, examples/make_examples.py
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "chest_ap_detector.dcm"


def frame(size: int) -> tuple[np.ndarray, float]:
    """A uint16 detector frame of `size` pixels a side and its spacing at the patient: the 2048 x 2048 example DX
    frame itself, or brought to `size` (bicubic) with its field of view kept."""
    from PIL import Image

    from dexrt.io.images import read_radiograph

    example = read_radiograph(EXAMPLE)
    base, spacing = example.frames[0], float(example.spacing_mm[0])
    if size == base.shape[0]:
        return base, spacing
    big = np.array(Image.fromarray(base.astype(np.float32)).resize((size, size), Image.Resampling.BICUBIC))
    return np.clip(np.rint(big), 0, 65535).astype(np.uint16), spacing * base.shape[0] / size


def old_path(engine: dexrt.Engine, image: np.ndarray, work: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The conversion steps `dexrt infer` took before the full-resolution call (pipelines/convert.py, in memory)."""
    from PIL import Image

    def resample(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        src = Image.fromarray(np.ascontiguousarray(x, dtype=np.float32))
        return np.asarray(src.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)

    def to_uint16(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(x), 0, 65535).astype(np.uint16)

    bone, _ = engine.infer(resample(image, work))
    bone = to_uint16(resample(bone, image.shape))
    soft = to_uint16(image.astype(np.float64) - bone.astype(np.float64))
    return bone, soft


def measure(calls: dict[str, Callable[[], Any]], rounds: int,
            checks: dict[str, Callable[[Any], None]] | None = None) -> dict[str, list[float]]:
    """Interleaved rounds: each call once per round, in turn, so drifts of a shared machine hit all alike. A call's
    check (`checks`, by name) sees its result after the clock has stopped, so checking costs none of its time."""
    checks = checks or {}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            result = call()
            times[name].append((time.perf_counter() - start) * 1e3)
            if name in checks:
                checks[name](result)
    return times


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_engine(name: str, engine: dexrt.Engine, sizes: tuple[int, ...], rounds: int, folder: Path
                 ) -> list[dict[str, Any]]:
    from dexrt import _core
    from dexrt.io.images import read_radiograph, write_image

    rows = []
    model_mm = engine.model_spacing_mm
    assert model_mm is not None, f"{name}: the engine records no training pixel spacing"
    for size in sizes:
        image, spacing = frame(size)
        work = tuple(_core.working_size(size, size, (spacing, spacing), model_mm))
        small = np.clip(np.rint(_core.resize(image, *work)), 0, 65535).astype(np.uint16)
        png = folder / f"frame{size}.png"
        write_image(png, image)
        reference = engine.infer(image, spacing_mm=spacing)  # also compiles the working shape
        engine.infer(small)
        old_path(engine, image, work)

        def clinical() -> tuple[np.ndarray, ...]:
            return engine.infer(image, spacing_mm=spacing)

        def same_as_first(outputs: tuple[np.ndarray, ...]) -> None:
            bone, soft = outputs
            assert bone.shape == soft.shape == image.shape and bone.dtype == np.uint16
            assert np.array_equal(bone, reference[0]) and np.array_equal(soft, reference[1])

        def decoded() -> tuple[np.ndarray, ...]:
            frames = read_radiograph(png).frames
            return engine.infer(frames[0], spacing_mm=spacing)

        calls = {"clinical": clinical, "network": lambda: engine.infer(small),
                 "decode+clinical": decoded, "old_path": lambda: old_path(engine, image, work)}
        engine.reset_stats()
        checks = {"clinical": same_as_first, "decode+clinical": same_as_first}
        times = measure({"clinical": clinical}, 2)  # stages of the clinical call alone
        stages = engine.stats()
        times = measure(calls, rounds, checks)
        ratio = statistics.median(c / n for c, n in zip(times["clinical"], times["network"]))
        speedup = statistics.median(o / c for o, c in zip(times["old_path"], times["clinical"]))
        rows.append({
            "engine": name, "size": size, "spacing_mm": round(spacing, 5), "working_size": list(work),
            **{f"{k}_p50_ms": round(p(v, 50), 2) for k, v in times.items()},
            **{f"{k}_p90_ms": round(p(v, 90), 2) for k, v in times.items()},
            **{f"{k}_min_ms": round(min(v), 2) for k, v in times.items()},
            "stages_p50_ms": {k: round(stages[f"{k}_us"]["p50"] / 1e3, 2) for k in ("pre", "infer", "post")},
            "ratio_to_network": round(ratio, 2), "speedup_over_old_path": round(speedup, 2), "rounds": rounds,
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run(int8: Path | None, sizes: tuple[int, ...], rounds: int) -> dict[str, Any]:
    engines = {"fp16-default": None} | ({"int8-default": int8} if int8 else {})
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dexrt-clinical-") as tmp:
        for name, path in engines.items():
            with dexrt.Engine(path) as engine:
                rows += bench_engine(name, engine, sizes, rounds, Path(tmp))
    return {"schema": "dexrt-clinical-bench/1", "cpu": cpu_name(), "dexrt": dexrt.__version__,
            "frame": EXAMPLE.name, "targets_2048": TARGETS_2048, "rows": rows}


def table(report: dict[str, Any]) -> str:
    head = (f"{'engine':14s} {'size':>5s} {'work':>8s} {'clinical':>9s} {'(best)':>7s} {'network':>8s} {'(best)':>7s} "
            f"{'ratio':>6s} {'+decode':>8s} {'old path':>9s} {'speedup':>8s}   stages pre/infer/post (ms)")
    lines = [f"clinical call on {report['cpu']}, p50 (and best) ms over {report['rows'][0]['rounds']} interleaved "
             "rounds; ratio and speedup: medians of the per-round ratios", head]
    for r in report["rows"]:
        s = r["stages_p50_ms"]
        lines.append(f"{r['engine']:14s} {r['size']:5d} {r['working_size'][0]:>4d}^2  {r['clinical_p50_ms']:8.1f} "
                     f"{r['clinical_min_ms']:7.1f} {r['network_p50_ms']:8.1f} {r['network_min_ms']:7.1f} "
                     f"{r['ratio_to_network']:6.2f} {r['decode+clinical_p50_ms']:8.1f} "
                     f"{r['old_path_p50_ms']:9.1f} {r['speedup_over_old_path']:7.1f}x   "
                     f"{s['pre']:.1f} / {s['infer']:.1f} / {s['post']:.1f}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for engine in dict.fromkeys(r["engine"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["engine"] == engine]
        sizes = [r["size"] for r in rows]
        for key, style in (("clinical", "-o"), ("network", ":s"), ("old_path", "--^")):
            ax.plot(sizes, [r[f"{key}_p50_ms"] for r in rows], style, label=f"{engine}: {key.replace('_', ' ')}")
    ax.axhline(TARGETS_2048["int8_p50_ms"], color="grey", lw=0.8)
    ax.set_xlabel(f"frame side (px), one field of view ({report['frame']} brought to each size)")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"dexrt clinical call, {report['cpu']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def test_clinical_call_at_2048() -> None:
    """The 2048 x 2048 frame: outputs checked every round, the ratios against the network-only call and the old path
    reported. The targets are the INT8 engine's (DEXRT_BENCH_INT8: a path to an INT8 build of the default model);
    with the FP16 default alone the network is most of the call, so only its ratio to the network is asserted."""
    int8 = os.environ.get("DEXRT_BENCH_INT8")
    report = run(Path(int8) if int8 else None, (2048,), rounds=10)
    print("\n" + table(report))
    row = report["rows"][-1]
    assert row["ratio_to_network"] <= TARGETS_2048["ratio_to_network"]
    if int8:
        assert row["clinical_p50_ms"] <= TARGETS_2048["int8_p50_ms"]
        assert row["speedup_over_old_path"] >= TARGETS_2048["speedup_over_old_path"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--int8", type=Path, default=None, help="an INT8 build of the default model (.dexrt)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("-o", "--output", type=Path, default=Path("dexrt-clinical.json"))
    args = parser.parse_args()
    report = run(args.int8, tuple(int(s) for s in args.sizes.split(",")), args.rounds)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.output.with_suffix(".png"))
    print(table(report))


if __name__ == "__main__":
    main()
