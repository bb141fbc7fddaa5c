"""Validation during training: the generator (eval mode) on whole val views, metrics and a sample panel."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dexrt.evaluation.metrics import scored_view, summarize, write_panel
from dexrt.runtime.contract import DATASET_CHANNELS, OUTPUT_CHANNELS, areal_densities, mirror_pad, unit_to_window
from dexrt_train.config import BEST_METRICS
from dexrt_train.data import PairedDataset


@torch.no_grad()
def predict(G: nn.Module, se: torch.Tensor, size_multiple: int, autocast: contextlib.AbstractContextManager) -> torch.Tensor:
    """(N, 1, H, W) in [-1, 1] -> (N, 2, H, W): mirror-padded to the size multiple exactly as the runtime pads."""
    x, (rows, cols) = mirror_pad(se.cpu().numpy(), size_multiple)
    with autocast:
        y = G(torch.from_numpy(np.ascontiguousarray(x)).to(se.device))
    return y[..., rows, cols].float()


def validate(G: nn.Module, dataset: PairedDataset, *, device: torch.device, size_multiple: int,
             autocast: contextlib.AbstractContextManager, max_views: int = 0, panel: Path | None = None,
             panel_views: int = 4) -> dict[str, float]:
    """Mean metrics over the val views (all of them, or the first `max_views`), in physical units as `dexrt eval`
    scores them; writes the sample panel."""
    was_training = G.training
    G.eval()
    per_view, rows = [], []
    n = len(dataset) if max_views <= 0 else min(max_views, len(dataset))
    windows = dict(zip(DATASET_CHANNELS, dataset.windows))
    try:
        for i in range(n):
            sample = dataset[i]
            se = sample["se"][None].to(device)  # (1, 1, H, W)
            pred = predict(G, se, size_multiple, autocast)[0].cpu().numpy()  # (2, H, W)
            values = {c: unit_to_window(a, windows[c]) for c, a in
                      (("se", sample["se"][0].numpy()), *zip(OUTPUT_CHANNELS, sample["de"].numpy()))}
            predicted = {c: unit_to_window(p, windows[c]) for c, p in zip(OUTPUT_CHANNELS, pred)}
            if dataset.norm is not None:  # normalised units -> physical, as `dexrt eval` scores a normalised engine
                values, predicted = _physical(values, predicted, sample["norm"].numpy())
            mask = sample["mask"][0].numpy() > 0.5 if sample["has_mask"] else None
            metrics, row = scored_view(values["se"], {c: values[c] for c in OUTPUT_CHANNELS}, predicted, mask)
            per_view.append(metrics)
            if len(rows) < panel_views:
                rows.append(row)
    finally:
        G.train(was_training)
    if panel is not None and rows:
        write_panel(panel, rows)
    return summarize(per_view)


def _physical(values: dict[str, np.ndarray], predicted: dict[str, np.ndarray], norm: np.ndarray
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Normalised SE, true and predicted parts -> SE attenuation and g/cm^2 (norm: lo, span, a, kb, ks)."""
    lo, span = float(norm[0]), float(norm[1])
    coefficients = (float(norm[2]), float(norm[3]), float(norm[4]))

    def densities(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        bone, soft = areal_densities(parts["bone"] * span, parts["soft"] * span + lo, coefficients)
        return {"bone": bone, "soft": soft}

    return {"se": values["se"] * span + lo, **densities(values)}, densities(predicted)


def score(metrics: dict[str, float], name: str) -> float:
    """One number to pick the best checkpoint by: the metric averaged over bone and soft (lower is better)."""
    if name not in BEST_METRICS:
        raise ValueError(f"best metric must be one of {sorted(BEST_METRICS)}, got {name!r}")
    value = float(np.mean([metrics[f"bone/{name}"], metrics[f"soft/{name}"]]))
    return value if BEST_METRICS[name] == "min" else -value
