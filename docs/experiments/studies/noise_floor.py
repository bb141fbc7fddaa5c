"""The best score a model could reach on a noisy `dexrt synth` dataset: the noise-free DE pair scored against
the stored (noisy) one with `dexrt eval`'s metrics.

A model sees one noisy SE image and cannot predict the independent quantum noise of the two DE exposures, so
its ideal output is the noise-free DE pair; the metrics of that pair are the ceiling of any model's.

    python docs/experiments/studies/noise_floor.py DATASET [--views 12]

Re-renders the first N views of the test split with and without noise, with this dexrt and the dataset's view
plan (re-drawn from its manifest's seed; the dataset must come from `dexrt synth --ct example` with default
imaging options) and value encoding. The stored images are not read: the figure is the noise floor of the
physics at the dataset's doses, which holds for a dataset rendered by an earlier dexrt at the same doses too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dexrt.synth.ct import load_ct
from dexrt.synth.writer import DatasetConfig, plan_views
from dexrt.synth.example import fetch_example
from dexrt.synth.render import ImagingConfig, Renderer
from dexrt.synth.volume import EXAMPLE_RULES
from dexrt.runtime.contract import Encoding, metric_unit
from dexrt.evaluation.metrics import summarize, view_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--views", type=int, default=12)
    args = parser.parse_args()

    manifest = json.loads((args.dataset / "manifest.json").read_text())
    generator, lesions = manifest["generator"], manifest.get("lesions") or {}
    ct_file, labels = fetch_example()
    renderer = Renderer(load_ct(str(ct_file), str(labels)), ImagingConfig(size=tuple(manifest["size"]),
                                                                          rules=EXAMPLE_RULES))
    plan = DatasetConfig(views=generator["views"], seed=generator["seed"],
                         lesion_prob=lesions.get("probability", 0.0), max_lesions=lesions.get("max_per_view", 2),
                         lesion_diameter_mm=tuple(lesions.get("diameter_mm", (5.0, 30.0))),
                         tilt_jitter_deg=generator["tilt_jitter_deg"],
                         couch_jitter_deg=generator["couch_jitter_deg"])
    views, splits = plan_views(renderer, plan)
    stored = {v["id"]: v for v in manifest["views"]}
    encoding = manifest["encoding"]

    def unit(x: np.ndarray, channel: str) -> np.ndarray:  # as stored (uint16), then scored like `dexrt eval`
        e = Encoding.from_manifest(encoding[channel])
        return metric_unit(e.physical(e.stored(x)[0]), channel)

    per_view = []
    for view in [v for v, s in zip(views, splits) if s == args.split][:args.views]:
        if abs((stored[view.id]["geometry"]["gantry_deg"] - view.gantry_deg + 180) % 360 - 180) > 1e-3:
            raise SystemExit(f"{args.dataset}: view {view.id} does not match the re-drawn plan; not a default "
                             "`dexrt synth --ct example` dataset")
        noisy, clean = renderer.render(view, noise=True), renderer.render(view, noise=False)
        true = np.stack([unit(noisy["bone"], "bone"), unit(noisy["soft"], "soft")])
        ideal = np.stack([unit(clean["bone"], "bone"), unit(clean["soft"], "soft")])
        mask = noisy["mask"] if view.lesions and noisy["mask"].any() else None
        per_view.append(view_metrics(unit(noisy["se"], "se"), true, ideal, mask, ("bone", "soft")))
    result = summarize(per_view)
    print(json.dumps({"dataset": str(args.dataset), "split": args.split, "views": len(per_view),
                      "noise_free_vs_stored": result}, indent=1))


if __name__ == "__main__":
    main()
