"""Quality against speed for trained engine bundles: test-split metrics and CPU latency, measured in one run.

    python docs/experiments/studies/model_table.py --dataset DATA [--split test] [--sizes 256,512] [--rounds 30] \
        [--onnx MODEL.onnx [--calibration DATA]] -o table.json ngf16_fp32.dexrt ngf16_int8.dexrt ...

Each engine is scored with `dexrt eval`'s metrics on the split, then timed end to end on one uint16 image per size
(the split's first SE view, resized: uint16 in, bone and soft uint16 out), the engines taking turns round by
round so that a busy machine slows all of them alike. With ``--onnx``, the peers of `dexrt bench` on that ONNX
(OpenVINO's Python API in f32 and with its defaults, ONNX Runtime; with ``--calibration`` also OpenVINO's own
INT8 by NNCF PTQ; with ``--checkpoint`` torch eager) take their turns in the same rounds, fed the same image
already pre-processed (network only: they get the pre- and post-processing for free). Each row's time ratio to
the first peer (OpenVINO f32) is the median of per-round ratios, with quartiles. Prints a Markdown table and
writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from collections.abc import Callable
from typing import Any

import numpy as np

import dexrt
from dexrt.pipelines.bench import Runner, make_runners, measure_rounds, resized, round_ratios
from dexrt.build.openvino import read_onnx_contract
from dexrt.evaluation.evaluate import evaluate
from dexrt.io.images import read_image
from dexrt.build.quantize import network_input

COLUMNS = [("bone/psnr", "bone PSNR", "{:.2f}"), ("bone/ssim", "bone SSIM", "{:.3f}"),
           ("soft/psnr", "soft PSNR", "{:.2f}"), ("soft/ssim", "soft SSIM", "{:.3f}"),
           ("bone_suppression", "bone supp.", "{:.3f}"), ("cnr/soft_pred_over_true", "CNR pred/true", "{:.2f}")]


def time_rows(engines: dict[str, dexrt.Engine], peers: dict[str, Runner], images: dict[int, np.ndarray],
              onnx_path: Path | None, rounds: int) -> dict[str, dict[int, list[float]]]:
    """Per row and size, `rounds` wall times from interleaved rounds (`dexrt.pipelines.bench.measure_rounds`)."""
    times: dict[str, dict[int, list[float]]] = {name: {} for name in (*engines, *peers)}
    for size, image in images.items():
        calls: dict[str, Callable[[Any], Any]] = {name: (lambda _, e=e: e.infer(image)) for name, e in engines.items()}
        if peers:
            assert onnx_path is not None
            x = network_input(image, read_onnx_contract(onnx_path))
            calls.update({name: (lambda _, r=r: r(x)) for name, r in peers.items()})
        for call in calls.values():
            call(None)  # compiles the shape
        for name, t in measure_rounds(calls, None, min_seconds=0.0, min_rounds=rounds).items():
            times[name][size] = t
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engines", nargs="+", type=Path)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--onnx", type=Path, help="Time the peers of `dexrt bench` on this ONNX too.")
    parser.add_argument("--calibration", type=Path, help="With --onnx: add OpenVINO's own INT8 (NNCF PTQ).")
    parser.add_argument("--checkpoint", type=Path,
                        help="With --onnx: the checkpoint it was exported from, to add torch eager (train extra).")
    parser.add_argument("-o", "--output", type=Path, default=Path("model-table.json"))
    args = parser.parse_args()

    engines = {p.stem: dexrt.Engine(p) for p in args.engines}
    rows = {}
    for name, engine in engines.items():
        result = evaluate(engine, args.dataset, split=args.split)
        m = engine.manifest
        rows[name] = {"engine": str(engine.path), "precision": engine.precision,
                      "ngf": m["model"]["config"].get("ngf"), "size_mb": engine.path.stat().st_size / 1e6,
                      "views": result["views"], "metrics": result["metrics"]}
        print(f"scored {name}", flush=True)
    manifest = json.loads((args.dataset / "manifest.json").read_text())
    first = next(v for v in manifest["views"] if v.get("split") == args.split)
    se = read_image(args.dataset / first["files"]["se"])
    images = {int(s): resized(se, int(s)) for s in args.sizes.split(",")}
    peers: dict[str, Runner] = {}
    if args.onnx is not None:
        wanted = ["openvino-python", "openvino-python-default", "onnxruntime"]
        wanted += ["openvino-python-int8"] if args.calibration is not None else []
        module = None
        if args.checkpoint is not None:
            from dexrt_train.checkpoint import load_checkpoint

            module, wanted = load_checkpoint(args.checkpoint).generator, [*wanted, "torch-eager"]
        peers = make_runners(args.onnx, module, engines=wanted, calibration=args.calibration)
        rows.update({name: {"engine": f"{name} ({args.onnx.name}, network only)", "precision": name.split("-")[-1]
                            if name.endswith(("int8", "default")) else "fp32", "metrics": {}} for name in peers})
    times = time_rows(engines, peers, images, args.onnx, args.rounds)
    reference = next(iter(peers), None)
    for name in rows:
        rows[name]["latency_ms"] = {str(s): {"p50": statistics.median(t) * 1e3,
                                             "p99": float(np.percentile(t, 99)) * 1e3,
                                             "images_per_s": 1.0 / statistics.median(t)}
                                    for s, t in times[name].items()}
        if reference is not None:
            rows[name]["time_ratio_to"] = reference
            rows[name]["time_ratio"] = {str(s): dict(zip(("median", "quartiles"), round_ratios(t, times[reference][s])))
                                        for s, t in times[name].items()}

    header = ["engine", "precision", "MB"] + [c[1] for c in COLUMNS] + [f"{s}² ms p50 / p99" for s in images]
    header += [f"{s}² time vs {reference}" for s in images] if reference else []
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, r in rows.items():
        cells = [name, r["precision"], f"{r['size_mb']:.1f}" if "size_mb" in r else ""]
        cells += [fmt.format(r["metrics"][key]) if key in r["metrics"] else "n/a" for key, _, fmt in COLUMNS]
        cells += [f"{r['latency_ms'][str(s)]['p50']:.2f} / {r['latency_ms'][str(s)]['p99']:.2f}" for s in images]
        if reference:
            cells += [f"{r['time_ratio'][str(s)]['median']:.2f} [{r['time_ratio'][str(s)]['quartiles'][0]:.2f}, "
                      f"{r['time_ratio'][str(s)]['quartiles'][1]:.2f}]" for s in images]
        print("| " + " | ".join(cells) + " |")
    report = {"dataset": str(args.dataset), "split": args.split, "rounds": args.rounds,
              "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "engines": rows}
    args.output.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
