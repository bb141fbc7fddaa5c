"""`dexrt.Engine`: load an engine bundle and turn single-energy images into (bone, soft-tissue) pairs."""

from __future__ import annotations

import atexit
import math
import os
import weakref
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from dexrt import _core
from dexrt._errors import BundleError, EngineError, InputError
from dexrt._limits import MAX_SIDE  # larger images are refused before anything is allocated
from dexrt.runtime.bundle import read_bundle
from dexrt.runtime.contract import NORMALISATION, Encoding, recorded_encodings
from dexrt.runtime.pixel_spacing import model_spacing_mm
from dexrt.runtime.signing import PublicKey, check_origin

_DEVICES = ("auto", "cpu", "gpu")
_UPSAMPLING = ("guided", "bicubic")
_LIVE: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_live_engines() -> None:
    # Batcher workers must not be left resolving futures while the interpreter finalizes.
    for engine in list(_LIVE):
        engine.close()



class Engine:
    """A dual-energy engine loaded from a `.dexrt` bundle.

    Without ``path``, the bundled default model (``dexrt.models.DEFAULT_ENGINE``) is loaded.
    ``device="auto"`` runs the bundle on the device it was built for. The resolved backend and device are
    visible as ``engine.backend`` and ``engine.device``. Instances are thread-safe: several threads may call
    :meth:`infer` at once, and the GIL is released while the network runs.

    Origin: a bundle signed by a trusted key (``trusted_keys``, default: the project's key and the user's
    trusted-keys files, see :mod:`dexrt.runtime.signing`) loads silently and names its key in ``engine.signer``. An
    unsigned or otherwise signed bundle loads with a logged warning, or, with ``require_signed=True``, raises
    :class:`BundleError`.

    ``cache_dir`` (CPU engines) keeps OpenVINO's compiled model per input shape on disk, so a new process skips
    compiling shapes seen before: its first call is then about as fast as the next ones (docs/runtime.md).

    Full resolution: given a frame's pixel spacing (``infer(frame, spacing_mm=0.175)``), the frame runs at the
    model's spacing and every output comes back at the frame's size, brought up by a guided filter that follows the
    frame's own edges (``upsampling="guided"``, the default; ``"bicubic"`` for plain bicubic upsampling).
    ``guide_radius`` (working-size pixels) and ``guide_epsilon`` (squared units of the frame's normalised range)
    tune that filter; ``num_threads`` also bounds the threads of the work around the network.

    Example::

        engine = dexrt.Engine("model.dexrt")
        bone, soft = engine.infer(image)  # (H, W) uint16 -> two (H, W) uint16
        bone, soft = engine.infer(frame, spacing_mm=0.175)  # a detector frame, outputs at its size
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        device: str = "auto",
        *,
        performance_hint: str = "latency",
        num_threads: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        max_batch: int = 8,
        max_delay_us: int = 1000,
        workers: int = 2,
        cuda_device: int = 0,
        contexts: int = 2,
        cuda_graphs: bool = False,
        trusted_keys: Iterable[Any] | None = None,
        require_signed: bool = False,
        upsampling: str = "guided",
        guide_radius: int = 2,
        guide_epsilon: float = 1e-4,
    ) -> None:
        if device not in _DEVICES:
            raise ValueError(f"device must be one of {', '.join(_DEVICES)}, got {device!r}")
        if performance_hint not in ("latency", "throughput"):
            raise ValueError(f"performance_hint must be 'latency' or 'throughput', got {performance_hint!r}")
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        if max_batch < 1 or workers < 1 or max_delay_us < 0:
            raise ValueError("max_batch and workers must be >= 1 and max_delay_us >= 0")
        if upsampling not in _UPSAMPLING:
            raise ValueError(f"upsampling must be one of {', '.join(_UPSAMPLING)}, got {upsampling!r}")
        from dexrt.models import resolve_engine

        path = resolve_engine(None if path is None else Path(path))
        bundle = read_bundle(path)
        m = bundle.manifest
        self._path = Path(path)
        self._manifest = m
        verdict = check_origin(self._path, bundle.manifest_bytes, bundle.signature, trusted_keys=trusted_keys,
                               require_signed=require_signed)
        self._signer = verdict.signer
        if m["backend"] == "tensorrt":
            backend = self._tensorrt_args(bundle.payload, device, cuda_device, contexts, cuda_graphs)
        elif m["backend"] == "openvino":
            if device == "gpu":
                raise EngineError(f"{path}: this is a CPU (OpenVINO) engine; build a GPU engine with "
                                  "`dexrt build-engine --device gpu`")
            try:
                model, weights = bundle.payload["model.xml"], bundle.payload["model.bin"]
            except KeyError as exc:
                raise EngineError(f"{path}: an OpenVINO bundle must hold model.xml and model.bin") from exc
            backend = dict(backend="openvino", device="CPU", model=model, weights=weights,
                           performance_hint=performance_hint.upper(), num_threads=num_threads,
                           cache_dir=str(cache_dir) if cache_dir is not None else "")
        else:
            raise EngineError(f"{path}: backend {m['backend']!r} is not available in this build of dexrt")
        self._encodings = _encodings(m, self._path)
        self._upsampling = upsampling
        normalisation = m["input"].get("normalisation")
        if normalisation is not None and normalisation != NORMALISATION:
            raise BundleError(f"{self._path}: invalid manifest: input normalisation {normalisation!r} is not one "
                              f"this dexrt applies ({NORMALISATION})")
        # The whole value contract runs in C++: per-image windows, the maps, the network, the inverse maps, and at
        # full resolution the resampling around them. Python hands over arrays only.
        self._core = _core.Engine(
            **backend,
            input_window=tuple(m["input"]["window"]),
            output_windows=[tuple(w) for w in m["output"]["windows"]],
            size_multiple=m["size_multiple"],
            max_batch=max_batch,
            max_delay_us=max_delay_us,
            workers=workers,
            normalised=normalisation is not None,
            channels=list(m["output"]["channels"]),
            model_spacing_mm=model_spacing_mm(m) or 0.0,
            upsampling=upsampling,
            guide_radius=guide_radius,
            guide_epsilon=guide_epsilon,
        )
        _LIVE.add(self)  # closed (drained) at interpreter exit if the caller did not close it

    def _tensorrt_args(self, payload: dict[str, bytes], device: str, cuda_device: int, contexts: int,
                       cuda_graphs: bool) -> dict[str, Any]:
        """Checks a TensorRT bundle against this machine before TensorRT sees the plan."""
        from dexrt.runtime.gpu import check_plan, current_runtime

        if device == "cpu":
            raise EngineError(f"{self._path}: this is a GPU (TensorRT) engine; build a CPU engine with "
                              "`dexrt build-engine --device cpu`")
        if contexts < 1:
            raise ValueError(f"contexts must be >= 1, got {contexts}")
        check_plan(self._manifest, self._path, current_runtime(cuda_device))
        plan = payload.get("model.plan")
        if plan is None:
            raise BundleError(f"{self._path}: a TensorRT bundle must hold model.plan")
        return dict(backend="tensorrt", device="GPU", model=plan, weights=b"", cuda_device=cuda_device,
                    contexts=contexts, cuda_graphs=cuda_graphs)

    @classmethod
    def from_parts(cls, manifest: dict[str, Any], payload: dict[str, bytes], *, network_io: bool = False,
                   **options: Any) -> Engine:
        """An engine of a manifest and payload not written anywhere yet (build checks, benchmarks).

        It goes through a temporary bundle, so it is loaded exactly as `Engine(path)` loads one: there is one way to
        make an engine. ``network_io`` makes the value contract the identity (windows [-1, 1] in and out, no padding),
        so the engine takes and returns exactly the network's values, as a peer runtime would (benchmarks, accuracy
        checks).
        """
        import copy
        import tempfile

        from dexrt.runtime.bundle import write_bundle

        manifest = {k: v for k, v in copy.deepcopy(manifest).items() if k not in ("format", "format_version",
                                                                                  "payload")}
        if network_io:
            manifest["size_multiple"] = 1
            manifest["input"]["window"] = [-1.0, 1.0]
            manifest["output"]["windows"] = [[-1.0, 1.0]] * len(manifest["output"]["channels"])
            # network values have no physical meaning, and are already normalised
            for fields, key in ((manifest["input"], "encoding"), (manifest["output"], "encodings"),
                                (manifest["input"], "normalisation")):
                fields.pop(key, None)
        # The parts come from this process, not from a file of unknown origin: they are signed with a throwaway
        # key that only this load trusts, so the origin check passes without a warning about an unsigned engine.
        from dexrt.runtime.signing import ephemeral_key, public_key_of

        key = ephemeral_key()
        with tempfile.TemporaryDirectory(prefix="dexrt-engine-") as tmp:
            path = Path(tmp, "engine.dexrt")
            write_bundle(path, manifest, payload, signing_key=key)
            return cls(path, **{**options, "trusted_keys": [public_key_of(key)]})  # the file may go once loaded

    # -- metadata ---------------------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def signer(self) -> PublicKey | None:
        """The trusted key that signed this engine's manifest, or None (unsigned, or not by a trusted key)."""
        return self._signer

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
    def input_encoding(self) -> Encoding | None:
        """What a stored input value means physically (``physical = offset + scale * stored``), when recorded."""
        return self._encodings[0]

    @property
    def output_encodings(self) -> tuple[Encoding, ...]:
        """Per output channel, what a stored output value means physically; empty when not recorded."""
        return self._encodings[1]

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
    def infer(self, images: np.ndarray, spacing_mm: float | tuple[float, float] | None = None, *,
              model_spacing_mm: float | None = None) -> tuple[np.ndarray, ...]:
        """Run the engine on ``images``: (H, W) or (N, H, W), uint16 or float32; returns when done.

        Returns one array per output channel (``bone, soft``), each of the input's shape and dtype. The
        outputs of one call share one buffer, laid out channel-major, so each is contiguous. A C-contiguous
        input is read in place (do not modify it during the call); any other layout is copied once.

        ``spacing_mm``: the images' pixel spacing (one number, or (row, column)). The images then run at the model's
        pixel spacing (``model_spacing_mm``, default the engine's, `Engine.model_spacing_mm`), area-averaged down,
        and every output comes back at the images' own size (see the class docstring); within 1 % of it they run as
        they are. Without it the network sees the images at their own size.

        A GPU (TensorRT) engine also takes images already on the GPU: any array with
        ``__cuda_array_interface__`` (torch, CuPy, PyCUDA), C-contiguous, is read in place there without a
        host round trip; the results come back as numpy arrays.
        """
        if not isinstance(images, np.ndarray) and hasattr(images, "__cuda_array_interface__"):
            if spacing_mm is not None:
                raise InputError("device images run at their own size: pass a numpy array to give a pixel spacing")
            out, ndim = self._infer_device(images.__cuda_array_interface__)
            return tuple(out[c, 0] if ndim == 2 else out[c] for c in range(out.shape[0]))
        _check(images, (2, 3))
        batch = images[np.newaxis] if images.ndim == 2 else images
        out = self._core.infer(batch, _spacing(spacing_mm), _model_spacing(model_spacing_mm))  # (C, N, H, W)
        if images.ndim == 2:
            return tuple(out[c, 0] for c in range(out.shape[0]))
        return tuple(out[c] for c in range(out.shape[0]))

    __call__ = infer

    @property
    def normalised(self) -> bool:
        """Whether each input is mapped by its own robust range and the outputs back into its grey values
        (`dexrt.runtime.contract.NORMALISATION`): the engine then takes images of any offset and scale."""
        return bool(self._core.normalised)

    @property
    def model_spacing_mm(self) -> float | None:
        """The pixel spacing (mm) the model was trained at, as the manifest records it, or None."""
        value = float(self._core.model_spacing_mm)
        return value if value > 0 else None

    @property
    def upsampling(self) -> str:
        """How full-resolution outputs are brought up to a frame's size: ``"guided"`` or ``"bicubic"``."""
        return self._upsampling

    @property
    def soft_from_input(self) -> bool:
        """Whether, at full resolution, the soft image is the input minus the bone image (plus the network's smooth
        correction) rather than brought up itself: so for a normalised engine with bone and soft outputs."""
        return self.normalised and {"bone", "soft"} <= set(self.channels)

    def _infer_device(self, cai: dict[str, Any]) -> tuple[np.ndarray, int]:
        """Images already on the GPU (torch, cupy, pycuda...): read in place by the GPU engine.

        ``cai`` is the array's ``__cuda_array_interface__``: a C-contiguous (H, W) or (N, H, W) uint16 or
        float32 array. Its ``stream``, when given, is waited on before reading. NaN checks of float32 input
        are not made on this path (that would copy the images to the host).
        """
        shape, typestr = tuple(cai["shape"]), cai["typestr"]
        dtype = {"<u2": "uint16", "<f4": "float32"}.get(typestr)
        if dtype is None:
            raise InputError(f"device images must be uint16 or float32, got typestr {typestr!r}")
        if len(shape) not in (2, 3) or 0 in shape:
            raise InputError(f"device images must be (H, W) or (N, H, W) and not empty, got shape {shape}")
        n, h, w = (1, *shape) if len(shape) == 2 else shape
        if h > MAX_SIDE or w > MAX_SIDE:
            raise InputError(f"images must be at most {MAX_SIDE} pixels a side, got {h}x{w}")
        item = np.dtype(dtype).itemsize
        strides = cai.get("strides")
        if strides is not None and tuple(strides) != tuple(item * p for p in (h * w, w, 1)[-len(shape):]):
            raise InputError(f"device images must be C-contiguous, got strides {tuple(strides)}")
        if cai.get("mask") is not None:
            raise InputError("masked device arrays are not supported")
        pointer = int(cai["data"][0])
        stream = cai.get("stream")
        out = self._core.infer_device(pointer, n, h, w, dtype, int(stream) if stream else 0)  # (C, N, H, W)
        return out, len(shape)

    def submit(self, image: np.ndarray, spacing_mm: float | tuple[float, float] | None = None, *,
               model_spacing_mm: float | None = None) -> Future[tuple[np.ndarray, ...]]:
        """Queue one (H, W) image for batched inference; returns a future of ``(bone, soft)``.

        Requests from any number of threads are grouped into batches of up to ``max_batch`` images of one
        working size, waiting at most ``max_delay_us`` for a batch to fill. The image is copied, and with
        ``spacing_mm`` (as for :meth:`infer`) brought down to the model's spacing, before this returns, on the
        calling thread; the caller may reuse its buffer at once. An invalid image fails only its own future; a
        closed engine raises :class:`EngineError` here.
        """
        future: Future[tuple[np.ndarray, ...]] = Future()
        try:
            _check(image, (2,))
            self._core.submit(image, future, _spacing(spacing_mm), _model_spacing(model_spacing_mm))
        except InputError as exc:
            future.set_exception(exc)
        return future

    def close(self, cancel: bool = False) -> None:
        """Stop accepting work and wait for queued requests to finish (or, with ``cancel``, cancel them).

        Every submitted future ends done, cancelled ones included, so ``concurrent.futures.wait`` and
        ``as_completed`` see them finish. Idempotent and safe from any number of threads at once; from a
        future's done-callback it stops the engine without waiting (the callback runs on a worker it would
        otherwise wait for)."""
        self._core.close(cancel)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Submitted requests still queued (not yet running)."""
        return int(self._core.pending)

    def stats(self) -> dict[str, Any]:
        """Latency per stage in microseconds (``queue_us``, ``pre_us``, ``infer_us``, ``post_us``,
        ``total_us``: count, mean, p50, p99, max over the last 8192 samples) and the batch-size histogram.

        Stage times are per batch; queue wait and total latency are per request. Direct :meth:`infer`
        calls count as batches with no queue wait.
        """
        raw = self._core.stats()
        return {
            "requests": raw["requests"],
            "batches": raw["batches"],
            "batch_sizes": dict(sorted(raw["batch_sizes"].items())),
            **raw["stages"],
        }

    def reset_stats(self) -> None:
        self._core.reset_stats()


def _encodings(m: dict[str, Any], path: Path) -> tuple[Encoding | None, tuple[Encoding, ...]]:
    """The input's and outputs' recorded encodings: all of them, or none (an engine of stored values only)."""
    try:
        found = recorded_encodings(m["input"].get("encoding"), m["output"].get("encodings"),
                                   len(m["output"]["channels"]))
    except ValueError as exc:
        raise BundleError(f"{path}: invalid manifest: {exc}") from None
    return (None, ()) if found is None else (found[0], found[1:])


def _spacing(spacing_mm: float | tuple[float, float] | None) -> tuple[float, float] | None:
    """A pixel spacing as (row, column) mm, or None; the C++ runtime checks the values."""
    if spacing_mm is None:
        return None
    if isinstance(spacing_mm, (int, float, np.floating, np.integer)) and not isinstance(spacing_mm, bool):
        return (float(spacing_mm), float(spacing_mm))
    try:
        row, col = spacing_mm  # type: ignore[misc]
        return (float(row), float(col))
    except (TypeError, ValueError):
        raise ValueError(f"spacing_mm must be a number or (row, column), got {spacing_mm!r}") from None


def _model_spacing(model_spacing_mm: float | None) -> float:
    """The model spacing for the C++ runtime: 0 means the engine's own."""
    if model_spacing_mm is None:
        return 0.0
    value = float(model_spacing_mm)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"model_spacing_mm must be positive and finite, got {model_spacing_mm!r}")
    return value


def _check(images: object, ndims: tuple[int, ...]) -> None:
    """Argument checks shared by infer and submit (the C++ layer checks dtype and rank again)."""
    if not isinstance(images, np.ndarray):
        raise InputError(f"images must be a numpy array, got {type(images).__name__}")
    if images.ndim not in ndims:
        shapes = " or ".join({2: "(H, W)", 3: "(N, H, W)"}[n] for n in ndims)
        raise InputError(f"images must be {shapes}, got an array of shape {images.shape}")
    if images.dtype not in (np.uint16, np.float32):
        raise InputError(f"images must be uint16 or float32, got {images.dtype}")
    if 0 in images.shape:
        raise InputError(f"images must not be empty, got shape {images.shape}")
    h, w = images.shape[-2:]
    if h > MAX_SIDE or w > MAX_SIDE:
        raise InputError(f"images must be at most {MAX_SIDE} pixels a side, got {h}x{w}")
    if images.dtype == np.float32 and not np.isfinite(images).all():
        raise InputError("images contain NaN or infinite values")
