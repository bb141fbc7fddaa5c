"""Soak test of the batched runtime: many inferences from many threads; memory must stay flat and every result
must be the one for its own input.

    python benchmarks/soak.py [--engine model.dexrt] [--requests 100000] [--threads 8] [--size 256]

Without --engine a random-weight U-Net (ngf 8) is built (needs the train extra). Exits non-zero when a result
is lost, duplicated or mixed up, or when resident memory grows by more than --max-rss-growth-mb between the end
of the warm-up and the end of the run. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import dexrt


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def default_engine(folder: Path) -> Path:
    import torch

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from helpers import build_bundle

    from dexrt_train.export import export_onnx
    from dexrt_train.networks import GeneratorConfig, define_G

    torch.manual_seed(0)
    config = GeneratorConfig(ngf=8)
    onnx_path = export_onnx(define_G(config), config, folder / "soak.onnx")
    return build_bundle(onnx_path, folder / "soak.dexrt")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", type=Path)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--distinct", type=int, default=64, help="distinct images, each checked against its own result")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dexrt-soak-") as tmp:
        engine_path = args.engine or default_engine(Path(tmp))
        images = [(np.random.default_rng(i).random((args.size, args.size)) * 65535).astype(np.uint16)
                  for i in range(args.distinct)]
        with dexrt.Engine(engine_path, max_batch=8, max_delay_us=1000) as engine:
            expected = [engine.infer(x) for x in images]
            counts = [0] * args.threads
            mismatches: list[str] = []
            lock = threading.Lock()
            warmup = min(5000, args.requests // 10)
            rss_after_warmup = [0.0]
            done_warmup = threading.Event()
            issued = [0]

            def client(k: int) -> None:
                rng = np.random.default_rng(1000 + k)
                while True:
                    with lock:
                        if issued[0] >= args.requests:
                            return
                        issued[0] += 1
                        if issued[0] == warmup:
                            done_warmup.set()
                    i = int(rng.integers(args.distinct))
                    bone, soft = engine.submit(images[i]).result()
                    if not (np.array_equal(bone, expected[i][0]) and np.array_equal(soft, expected[i][1])):
                        with lock:
                            mismatches.append(f"client {k}: result for image {i} is not its own")
                    counts[k] += 1

            start = time.perf_counter()
            threads = [threading.Thread(target=client, args=(k,)) for k in range(args.threads)]
            for t in threads:
                t.start()
            done_warmup.wait()
            rss_after_warmup[0] = rss_mb()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
            rss_end = rss_mb()
            stats = engine.stats()

    completed = sum(counts)
    summary = {
        "requests": args.requests,
        "completed": completed,
        "engine_requests": stats["requests"] - args.distinct,
        "mismatches": len(mismatches),
        "seconds": round(elapsed, 1),
        "images_per_s": round(completed / elapsed, 1),
        "rss_after_warmup_mb": round(rss_after_warmup[0], 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - rss_after_warmup[0], 1),
        "batch_sizes": stats["batch_sizes"],
        "total_us_p50": stats.get("total_us", {}).get("p50"),
        "total_us_p99": stats.get("total_us", {}).get("p99"),
    }
    print(json.dumps(summary, indent=2))
    ok = (completed == args.requests and summary["engine_requests"] == args.requests and not mismatches
          and summary["rss_growth_mb"] < args.max_rss_growth_mb)
    for m in mismatches[:10]:
        print(m, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
