"""`dexrt eval`: an engine against a dataset split, in physical units.

The dataset's stored images are converted to physical values through the dataset's own encoding, fed to the
engine in the engine's stored convention (its recorded encoding), and its outputs converted back to physical
values. The same views stored in two uint16 windows therefore score the same. Metrics use each quantity's fixed
metric window (`dexrt.runtime.contract.QUANTITIES`), as in the trainer's validation (docs/training.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._errors import InputError
from dexrt.runtime.contract import Encoding, areal_densities, decomposition
from dexrt.io.dataset import open_dataset
from dexrt.runtime.engine import Engine
from dexrt.evaluation.metrics import scored_view, summarize, write_panel

log = logging.getLogger(__name__)


def evaluate(engine: Engine, dataset: str | os.PathLike[str], *, split: str = "test", max_views: int = 0,
             panel: Path | None = None, panel_views: int = 4) -> dict[str, Any]:
    per_view: list[dict[str, float]] = []
    rows: list[np.ndarray] = []
    n = 0
    for n, (se, true, pred, mask) in enumerate(predicted_views(engine, dataset, split=split, max_views=max_views), 1):
        metrics, row = scored_view(se, true, pred, mask)
        per_view.append(metrics)
        if len(rows) < panel_views:
            rows.append(row)
    result = {"split": split, "views": n, "engine": str(engine.path), "metrics": summarize(per_view)}
    if panel is not None and rows:
        write_panel(panel, rows)
    return result


def predicted_views(engine: Engine, dataset: str | os.PathLike[str], *, split: str = "test", max_views: int = 0
                    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]]:
    """Per view of the split: (SE, true outputs, the engine's outputs, lesion mask or None), all physical."""
    # A scale-free engine sees a processed image as it is: it is scored against the DE pair as the processing shows it
    ds = open_dataset(dataset, processed=engine.normalised)
    views = ds.split(split)
    if not views:
        raise InputError(f"{dataset}: no views in split {split!r}")
    if max_views > 0:
        views = views[:max_views]
    channels = engine.channels
    missing = [c for c in channels if c not in ds.encodings]
    if missing:
        raise InputError(f"{dataset}: the engine's outputs {missing} are not channels of the dataset")
    if not engine.normalised:
        in_enc, out_enc = _engine_encodings(engine, ds.encodings)

    for view in views:
        stored_se = ds.stored(view, "se")
        se = ds.encodings["se"].physical(stored_se)
        true = {c: ds.physical(view, c) for c in channels}
        if engine.normalised:
            # Scale-free engine: its outputs are the SE image's bone and soft parts, in SE units; the view's own
            # protocol (the SE ~ a + kb bone + ks soft fit of its true images) turns them into g/cm^2.
            parts = dict(zip(channels, engine.infer(se.astype(np.float32))))
            bone, soft = areal_densities(parts["bone"], parts["soft"], decomposition(se, true["bone"], true["soft"]))
            pred = {"bone": bone, "soft": soft}
        else:
            # Stored as the engine reads them: the file's own values, as deployed; otherwise float32 (no rounding)
            stored = engine.infer(stored_se if in_enc == ds.encodings["se"] else in_enc.stored_float(se))
            pred = {c: out_enc[c].physical(p) for c, p in zip(channels, stored)}
        yield se, true, pred, ds.mask(view)


def _engine_encodings(engine: Engine, dataset: dict[str, Encoding]) -> tuple[Encoding, dict[str, Encoding]]:
    """What the engine's stored values mean; an engine that records nothing is taken to share the dataset's."""
    if engine.input_encoding is None:
        log.warning("%s records no physical encoding of its values: assuming it was trained on data stored like "
                    "this dataset's", engine.path)
        return dataset["se"], {c: dataset[c] for c in engine.channels}
    return engine.input_encoding, dict(zip(engine.channels, engine.output_encodings))
