"""dexrt's exception hierarchy: one base, `DexrtError`, raised by the runtime, the CLI and the tools."""

from __future__ import annotations


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
    """An optional part of dexrt needs packages that are not installed; the message names the extra to install."""


def require_extra(extra: str, what: str, *modules: str) -> None:
    """Import ``modules`` or raise one `MissingExtraError` saying that ``what`` needs ``pip install 'dexrt[extra]'``."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingExtraError(f"{what} needs the '{extra}' extra, which is not installed ({module}: {exc}); "
                                    f"install it with: pip install 'dexrt[{extra}]'") from exc
