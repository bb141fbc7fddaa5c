"""Where an engine's error lies in scale: each channel's mean squared error split by spatial wavelength.

    python docs/experiments/studies/error_bands.py ENGINE DATASET:SPLIT[:MAX_VIEWS] [DATASET:SPLIT ...] \
        [--json out.json]

The error image (predicted minus true, in the metric units of `dexrt eval`, docs/training.md) is split in the Fourier
domain into six bands of wavelength (`dexrt.evaluation.metrics.error_bands`): below 4 px, 4-8, 8-16, 16-32, 32-64 and 64
px or longer (the mean error included). The bands add up to the MSE. Averaged over the views, they are printed as shares
of it and the MSE itself, so two sets (unseen angles against fresh views inside the training ranges, say) show at which
scales one has more error than the other.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import dexrt
from dexrt.evaluation.evaluate import predicted_views
from dexrt.evaluation.metrics import ERROR_BAND_WAVELENGTHS, error_bands, metric_unit

_W = [f"{w:g}" for w in ERROR_BAND_WAVELENGTHS]
BANDS = (f"<{_W[0]}", *(f"{a}-{b}" for a, b in zip(_W, _W[1:])), f">={_W[-1]}")  # px


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", type=Path)
    parser.add_argument("sets", nargs="+", help="DATASET:SPLIT[:MAX_VIEWS]")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    engine = dexrt.Engine(args.engine)
    report: dict[str, dict] = {}
    print("| set | channel | views | " + " | ".join(f"{b} px" for b in BANDS) + " | MSE |")
    print("|---|---|---|" + "---|" * (len(BANDS) + 1))
    for spec in args.sets:
        dataset, split, *rest = spec.split(":")
        sums: dict[str, np.ndarray] = {}
        n = 0
        for n, (_, true, pred, _) in enumerate(predicted_views(engine, dataset, split=split,
                                                               max_views=int(rest[0]) if rest else 0), 1):
            for c in true:
                e = error_bands(metric_unit(pred[c], c), metric_unit(true[c], c))
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
