"""Validation during training: the generator (eval mode) on whole val views, metrics and a sample panel."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dexrt.images import write_image
from dexrt_train.data import PairedDataset
from dexrt_train.metrics import mean_metrics, view_metrics

BEST_METRICS = {"mae": "min", "psnr": "max", "ssim": "max"}


@torch.no_grad()
def predict(G: nn.Module, se: torch.Tensor, size_multiple: int, autocast: contextlib.AbstractContextManager) -> torch.Tensor:
    """(N, 1, H, W) in [-1, 1] -> (N, 2, H, W): mirror-padded to the size multiple (as the runtime does)."""
    h, w = se.shape[-2:]
    hp, wp = -(-h // size_multiple) * size_multiple, -(-w // size_multiple) * size_multiple
    top, left = (hp - h) // 2, (wp - w) // 2
    x = se
    if (hp, wp) != (h, w):
        # numpy's reflect also handles padding wider than the image (repeated reflection), like the runtime
        pad = ((0, 0), (0, 0), (top, hp - h - top), (left, wp - w - left))
        x = torch.from_numpy(np.pad(se.cpu().numpy(), pad, mode="reflect")).to(se.device)
    with autocast:
        y = G(x)
    return y[..., top : top + h, left : left + w].float()


def validate(G: nn.Module, dataset: PairedDataset, *, device: torch.device, size_multiple: int,
             autocast: contextlib.AbstractContextManager, max_views: int = 0, panel: Path | None = None,
             panel_views: int = 4) -> dict[str, float]:
    """Mean metrics over the val views (all of them, or the first `max_views`); writes the sample panel."""
    was_training = G.training
    G.eval()
    per_view, rows = [], []
    n = len(dataset) if max_views <= 0 else min(max_views, len(dataset))
    try:
        for i in range(n):
            sample = dataset[i]
            se = sample["se"][None].to(device)  # (1, 1, H, W)
            pred = predict(G, se, size_multiple, autocast)[0].cpu().numpy()  # (2, H, W)
            unit = lambda a: (np.asarray(a, np.float64) + 1.0) / 2.0  # noqa: E731  [-1, 1] -> [0, 1]
            se_u, true_u, pred_u = unit(sample["se"][0]), unit(sample["de"]), unit(pred)
            mask = sample["mask"][0].numpy() > 0.5 if sample["has_mask"] else None
            per_view.append(view_metrics(se_u, true_u, pred_u, mask))
            if len(rows) < panel_views:
                rows.append(np.concatenate([se_u, true_u[0], pred_u[0], true_u[1], pred_u[1]], axis=1))
    finally:
        G.train(was_training)
    if panel is not None and rows:
        write_panel(panel, rows)
    return mean_metrics(per_view)


def write_panel(path: Path, rows: list[np.ndarray]) -> None:
    """Rows of SE | true bone | pred bone | true soft | pred soft, [0, 1] -> 16-bit PNG."""
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows]
    image = np.clip(np.concatenate(rows, axis=0), 0.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.rint(image * 65535).astype(np.uint16),
                {"panel": "rows of views; columns: se | true bone | pred bone | true soft | pred soft"})


def score(metrics: dict[str, float], name: str) -> float:
    """One number to pick the best checkpoint by: the metric averaged over bone and soft (lower is better)."""
    if name not in BEST_METRICS:
        raise ValueError(f"best metric must be one of {sorted(BEST_METRICS)}, got {name!r}")
    value = float(np.mean([metrics[f"bone/{name}"], metrics[f"soft/{name}"]]))
    return value if BEST_METRICS[name] == "min" else -value
