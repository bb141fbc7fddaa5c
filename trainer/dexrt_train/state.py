"""Training checkpoints: everything `--resume` needs, as safetensors and JSON (no pickle).

A training checkpoint is a checkpoint folder (see `dexrt_train.checkpoint`; `dexrt export` reads it) plus::

    discriminator.safetensors   # D state dict
    optimizer.safetensors       # Adam moments and step counts, keys "G/<param index>/<name>", "D/..."
    optimizer.json              # Adam param groups (lr, betas, ...) and non-tensor state
    state.json                  # step, epoch, seed, world size, best validation score, AMP scaler state
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn

from dexrt._errors import ModelError
from dexrt_train.checkpoint import CONFIG_NAME, MODEL_NAME, load_tensors, read_config

D_NAME = "discriminator.safetensors"
OPT_TENSORS = "optimizer.safetensors"
OPT_JSON = "optimizer.json"
STATE_NAME = "state.json"


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def optimizers_to_files(optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, bytes]:
    """Optimizer state dicts as (safetensors bytes, JSON bytes)."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, st in sd["state"].items():
            for key, value in st.items():
                if torch.is_tensor(value):
                    tensors[f"{name}/{pid}/{key}"] = value.detach().to("cpu").contiguous().clone()
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars, "n_params": len(sd["state"])}
    return {OPT_TENSORS: st_save(tensors), OPT_JSON: _json_bytes(meta)}


def load_optimizers(folder: Path, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    tensors = load_tensors(folder / OPT_TENSORS)
    try:
        meta = json.loads((folder / OPT_JSON).read_text())
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise ModelError(f"{folder / OPT_JSON}: missing or not JSON ({exc})") from None
    for name, opt in optimizers.items():
        state: dict[int, dict[str, Any]] = {}
        prefix = f"{name}/"
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, field = key[len(prefix):].split("/", 1)
                state.setdefault(int(pid), {})[field] = value
        for pid, fields in meta[name]["scalars"].items():
            state.setdefault(int(pid), {}).update(fields)
        groups = meta[name]["param_groups"]
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        try:
            opt.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"{folder}: optimizer state of {name} does not fit the model: {exc}") from None


@dataclass
class TrainState:
    step: int
    epoch: int
    seed: int
    world_size: int
    best: dict[str, Any] | None
    scaler: dict[str, Any] | None

    def to_bytes(self) -> bytes:
        return _json_bytes(self.__dict__)


def training_files(D: nn.Module, optimizers: dict[str, torch.optim.Optimizer], state: TrainState) -> dict[str, bytes]:
    from dexrt_train.checkpoint import state_dict_bytes

    return {D_NAME: state_dict_bytes(D), **optimizers_to_files(optimizers), STATE_NAME: state.to_bytes()}


def read_state(folder: Path) -> TrainState:
    path = folder / STATE_NAME
    try:
        raw = json.loads(path.read_text())
        return TrainState(**raw)
    except FileNotFoundError:
        raise ModelError(f"{folder}: not a training checkpoint (no {STATE_NAME}); cannot resume from it") from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelError(f"{path}: not a valid training state ({exc})") from None


def load_training(folder: Path, G: nn.Module, D: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> TrainState:
    """Restore G, D and the optimizers in place from a training checkpoint; returns its state."""
    read_config(folder)
    state = read_state(folder)
    for net, name in ((G, MODEL_NAME), (D, D_NAME)):
        try:
            net.load_state_dict(load_tensors(folder / name), strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{folder / name}: does not match the run's {CONFIG_NAME}: {exc}") from None
    load_optimizers(folder, optimizers)
    return state
