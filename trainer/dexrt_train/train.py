"""pix2pix training for SE -> (bone, soft): U-Net G, PatchGAN D, GAN + lambda * L1, Adam, linear LR decay.

One process, or one per device under ``torchrun`` (DDP is switched on by torchrun's WORLD_SIZE/RANK/LOCAL_RANK:
gloo on CPU, nccl on CUDA). Reproducible: the data order comes from (seed, epoch), augmentation from
(seed, epoch, view), and the torch RNG (dropout) is reseeded from (seed, rank, step) before every step, so a
resumed run continues exactly as an uninterrupted one would have. The run folder (docs/training.md)::

    RUN/options.txt  metrics.jsonl  samples/step_NNNNNNN.png  last/  best/
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from dexrt._atomic import atomic_write
from dexrt._errors import InputError, ModelError
from dexrt_train.checkpoint import Windows, read_config, save_checkpoint
from dexrt.runtime.contract import (
    NORMALISATION,
    NORMALISED_WINDOW,
    QUANTITIES,
    STORED_WINDOW,
    Encoding,
    fixed_encoding,
)
from dexrt_train.data import (
    CHANNELS,
    EpochBatchSampler,
    PairedDataset,
    data_windows,
    dataset_encodings,
    find_views,
    pixel_spacing_mm,
)
from dexrt_train.networks import DiscriminatorConfig, GeneratorConfig, count_parameters, define_D, define_G
from dexrt_train.state import TrainState, load_training, training_files
from dexrt_train.validate import BEST_METRICS, score, validate

# With every channel through the normalised window lo..hi -> -1..1, bone + soft = SE reads soft = SE - bone + this
SOFT_OFFSET = -1.0 - 2.0 * NORMALISED_WINDOW[0] / (NORMALISED_WINDOW[1] - NORMALISED_WINDOW[0])


@dataclass(frozen=True)
class TrainConfig:
    # model
    ngf: int = 64
    depth: int = 8
    norm: str = "batch"  # "batch" | "instance"
    dropout: float = 0.5
    dropout_blocks: int = 3
    ndf: int = 64
    n_layers: int = 3
    # data
    crop: int = 256  # random crops of crop x crop; a multiple of 2**depth
    hflip: bool = True
    vflip: bool = False
    windows: str = "full"  # physical windows. "full": each quantity's fixed window; "data": train split min/max + 5%
    # "window": the SE image through its physical window; "robust": scale-free, each SE image mapped by its own
    # robust range and the targets its attenuation-equivalent parts (dexrt.runtime.contract.NORMALISATION)
    normalisation: str = "window"
    upsample: str = "transpose"  # "transpose" | "resize" (nearest 2x + 3x3 conv: no checkerboard)
    head: int = 0  # channels of the generator's full-resolution head (two 3x3 convs on SE + features); 0: none
    soft_from_se: bool = False  # predict bone and a correction; soft = SE - bone + correction (needs "robust")
    batch_size: int = 1
    num_workers: int = 2
    cache_mb: int = 2048  # decoded views are kept in RAM when they fit
    # recipe
    gan_mode: str = "vanilla"  # "vanilla" (BCE on logits) | "lsgan" (least squares)
    lambda_l1: float = 100.0
    lambda_gan: float = 1.0  # 0: no discriminator at all (L1 and gradient terms only)
    lambda_grad: float = 0.0  # L1 of the outputs' horizontal and vertical differences (edges: rib cortices)
    # L1 of SE - (bone + soft) in the normalised units, where the two parts add up to the SE image (needs "robust")
    lambda_consistency: float = 0.0
    lambda_laplacian: float = 0.0  # L1 of the outputs' Laplacian-pyramid bands (structure at 1, 2, 4, 8 px)
    lambda_msssim: float = 0.0  # 1 - MS-SSIM of the outputs (5 scales, Wang et al. 2003)
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    steps: int = 0  # total optimiser steps; or set epochs
    epochs: int = 0
    decay_start: float = 0.5  # LR constant for this fraction of the steps, then linear to 0
    # run
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: str = "auto"  # "auto" (bf16 if supported, else fp16, on CUDA; off on CPU) | "bf16" | "fp16" | "off"
    val_every: int = 500
    val_views: int = 0  # 0: every val view
    log_every: int = 10
    best_metric: str = "mae"  # "mae" | "psnr" | "ssim", averaged over bone and soft
    panel_views: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.steps > 0) == (self.epochs > 0):
            raise ValueError("set exactly one of steps and epochs (> 0)")
        if self.crop % 2**self.depth:
            raise ValueError(f"crop {self.crop} must be a multiple of 2**depth = {2**self.depth}")
        if self.soft_from_se and self.normalisation != "robust":
            raise ValueError("soft_from_se needs normalisation 'robust' (one window for SE, bone and soft)")
        if min(self.lambda_gan, self.lambda_grad, self.lambda_l1, self.lambda_consistency, self.lambda_laplacian,
               self.lambda_msssim) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.lambda_consistency > 0 and self.normalisation != "robust":
            raise ValueError("lambda_consistency needs normalisation 'robust' (where bone + soft = SE)")
        choices = {"windows": ("full", "data"), "normalisation": ("window", "robust"),
                   "upsample": ("transpose", "resize"), "gan_mode": ("vanilla", "lsgan"), "device": ("auto", "cpu", "cuda"),
                   "amp": ("auto", "bf16", "fp16", "off"), "best_metric": tuple(BEST_METRICS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.batch_size < 1 or self.val_every < 1 or self.log_every < 1 or not 0 <= self.decay_start <= 1:
            raise ValueError("batch_size, val_every, log_every must be >= 1 and decay_start in [0, 1]")

    def generator(self) -> GeneratorConfig:
        # soft from SE needs one window for every channel: the robust normalisation's
        return GeneratorConfig(ngf=self.ngf, depth=self.depth, norm=self.norm, dropout=self.dropout,
                               dropout_blocks=self.dropout_blocks, seed=self.seed, upsample=self.upsample,
                               soft_from_se=self.soft_from_se, soft_offset=SOFT_OFFSET if self.soft_from_se else 0.0,
                               head=self.head)

    def discriminator(self) -> DiscriminatorConfig:
        return DiscriminatorConfig(ndf=self.ndf, n_layers=self.n_layers, norm=self.norm, seed=self.seed + 1)


# Options that may differ when resuming: they change how the run executes, not what it computes.
RUNTIME_OPTIONS = ("steps", "epochs", "device", "num_workers", "cache_mb", "progress")


def consistency_l1(se: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean L1 of SE - (bone + soft) of normalised (B, 1, h, w) inputs and (B, 2, h, w) outputs, in window units."""
    return (pred[:, 1:2] - (se - pred[:, 0:1] + SOFT_OFFSET)).abs().mean()


# Wang, Simoncelli & Bovik, "Multi-scale structural similarity for image quality assessment" (2003): per-scale
# exponents, the last scale's also for luminance. Gaussian window of 11 px, sigma 1.5, as for SSIM.
_MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """MS-SSIM of (B, C, h, w) pairs on [-1, 1] windows (data range 2), averaged over batch and channels. Scales
    that no longer hold the 11 px window are left out and the exponents of the others renormalised; negative
    contrast-structure terms are clamped to a small positive value so the power stays defined."""
    channels = pred.shape[1]
    g = torch.exp(-((torch.arange(11, dtype=pred.dtype, device=pred.device) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(channels, 1, 11, 11).contiguous()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    scales = [w for i, w in enumerate(_MSSSIM_WEIGHTS) if min(pred.shape[-2:]) >= 11 * 2**i]
    weights = torch.tensor(scales, dtype=pred.dtype, device=pred.device)
    weights = weights / weights.sum()
    terms = []
    for i in range(len(scales)):
        mu_p, mu_t = blur(pred), blur(target)
        var_p = blur(pred * pred) - mu_p**2
        var_t = blur(target * target) - mu_t**2
        cov = blur(pred * target) - mu_p * mu_t
        cs = ((2 * cov + c2) / (var_p + var_t + c2)).mean(dim=(-2, -1))
        if i == len(scales) - 1:
            lum = ((2 * mu_p * mu_t + c1) / (mu_p**2 + mu_t**2 + c1)).mean(dim=(-2, -1))
            cs = cs * lum
        terms.append(cs.clamp(min=1e-4))
        pred, target = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2)
    return torch.prod(torch.stack(terms) ** weights[:, None, None], dim=0).mean()


def laplacian_l1(pred: torch.Tensor, target: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """Mean over `levels` band-pass images (x - up(down(x)), 2x2 averages down, bilinear up) of their L1
    distance: (B, C, h, w) pairs -> scalar. Each band weighs the same, so fine and coarse structure count alike."""
    total = pred.new_zeros(())
    for _ in range(levels):
        if min(pred.shape[-2:]) < 2:
            break
        low_p, low_t = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2)
        band_p = pred - F.interpolate(low_p, size=pred.shape[-2:], mode="bilinear", align_corners=False)
        band_t = target - F.interpolate(low_t, size=target.shape[-2:], mode="bilinear", align_corners=False)
        total = total + (band_p - band_t).abs().mean()
        pred, target = low_p, low_t
    return total / levels


def gradient_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance of the horizontal and vertical neighbour differences: (B, C, h, w) pairs -> scalar."""
    dx = (pred[..., :, 1:] - pred[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])
    dy = (pred[..., 1:, :] - pred[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])
    return 0.5 * (dx.abs().mean() + dy.abs().mean())


def learning_rate(step: int, total_steps: int, base_lr: float, decay_start: float) -> float:
    """pix2pix's 'linear' policy: `base_lr` for the first `decay_start` of the steps, then linearly to 0."""
    start = int(decay_start * total_steps)
    if step < start:
        return base_lr
    return base_lr * max(0.0, (total_steps - step) / max(1, total_steps - start))


def gan_loss(logits: torch.Tensor, real: bool, mode: str) -> torch.Tensor:
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


def step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def non_defaults(config: TrainConfig) -> dict[str, Any]:
    default = {f.name: f.default for f in fields(TrainConfig)}
    return {k: v for k, v in asdict(config).items() if v != default[k]}


def write_options(run: Path, config: TrainConfig, dataset: Path) -> None:
    """pix2pix's opt.txt: every option, the non-default ones marked with their default."""
    lines = [f"dataset: {dataset}"]
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        mark = f"\t[default: {f.default}]" if value != f.default else ""
        lines.append(f"{f.name:>14}: {value}{mark}")
    with atomic_write(run / "options.txt") as fh:
        fh.write(("\n".join(lines) + "\n").encode())


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint the run continues from."""
    if not path.exists():
        return
    kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    with atomic_write(path) as fh:
        fh.write("".join(ln + "\n" for ln in kept).encode())


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available to PyTorch")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _saved_train_config(folder: Path, raw: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig(**raw["train"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{folder}/config.json: no usable training config ({exc})") from None


# Generator options that shape the weights or their meaning: a fine-tuning run must share them with its start.
_ARCHITECTURE = ("in_channels", "out_channels", "ngf", "depth", "norm", "upsample", "soft_from_se", "soft_offset",
                 "head")


def _load_init(G: nn.Module, gcfg: GeneratorConfig, config: TrainConfig, windows: Windows,
               folder: Path) -> dict[str, str]:
    """Fine-tuning: `folder`'s generator weights into `G`, when its architecture and value contract are this
    run's; returns where they came from (recorded in the run's checkpoints)."""
    from dexrt_train.checkpoint import load_checkpoint

    start = load_checkpoint(folder)
    differ = [f"{k} {getattr(start.config, k)!r} (this run: {getattr(gcfg, k)!r})" for k in _ARCHITECTURE
              if getattr(start.config, k) != getattr(gcfg, k)]
    normalised = start.raw_config.get("normalisation") is not None
    if normalised != (config.normalisation == "robust"):
        differ.append(f"normalisation {'robust' if normalised else 'window'} (this run: {config.normalisation})")
    for name, theirs, ours in (("input window", start.windows.input, windows.input),
                               ("output windows", start.windows.outputs, windows.outputs)):
        if np.asarray(theirs, float).tolist() != np.asarray(ours, float).tolist():  # the weights' value scale
            differ.append(f"{name} {np.asarray(theirs).tolist()} (this run: {np.asarray(ours).tolist()})")
    if differ:
        raise InputError(f"{folder}: its generator does not match this run's options: {', '.join(differ)}")
    G.load_state_dict(start.generator.state_dict(), strict=True)
    return {"checkpoint": str(folder), "model_hash": start.model_hash}


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, DDP) else net


def train(config: TrainConfig, dataset: str | os.PathLike[str], run: str | os.PathLike[str], *,
          resume: bool = False, stop_at: int = 0, val_dataset: str | os.PathLike[str] | None = None,
          init: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Train (or, with `resume`, continue) a run; returns a summary. See docs/training.md.

    `init` (a checkpoint folder) fine-tunes: the generator starts from its weights instead of random ones.

    `val_dataset` takes the validation views from another dataset's val split: a `dexrt synth --pool` holds
    training views only.

    `stop_at` > 0 ends this invocation after that step (with a checkpoint) although the schedule runs to
    `config.steps`: for time-limited jobs, continued later with `resume`.
    """
    dataset, run = Path(dataset), Path(run)
    last, best_dir, metrics_path = run / "last", run / "best", run / "metrics.jsonl"
    windows: Windows | None = None
    if resume:
        if not last.is_dir():
            raise InputError(f"{run}: nothing to resume (no last/ checkpoint in the run folder)")
        saved = read_config(last)
        old = _saved_train_config(last, saved)
        changed = [k for k in asdict(old) if k not in RUNTIME_OPTIONS and getattr(old, k) != getattr(config, k)]
        if changed:
            raise InputError(f"{last}: resuming with options that differ from the run's ({', '.join(changed)}); "
                             f"only {', '.join(RUNTIME_OPTIONS)} may change")
        if saved.get("units") != "physical":
            raise InputError(f"{last}: this run's windows are in stored 16-bit values (an earlier dexrt); "
                             "start a new run, whose windows are physical")
        windows = Windows(input=tuple(saved["input"]["window"]),
                          outputs=tuple(tuple(w) for w in saved["output"]["windows"]))
    elif last.exists():
        raise InputError(f"{run}: already holds a run (last/); continue it with --resume or choose another folder")

    # -- processes and devices: torchrun sets WORLD_SIZE, RANK, LOCAL_RANK (and MASTER_ADDR/PORT)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(config.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main = rank == 0
    amp_dtype = _amp_dtype(config.amp, device)
    autocast = (torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext())

    # -- data: 16-bit views, windowed to [-1, 1] per channel
    # Windows are physical: a manifest dataset's stored values go through its encoding, and the engine built from
    # this run reads and writes each quantity's fixed encoding; paired folders' values are taken as they are.
    # A scale-free model sees processed images as they are: its targets are the DE pair as the processing shows it
    robust = config.normalisation == "robust"
    train_views = find_views(dataset, "train", processed=robust)
    val_views = find_views(val_dataset or dataset, "val", processed=robust)
    spacing = pixel_spacing_mm(dataset)
    stored_as = dataset_encodings(dataset, processed=robust)
    encodings = [stored_as[c] if stored_as else Encoding(0.0, 1.0) for c in CHANNELS]
    val_stored_as = dataset_encodings(val_dataset, processed=robust) if val_dataset is not None else stored_as
    if (val_stored_as is None) != (stored_as is None):
        raise InputError(f"{val_dataset}: validation and training data must both be datasets or both paired folders")
    val_encodings = [val_stored_as[c] if val_stored_as else Encoding(0.0, 1.0) for c in CHANNELS]
    if windows is None and robust:
        windows = Windows(input=NORMALISED_WINDOW, outputs=(NORMALISED_WINDOW, NORMALISED_WINDOW))
    if windows is None:
        full = [QUANTITIES[c].window if stored_as else STORED_WINDOW for c in CHANNELS]
        per_channel = full if config.windows == "full" else data_windows(train_views, encodings)
        windows = Windows(input=per_channel[0], outputs=tuple(per_channel[1:]))
    channel_windows = [windows.input, *windows.outputs]
    cache = config.cache_mb << 20
    train_ds = PairedDataset(train_views, channel_windows, encodings, crop=config.crop, hflip=config.hflip,
                             vflip=config.vflip, seed=config.seed, cache_bytes=cache, normalise=robust)
    val_ds = (PairedDataset(val_views, channel_windows, val_encodings, cache_bytes=cache, normalise=robust)
              if val_views else None)
    sampler = EpochBatchSampler(len(train_ds), config.batch_size, seed=config.seed, rank=rank, world=world)
    loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=config.num_workers,
                        persistent_workers=config.num_workers > 0, pin_memory=device.type == "cuda")
    per_epoch = sampler.batches_per_epoch
    total = config.steps or config.epochs * per_epoch

    # -- model and optimisers
    gcfg, dcfg = config.generator(), config.discriminator()
    G, D = define_G(gcfg).to(device), define_D(dcfg).to(device)
    opt_G = torch.optim.Adam(G.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step, best = 0, None
    started_from = None
    if init is not None and not resume:
        started_from = _load_init(_unwrap(G), gcfg, config, windows, Path(init))
    if resume:
        state = load_training(last, G, D, {"G": opt_G, "D": opt_D})
        step, best = state.step, state.best
        if state.scaler:
            scaler.load_state_dict(state.scaler)
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        G, D = DDP(G, device_ids=ids), DDP(D, device_ids=ids)

    if main:
        run.mkdir(parents=True, exist_ok=True)
        if resume:
            _truncate_metrics(metrics_path, step)
        write_options(run, config, dataset)
        changed = ", ".join(f"{k}={v}" for k, v in non_defaults(config).items())
        tqdm.write(f"dexrt train: {len(train_views)} train / {len(val_views)} val views, {world} process(es) on "
                   f"{device}{', amp ' + str(amp_dtype).removeprefix('torch.') if amp_dtype else ''}; "
                   f"G {count_parameters(G) / 1e6:.2f} M, D {count_parameters(D) / 1e6:.2f} M parameters; "
                   f"options: {changed or 'defaults'}", file=sys.stderr)

    def log(record: dict[str, Any]) -> None:
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def checkpoint(val: dict[str, float] | None) -> None:
        nonlocal best
        extra = {"train": asdict(config), "discriminator": asdict(dcfg), "dataset": str(dataset),
                 "pixel_spacing_mm": spacing, "units": "physical",
                 # how the engine built from this run stores each quantity (none for paired folders)
                 "storage": ({c: fixed_encoding(c).as_manifest() for c in CHANNELS} if stored_as and not robust
                             else None),
                 "normalisation": NORMALISATION if robust else None}
        if started_from is not None:
            extra["init"] = started_from
        if val is not None and val_ds is not None:
            value = score(val, config.best_metric)
            if best is None or value < best["score"]:
                best = {"metric": config.best_metric, "score": value, "step": step}
                best_state = TrainState(step, step // per_epoch, config.seed, world, best, None)
                save_checkpoint(best_dir, _unwrap(G), gcfg, windows, extra={**extra, "best": best},
                                files={"state.json": best_state.to_bytes()})
        state = TrainState(step, step // per_epoch, config.seed, world, best,
                           scaler.state_dict() if scaler.is_enabled() else None)
        save_checkpoint(last, _unwrap(G), gcfg, windows, extra=extra,
                        files=training_files(_unwrap(D), {"G": opt_G, "D": opt_D}, state))

    # -- the loop
    bar = tqdm(total=total, initial=step, unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=(None if main and config.progress else True))
    sums: dict[str, float] = {}
    t0 = time.perf_counter()
    end = min(total, stop_at) if stop_at > 0 else total
    while step < end:
        sampler.set_epoch(*divmod(step, per_epoch))
        for batch in loader:
            torch.manual_seed(step_seed(config.seed, rank, step))  # dropout masks of this step
            lr = learning_rate(step, total, config.lr, config.decay_start)
            for opt in (opt_G, opt_D):
                for group in opt.param_groups:
                    group["lr"] = lr
            se = batch["se"].to(device, non_blocking=True)  # (B, 1, h, w) in [-1, 1]
            de = batch["de"].to(device, non_blocking=True)  # (B, 2, h, w): bone, soft
            with autocast:
                fake = G(se)  # (B, 2, h, w)

            losses: dict[str, float] = {}
            use_gan = config.lambda_gan > 0
            if use_gan:
                # D: real pairs -> 1, generated pairs -> 0; one synchronised backward under DDP
                D.requires_grad_(True)
                opt_D.zero_grad(set_to_none=True)
                with D.no_sync() if isinstance(D, DDP) else contextlib.nullcontext():
                    with autocast:
                        loss_D_real = gan_loss(D(torch.cat([se, de], 1)).float(), True, config.gan_mode)
                    scaler.scale(0.5 * loss_D_real).backward()
                with autocast:
                    loss_D_fake = gan_loss(D(torch.cat([se, fake.detach()], 1)).float(), False, config.gan_mode)
                scaler.scale(0.5 * loss_D_fake).backward()
                scaler.step(opt_D)
                D.requires_grad_(False)
                losses.update(D_real=loss_D_real.item(), D_fake=loss_D_fake.item())

            # G: fool D, stay close to the target (L1) and to its edges (differences)
            opt_G.zero_grad(set_to_none=True)
            out = fake.float()
            loss_G_l1 = F.l1_loss(out, de)
            loss_G = config.lambda_l1 * loss_G_l1
            if use_gan:
                with autocast:
                    loss_G_gan = gan_loss(_unwrap(D)(torch.cat([se, fake], 1)).float(), True, config.gan_mode)
                loss_G = loss_G + config.lambda_gan * loss_G_gan
                losses["G_gan"] = loss_G_gan.item()
            # the terms beyond L1 and GAN, each computed only when weighted
            terms = {"G_grad": (config.lambda_grad, lambda: gradient_l1(out, de)),
                     "G_msssim": (config.lambda_msssim, lambda: 1.0 - ms_ssim(out, de)),
                     "G_laplacian": (config.lambda_laplacian, lambda: laplacian_l1(out, de)),
                     "G_consistency": (config.lambda_consistency, lambda: consistency_l1(se, out))}
            for name, (weight, term) in terms.items():
                if weight > 0:
                    value = term()
                    loss_G = loss_G + weight * value
                    losses[name] = value.item()
            scaler.scale(loss_G).backward()
            scaler.step(opt_G)
            scaler.update()
            step += 1
            losses["G_l1"] = loss_G_l1.item()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            sums["n"] = sums.get("n", 0) + 1
            bar.update()
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
            if main and (step % config.log_every == 0 or step == end):
                n = sums.pop("n")
                log({"step": step, "split": "train", "epoch": step / per_epoch, "lr": lr,
                     "seconds": round(time.perf_counter() - t0, 3), **{k: v / n for k, v in sums.items()}})
                sums = {}
            if step % config.val_every == 0 or step == end:
                val = None
                if main and val_ds is not None:
                    panel = run / "samples" / f"step_{step:07d}.png"
                    val = validate(_unwrap(G), val_ds, device=device, size_multiple=gcfg.size_multiple,
                                   autocast=autocast, max_views=config.val_views, panel=panel,
                                   panel_views=config.panel_views)
                    log({"step": step, "split": "val", **val})
                    tqdm.write(f"step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in val.items()
                                                            if not k.startswith("cnr")), file=sys.stderr)
                if main:
                    checkpoint(val)
            if step >= end:
                break
    bar.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"run": str(run), "steps": step, "world_size": world, "rank": rank, "device": str(device),
            "best": best, "seconds": round(time.perf_counter() - t0, 3)}


def run_config(run: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
    """The saved config of a run (RUN/last/), with runtime options replaced, for `train(..., resume=True)`."""
    last = Path(run) / "last"
    if not last.is_dir():
        raise InputError(f"{run}: nothing to resume (no last/ checkpoint in the run folder)")
    saved = _saved_train_config(last, read_config(last))
    bad = sorted(set(overrides) - set(RUNTIME_OPTIONS))
    if bad:
        raise InputError(f"{last}: a resumed run keeps its options; only {', '.join(RUNTIME_OPTIONS)} may be "
                         f"given (not {', '.join(bad)})")
    if overrides.get("steps"):
        overrides["epochs"] = 0
    elif overrides.get("epochs"):
        overrides["steps"] = 0
    return replace(saved, **overrides)


def summary_line(summary: dict[str, Any]) -> str:
    text = f"{summary['run']}: {summary['steps']} steps in {summary['seconds']:.1f} s"
    best = summary["best"]
    if best:
        value = best["score"] if BEST_METRICS[best["metric"]] == "min" else -best["score"]
        text += f", best val {best['metric']} {value:.4g} at step {best['step']}"
    return text
