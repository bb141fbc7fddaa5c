"""Training data: the dexrt dataset format and a plain paired-folder layout, 16-bit throughout.

Two layouts are read (docs/training.md):

* a dexrt dataset (``DATASET/manifest.json``, docs/dataset-format.md), as `dexrt synth` writes it;
* paired folders, ``DIR/{train,val,test}/{se,bone,soft}/NAME.png|.tif`` with optional
  ``DIR/SPLIT/masks/NAME.png`` (lesion masks, nonzero = lesion); a view is a NAME present in se, bone and soft.

Images stay uint16 (or float32 TIFF) in memory; when a sample is made they are converted to physical values
through the dataset's encoding (paired folders: taken as they are) and windowed onto [-1, 1] as float32. Augmentation (random crop, flips) draws from a generator seeded by (seed, epoch, index), so a sample does
not depend on the worker that makes it nor on whether the run was resumed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dexrt._errors import InputError
from dexrt.io.dataset import SPLITS, StoredView, is_dataset, open_dataset
from dexrt.io.images import SUFFIXES, read_image
from dexrt.runtime.contract import (
    DATASET_CHANNELS,
    Encoding,
    normalised_parts,
    view_normalisation,
    window_to_unit,
)

CHANNELS = DATASET_CHANNELS


Roots = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def data_roots(root: Roots) -> list[Path]:
    """One data folder, or several (`dexrt train A B ...`: their views are taken together)."""
    roots = [Path(root)] if isinstance(root, (str, os.PathLike)) else [Path(r) for r in root]
    if not roots:
        raise InputError("no training data given")
    return roots


def find_views(root: Roots, split: str, processed: bool = False) -> list[StoredView]:
    """The views of one split, from manifest datasets or paired-folder layouts (one folder or several, taken
    together); `processed` takes the DE pair as the SE processing shows it where a dataset stores one
    (`dexrt.io.dataset.open_dataset`)."""
    roots = data_roots(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [v for r in roots for v in _find_views(r, split, processed)]


def _find_views(root: Path, split: str, processed: bool) -> list[StoredView]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if is_dataset(root):
        return open_dataset(root, processed=processed).split(split)
    if any((root / s / "se").is_dir() for s in SPLITS):
        return _paired_views(root, split)
    raise InputError(f"{root}: not a dataset (no manifest.json, and no {{train,val,test}}/se/ folders)")


def dataset_encodings(root: Roots, processed: bool = False) -> dict[str, Encoding] | None:
    """Each channel's stored -> physical encoding of manifest datasets (of the views `find_views` gives with the
    same `processed`); None for paired folders (stored values are then taken as they are). Several folders must
    store their channels alike (every `dexrt synth` dataset does: fixed encodings)."""
    roots = data_roots(root)
    found = [open_dataset(r, processed=processed).encodings if is_dataset(r) else None for r in roots]
    for r, enc in zip(roots[1:], found[1:]):
        if enc != found[0]:
            raise InputError(f"{r}: its images are stored in another encoding than {roots[0]}'s (or one is a "
                             "dataset and the other paired folders); train on data stored alike")
    return found[0]


def pixel_spacing_mm(root: Roots) -> float | None:
    """The pixel spacing at the patient (isocentre) of `dexrt synth` datasets, or None when not recorded.

    An engine trained on it records this value, so `dexrt infer` can resample DICOM images of another spacing.
    Several datasets must show their patients at the same spacing.
    """
    roots = data_roots(root)
    found = [open_dataset(r).pixel_spacing_mm if is_dataset(r) else None for r in roots]
    for r, value in zip(roots[1:], found[1:]):
        if value != found[0]:
            raise InputError(f"{r}: pixel spacing {value} mm at the patient differs from {roots[0]}'s "
                             f"({found[0]} mm); render them with the same detector (--detector-mm, --size)")
    return found[0]


def _paired_views(root: Path, split: str) -> list[StoredView]:
    base = root / split
    if not (base / "se").is_dir():
        return []

    def names(channel: str) -> dict[str, Path]:
        folder = base / channel
        if not folder.is_dir():
            return {}
        return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in SUFFIXES}

    found = {c: names(c) for c in CHANNELS}
    masks = names("masks")
    missing = sorted((set(found["se"]) ^ set(found["bone"])) | (set(found["se"]) ^ set(found["soft"])))
    if missing:
        raise InputError(f"{base}: views not present in all of se/, bone/ and soft/: {', '.join(missing[:5])}")
    return [StoredView(n, {c: found[c][n] for c in CHANNELS}, masks.get(n), split) for n in sorted(found["se"])]


def read_view(view: StoredView) -> tuple[np.ndarray, np.ndarray | None]:
    """(3, H, W) se/bone/soft in their stored dtype, and the (H, W) bool lesion mask or None."""
    images = [read_image(view.files[c]) for c in CHANNELS]
    if len({im.shape for im in images}) != 1 or len({im.dtype for im in images}) != 1:
        raise InputError(f"view {view.id}: se, bone and soft differ in size or type "
                         f"({', '.join(f'{im.shape} {im.dtype}' for im in images)})")
    mask = None
    if view.mask is not None:
        m = read_image(view.mask)
        if m.shape != images[0].shape:
            raise InputError(f"{view.mask}: mask is {m.shape}, the view is {images[0].shape}")
        mask = m > 0
    return np.stack(images), mask


def data_windows(views: list[StoredView], encodings: list[Encoding], margin: float = 0.05) -> list[tuple[float, float]]:
    """Per-channel physical [min, max] over `views`, widened by `margin` of the span each side so Tanh need not
    saturate."""
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for v in views:
        stored, _ = read_view(v)
        images = np.stack([e.physical(im) for e, im in zip(encodings, stored)])
        lo = np.minimum(lo, images.reshape(3, -1).min(axis=1))
        hi = np.maximum(hi, images.reshape(3, -1).max(axis=1))
    out = []
    for a, b in zip(lo, hi):
        span = max(float(b - a), 1e-6)
        out.append((float(f"{a - margin * span:.6g}"), float(f"{b + margin * span:.6g}")))
    return out


class PairedDataset(Dataset):
    """Samples of one split: se (1, h, w), de (2, h, w) float32 in [-1, 1], mask (1, h, w) float32, has_mask,
    and ``norm`` (5,): lo, span, a, kb, ks of a normalised sample (zeros otherwise).

    `crop` > 0 takes random h = w = crop patches (training); 0 keeps whole images (validation). Decoded views
    are kept in RAM when they fit in `cache_bytes` (then worker processes share them copy-on-write).
    With ``normalise``, every view is mapped by its SE image's robust range (over the whole view, as the runtime
    does) and its targets are the attenuation-equivalent bone and soft parts of the SE image
    (`dexrt.runtime.contract.attenuation_targets`, coefficients fitted per view); `windows` are then in those units.
    """

    def __init__(self, views: list[StoredView], windows: Sequence[Sequence[float]], encodings: Sequence[Encoding], *,
                 crop: int = 0,
                 hflip: bool = False, vflip: bool = False, seed: int = 0, cache_bytes: int = 2 << 30,
                 normalise: bool = False) -> None:
        if not views:
            raise InputError("the dataset split has no views")
        self.views, self.windows = views, [tuple(map(float, w)) for w in windows]
        self.encodings = list(encodings)  # stored -> physical, per channel: windows are in physical units
        self.crop, self.hflip, self.vflip, self.seed = crop, hflip, vflip, seed
        first = read_view(views[0])
        self.cache: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        if first[0].nbytes * len(views) <= cache_bytes:
            self.cache = [first] + [read_view(v) for v in views[1:]]
        # per view: (lo, span, a, kb, ks), from the whole view (a crop would change the range)
        self.norm = [self._norm_of(i) for i in range(len(views))] if normalise else None
        if crop:
            h, w = first[0].shape[1:]
            if crop > h or crop > w:
                raise InputError(f"crop {crop} is larger than the images ({h}x{w}) of view {views[0].id}")

    def _view(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.cache[index] if self.cache is not None else read_view(self.views[index])

    def _norm_of(self, index: int) -> tuple[float, float, float, float, float]:
        return view_normalisation(*(e.physical(im) for e, im in zip(self.encodings, self._view(index)[0])))

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        # key: index, or (epoch, index) from EpochBatchSampler: the epoch travels with the key because
        # persistent worker processes keep their own copy of the dataset
        epoch, index = key if isinstance(key, tuple) else (0, key)
        images, mask = self._view(index)
        rng = np.random.default_rng([self.seed, epoch, index])
        if self.crop:
            h, w = images.shape[1:]
            if self.crop > h or self.crop > w:
                raise InputError(f"crop {self.crop} is larger than view {self.views[index].id} ({h}x{w})")
            y = int(rng.integers(0, h - self.crop + 1))
            x = int(rng.integers(0, w - self.crop + 1))
            images = images[:, y : y + self.crop, x : x + self.crop]
            mask = None if mask is None else mask[y : y + self.crop, x : x + self.crop]
        if self.hflip and rng.random() < 0.5:
            images, mask = images[:, :, ::-1], None if mask is None else mask[:, ::-1]
        if self.vflip and rng.random() < 0.5:
            images, mask = images[:, ::-1, :], None if mask is None else mask[::-1, :]
        physical = [self.encodings[c].physical(images[c]) for c in range(3)]
        norm = np.zeros(5, np.float64)
        if self.norm is not None:
            norm[:] = self.norm[index]
            physical = list(normalised_parts(*physical, norm))
        x = np.stack([window_to_unit(physical[c], self.windows[c]) for c in range(3)])  # (3, h, w)
        m = np.zeros(images.shape[1:], np.float32) if mask is None else mask.astype(np.float32)
        return {"se": torch.from_numpy(x[:1].copy()), "de": torch.from_numpy(x[1:].copy()),
                "mask": torch.from_numpy(m[None].copy()), "has_mask": mask is not None, "index": index,
                "norm": torch.from_numpy(norm)}


class EpochBatchSampler:
    """Shuffled batches of (epoch, index) keys for one rank: a permutation seeded by (seed, epoch), split
    round-robin over ranks.

    Drops the last incomplete batch, so every rank runs the same number of steps. `skip` batches at the start
    of the next epoch are left out (resuming in the middle of an epoch).
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.skip = 0, 0
        if self.batches_per_epoch == 0:
            raise InputError(f"{n} training views are too few for batch size {batch_size} x {world} processes")

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.batches_per_epoch - self.skip

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        step = self.batch_size * self.world
        for b in range(self.skip, self.batches_per_epoch):
            chunk = perm[b * step : (b + 1) * step]
            yield [(self.epoch, i) for i in chunk[self.rank :: self.world]]
