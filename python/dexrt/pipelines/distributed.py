"""Converting radiographs on a Ray cluster: the work of `dexrt infer`, spread over processes and machines.

    from dexrt.pipelines.distributed import convert_folder_ray
    outcomes = convert_folder_ray("/archive/in", "/archive/out", address="auto", recursive=True)

The driver lists the inputs exactly as `dexrt infer` does (:func:`dexrt.io.layout.find_images`), makes a Ray Dataset of
their paths and maps it, in batches, over a fixed pool of actors (``map_batches`` with
``ActorPoolStrategy(size=actors)``). Each actor loads one :class:`dexrt.Engine` once and converts its batches with the
same :class:`dexrt.pipelines.convert.Converter` as `dexrt infer`: same output names, formats, provenance, atomic writes,
skipping of finished files, one failing file reported without stopping the others. Each row that comes back is one
file's :class:`~dexrt.pipelines.convert.Outcome`.

No pixel goes through Ray: actors read the inputs and write the outputs themselves, so the inputs, the output
folder and the engine bundle must be on a filesystem that every node sees at the same path (NFS, a cluster
filesystem; on one machine that is always so), and dexrt must be installed on every node. The bundled default
engine is looked up by each actor in its own installation.

Resources: with a CPU (OpenVINO) engine each actor takes ``cpus_per_actor`` CPUs and runs that many inference
threads, so actors do not oversubscribe a node; with a GPU (TensorRT) engine each actor takes one GPU. By default
the pool has as many actors as the cluster has slots for.

Ray is an optional extra (``pip install 'dexrt[ray]'``); it is imported only when a distributed run starts.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._errors import DexrtError, EngineError, require_extra
from dexrt.runtime.bundle import read_bundle, read_manifest
from dexrt.pipelines.convert import FOLDER_ENGINE_OPTIONS, ConvertOptions, Converter, Outcome, resampling_plan
from dexrt.io.layout import find_images, inputs_at_risk, output_clashes
from dexrt.runtime.signing import check_origin
from dexrt.models import resolve_engine

log = logging.getLogger(__name__)

DEFAULT_BATCH = 8  # files per actor call: the Converter pipelines a batch, whose frames fill one engine batch of 8


def import_ray() -> Any:
    """The `ray` module with Ray Data (pyarrow, pandas), or a MissingExtraError naming the extra to install."""
    require_extra("ray", "distributed conversion", "ray", "ray.data")
    import ray

    return ray


class _ConvertActor:
    """One Ray actor: one Engine and one Converter for its lifetime; each call converts a batch of paths.

    Returns one row per path, in the batch's order: a JSON object with the file's Outcome and the facts of the
    worker that converted it (engine backend and device, host:pid).
    """

    def __init__(self, engine: str | None, device: str, num_threads: int, out_dir: str,
                 options: ConvertOptions, protect: list[str], require_signed: bool = False) -> None:
        from dexrt.runtime.engine import Engine

        path = resolve_engine(Path(engine) if engine is not None else None)
        self.engine = Engine(path, device=device, num_threads=num_threads, require_signed=require_signed,
                             **FOLDER_ENGINE_OPTIONS)
        self.converter = Converter(self.engine, out_dir, options)
        self.protect = [Path(p) for p in protect]
        self.worker = {"backend": self.engine.backend, "device": self.engine.device,
                       "worker": f"{socket.gethostname()}:{os.getpid()}"}
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sources = [Path(str(p)) for p in batch["path"]]
        order = {p: i for i, p in enumerate(sources)}
        rows: list[str] = [""] * len(sources)
        # Output folders are listed for stale temporaries on the first batch only (once per actor, not per batch).
        for outcome in self.converter.run(sources, protect=self.protect, rescan=self.calls == 0):
            rows[order[outcome.source]] = json.dumps({"outcome": outcome.as_dict(), **self.worker})
        self.calls += 1
        return {"row": np.array(rows, dtype=object)}


class RayConverter:
    """Converts radiograph files on a Ray cluster (see the module docstring); mirrors :class:`Converter`.

    ``address`` goes to ``ray.init``: ``"auto"`` (the cluster this machine belongs to, started with `ray start`),
    ``"local"`` (a new Ray instance on this machine, shut down after the run), ``"HOST:PORT"`` (the head
    node's GCS) or ``"ray://HOST:10001"`` (Ray Client). When this process is already connected to Ray (a Ray
    job, or a caller that ran ``ray.init``), that session is used and ``address`` is ignored.

    ``actors``: the pool size (default: the cluster's CPUs // ``cpus_per_actor`` for a CPU engine, its GPUs for
    a GPU engine). ``batch_size``: files per actor call. ``options``: a `ConvertOptions` (or its fields as
    keywords), applied in every actor. ``require_signed``: every actor's engine must be signed by a trusted key
    (see :class:`dexrt.Engine`); checked here first.
    """

    def __init__(self, out_dir: str | os.PathLike[str], *, engine: str | os.PathLike[str] | None = None,
                 device: str = "auto", address: str | None = None, actors: int | None = None,
                 cpus_per_actor: int = 1, batch_size: int = DEFAULT_BATCH, progress: bool = False,
                 require_signed: bool = False, options: ConvertOptions | None = None, **keywords: Any) -> None:
        for name, value in (("cpus_per_actor", cpus_per_actor), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if actors is not None and actors < 1:
            raise ValueError(f"actors must be >= 1, got {actors}")
        self.options = ConvertOptions.of(options, **keywords)
        # The driver reads only the manifest (checked, so a bad bundle fails here and not in every actor);
        # the actors load the engine. None stays None: each actor finds the bundled engine in its own install.
        self.engine = Path(engine) if engine is not None else None
        self.require_signed = require_signed
        if require_signed:  # refused here once, not in every actor (which check again: the file may change)
            bundle = read_bundle(resolve_engine(self.engine))
            check_origin(bundle.path, bundle.manifest_bytes, bundle.signature, trusted_keys=None, require_signed=True)
        manifest = read_manifest(resolve_engine(self.engine))
        self.gpu = manifest["backend"] == "tensorrt"
        self.channels: tuple[str, ...] = tuple(manifest["output"]["channels"])
        self.model_spacing_mm, self.resampling_note = resampling_plan(manifest, self.options.resample,
                                                                      self.options.model_spacing_mm)
        self.out_dir = Path(out_dir)
        self.root = self.options.root
        self.device = device
        self.address = address
        self.actors = actors
        self.cpus_per_actor = cpus_per_actor
        self.batch_size = batch_size
        self.progress = progress
        # Updated as rows arrive: what the actors' engines resolved to, and who converted.
        self.backend: str = manifest["backend"]
        self.engine_device: str = "GPU" if self.gpu else "CPU"
        self.workers: set[str] = set()
        self.actors_used: int | None = None

    def run(self, sources: Iterable[Path]) -> Generator[Outcome, None, None]:
        """Convert `sources`, yielding one Outcome per file as the actors' batches finish.

        Connects to Ray (see the class docstring) and shuts down a Ray instance it started. A failing file is
        reported in its Outcome and the others go on. Stopping early (closing the iterator, Ctrl-C) stops the
        Ray run: actors are killed, so a file being written at that moment may leave a hidden temporary but
        never a partial output (the next run removes it).
        """
        ray = import_ray()
        sources = [Path(p) for p in sources]
        if not sources:
            return
        started = not ray.is_initialized()
        if started:
            local = self.address in (None, "local")
            ray.init(address=self.address, **(dict(include_dashboard=False) if local else {}),
                     logging_level=logging.WARNING, log_to_driver=False)  # workers' stdout would mix with ours
        try:
            yield from self._run(ray, sources)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: Any, sources: list[Path]) -> Iterator[Outcome]:
        from ray.data import ActorPoolStrategy, DataContext

        actors = self.actors_used = self.actors or self._slots(ray)
        # Actors run in their own working directory: they get absolute paths, and outcomes come back in the
        # caller's terms (sources as given, outputs under out_dir as given), as from a local run.
        given = {p.absolute(): p for p in sources}
        out_abs = self.out_dir.absolute()
        root = self.root.absolute() if self.root is not None else None
        preview = self.options.preview
        protect = inputs_at_risk(list(given), out_abs, self.channels, root=root, preview=preview)
        # Files of different actors' batches may claim one output: the later ones fail here, before any actor.
        clashes = output_clashes(list(given), out_abs, self.channels, root=root, preview=preview)
        for path, error in clashes.items():
            yield Outcome(given[path], error=error.replace(str(path), str(given[path])))
        given = {p: q for p, q in given.items() if p not in clashes}
        if not given:
            return
        context = DataContext.get_current()
        progress_before, context.enable_progress_bars = context.enable_progress_bars, self.progress
        options = replace(self.options, root=root)  # a frozen dataclass: pickled to every actor as it is
        dataset = ray.data.from_items([{"path": str(p)} for p in given])
        results = dataset.map_batches(
            _ConvertActor,
            batch_size=self.batch_size,
            compute=ActorPoolStrategy(size=actors),
            fn_constructor_kwargs=dict(engine=str(self.engine.absolute()) if self.engine else None,
                                       device=self.device, num_threads=0 if self.gpu else self.cpus_per_actor,
                                       out_dir=str(out_abs), options=options, protect=[str(p) for p in protect],
                                       require_signed=self.require_signed),
            num_cpus=self.cpus_per_actor,
            num_gpus=1 if self.gpu else None,
            batch_format="numpy",
            udf_modifying_row_count=False,
        )
        log.info("converting %d files with %d actors (%s)", len(sources), actors, "GPU" if self.gpu else "CPU")
        try:
            for row in results.iter_rows():
                data = json.loads(row["row"])
                self.backend, self.engine_device = data["backend"], data["device"]
                self.workers.add(data["worker"])
                outcome = Outcome.from_dict(data["outcome"])
                outcome.source = given[outcome.source]
                if outcome.error is not None:  # name the file as the caller did
                    outcome.error = outcome.error.replace(str(outcome.source.absolute()), str(outcome.source))
                outcome.outputs = [self.out_dir / p.relative_to(out_abs) for p in outcome.outputs]
                yield outcome
        except ray.exceptions.RayError as exc:
            raise _worker_error(exc) from exc
        finally:
            context.enable_progress_bars = progress_before

    def _slots(self, ray: Any) -> int:
        """One actor per GPU (GPU engine) or per `cpus_per_actor` CPUs (CPU engine) of the cluster."""
        resources = ray.cluster_resources()
        if self.gpu:
            slots = int(resources.get("GPU", 0))
            if slots < 1:
                raise EngineError(f"{self.engine or 'the engine'} is a GPU (TensorRT) engine and the Ray cluster "
                                  "has no GPU")
            return slots
        return max(1, int(resources.get("CPU", 1)) // self.cpus_per_actor)


def _worker_error(exc: BaseException) -> DexrtError:
    """A Ray failure as a DexrtError: the actors' own DexrtError (a bad engine, a wrong device) when that is the
    cause, else an EngineError carrying Ray's message."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, DexrtError):
            return cause
        cause = getattr(cause, "cause", None) or cause.__cause__
    return EngineError(f"the Ray run failed: {exc}")


def convert_folder_ray(source: str | os.PathLike[str], output: str | os.PathLike[str], *,
                       recursive: bool = False, include: Sequence[str] = (), exclude: Sequence[str] = (),
                       **options: Any) -> list[Outcome]:
    """Convert the images in `source` (a folder or one file) into `output` on a Ray cluster, like `dexrt infer`.

    Inputs are found as `dexrt infer` finds them; ``options`` are those of :class:`RayConverter` (``engine``,
    ``address``, ``actors``, ``cpus_per_actor``, ``batch_size``, ``device``, and a `ConvertOptions`'s fields).
    Returns the Outcomes in input order.
    """
    source, output = Path(source), Path(output)
    engine = options.get("engine")
    channels = read_manifest(resolve_engine(Path(engine) if engine is not None else None))["output"]["channels"]
    sources = find_images(source, recursive=recursive, include=include, exclude=exclude, skip=output,
                          channels=channels)
    converter = RayConverter(output, root=source if source.is_dir() else source.parent, **options)
    order = {p: i for i, p in enumerate(sources)}
    return sorted(converter.run(sources), key=lambda o: order[o.source])
