"""`dexrt.Engine`: load an engine bundle and turn single-energy images into (bone, soft-tissue) pairs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dexrt import _core
from dexrt._errors import EngineError, InputError
from dexrt.bundle import read_bundle

_DEVICES = ("auto", "cpu", "gpu")
_MAX_SIDE = 16384  # larger images are refused before anything is allocated


class Engine:
    """A dual-energy engine loaded from a `.dexrt` bundle.

    ``device="auto"`` runs the bundle on the device it was built for. The resolved backend and device are
    visible as ``engine.backend`` and ``engine.device``. Instances are thread-safe: several threads may call
    :meth:`infer` at once, and the GIL is released while the network runs.

    Example::

        engine = dexrt.Engine("model.dexrt")
        bone, soft = engine.infer(image)  # (H, W) uint16 -> two (H, W) uint16
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "auto",
        *,
        performance_hint: str = "latency",
        num_threads: int = 0,
    ) -> None:
        if device not in _DEVICES:
            raise ValueError(f"device must be one of {', '.join(_DEVICES)}, got {device!r}")
        if performance_hint not in ("latency", "throughput"):
            raise ValueError(f"performance_hint must be 'latency' or 'throughput', got {performance_hint!r}")
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        bundle = read_bundle(path)
        m = bundle.manifest
        self._path = Path(path)
        self._manifest = m
        if m["backend"] != "openvino":
            raise EngineError(f"{path}: backend {m['backend']!r} is not available in this build of dexrt")
        if device == "gpu":
            raise EngineError(f"{path}: this is a CPU (OpenVINO) engine; build a GPU engine with "
                              "`dexrt build-engine --device gpu`")
        try:
            model, weights = bundle.payload["model.xml"], bundle.payload["model.bin"]
        except KeyError as exc:
            raise EngineError(f"{path}: an OpenVINO bundle must hold model.xml and model.bin") from exc
        self._core = _core.Engine(
            backend="openvino",
            device="CPU",
            model=model,
            weights=weights,
            input_window=tuple(m["input"]["window"]),
            output_windows=[tuple(w) for w in m["output"]["windows"]],
            size_multiple=m["size_multiple"],
            performance_hint=performance_hint.upper(),
            num_threads=num_threads,
        )

    # -- metadata ---------------------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def backend(self) -> str:
        """The backend running the network: ``"openvino"`` (CPU) or ``"tensorrt"`` (NVIDIA GPU)."""
        return self._core.backend

    @property
    def device(self) -> str:
        """The device the backend resolved to, e.g. ``"CPU"``."""
        return self._core.device

    @property
    def channels(self) -> tuple[str, ...]:
        """Names of the outputs, in the order :meth:`infer` returns them: ``("bone", "soft")``."""
        return tuple(self._manifest["output"]["channels"])

    @property
    def input_window(self) -> tuple[float, float]:
        """Stored input value mapped to the network's -1 and +1."""
        lo, hi = self._manifest["input"]["window"]
        return (lo, hi)

    @property
    def output_windows(self) -> tuple[tuple[float, float], ...]:
        return tuple((lo, hi) for lo, hi in self._manifest["output"]["windows"])

    @property
    def size_multiple(self) -> int:
        """Images are mirror-padded to a multiple of this (and cropped back)."""
        return int(self._manifest["size_multiple"])

    @property
    def precision(self) -> str:
        return str(self._manifest["precision"])

    @property
    def manifest(self) -> dict[str, Any]:
        """The bundle's manifest (a copy)."""
        import copy

        return copy.deepcopy(self._manifest)

    def __repr__(self) -> str:
        return (
            f"<dexrt.Engine {self._path.name!r} backend={self.backend} device={self.device} "
            f"precision={self.precision} outputs={list(self.channels)}>"
        )

    # -- inference --------------------------------------------------------------------------------------------
    def infer(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run the engine on ``images``: (H, W) or (N, H, W), uint16 or float32.

        Returns one array per output channel (``bone, soft``), each of the input's shape and dtype. The
        outputs of one call share one buffer, laid out channel-major, so each is contiguous. A C-contiguous
        input is read in place (do not modify it during the call); any other layout is copied once.
        """
        if not isinstance(images, np.ndarray):
            raise InputError(f"images must be a numpy array, got {type(images).__name__}")
        if images.ndim not in (2, 3):
            raise InputError(f"images must be (H, W) or (N, H, W), got an array of shape {images.shape}")
        if images.dtype not in (np.uint16, np.float32):
            raise InputError(f"images must be uint16 or float32, got {images.dtype}")
        batch = images[np.newaxis] if images.ndim == 2 else images
        n, h, w = batch.shape
        if n == 0 or h == 0 or w == 0:
            raise InputError(f"images must not be empty, got shape {images.shape}")
        if h > _MAX_SIDE or w > _MAX_SIDE:
            raise InputError(f"images must be at most {_MAX_SIDE} pixels a side, got {h}x{w}")
        if images.dtype == np.float32 and not np.isfinite(batch).all():
            raise InputError("images contain NaN or infinite values")
        out = self._core.infer(batch)  # (C, N, H, W)
        if images.ndim == 2:
            return tuple(out[c, 0] for c in range(out.shape[0]))
        return tuple(out[c] for c in range(out.shape[0]))

    __call__ = infer
