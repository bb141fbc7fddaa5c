"""Where an engine's error lies in scale: each channel's mean squared error split into spatial bands.

    python benchmarks/error_bands.py ENGINE DATASET:SPLIT[:MAX_VIEWS] [DATASET:SPLIT ...] [--json out.json]

The error image (predicted minus true, in the metric units of `dexrt eval`, docs/training.md) is split by
differences of Gaussian blurs at sigma 1, 2, 4, 8 and 16 px into six bands: finer than 1 px, 1-2, 2-4, 4-8, 8-16
and coarser than 16 px (the last is the sigma-16 blur itself). The bands' mean squares, averaged over the views,
are printed as shares of their sum (which is close to the MSE: the bands are nearly orthogonal), so two sets (unseen angles against fresh views inside
the training ranges, say) show at which scales one has more error than the other.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

import dexrt
from dexrt.evaluate import predicted_views
from dexrt.metrics import metric_unit

SIGMAS = (1, 2, 4, 8, 16)
BANDS = ("<1", "1-2", "2-4", "4-8", "8-16", ">16")


def band_energies(error: np.ndarray) -> np.ndarray:
    """Mean squares of `error` (H, W) in the BANDS, finest first."""
    error = error.astype(np.float64)
    out, finer = [], error
    for sigma in SIGMAS:
        low = gaussian_filter(error, sigma, mode="nearest")  # the error blurred at this scale
        out.append(np.mean((finer - low) ** 2))
        finer = low
    out.append(np.mean(finer**2))
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", type=Path)
    parser.add_argument("sets", nargs="+", help="DATASET:SPLIT[:MAX_VIEWS]")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    engine = dexrt.Engine(args.engine)
    report: dict[str, dict] = {}
    print("| set | channel | views | " + " | ".join(f"{b} px" for b in BANDS) + " | sum |")
    print("|---|---|---|" + "---|" * (len(BANDS) + 1))
    for spec in args.sets:
        dataset, split, *rest = spec.split(":")
        sums: dict[str, np.ndarray] = {}
        n = 0
        for n, (_, true, pred, _) in enumerate(predicted_views(engine, dataset, split=split,
                                                               max_views=int(rest[0]) if rest else 0), 1):
            for c in true:
                e = band_energies(metric_unit(pred[c], c) - metric_unit(true[c], c))
                sums[c] = sums.get(c, 0) + e
        for c, total in sums.items():
            mean = total / n
            report.setdefault(spec, {})[c] = {"views": n, "bands_px": list(BANDS), "mse": mean.tolist()}
            shares = " | ".join(f"{v:.3f}" for v in mean / mean.sum())
            print(f"| {spec} | {c} | {n} | {shares} | {mean.sum():.3g} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
