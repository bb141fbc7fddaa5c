"""`dexrt train DATASET -o RUN`: pix2pix training of the SE -> (bone, soft) generator."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from dexrt._errors import require_extra
from dexrt_train.config import TrainConfig

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _d(name: str) -> str:
    """``[default]`` for a help text: TrainConfig's default of the field (one home: the dataclass)."""
    value = _DEFAULTS[name]
    if isinstance(value, bool):
        return "[on]" if value else "[off]"
    return f"[{value:g}]" if isinstance(value, float) else f"[{value}]"



@click.command("train")
@click.argument("dataset", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", "run", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: options, metrics.jsonl, samples/, last/ and best/ checkpoints.")
@click.option("--steps", type=click.IntRange(min=1), help="Total optimiser steps.")
@click.option("--epochs", type=click.IntRange(min=1), help="Total epochs over the train split (instead of --steps).")
@click.option("--resume", is_flag=True, help="Continue the run in RUN from RUN/last/ (its options are kept).")
@click.option("--init", "init", type=str, default=None, metavar="CHECKPOINT",
              help="Fine-tune: start from this checkpoint folder's generator ('default': the shipped model's); "
                   "the generator options must match it (docs/training.md).")
@click.option("--stop-at", type=click.IntRange(min=1), default=None,
              help="End this invocation after step N (checkpointed); continue later with --resume.")
@click.option("--batch-size", type=click.IntRange(min=1), help=f"Views per step and process {_d('batch_size')}.")
@click.option("--lr", type=float, help=f"Adam learning rate {_d('lr')}.")
@click.option("--beta1", type=float, help=f"Adam beta1 {_d('beta1')}.")
@click.option("--lambda-l1", type=float, help=f"Weight of the L1 term {_d('lambda_l1')}.")
@click.option("--gan-mode", type=click.Choice(["vanilla", "lsgan"]), help=f"GAN loss {_d('gan_mode')}.")
@click.option("--decay-start", type=click.FloatRange(0, 1),
              help=f"Fraction of the steps before LR decay {_d('decay_start')}.")
@click.option("--ngf", type=click.IntRange(min=1), help=f"Generator width {_d('ngf')}.")
@click.option("--ndf", type=click.IntRange(min=1), help=f"Discriminator width {_d('ndf')}.")
@click.option("--depth", type=click.IntRange(2, 12),
              help=f"U-Net levels; sizes are multiples of 2**depth {_d('depth')}.")
@click.option("--norm", type=click.Choice(["batch", "instance"]), help=f"Norm layers {_d('norm')}.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help=f"Decoder dropout {_d('dropout')}.")
@click.option("--crop", type=click.IntRange(min=1), help=f"Random crop size, a multiple of 2**depth {_d('crop')}.")
@click.option("--hflip/--no-hflip", default=None, help=f"Random horizontal flips {_d('hflip')}.")
@click.option("--vflip/--no-vflip", default=None, help=f"Random vertical flips {_d('vflip')}.")
@click.option("--windows", type=click.Choice(["full", "data"]),
              help=f"Physical value windows: each quantity's fixed window, or the train split's range + 5% "
                   f"{_d('windows')}.")
@click.option("--normalisation", type=click.Choice(["window", "robust"]),
              help=f"SE input through its window, or scale-free: each image by its robust range {_d('normalisation')}.")
@click.option("--upsample", type=click.Choice(["transpose", "resize"]),
              help=f"Decoder upsampling: transposed conv, or nearest 2x + 3x3 conv (no checkerboard) {_d('upsample')}.")
@click.option("--head", type=click.IntRange(min=0),
              help=f"Channels of a full-resolution head (two 3x3 convs on SE + features); 0: none {_d('head')}.")
@click.option("--soft-from-se/--free-soft", "soft_from_se", default=None,
              help="Predict bone and a correction, soft = SE - bone + correction (needs --normalisation robust).")
@click.option("--lambda-gan", type=float,
              help=f"Weight of the GAN term; 0 trains without a discriminator {_d('lambda_gan')}.")
@click.option("--lambda-grad", type=float,
              help=f"Weight of the L1 of the outputs' neighbour differences {_d('lambda_grad')}.")
@click.option("--lambda-laplacian", type=float,
              help=f"Weight of the L1 of the outputs' Laplacian-pyramid bands (1-8 px structure) "
                   f"{_d('lambda_laplacian')}.")
@click.option("--lambda-msssim", type=float,
              help=f"Weight of 1 - MS-SSIM of the outputs (5 scales) {_d('lambda_msssim')}.")
@click.option("--lambda-consistency", type=float,
              help=f"Weight of the L1 of SE - (bone + soft), the parts' sum (needs --normalisation robust) "
                   f"{_d('lambda_consistency')}.")
@click.option("--val-data", "val_data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Take the val views from this dataset (a `dexrt synth --pool` has train views only).")
@click.option("--val-every", type=click.IntRange(min=1),
              help=f"Validate and checkpoint every N steps {_d('val_every')}.")
@click.option("--val-views", type=click.IntRange(min=0),
              help=f"Validate on the first N val views, 0 = all {_d('val_views')}.")
@click.option("--log-every", type=click.IntRange(min=1), help=f"Log training losses every N steps {_d('log_every')}.")
@click.option("--best-metric", type=click.Choice(["mae", "psnr", "ssim"]), help=f"Picks RUN/best/ {_d('best_metric')}.")
@click.option("--seed", type=int, help=f"Seed of weights, data order, augmentation and dropout {_d('seed')}.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]),
              help=f"Where to train; auto: CUDA if available {_d('device')}.")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), help=f"Mixed precision on CUDA {_d('amp')}.")
@click.option("--num-workers", type=click.IntRange(min=0), help=f"Data loader processes {_d('num_workers')}.")
@click.option("--cache-mb", type=click.IntRange(min=0),
              help=f"Keep decoded views in RAM up to this size {_d('cache_mb')}.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr (only on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def train(dataset: tuple[Path, ...], run: Path, resume: bool, stop_at: int | None, progress: bool, as_json: bool,
          val_data: Path | None, init: str | None, **options: Any) -> None:
    """Train the SE -> (bone, soft) generator on DATASET (a `dexrt synth` dataset or paired folders; several are
    taken together: `dexrt train A B -o RUN`).

    Runs on one process, or on several under torchrun without change:
    `torchrun --nproc_per_node 2 $(which dexrt) train DATASET -o RUN ...`. See docs/training.md.
    """
    require_extra("train", "`dexrt train`", "torch", "safetensors", "dexrt_train")
    from dexrt_train.train import run_config, summary_line
    from dexrt_train.train import train as run_training

    given = {k: v for k, v in options.items() if v is not None}  # the others keep TrainConfig's defaults
    if init is not None and resume:
        raise click.UsageError("--init starts a new run; --resume continues one from its own weights")
    start = None
    if init is not None:
        from dexrt.models import DEFAULT_CHECKPOINT

        start = DEFAULT_CHECKPOINT if init == "default" else Path(init)
        if not start.is_dir():
            raise click.BadParameter(f"{start}: not a checkpoint folder", param_hint="--init")
    try:
        if resume:
            config = run_config(run, progress=progress, **given)
        else:
            if "steps" not in given and "epochs" not in given:
                raise click.UsageError("give --steps or --epochs")
            config = TrainConfig(progress=progress, **given)
    except ValueError as exc:
        from dexrt._errors import DexrtError

        if isinstance(exc, DexrtError):
            raise
        raise click.UsageError(str(exc)) from None
    summary = run_training(config, list(dataset), run, resume=resume, stop_at=stop_at or 0, val_dataset=val_data,
                           init=start)
    if summary.get("rank", 0) == 0:
        click.echo(json.dumps(summary, indent=2, sort_keys=True) if as_json else summary_line(summary))
