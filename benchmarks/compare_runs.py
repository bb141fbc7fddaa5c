"""Do two benchmark runs agree? Compares the time ratios of two result files of the same benchmark.

    python benchmarks/compare_runs.py first.json second.json [--tolerance 0.05]

Reads `dexrt bench` results (schema dexrt-bench/2: each row's median per-round ratio to the reference engine) and
`docs/experiments/studies/model_table.py` results (each row's median per-round ratio to its first peer). Prints, per
row, both ratios and their relative difference, and exits 1 when any differs by more than the tolerance: run the
benchmark twice on the same machine to see whether its repeats are enough there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def ratios(path: Path) -> dict[str, float]:
    """Row key -> median time ratio."""
    report = json.loads(path.read_text())
    if str(report.get("schema", "")).startswith("dexrt-bench/"):
        return {f"{r['engine']} {r['height']}x{r['width']} batch {r['batch']}": r["ratio_to_reference"]
                for r in report["results"]}
    if "engines" in report:
        return {f"{name} {size}^2": ratio["median"] for name, row in report["engines"].items()
                for size, ratio in row.get("time_ratio", {}).items()}
    raise SystemExit(f"{path}: neither a dexrt bench nor a model_table result file")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.05)
    args = parser.parse_args()
    a, b = ratios(args.first), ratios(args.second)
    worst = 0.0
    print(f"{'row':48s} {'first':>7s} {'second':>7s} {'diff':>7s}")
    for key in sorted(set(a) & set(b)):
        diff = abs(b[key] - a[key]) / a[key]
        worst = max(worst, diff)
        print(f"{key:48s} {a[key]:7.3f} {b[key]:7.3f} {diff:7.1%}")
    missing = sorted(set(a) ^ set(b))
    if missing:
        print(f"rows in only one run: {', '.join(missing)}")
    print(f"largest difference {worst:.1%} (tolerance {args.tolerance:.0%})")
    sys.exit(1 if worst > args.tolerance or missing else 0)


if __name__ == "__main__":
    main()
