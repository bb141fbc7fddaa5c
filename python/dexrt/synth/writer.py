"""Write a dataset in the format of docs/dataset-format.md: 16-bit images, masks, manifest.json, contact sheet.

The dataset is built in a hidden sibling folder and renamed into place when complete, so DIR is either absent,
or a whole dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from dexrt._atomic import atomic_write
from dexrt._errors import InputError
from dexrt.io.dataset import FORMAT, FORMAT_VERSION, MANIFEST_NAME, SPLITS
from dexrt.runtime.contract import QUANTITIES, fixed_encoding
from dexrt.synth.anatomy import AnatomyConfig, draw_anatomy
from dexrt.synth.chain import ChainConfig, draw_chain
from dexrt.synth.pool import pool_angles
from dexrt.synth.render import Renderer, View
from dexrt.synth.splits import SplitPlan

CHANNELS = ("se", "bone", "soft")
IDEAL = ("bone_ideal", "soft_ideal")
RAW = "se_raw"  # with a chain: the SE attenuation before post-processing
PROCESSED = ("bone_processed", "soft_processed")  # with a chain: the DE pair as the SE processing shows it


@dataclass
class DatasetConfig:
    views: int = 700
    image_format: str = "png"
    splits: SplitPlan = field(default_factory=SplitPlan)
    tilt_jitter_deg: float = 5.0  # each view's tilt is uniform in +-this
    couch_jitter_deg: float = 0.0
    seed: int = 0
    lesion_prob: float = 0.0  # chance that a view holds lesions
    max_lesions: int = 2
    lesion_diameter_mm: tuple[float, float] = (5.0, 30.0)
    ideal: bool = False
    contact_views: int = 4
    chain: ChainConfig | None = None  # None: the fixed protocol, as the options state it
    anatomy: AnatomyConfig | None = None  # None: the CT as it is
    pool: bool = False  # train-only views at random angles inside the train ranges (dexrt.synth.pool)
    ap_pa_prob: float = 0.3  # pool: share of frontal (AP/PA) views

    def validate(self) -> None:
        if self.views < 1 or self.views > 1_000_000:
            raise ValueError(f"views must be 1..1000000, got {self.views}")
        if self.image_format not in ("png", "tiff"):
            raise ValueError(f"image format must be png or tiff, got {self.image_format!r}")
        if not (0.0 <= self.tilt_jitter_deg < 45.0 and 0.0 <= self.couch_jitter_deg <= 180.0):
            raise ValueError("tilt jitter must be in [0, 45) degrees and couch jitter in [0, 180]")
        if not (0.0 <= self.lesion_prob <= 1.0) or self.max_lesions < 1:
            raise ValueError("lesion probability must be in [0, 1] and max lesions >= 1")
        self.splits.validate()
        if self.chain is not None:
            self.chain.validate()
        if self.anatomy is not None:
            self.anatomy.validate()
        if not 0.0 <= self.ap_pa_prob <= 1.0:
            raise ValueError(f"the AP/PA share must be in [0, 1], got {self.ap_pa_prob}")


def plan_views(renderer: Renderer, cfg: DatasetConfig) -> tuple[list[View], list[str]]:
    """Views (angles, jitter, noise seeds, lesions) and their splits, all drawn from `cfg.seed`."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    if cfg.pool:  # its own stream: the jitter, seeds and lesions below are drawn as for a plain dataset
        angles = [(a, "train") for a in pool_angles(cfg.splits, cfg.views, np.random.default_rng([cfg.seed, 0x9001]),
                                                    cfg.ap_pa_prob)]
    else:
        angles = cfg.splits.angles(cfg.views)
    se, p = renderer.config.physics.se, renderer.config
    sampler = None
    if cfg.lesion_prob > 0:
        sampler = renderer.lesion_sampler(cfg.lesion_diameter_mm)
        if not sampler.available():
            raise InputError(f"{renderer.ct.path}: no lung region deep enough for lesions of "
                             f"{cfg.lesion_diameter_mm[0]} mm")
    views, splits = [], []
    for i, (gantry, split) in enumerate(angles):
        tilt = float(rng.uniform(-cfg.tilt_jitter_deg, cfg.tilt_jitter_deg)) if cfg.tilt_jitter_deg else 0.0
        couch = float(rng.uniform(-cfg.couch_jitter_deg, cfg.couch_jitter_deg)) if cfg.couch_jitter_deg else 0.0
        seed = int(rng.integers(0, 2**31 - 1))
        lesions = []
        if sampler is not None and rng.uniform() < cfg.lesion_prob:
            lrng = np.random.default_rng(seed + 1)
            lesions = [sampler.sample(lrng) for _ in range(int(lrng.integers(1, cfg.max_lesions + 1)))]
        noise_seed = seed if renderer.config.physics.noise else None
        chain = None
        # Whether a view is chained is drawn from its own seed (a stream of its own), so the plan of the other
        # views, and every view of a plain chain (prob 1), stay as they are.
        if cfg.chain is not None and (cfg.chain.prob >= 1.0
                                      or np.random.default_rng([seed, 0xC4A1]).uniform() < cfg.chain.prob):
            chain = draw_chain(cfg.chain, se, p.sid_mm, p.sdd_mm, renderer.body_radius_mm, seed)
        anatomy = None
        if cfg.anatomy is not None:  # one synthetic patient per group of consecutive views
            anatomy = draw_anatomy(cfg.anatomy, i // cfg.anatomy.views_per_anatomy, cfg.seed, renderer.iso)
        views.append(View(f"view_{i:05d}", round(gantry, 6), round(couch, 6), round(tilt, 6), noise_seed, lesions,
                          chain, anatomy))
        splits.append(split)
    return views, splits


def iter_views(renderer: Renderer, cfg: DatasetConfig) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
    """Render the views of `cfg` one at a time without writing them (on-the-fly training data): each is its
    manifest record (no files) and its images in physical units ("se", "bone", "soft", "mask", ...; "se_raw"
    with a chain). With `cfg.pool`, every view is a train view outside the held-out angle ranges."""
    views, splits = plan_views(renderer, cfg)
    for view, split in zip(views, splits):
        images = renderer.render(view)
        yield _view_record(renderer, view, split, {}, None), images


def quantity_of(channel: str) -> str:
    """The contract quantity a channel stores (`se_raw` is the unprocessed SE: attenuation, like `se` unprocessed;
    `bone_processed` and `soft_processed` are in g/cm^2 like `bone` and `soft`)."""
    return "se" if channel == "se_raw" else channel.removesuffix("_processed")


def _encoding(channels: tuple[str, ...]) -> dict[str, dict]:
    """The fixed encoding of each channel's quantity (dexrt.runtime.contract): the same for every CT, seed and view
    count."""
    enc = {}
    for c in channels:
        q = QUANTITIES[quantity_of(c)]
        enc[c] = {**fixed_encoding(q.name).as_manifest(), "quantity": q.name, "unit": q.unit, "meaning": q.meaning}
    return enc


def _write_image(path: Path, img: np.ndarray, fmt: str) -> None:
    if fmt == "tiff":
        import tifffile

        tifffile.imwrite(path, img)
    else:
        from PIL import Image

        Image.fromarray(img).save(path, format="PNG", compress_level=1)


def _write_all(jobs: list[tuple[Path, np.ndarray, str]]) -> None:
    for path, img, fmt in jobs:
        _write_image(path, img, fmt)


def _window(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, [0.5, 99.5])
    return (np.clip((a - lo) / max(hi - lo, 1e-9), 0.0, 1.0) * 255.0).astype(np.uint8)


def contact_sheet(rows: list[tuple[dict[str, np.ndarray], np.ndarray]], path: Path) -> None:
    """One row per view: SE | bone | soft, each windowed to its own 0.5-99.5 percentiles; lesions outlined red."""
    from PIL import Image
    from scipy import ndimage

    lines = []
    for im, mask in rows:
        tiles = [np.repeat(_window(im[c])[..., None], 3, axis=-1) for c in CHANNELS]
        if mask.any():
            edge = mask & ~ndimage.binary_erosion(mask)
            tiles[0][edge] = (255, 40, 40)
        gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
        lines.append(np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1))
        lines.append(np.full((4, lines[-1].shape[1], 3), 255, np.uint8))
    sheet = np.concatenate(lines[:-1], axis=0)
    with atomic_write(path) as f:
        Image.fromarray(sheet).save(f, format="PNG")


def _prepare_output(out_dir: Path) -> Path:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: exists and is not an empty folder; choose a new output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))


@dataclass
class Patient:
    """One CT of a dataset: its name, its renderer (or a function that builds it when its turn comes, so only
    one material volume is in memory at a time), and what the manifest records about its source."""

    id: str
    renderer: Renderer | Callable[[], Renderer]
    provenance: dict = field(default_factory=dict)
    holdout: bool = False  # every view of a held-out patient is a test view (its angle's split is kept too)


def patient_seed(seed: int, index: int) -> int:
    """The seed of the `index`-th patient's views: the dataset's seed for the first (so a one-CT dataset is what
    it always was), one drawn from (seed, index) for the others."""
    return seed if index == 0 else int(np.random.SeedSequence([seed, index]).generate_state(1)[0] >> 1)


def write_dataset(renderer: Renderer, cfg: DatasetConfig, out_dir: str | os.PathLike[str], *,
                  provenance: dict | None = None, progress: Callable[[int], None] | None = None,
                  planned: tuple[list[View], list[str]] | None = None, patient: str | None = None) -> dict:
    """Render every view and write the dataset; returns the manifest. `planned` (views, their splits) replaces
    the views `plan_views` would draw from `cfg` (e.g. `dexrt fit`'s views at a plan's angles); the manifest's
    split ranges are then `cfg`'s, which the caller corrects. `patient` names the CT (default: its file name)."""
    name = patient or patient_name(renderer.ct.path)
    return write_patients([Patient(name, renderer, provenance or {})], cfg, out_dir, progress=progress,
                          planned=planned)


def patient_name(path: str) -> str:
    """A patient's default name: its CT file's (or DICOM folder's) name without extension."""
    name = Path(path).name
    for suffix in (".gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        name = name.removesuffix(suffix)
    return name or "patient"


def write_patients(patients: list[Patient], cfg: DatasetConfig, out_dir: str | os.PathLike[str], *,
                   progress: Callable[[int], None] | None = None,
                   planned: tuple[list[View], list[str]] | None = None) -> dict:
    """Render `cfg.views` views of every patient and write them as one dataset; returns the manifest.

    Every patient gets the same split plan (gantry ranges); each view records its patient; a held-out patient's
    views are all test views. All renderers must share the detector (size and pixel spacing), so that every
    patient is seen at the same scale."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    ids = [p.id for p in patients]
    if not patients or len(set(ids)) != len(ids) or any(not i for i in ids):
        raise ValueError(f"patients need distinct, non-empty names, got {ids}")
    if cfg.pool and any(p.holdout for p in patients):
        raise ValueError("a pool holds train views only: leave the held-out patient out of it")
    if planned is not None and len(patients) != 1:
        raise ValueError("planned views are for a dataset of one patient")
    channels = CHANNELS + ((RAW, *PROCESSED) if cfg.chain is not None else ()) + (IDEAL if cfg.ideal else ())
    encoding = _encoding(channels)
    tmp = _prepare_output(out)
    try:
        for c in channels:
            (tmp / c).mkdir()
        (tmp / "masks").mkdir()
        ext = "png" if cfg.image_format == "png" else "tif"
        clipped = dict.fromkeys(channels, 0)
        sheet_rows: list[tuple[dict, np.ndarray]] = []
        records: list[dict] = []
        described: dict[str, dict] = {}
        first: Renderer | None = None
        n_pix = 0
        for k, pat in enumerate(patients):
            renderer = pat.renderer if isinstance(pat.renderer, Renderer) else pat.renderer()
            if first is None:
                first = renderer
            elif renderer.config.size != first.config.size or abs(renderer.pixel_mm - first.pixel_mm) > 1e-9:
                raise ValueError(f"patient {pat.id}: its detector ({renderer.config.size}, {renderer.pixel_mm:.4f} "
                                 f"mm pixels) differs from {first.ct.path}'s; give every CT the same --detector-mm")
            seed = patient_seed(cfg.seed, k)
            views, splits = planned if planned is not None else plan_views(renderer, replace(cfg, seed=seed))
            if k:  # view ids run on through the dataset
                views = [replace(v, id=f"view_{len(records) + i:05d}") for i, v in enumerate(views)]
            sheet_at = _sheet_views(views, cfg.contact_views if k < 4 else 0)
            # Files are encoded and written on a second thread (PNG/TIFF encoders release the GIL) while the next
            # view is traced; at most two views wait, so memory stays flat.
            pending: deque[Future] = deque()
            with ThreadPoolExecutor(max_workers=1) as writer:
                for i, (view, split) in enumerate(zip(views, splits)):
                    im = renderer.render(view)
                    files, jobs = {}, []
                    for c in channels:
                        u16, n = fixed_encoding(quantity_of(c)).stored(im[c])
                        clipped[c] += n
                        files[c] = f"{c}/{view.id}.{ext}"
                        jobs.append((tmp / files[c], u16, cfg.image_format))
                    mask_file = None
                    if view.lesions and im["mask"].any():  # a lesion smaller than the ray spacing falls between rays
                        mask_file = f"masks/{view.id}.png"
                        jobs.append((tmp / mask_file, im["mask"].astype(np.uint8) * 255, "png"))
                    pending.append(writer.submit(_write_all, jobs))
                    while len(pending) > 2:
                        pending.popleft().result()  # re-raises a failed write here
                    if i in sheet_at:
                        sheet_rows.append(({c: im[c] for c in CHANNELS}, im["mask"]))
                    record = _view_record(renderer, view, "test" if pat.holdout else split, files, mask_file)
                    record["patient"] = pat.id
                    if pat.holdout:
                        record["angle_split"] = split  # the split its angle has in the plan
                    records.append(record)
                    n_pix += renderer.config.size[0] * renderer.config.size[1]
                    if progress is not None:
                        progress(1)
                while pending:
                    pending.popleft().result()
            described[pat.id] = {"source": _source(renderer, pat.provenance), "geometry": renderer.describe(),
                                 "seed": seed, "holdout": pat.holdout, "views": len(views)}
        if sheet_rows:
            contact_sheet(sheet_rows, tmp / "contact_sheet.png")
        for c in channels:
            encoding[c]["clipped_fraction"] = clipped[c] / max(n_pix, 1)
        assert first is not None
        manifest = _manifest(first, cfg, channels, encoding, records, described)
        manifest["generator"]["seconds"] = round(time.perf_counter() - t0, 2)
        with atomic_write(tmp / MANIFEST_NAME) as f:
            f.write(json.dumps(manifest, indent=1).encode())
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _sheet_views(views: list[View], n: int) -> set[int]:
    """Indices of the views closest to gantry 0, 90, 180, 270, ... (n of them)."""
    if n <= 0:
        return set()
    angles = np.array([v.gantry_deg for v in views])
    picks = []
    for target in np.arange(n) * 360.0 / n:
        d = np.abs((angles - target + 180.0) % 360.0 - 180.0)
        picks.append(int(np.argmin(d)))
    return set(picks)


def _view_record(renderer: Renderer, view: View, split: str, files: dict, mask: str | None) -> dict:
    cfg = renderer.config
    p = cfg.physics
    ch = view.chain
    geometry = {"gantry_deg": view.gantry_deg, "couch_deg": view.couch_deg, "tilt_deg": view.tilt_deg,
                "sid_mm": ch.sid_mm if ch else cfg.sid_mm, "sdd_mm": ch.sdd_mm if ch else cfg.sdd_mm,
                "rows": cfg.size[0], "cols": cfg.size[1], "pixel_mm": renderer.pixel_mm,
                "iso_mm": renderer.iso.tolist()}
    if ch is not None:  # a drawn magnification changes the scale of the anatomy in the image
        geometry["offset_mm"] = list(ch.offset_mm)
        geometry["pixel_at_iso_mm"] = round(renderer.pixel_mm * ch.sid_mm / ch.sdd_mm, 5)
    rec: dict = {
        "id": view.id, "split": split, "files": files, "mask": mask, "geometry": geometry,
        "protocol": {"se_kvp": ch.kvp if ch else p.se.kvp, "low_kvp": p.low.kvp, "high_kvp": p.high.kvp,
                     "kerma_ugy": {"se": ch.dose_ugy if ch else p.se.kerma_ugy, "low": p.low.kerma_ugy,
                                   "high": p.high.kerma_ugy}},
        "noise_seed": view.noise_seed,
        "lesions": [les.describe() for les in view.lesions],
    }
    if ch is not None:
        rec["chain"] = ch.record()
    if view.anatomy is not None:
        rec["anatomy"] = view.anatomy.record()
    return rec


def _source(renderer: Renderer, provenance: dict) -> dict:
    ct = renderer.ct
    return {"ct": ct.path, "sha256": ct.sha256, "shape": list(ct.hu.shape),
            "spacing_mm": np.round(ct.spacing, 5).tolist(), "affine": np.round(ct.affine, 6).tolist(),
            "labels": ct.labels_path, "reader": ct.meta.get("reader"), "notes": ct.meta.get("notes", []),
            **provenance}


def _manifest(renderer: Renderer, cfg: DatasetConfig, channels: tuple[str, ...], encoding: dict, records: list,
              patients: dict[str, dict]) -> dict:
    """The manifest; `renderer` is the first patient's: its geometry is the top-level one (detector and pixel
    spacing are every patient's; isocentre and volume are in `patients`)."""
    from dexrt import __version__

    counts = {s: sum(r["split"] == s for r in records) for s in SPLITS}
    ranges = cfg.splits.ranges()
    first = next(iter(patients.values()))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "image_format": cfg.image_format,
        "size": list(renderer.config.size),
        "channels": list(channels),
        "encoding": encoding,
        "splits": {s: {"gantry_ranges_deg": ranges[s], "views": counts[s]} for s in SPLITS},
        "split_rule": {"sectors": cfg.splits.sectors, "fractions": list(cfg.splits.fractions),
                       "guard_deg": cfg.splits.guard_deg, "start_deg": cfg.splits.start_deg},
        "patients": patients,
        "source": first["source"] if len(patients) == 1 else {"patients": list(patients)},
        "geometry": first["geometry"],
        "physics": {"materials": renderer.config.model.describe(), **renderer.physics.describe()},
        "lesions": {"probability": cfg.lesion_prob, "max_per_view": cfg.max_lesions,
                    "diameter_mm": list(cfg.lesion_diameter_mm), "hu": 40.0,
                    "model": "ellipsoids (axis ratios 0.75-1) inside the lung mask, projected analytically, "
                             "replacing the mean lung tissue they occupy; mask = rays that cross a lesion"},
        "generator": {"dexrt": __version__, "seed": cfg.seed, "views": cfg.views,
                      "tilt_jitter_deg": cfg.tilt_jitter_deg, "couch_jitter_deg": cfg.couch_jitter_deg,
                      "pool": ({"ap_pa_prob": cfg.ap_pa_prob, "angles": "uniform in the train ranges"}
                               if cfg.pool else None),
                      "chain": asdict(cfg.chain) if cfg.chain is not None else None,
                      "anatomy": asdict(cfg.anatomy) if cfg.anatomy is not None else None},
        "views": records,
    }
