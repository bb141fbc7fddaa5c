"""The trainer's PyTorch is an optional extra: commands that need it import it here, inside the command."""

from __future__ import annotations

import importlib

import click

INSTALL_HINT = "pip install 'dexrt[train]'"


def require_torch(command: str) -> None:
    """Raise a ClickException naming the extra to install when PyTorch (or the trainer package) is missing."""
    for module in ("torch", "safetensors", "dexrt_train"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise click.ClickException(
                f"`dexrt {command}` needs PyTorch and the dexrt trainer, which are not installed "
                f"({module}: {exc}). Install the training extra: {INSTALL_HINT}"
            ) from exc
