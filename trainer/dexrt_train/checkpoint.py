"""Checkpoint folders: safetensors weights + JSON, never pickle.

A checkpoint is a folder::

    CKPT/
      config.json          # format, generator config, value windows, channel names (+ training info, if any)
      model.safetensors    # generator state dict (weights and BatchNorm running statistics)

`dexrt export CKPT` needs only these two files. Training checkpoints add ``discriminator.safetensors``,
``optimizer.safetensors`` + ``optimizer.json`` and ``state.json`` (see `dexrt_train.train`), which export ignores.

Windows map stored 16-bit values linearly onto the network range: ``lo -> -1``, ``hi -> +1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from dexrt._atomic import atomic_write
from dexrt._errors import ModelError
from dexrt._json import read_versioned
from dexrt.runtime.contract import INPUT_NAME, OUTPUT_CHANNELS, OUTPUT_NAME, STORED_WINDOW
from dexrt_train.networks import GeneratorConfig, define_G

FORMAT = "dexrt-checkpoint"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
MODEL_NAME = "model.safetensors"
DEFAULT_WINDOW = STORED_WINDOW


@dataclass(frozen=True)
class Windows:
    """Value windows of the network's input (SE) and each output channel (bone, soft)."""

    input: tuple[float, float] = DEFAULT_WINDOW
    outputs: tuple[tuple[float, float], ...] = (DEFAULT_WINDOW, DEFAULT_WINDOW)
    channels: tuple[str, ...] = OUTPUT_CHANNELS

    def __post_init__(self) -> None:
        for w in (self.input, *self.outputs):
            if len(w) != 2 or not float(w[1]) > float(w[0]):
                raise ValueError(f"a window must be (lo, hi) with hi > lo, got {w!r}")
        if len(self.outputs) != len(self.channels):
            raise ValueError(f"{len(self.outputs)} output windows for {len(self.channels)} channels")


def state_dict_bytes(net: nn.Module) -> bytes:
    """The exact bytes of `model.safetensors` for `net` (contiguous CPU copies; no metadata, so deterministic)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    return st_save(tensors)


def model_hash(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def checkpoint_config(config: GeneratorConfig, windows: Windows, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generator": asdict(config),
        "input": {"name": INPUT_NAME, "channel": "se", "window": list(windows.input)},
        "output": {"name": OUTPUT_NAME, "channels": list(windows.channels),
                   "windows": [list(w) for w in windows.outputs]},
        **(extra or {}),
    }


def write_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_checkpoint(folder: str | os.PathLike[str], generator: nn.Module, config: GeneratorConfig,
                    windows: Windows = Windows(), *, extra: dict[str, Any] | None = None,
                    files: dict[str, bytes] | None = None) -> Path:
    """Write a checkpoint folder, replacing `folder` as a whole.

    Everything is written into a fresh sibling folder first, then swapped in with renames, so `folder` is
    either the old complete checkpoint or the new complete one (a crash between the two renames leaves the
    old one beside it as ``.NAME.old``). `files` adds raw extra files (name -> bytes); `extra` adds keys to
    config.json.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        payload = {MODEL_NAME: state_dict_bytes(generator), **(files or {})}
        for name, data in payload.items():
            (tmp / name).write_bytes(data)
        write_json(tmp / CONFIG_NAME, checkpoint_config(config, windows, extra))
        old = folder.parent / f".{folder.name}.old"
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the generator in eval mode, its config, windows and the weights' hash."""

    path: Path
    generator: nn.Module
    config: GeneratorConfig
    windows: Windows
    model_hash: str
    raw_config: dict[str, Any]


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check config.json of a checkpoint folder."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ModelError(f"{folder}: not a checkpoint folder (expected a folder with {CONFIG_NAME} and {MODEL_NAME})")
    try:
        return read_versioned(path, fmt=FORMAT, version=FORMAT_VERSION, kind="checkpoint config", error=ModelError)
    except FileNotFoundError:
        raise ModelError(f"{folder}: not a checkpoint folder (no {CONFIG_NAME})") from None


def _generator_config(path: Path, raw: Any) -> GeneratorConfig:
    known = {f.name for f in fields(GeneratorConfig)}
    if not isinstance(raw, dict) or set(raw) - known:
        raise ModelError(f"{path}: 'generator' must be an object with keys from {sorted(known)}")
    try:
        return GeneratorConfig(**raw)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path}: invalid generator config: {exc}") from None


def _windows(path: Path, cfg: dict[str, Any]) -> Windows:
    try:
        inp, out = cfg["input"], cfg["output"]
        return Windows(input=tuple(map(float, inp["window"])),  # type: ignore[arg-type]
                       outputs=tuple(tuple(map(float, w)) for w in out["windows"]),
                       channels=tuple(str(c) for c in out["channels"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: invalid input/output windows: {exc}") from None


def load_checkpoint(folder: str | os.PathLike[str], map_location: str = "cpu") -> Checkpoint:
    """Load a checkpoint folder's generator (strictly: every tensor must match the config) in eval mode."""
    folder = Path(folder)
    cfg = read_config(folder)
    config = _generator_config(folder / CONFIG_NAME, cfg.get("generator"))
    windows = _windows(folder / CONFIG_NAME, cfg)
    if len(windows.outputs) != config.out_channels:
        raise ModelError(f"{folder / CONFIG_NAME}: {len(windows.outputs)} output windows for a generator with "
                         f"{config.out_channels} output channels")
    weights = folder / MODEL_NAME
    try:
        data = weights.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{folder}: no {MODEL_NAME} in the checkpoint folder") from None
    try:
        state = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{weights}: not a readable safetensors file ({exc})") from None
    net = define_G(config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{weights}: weights do not match the generator config in {CONFIG_NAME}: {exc}") from None
    net.to(map_location).eval()
    return Checkpoint(folder, net, config, windows, model_hash(data), cfg)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, mapping its problems to ModelError."""
    try:
        return st_load(path.read_bytes())
    except FileNotFoundError:
        raise ModelError(f"{path}: missing") from None
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
