"""How far `dexrt infer`'s pixel-spacing estimate and domain check land on DRRs whose spacing is known.

    dexrt synth --ct example -o drr_256_567 --views 24 --size 256 --detector-mm 567
    ...  (other --size / --detector-mm pairs)
    python docs/experiments/studies/spacing_estimate.py drr_256_567 drr_384_567 ... [--frontal-deg 15]

For every view of every dataset, the SE image is measured (dexrt.inputs.chest) as it is and after what real radiographs
go through: a gamma 0.5 look-up table, unsharp masking (sigma 8 px, amount 1), collimated borders (8 % of each side
set to the unexposed level), a burnt-in marker, 4x the noise, and inverted polarity. The body width estimate
(dexrt.inputs.spacing) is compared with the true spacing at the isocentre (the manifest's ``geometry.pixel_at_iso_mm``);
the domain check's verdict and the "body cut by the field" flag are counted. Views are grouped by gantry angle:
frontal (within --frontal-deg of AP or PA, the views a chest radiograph is), oblique, and lateral (within
--frontal-deg of 90 or 270). Prints one table row per group and variant, and the JSON with --json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dexrt.inputs.chest import measure
from dexrt.inputs.domain import content_reasons
from dexrt.io.images import read_image
from dexrt.inputs.spacing import resolve


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur, edges replicated."""
    r = int(3 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(image, r, mode="edge")
    rows = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, padded)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, rows).astype(np.float32)


def variants(image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    x = image.astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    unit = (x - lo) / max(hi - lo, 1e-6)
    blurred = blur(unit, 8)
    collimated = unit.copy()
    h, w = unit.shape
    ch, cw = int(0.08 * h), int(0.08 * w)
    collimated[:ch] = collimated[-ch:] = 1.0
    collimated[:, :cw] = collimated[:, -cw:] = 1.0
    marked = unit.copy()
    marked[int(0.1 * h):int(0.16 * h), int(0.04 * w):int(0.1 * w)] = 1.0
    noise = float(np.std(unit - blur(unit, 1)))
    return {
        "as rendered": unit,
        "gamma 0.5": unit ** 0.5,
        "unsharp mask": np.clip(unit + 1.0 * (unit - blurred), 0, None),
        "collimated": collimated,
        "marker": marked,
        "4x noise": unit + rng.normal(0, 3 * noise, unit.shape).astype(np.float32),
        "inverted": 1.0 - unit,
    }


def group(gantry: float, frontal: float) -> str:
    g = gantry % 180
    if min(g, 180 - g) <= frontal:
        return "frontal"
    if abs(g - 90) <= frontal:
        return "lateral"
    return "oblique"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", type=Path, nargs="+")
    parser.add_argument("--frontal-deg", type=float, default=15.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rows: dict[tuple[str, str], dict[str, list]] = {}
    for folder in args.datasets:
        manifest = json.loads((folder / "manifest.json").read_text())
        truth = manifest["geometry"]["pixel_at_iso_mm"]
        for view in manifest["views"]:
            kind = group(view["geometry"]["gantry_deg"], args.frontal_deg)
            for name, image in variants(read_image(folder / view["files"]["se"]), rng).items():
                anatomy = measure(image)
                reasons = content_reasons(anatomy)
                estimate = resolve(None, anatomy, image.shape)
                row = rows.setdefault((kind, name), {"error": [], "in_domain": [], "cut": []})
                row["in_domain"].append(not reasons)
                row["cut"].append(anatomy.cut)
                if estimate is not None:
                    row["error"].append(estimate.col_mm / truth - 1)
    table = []
    for (kind, name), row in sorted(rows.items()):
        err = np.array(row["error"]) * 100
        table.append({"views": kind, "variant": name, "n": len(row["in_domain"]),
                      "in_domain": int(np.sum(row["in_domain"])), "cut": int(np.sum(row["cut"])),
                      "mean_error_pct": round(float(err.mean()), 1) if err.size else None,
                      "max_abs_error_pct": round(float(np.abs(err).max()), 1) if err.size else None})
    if args.json:
        print(json.dumps(table, indent=2))
        return
    print(f"{'views':8} {'variant':13} {'n':>4} {'in domain':>9} {'cut':>4} {'mean err %':>10} {'max |err| %':>11}")
    for t in table:
        print(f"{t['views']:8} {t['variant']:13} {t['n']:4d} {t['in_domain']:9d} {t['cut']:4d} "
              f"{t['mean_error_pct'] if t['mean_error_pct'] is not None else '-':>10} "
              f"{t['max_abs_error_pct'] if t['max_abs_error_pct'] is not None else '-':>11}")


if __name__ == "__main__":
    main()
