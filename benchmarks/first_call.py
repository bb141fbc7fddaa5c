"""First-call latency of a new process: `Engine(path).infer(image)` with and without OpenVINO's model cache.

    python benchmarks/first_call.py [ENGINE] --size 512 --repeats 3

Each measurement is a fresh Python process (load the bundle, compile the network for the shape, run once); the
cached rows run after one process has filled the cache. Peers in the same run: the second call of the same
process (the steady state).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import sys, time, numpy as np, dexrt
t0 = time.perf_counter()
engine = dexrt.Engine(sys.argv[1] or None, cache_dir=sys.argv[3] or None)
image = np.full((int(sys.argv[2]),) * 2, 20000, np.uint16)
t1 = time.perf_counter(); engine.infer(image); t2 = time.perf_counter(); engine.infer(image); t3 = time.perf_counter()
print(f"{t1 - t0} {t2 - t1} {t3 - t2}")
"""


def run(engine: str, size: int, cache: str) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, engine, str(size), cache], capture_output=True, text=True,
                         check=True).stdout.split()
    load, first, second = (float(v) for v in out)
    return load, first, second


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine", nargs="?", default="", help="engine bundle [the bundled default model]")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rows: dict[str, list[tuple[float, float, float]]] = {"no cache": [], "cold cache": [], "warm cache": []}
    for _ in range(args.repeats):
        rows["no cache"].append(run(args.engine, args.size, ""))
        with tempfile.TemporaryDirectory() as cache:
            rows["cold cache"].append(run(args.engine, args.size, cache))
            rows["warm cache"].append(run(args.engine, args.size, cache))
    summary = {name: {"load_s": statistics.median(r[0] for r in v), "first_call_s": statistics.median(r[1] for r in v),
                      "second_call_s": statistics.median(r[2] for r in v)} for name, v in rows.items()}
    print(json.dumps({"size": args.size, "repeats": args.repeats, **summary}, indent=1))


if __name__ == "__main__":
    main()
