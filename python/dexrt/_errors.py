"""dexrt's exception hierarchy: one base, `DexrtError`, raised by the runtime, the CLI and the tools."""

from __future__ import annotations

from typing import Any


class DexrtError(Exception):
    """Base of every error dexrt raises on purpose."""


class InputError(DexrtError, ValueError):
    """An input image or file is unusable: wrong dtype, rank, size, values, or an unreadable file."""


class EngineError(DexrtError):
    """An engine could not be built, loaded or run."""


class BundleError(EngineError):
    """An engine bundle (.dexrt file) is truncated, tampered with, or of an unknown format."""


class ModelError(DexrtError):
    """An ONNX model or a checkpoint does not have the shape dexrt expects."""


class DomainError(InputError):
    """An input is not what the model was trained on (not a frontal chest radiograph) and strict mode refuses it."""


class ConfigError(DexrtError, ValueError):
    """A configuration file or option is unusable: unknown key, wrong type, missing value, unreadable file."""


class MissingExtraError(DexrtError, ImportError):
    """A part of dexrt needs a package that is not installed; the message says what to install (an extra of
    dexrt's, or a package of its own such as NVIDIA's TensorRT). The one error of that kind, wherever it happens."""


def require_package(module: str, what: str, install: str, package: str | None = None) -> Any:
    """The imported ``module``, or a `MissingExtraError` saying that ``what`` needs ``package`` (default: the
    module's name) and that ``install`` (a command, or a sentence naming one) installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{what} needs {package or module}, which is not installed ({module}: {exc}); "
                                f"{install}") from exc


def require_extra(extra: str, what: str, *modules: str) -> None:
    """Import ``modules`` or raise one `MissingExtraError` saying that ``what`` needs ``pip install 'dexrt[extra]'``."""
    for module in modules:
        require_package(module, what, f"install it with: pip install 'dexrt[{extra}]'", f"the '{extra}' extra")
