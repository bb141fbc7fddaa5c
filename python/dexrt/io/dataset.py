"""The dexrt dataset format (docs/dataset-format.md): one reader, used by the trainer, `dexrt eval` and INT8
calibration.

`open_dataset` checks the manifest once: its format and version, a linear encoding for each channel, and that
every file it names stays inside the dataset folder (a manifest naming ``../x.png`` is refused, never followed).

This module is the one home of the format's constants (`FORMAT`, `FORMAT_VERSION`, `MANIFEST_NAME`, `SPLITS`): the
writer (`dexrt.synth.writer`) and the split plans (`dexrt.synth.splits`) import them from here.
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
from dexrt.runtime.pixel_spacing import spacing_problem

FORMAT = "dexrt-dataset"
# 2: every view names its patient ("patient"), the manifest lists them ("patients"). Version 1 (one CT per
# dataset) is still read, as one patient named after its CT file.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
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
    patient: str = ""  # the CT the view was rendered from (docs/dataset-format.md)


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
    def patients(self) -> list[str]:
        """The patients of the dataset's views, in the order they first appear."""
        return list(dict.fromkeys(v.patient for v in self.views))

    @property
    def pixel_spacing_mm(self) -> float | None:
        """The pixel spacing at the patient (isocentre), or None when the manifest does not record it."""
        value = self.manifest.get("geometry", {}).get("pixel_at_iso_mm")
        return float(value) if spacing_problem(value) is None else None

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
    manifest = read_versioned(path, fmt=FORMAT, version=READABLE_VERSIONS, kind="dataset manifest",
                              error=InputError)
    single = single_patient(manifest) if manifest["format_version"] == 1 else None
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
            patient = single if single is not None else v["patient"]
            views.append(StoredView(str(v["id"]), files, mask, split, patient))
        except (KeyError, TypeError) as exc:
            raise InputError(f"{path}: view {i} lacks {exc} (needs id, split, files "
                             f"{'/'.join(names.values())}{'' if single else ', patient'})") from None
        if not isinstance(patient, str) or not patient:
            raise InputError(f"{path}: view {i} has patient {patient!r}, not a name")
        if split not in SPLITS:
            raise InputError(f"{path}: view {i} has split {split!r}, not one of {', '.join(SPLITS)}")
    return Dataset(root, manifest, encodings, tuple(views))


def single_patient(manifest: dict[str, Any]) -> str:
    """The patient of a version-1 dataset (one CT): its CT file's name without extension, or "patient"."""
    source = manifest.get("source")
    ct = source.get("ct") if isinstance(source, dict) else None
    name = Path(ct).name if isinstance(ct, str) else ""
    for suffix in (".gz", ".nii", ".nrrd", ".mha", ".mhd"):
        name = name.removesuffix(suffix)
    return name or "patient"


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
