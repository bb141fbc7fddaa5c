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
from dataclasses import asdict, replace
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
from dexrt._errors import InputError
from dexrt.runtime.contract import (
    NORMALISATION,
    NORMALISED_WINDOW,
    QUANTITIES,
    STORED_WINDOW,
    Encoding,
    fixed_encoding,
)
from dexrt_train.checkpoint import Windows, read_config, save_checkpoint
from dexrt_train.config import (
    BEST_METRICS,
    RUNTIME_OPTIONS,
    TrainConfig,
    learning_rate,
    non_defaults,
    saved_config,
    step_seed,
    write_options,
)
from dexrt_train.data import (
    CHANNELS,
    EpochBatchSampler,
    PairedDataset,
    Roots,
    data_roots,
    data_windows,
    dataset_encodings,
    find_views,
    pixel_spacing_mm,
)
from dexrt_train.losses import consistency_l1, gan_loss, gradient_l1, laplacian_l1, ms_ssim
from dexrt_train.networks import GeneratorConfig, count_parameters, define_D, define_G
from dexrt_train.state import TrainState, load_training, training_files
from dexrt_train.validate import score, validate


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


def train(config: TrainConfig, dataset: Roots, run: str | os.PathLike[str], *,
          resume: bool = False, stop_at: int = 0, val_dataset: str | os.PathLike[str] | None = None,
          init: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Train (or, with `resume`, continue) a run; returns a summary. See docs/training.md.

    `init` (a checkpoint folder) fine-tunes: the generator starts from its weights instead of random ones.

    `dataset` is one data folder or several, whose views are taken together.

    `val_dataset` takes the validation views from another dataset's val split: a `dexrt synth --pool` holds
    training views only.

    `stop_at` > 0 ends this invocation after that step (with a checkpoint) although the schedule runs to
    `config.steps`: for time-limited jobs, continued later with `resume`.
    """
    datasets, run = data_roots(dataset), Path(run)
    named = ", ".join(map(str, datasets))
    last, best_dir, metrics_path = run / "last", run / "best", run / "metrics.jsonl"
    windows: Windows | None = None
    if resume:
        if not last.is_dir():
            raise InputError(f"{run}: nothing to resume (no last/ checkpoint in the run folder)")
        saved = read_config(last)
        old = saved_config(last, saved)
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
    train_views = find_views(datasets, "train", processed=robust)
    val_views = find_views(val_dataset or datasets, "val", processed=robust)
    spacing = pixel_spacing_mm(datasets)
    stored_as = dataset_encodings(datasets, processed=robust)
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
        write_options(run, config, named)
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
        extra = {"train": asdict(config), "discriminator": asdict(dcfg), "dataset": named,
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
    saved = saved_config(last, read_config(last))
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
