"""`dexrt train DATASET -o RUN`: pix2pix training of the SE -> (bone, soft) generator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from dexrt._errors import require_extra

# CLI option -> TrainConfig field; options left out keep TrainConfig's defaults (pix2pix's recipe).
_FIELDS = {
    "steps": "steps", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "beta1": "beta1",
    "lambda_l1": "lambda_l1", "gan_mode": "gan_mode", "decay_start": "decay_start", "ngf": "ngf", "ndf": "ndf",
    "depth": "depth", "norm": "norm", "dropout": "dropout", "crop": "crop", "hflip": "hflip", "vflip": "vflip",
    "windows": "windows", "normalisation": "normalisation", "upsample": "upsample", "soft_from_se": "soft_from_se",
    "head": "head", "lambda_gan": "lambda_gan", "lambda_grad": "lambda_grad",
    "lambda_consistency": "lambda_consistency", "lambda_laplacian": "lambda_laplacian",
    "lambda_msssim": "lambda_msssim",
    "val_every": "val_every", "val_views": "val_views", "log_every": "log_every",
    "best_metric": "best_metric", "seed": "seed", "device": "device", "amp": "amp", "num_workers": "num_workers",
    "cache_mb": "cache_mb",
}


@click.command("train")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
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
@click.option("--batch-size", type=click.IntRange(min=1), help="Views per step and process [1].")
@click.option("--lr", type=float, help="Adam learning rate [2e-4].")
@click.option("--beta1", type=float, help="Adam beta1 [0.5].")
@click.option("--lambda-l1", type=float, help="Weight of the L1 term [100].")
@click.option("--gan-mode", type=click.Choice(["vanilla", "lsgan"]), help="GAN loss [vanilla].")
@click.option("--decay-start", type=click.FloatRange(0, 1), help="Fraction of the steps before LR decay [0.5].")
@click.option("--ngf", type=click.IntRange(min=1), help="Generator width [64].")
@click.option("--ndf", type=click.IntRange(min=1), help="Discriminator width [64].")
@click.option("--depth", type=click.IntRange(2, 12), help="U-Net levels; sizes are multiples of 2**depth [8].")
@click.option("--norm", type=click.Choice(["batch", "instance"]), help="Norm layers [batch].")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Decoder dropout [0.5].")
@click.option("--crop", type=click.IntRange(min=1), help="Random crop size, a multiple of 2**depth [256].")
@click.option("--hflip/--no-hflip", default=None, help="Random horizontal flips [on].")
@click.option("--vflip/--no-vflip", default=None, help="Random vertical flips [off].")
@click.option("--windows", type=click.Choice(["full", "data"]),
              help="Physical value windows: each quantity's fixed window, or the train split's range + 5% [full].")
@click.option("--normalisation", type=click.Choice(["window", "robust"]),
              help="SE input through its window, or scale-free: each image by its robust range [window].")
@click.option("--upsample", type=click.Choice(["transpose", "resize"]),
              help="Decoder upsampling: transposed conv, or nearest 2x + 3x3 conv (no checkerboard) [transpose].")
@click.option("--head", type=click.IntRange(min=0),
              help="Channels of a full-resolution head (two 3x3 convs on SE + features); 0: none [0].")
@click.option("--soft-from-se/--free-soft", "soft_from_se", default=None,
              help="Predict bone and a correction, soft = SE - bone + correction (needs --normalisation robust).")
@click.option("--lambda-gan", type=float, help="Weight of the GAN term; 0 trains without a discriminator [1].")
@click.option("--lambda-grad", type=float, help="Weight of the L1 of the outputs' neighbour differences [0].")
@click.option("--lambda-laplacian", type=float,
              help="Weight of the L1 of the outputs' Laplacian-pyramid bands (1-8 px structure) [0].")
@click.option("--lambda-msssim", type=float, help="Weight of 1 - MS-SSIM of the outputs (5 scales) [0].")
@click.option("--lambda-consistency", type=float,
              help="Weight of the L1 of SE - (bone + soft), the parts' sum (needs --normalisation robust) [0].")
@click.option("--val-data", "val_data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Take the val views from this dataset (a `dexrt synth --pool` has train views only).")
@click.option("--val-every", type=click.IntRange(min=1), help="Validate and checkpoint every N steps [500].")
@click.option("--val-views", type=click.IntRange(min=0), help="Validate on the first N val views, 0 = all [0].")
@click.option("--log-every", type=click.IntRange(min=1), help="Log training losses every N steps [10].")
@click.option("--best-metric", type=click.Choice(["mae", "psnr", "ssim"]), help="Picks RUN/best/ [mae].")
@click.option("--seed", type=int, help="Seed of weights, data order, augmentation and dropout [0].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="[auto: CUDA if available].")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), help="Mixed precision on CUDA [auto].")
@click.option("--num-workers", type=click.IntRange(min=0), help="Data loader processes [2].")
@click.option("--cache-mb", type=click.IntRange(min=0), help="Keep decoded views in RAM up to this size [2048].")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr (only on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def train(dataset: Path, run: Path, resume: bool, stop_at: int | None, progress: bool, as_json: bool,
          val_data: Path | None, init: str | None, **options: Any) -> None:
    """Train the SE -> (bone, soft) generator on DATASET (a `dexrt synth` dataset or paired folders).

    Runs on one process, or on several under torchrun without change:
    `torchrun --nproc_per_node 2 $(which dexrt) train DATASET -o RUN ...`. See docs/training.md.
    """
    require_extra("train", "`dexrt train`", "torch", "safetensors", "dexrt_train")
    from dexrt_train.train import TrainConfig, run_config, summary_line
    from dexrt_train.train import train as run_training

    given = {_FIELDS[k]: v for k, v in options.items() if v is not None}
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
    summary = run_training(config, dataset, run, resume=resume, stop_at=stop_at or 0, val_dataset=val_data,
                           init=start)
    if summary.get("rank", 0) == 0:
        click.echo(json.dumps(summary, indent=2, sort_keys=True) if as_json else summary_line(summary))
