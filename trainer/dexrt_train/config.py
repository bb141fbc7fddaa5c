"""The training run's configuration: `TrainConfig` (saved with every checkpoint and as RUN/options.txt), the
pure learning-rate schedule and the per-step seeds.

Imports neither torch nor the networks at module level, so the command line can derive its option defaults and
help from `TrainConfig` without the `train` extra.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dexrt._atomic import atomic_write
from dexrt._errors import ModelError
from dexrt.runtime.contract import NORMALISED_WINDOW

if TYPE_CHECKING:
    from dexrt_train.networks import DiscriminatorConfig, GeneratorConfig

# How `best_metric` picks RUN/best/: whether lower or higher is better.
BEST_METRICS = {"mae": "min", "psnr": "max", "ssim": "max"}

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
                   "upsample": ("transpose", "resize"), "gan_mode": ("vanilla", "lsgan"),
                   "device": ("auto", "cpu", "cuda"),
                   "amp": ("auto", "bf16", "fp16", "off"), "best_metric": tuple(BEST_METRICS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.batch_size < 1 or self.val_every < 1 or self.log_every < 1 or not 0 <= self.decay_start <= 1:
            raise ValueError("batch_size, val_every, log_every must be >= 1 and decay_start in [0, 1]")

    def generator(self) -> GeneratorConfig:
        from dexrt_train.networks import GeneratorConfig

        # soft from SE needs one window for every channel: the robust normalisation's
        return GeneratorConfig(ngf=self.ngf, depth=self.depth, norm=self.norm, dropout=self.dropout,
                               dropout_blocks=self.dropout_blocks, seed=self.seed, upsample=self.upsample,
                               soft_from_se=self.soft_from_se, soft_offset=SOFT_OFFSET if self.soft_from_se else 0.0,
                               head=self.head)

    def discriminator(self) -> DiscriminatorConfig:
        from dexrt_train.networks import DiscriminatorConfig

        return DiscriminatorConfig(ndf=self.ndf, n_layers=self.n_layers, norm=self.norm, seed=self.seed + 1)


# Options that may differ when resuming: they change how the run executes, not what it computes.
RUNTIME_OPTIONS = ("steps", "epochs", "device", "num_workers", "cache_mb", "progress")

def learning_rate(step: int, total_steps: int, base_lr: float, decay_start: float) -> float:
    """pix2pix's 'linear' policy: `base_lr` for the first `decay_start` of the steps, then linearly to 0."""
    start = int(decay_start * total_steps)
    if step < start:
        return base_lr
    return base_lr * max(0.0, (total_steps - step) / max(1, total_steps - start))

def step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def non_defaults(config: TrainConfig) -> dict[str, Any]:
    default = {f.name: f.default for f in fields(TrainConfig)}
    return {k: v for k, v in asdict(config).items() if v != default[k]}


def write_options(run: Path, config: TrainConfig, dataset: Path | str) -> None:
    """pix2pix's opt.txt: every option, the non-default ones marked with their default."""
    lines = [f"dataset: {dataset}"]
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        mark = f"\t[default: {f.default}]" if value != f.default else ""
        lines.append(f"{f.name:>14}: {value}{mark}")
    with atomic_write(run / "options.txt") as fh:
        fh.write(("\n".join(lines) + "\n").encode())

def saved_config(folder: Path, raw: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig(**raw["train"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{folder}/config.json: no usable training config ({exc})") from None
