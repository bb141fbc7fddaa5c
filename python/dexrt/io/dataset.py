"""The dexrt dataset format (docs/dataset-format.md): one reader, used by the trainer, `dexrt eval` and INT8
calibration.

`open_dataset` checks the manifest once: its format and version, a linear encoding for each channel, and that
every file it names stays inside the dataset folder (a manifest naming ``../x.png`` is refused, never followed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._errors import InputError
from dexrt._json import read_versioned
from dexrt.runtime.contract import DATASET_CHANNELS, Encoding

FORMAT = "dexrt-dataset"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")
_MAX_MANIFEST_BYTES = 256 << 20
# A chained `dexrt synth` dataset also stores the DE pair as each view's SE processing shows it: the targets of a
# scale-free (normalised) model, which sees the processed image (dexrt.synth.render.processed_targets).
PROCESSED = {"bone": "bone_processed", "soft": "soft_processed"}


@dataclass(frozen=True)
class StoredView:
    id: str
    files: dict[str, Path]  # channel -> image file
    mask: Path | None
    split: str = ""


@dataclass(frozen=True)
class Dataset:
    """An opened dataset: its manifest, each channel's encoding, and its views."""

    root: Path
    manifest: dict[str, Any]
    encodings: dict[str, Encoding]  # channel -> stored uint16 -> physical
    views: tuple[StoredView, ...]

    def split(self, name: str) -> list[StoredView]:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return [v for v in self.views if v.split == name]

    @property
    def pixel_spacing_mm(self) -> float | None:
        """The pixel spacing at the patient (isocentre), or None when the manifest does not record it."""
        value = self.manifest.get("geometry", {}).get("pixel_at_iso_mm")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        return float(value) if ok else None

    def stored(self, view: StoredView, channel: str) -> np.ndarray:
        """One image of a view as stored (uint16, or float32 TIFF)."""
        from dexrt.io.images import read_image

        return read_image(view.files[channel])

    def physical(self, view: StoredView, channel: str) -> np.ndarray:
        """One image of a view in physical units (float64), through the channel's stored encoding."""
        return self.encodings[channel].physical(self.stored(view, channel))

    def mask(self, view: StoredView) -> np.ndarray | None:
        from dexrt.io.images import read_image

        return None if view.mask is None else read_image(view.mask) > 0


def is_dataset(root: str | os.PathLike[str]) -> bool:
    return (Path(root) / MANIFEST_NAME).is_file()


def open_dataset(root: str | os.PathLike[str], *, processed: bool = False) -> Dataset:
    """Read and check ``root/manifest.json``; InputError names the file and what is wrong.

    With `processed`, a dataset that stores the processed DE pair (`PROCESSED`) gives it as the views' bone and
    soft; any other dataset is read as it is."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{root}: not a dexrt dataset (no {MANIFEST_NAME})")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise InputError(f"{path}: {path.stat().st_size} bytes, larger than any dexrt dataset manifest")
    manifest = read_versioned(path, fmt=FORMAT, version=FORMAT_VERSION, kind="dataset manifest", error=InputError)
    use = processed and set(PROCESSED.values()) <= set(manifest.get("channels") or ())
    names = {c: PROCESSED.get(c, c) if use else c for c in DATASET_CHANNELS}  # channel -> the one read for it
    encodings = _encodings(path, manifest, names)
    resolved_root = root.resolve()
    views = []
    raw_views = manifest.get("views")
    if not isinstance(raw_views, list):
        raise InputError(f"{path}: 'views' must be a list")
    for i, v in enumerate(raw_views):
        try:
            split = v["split"]
            files = {c: _inside(resolved_root, v["files"][names[c]], path) for c in DATASET_CHANNELS}
            mask = _inside(resolved_root, v["mask"], path) if v.get("mask") else None
            views.append(StoredView(str(v["id"]), files, mask, split))
        except (KeyError, TypeError) as exc:
            raise InputError(f"{path}: view {i} lacks {exc} (needs id, split, files "
                             f"{'/'.join(names.values())})") from None
        if split not in SPLITS:
            raise InputError(f"{path}: view {i} has split {split!r}, not one of {', '.join(SPLITS)}")
    return Dataset(root, manifest, encodings, tuple(views))


def _encodings(path: Path, manifest: dict[str, Any], names: dict[str, str]) -> dict[str, Encoding]:
    raw = manifest.get("encoding")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: no 'encoding' (the linear stored-to-physical map of each channel)")
    out = {}
    for channel, name in names.items():
        if name not in raw:
            raise InputError(f"{path}: 'encoding' has no entry for channel {name!r}")
        try:
            out[channel] = Encoding.from_manifest(raw[name])
        except ValueError as exc:
            raise InputError(f"{path}: encoding of {name!r}: {exc}") from None
    return out


def _inside(root: Path, rel: Any, manifest: Path) -> Path:
    if not isinstance(rel, str) or not rel:
        raise InputError(f"{manifest}: file name {rel!r} is not a relative path")
    p = (root / rel).resolve()
    if not p.is_relative_to(root):
        raise InputError(f"{manifest}: path {rel!r} points outside the dataset folder")
    return p
