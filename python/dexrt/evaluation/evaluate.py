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
from dexrt.io.dataset import Dataset, StoredView, open_dataset
from dexrt.runtime.engine import Engine
from dexrt.evaluation.metrics import scored_view, summarize, write_panel

log = logging.getLogger(__name__)


def evaluate(engine: Engine, dataset: str | os.PathLike[str], *, split: str = "test", max_views: int = 0,
             panel: Path | None = None, panel_views: int = 4, full_resolution: bool = False) -> dict[str, Any]:
    """Mean metrics over the split's views, overall and per patient (`patients`: name -> views, metrics; a
    held-out patient's also `by_angle_split`: its views at the plan's train, val and test angles apart). The panel
    shows the first `panel_views` views of each patient (at most 4 patients)."""
    per_view: list[dict[str, float]] = []
    rows: dict[str, list[np.ndarray]] = {}
    ds = open_dataset(dataset)
    scored = _split_views(ds, dataset, split, max_views)
    patients = [v.patient for v in scored]
    angle_splits = _angle_splits(ds, scored)
    n = 0
    views = predicted_views(engine, dataset, split=split, max_views=max_views, full_resolution=full_resolution)
    for n, (se, true, pred, mask) in enumerate(views, 1):
        metrics, row = scored_view(se, true, pred, mask)
        per_view.append(metrics)
        patient_rows = rows.setdefault(patients[n - 1], [])
        if len(patient_rows) < panel_views and len(rows) <= 4:
            patient_rows.append(row)
    by_patient: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(patients):
        mine = [m for m, p in zip(per_view, patients) if p == name]
        by_patient[name] = {"views": len(mine), "metrics": summarize(mine)}
        angles = [a for a, p in zip(angle_splits, patients) if p == name]
        if any(angles):
            by_patient[name]["by_angle_split"] = {
                s: {"views": len(at), "metrics": summarize(at)}
                for s in dict.fromkeys(a for a in angles if a)
                for at in [[m for m, a, p in zip(per_view, angle_splits, patients) if p == name and a == s]]}
    result = {"split": split, "views": n, "engine": str(engine.path), "metrics": summarize(per_view),
              "patients": by_patient}
    if full_resolution:
        result["full_resolution"] = {"upsampling": engine.upsampling, "model_spacing_mm": engine.model_spacing_mm}
    if panel is not None and rows:
        write_panel(panel, [r for patient_rows in rows.values() for r in patient_rows])
    return result


def _angle_splits(ds: Dataset, views: list[StoredView]) -> list[str | None]:
    """Per view, the split its angle has in the plan, where the manifest records one (held-out patients)."""
    recorded = {str(v.get("id")): v.get("angle_split") for v in ds.manifest.get("views", []) if isinstance(v, dict)}
    return [a if isinstance(a := recorded.get(v.id), str) else None for v in views]


def _split_views(ds: Dataset, dataset: str | os.PathLike[str], split: str, max_views: int) -> list[StoredView]:
    views = ds.split(split)
    if not views:
        raise InputError(f"{dataset}: no views in split {split!r}")
    return views[:max_views] if max_views > 0 else views


def predicted_views(engine: Engine, dataset: str | os.PathLike[str], *, split: str = "test", max_views: int = 0,
                    full_resolution: bool = False
                    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]]:
    """Per view of the split: (SE, true outputs, the engine's outputs, lesion mask or None), all physical.

    ``full_resolution``: each view runs through the engine's full-resolution call with its pixel spacing (the view's
    own where the manifest records one, a magnified chain view's, else the dataset's): down to the model's spacing,
    the network, the outputs back at the view's size, what `dexrt infer` does to a detector frame; it is scored at
    its own size. Otherwise the network sees the views at their stored size."""
    # A scale-free engine sees a processed image as it is: it is scored against the DE pair as the processing shows it
    ds = open_dataset(dataset, processed=engine.normalised)
    views = _split_views(ds, dataset, split, max_views)
    channels = engine.channels
    missing = [c for c in channels if c not in ds.encodings]
    if missing:
        raise InputError(f"{dataset}: the engine's outputs {missing} are not channels of the dataset")
    if not engine.normalised:
        in_enc, out_enc = _engine_encodings(engine, ds.encodings)
    spacings = _view_spacings(ds) if full_resolution else {}
    if full_resolution and ds.pixel_spacing_mm is None and not all(v.id in spacings for v in views):
        raise InputError(f"{dataset}: the manifest records no pixel spacing, which scoring at full resolution needs")

    for view in views:
        spacing = spacings.get(view.id, ds.pixel_spacing_mm) if full_resolution else None
        stored_se = ds.stored(view, "se")
        se = ds.encodings["se"].physical(stored_se)
        true = {c: ds.physical(view, c) for c in channels}
        if engine.normalised:
            # Scale-free engine: its outputs are the SE image's bone and soft parts, in SE units; the view's own
            # protocol (the SE ~ a + kb bone + ks soft fit of its true images) turns them into g/cm^2.
            parts = dict(zip(channels, engine.infer(se.astype(np.float32), spacing_mm=spacing)))
            bone, soft = areal_densities(parts["bone"], parts["soft"], decomposition(se, true["bone"], true["soft"]))
            pred = {"bone": bone, "soft": soft}
        else:
            # Stored as the engine reads them: the file's own values, as deployed; otherwise float32 (no rounding)
            stored = engine.infer(stored_se if in_enc == ds.encodings["se"] else in_enc.stored_float(se),
                                  spacing_mm=spacing)
            pred = {c: out_enc[c].physical(p) for c, p in zip(channels, stored)}
        yield se, true, pred, ds.mask(view)


def _view_spacings(ds: Dataset) -> dict[str, float]:
    """View id -> its own pixel spacing at the isocentre, for the views whose geometry records one."""
    from dexrt.runtime.pixel_spacing import spacing_problem

    found = {}
    for v in ds.manifest.get("views", []):
        value = (v.get("geometry") or {}).get("pixel_at_iso_mm") if isinstance(v, dict) else None
        if value is not None and spacing_problem(value) is None:
            found[str(v["id"])] = float(value)
    return found


def _engine_encodings(engine: Engine, dataset: dict[str, Encoding]) -> tuple[Encoding, dict[str, Encoding]]:
    """What the engine's stored values mean; an engine that records nothing is taken to share the dataset's."""
    if engine.input_encoding is None:
        log.warning("%s records no physical encoding of its values: assuming it was trained on data stored like "
                    "this dataset's", engine.path)
        return dataset["se"], {c: dataset[c] for c in engine.channels}
    return engine.input_encoding, dict(zip(engine.channels, engine.output_encodings))
