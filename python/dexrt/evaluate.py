"""`dexrt eval`: an engine against a `dexrt synth` dataset split (metrics as the trainer's validation).

Every image is scored in the engine's window-normalised range [0, 1] (stored value -> (v - lo) / (hi - lo)),
so PSNR and SSIM use data range 1, as in `dexrt train`'s validation (docs/training.md defines the metrics).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._errors import InputError
from dexrt.engine import Engine
from dexrt.images import read_image


def _load_manifest(dataset: Path) -> dict[str, Any]:
    path = dataset / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{dataset}: not a dexrt dataset (no manifest.json)") from None
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if manifest.get("format") != "dexrt-dataset":
        raise InputError(f"{path}: not a dexrt dataset manifest")
    return manifest


def evaluate(engine: Engine, dataset: Path, *, split: str = "test", max_views: int = 0,
             panel: Path | None = None, panel_views: int = 4) -> dict[str, Any]:
    from dexrt_train.metrics import mean_metrics, view_metrics  # numpy only: no torch needed

    manifest = _load_manifest(dataset)
    views = [v for v in manifest["views"] if v.get("split") == split]
    if not views:
        raise InputError(f"{dataset}: no views in split {split!r}")
    if max_views > 0:
        views = views[:max_views]
    (lo_in, hi_in) = engine.input_window
    out_windows = engine.output_windows
    channels = engine.channels

    def unit(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return (a.astype(np.float64) - lo) / (hi - lo)

    per_view, rows = [], []
    for view in views:
        se = read_image(dataset / view["files"]["se"])
        true = [read_image(dataset / view["files"][c]) for c in channels]
        pred = engine.infer(se)
        se_u = unit(se, lo_in, hi_in)
        true_u = np.stack([unit(t, *w) for t, w in zip(true, out_windows)])
        pred_u = np.stack([unit(p, *w) for p, w in zip(pred, out_windows)])
        mask = read_image(dataset / view["mask"]) > 0 if view.get("mask") else None
        per_view.append(view_metrics(se_u, true_u, pred_u, mask, channels))
        if len(rows) < panel_views:
            rows.append(np.concatenate([se_u, true_u[0], pred_u[0], true_u[1], pred_u[1]], axis=1))
    result = {"split": split, "views": len(views), "engine": str(engine.path), "metrics": mean_metrics(per_view)}
    if "cnr/soft_true" in result["metrics"]:
        m = result["metrics"]
        result["metrics"]["cnr/soft_pred_over_true"] = m["cnr/soft_pred"] / m["cnr/soft_true"]
    if panel is not None and rows:
        from dexrt.images import write_image

        image = np.clip(np.concatenate(rows, axis=0), 0, 1)
        panel.parent.mkdir(parents=True, exist_ok=True)
        write_image(panel, np.round(image * 65535).astype(np.uint16), {"panel": "SE | bone true | bone pred | "
                                                                          "soft true | soft pred"})
    return result
