"""Quality against speed for trained engine bundles: test-split metrics and CPU latency, measured in one run.

    python benchmarks/model_table.py --dataset DATA [--split test] [--sizes 256,512] [--rounds 30] \
        -o table.json ngf16_fp32.dexrt ngf16_int8.dexrt ...

Each engine is scored with `dexrt eval`'s metrics on the split, then timed on one uint16 image per size
(the split's first SE view, resized), the engines taking turns round by round so that a busy machine slows all
of them alike. Prints a Markdown table (p50 latency per size) and writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

import dexrt
from dexrt.evaluate import evaluate
from dexrt.images import read_image

COLUMNS = [("bone/psnr", "bone PSNR", "{:.2f}"), ("bone/ssim", "bone SSIM", "{:.3f}"),
           ("soft/psnr", "soft PSNR", "{:.2f}"), ("soft/ssim", "soft SSIM", "{:.3f}"),
           ("bone_suppression", "bone supp.", "{:.3f}"), ("cnr/soft_pred_over_true", "CNR pred/true", "{:.2f}")]


def resized(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize: the content does not matter for timing, only the shape and dtype."""
    rows = np.arange(size) * image.shape[0] // size
    cols = np.arange(size) * image.shape[1] // size
    return np.ascontiguousarray(image[rows][:, cols])


def time_engines(engines: dict[str, dexrt.Engine], images: dict[int, np.ndarray], rounds: int
                 ) -> dict[str, dict[int, list[float]]]:
    times: dict[str, dict[int, list[float]]] = {name: {s: [] for s in images} for name in engines}
    for size, image in images.items():
        for engine in engines.values():
            engine.infer(image)  # compiles the shape
        for _ in range(rounds):
            for name, engine in engines.items():
                t0 = time.perf_counter()
                engine.infer(image)
                times[name][size].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engines", nargs="+", type=Path)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--rounds", type=int, default=30)
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
    times = time_engines(engines, images, args.rounds)
    for name in engines:
        rows[name]["latency_ms"] = {str(s): {"p50": statistics.median(t) * 1e3, "p90": float(np.percentile(t, 90)) * 1e3}
                                    for s, t in times[name].items()}

    header = ["engine", "precision", "MB"] + [c[1] for c in COLUMNS] + [f"{s}² ms" for s in images]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, r in rows.items():
        cells = [name, r["precision"], f"{r['size_mb']:.1f}"]
        cells += [fmt.format(r["metrics"][key]) if key in r["metrics"] else "n/a" for key, _, fmt in COLUMNS]
        cells += [f"{r['latency_ms'][str(s)]['p50']:.1f}" for s in images]
        print("| " + " | ".join(cells) + " |")
    report = {"dataset": str(args.dataset), "split": args.split, "rounds": args.rounds,
              "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "engines": rows}
    args.output.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
