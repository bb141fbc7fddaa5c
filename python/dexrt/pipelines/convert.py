"""Converting radiograph files with an engine: the work behind `dexrt infer`, reusable from Python.

    engine = dexrt.Engine("model.dexrt")
    converter = Converter(engine, "out", root="in")
    for outcome in converter.run(find_images("in", recursive=True)):  # from dexrt.io.layout
        print(outcome.source, outcome.status)

For each input `<name>.<ext>` the outputs are `<name>_<channel>.<ext>` (``_bone``, ``_soft``; a DICOM file
without a known suffix gives `<name>_<channel>`) in the output folder, under the input's folder relative to
`root`; same format and value convention, written atomically with provenance. Inputs are never overwritten; a
file whose outputs all exist is skipped (resumable runs) unless ``overwrite``.

Pipelining: each file is one job on a pool of ``jobs`` threads: decode, submit its frames with their pixel spacing
to the engine's batched queue (the engine brings each down to the model's spacing on this thread, and its outputs
back to the frame's size), wait, write. While some jobs wait for the engine, others decode and write,
so the stages overlap, and the engine batches frames of different files together. At most ``jobs`` files are
decoded at once, so memory stays flat whatever the folder's size. `Converter.run` yields outcomes as files finish.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dexrt.inputs import domain as _domain
from dexrt.inputs import spacing as _spacing
from dexrt._errors import DexrtError, DomainError, InputError
from dexrt.inputs.chest import measure
from dexrt.io.dicom import write_dicom
from dexrt.runtime.engine import Engine
from dexrt.runtime.patient import PatientMismatchError, patient_problem
from dexrt.io.images import read_radiograph, write_image, write_preview
from dexrt.io.layout import PREVIEW, output_clashes, output_paths
from dexrt.inputs.resample import working_size
from dexrt.runtime.pixel_spacing import check_option, model_spacing_mm

log = logging.getLogger(__name__)

# Engine settings for folder runs: a batch waits up to 10 ms to fill (against ~100 ms per 256x256 frame on a
# CPU), so frames of different files batch together even when files arrive a few milliseconds apart.
FOLDER_ENGINE_OPTIONS: dict[str, Any] = {"max_batch": 8, "max_delay_us": 10_000}
DEFAULT_JOBS = 16  # files in flight: enough to keep two batches of 8 queued while others decode and write
# A write failing for these is the machine's state, not the file's: the same file converts once space is freed.
_OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_TEMPORARY = re.compile(r"\.(.+)\.[^.]+\.part")  # atomic_write's temporary for a target: .NAME.XXXXXXXX.part


@dataclass(frozen=True)
class ConvertOptions:
    """How files are converted: one object, checked once, shared by `Converter`, the Ray actors
    (`dexrt.pipelines.distributed`), the DICOM node and `dexrt infer`.

    ``model_spacing_mm`` overrides the model's training pixel spacing from the engine manifest; ``resample=False``
    turns resampling off. ``input_spacing_mm`` is the spacing of inputs whose files give none (dexrt.inputs.spacing
    has the order; without it such inputs are estimated). ``strict`` refuses inputs that do not look like frontal
    chest radiographs (dexrt.inputs.domain) with a DomainError instead of converting them with a warning.
    ``preview`` adds `<name>_preview.png` (SE | bone | soft, 8-bit, for looking at). ``root``: outputs mirror the
    inputs' folders below it. ``jobs``: files in flight. ``overwrite``: convert again files whose outputs exist.
    """

    root: Path | None = None
    overwrite: bool = False
    resample: bool = True
    model_spacing_mm: float | None = None
    input_spacing_mm: float | None = None
    strict: bool = False
    preview: bool = False
    jobs: int = DEFAULT_JOBS

    def __post_init__(self) -> None:
        if self.root is not None and not isinstance(self.root, Path):
            object.__setattr__(self, "root", Path(self.root))
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        check_option("model_spacing_mm", self.model_spacing_mm)
        check_option("input_spacing_mm", self.input_spacing_mm)

    @classmethod
    def of(cls, options: ConvertOptions | None = None, /, *, spacing_mm: float | None = None,
           **keywords: Any) -> ConvertOptions:
        """``options``, or the options given as keywords (``spacing_mm``: the deprecated name of
        ``model_spacing_mm``); not both."""
        if options is not None:
            if keywords or spacing_mm is not None:
                raise TypeError("give a ConvertOptions or keyword options, not both")
            return options
        model, warning = deprecated_spacing(keywords.pop("model_spacing_mm", None), spacing_mm)
        if warning:
            import warnings

            warnings.warn(warning, DeprecationWarning, stacklevel=3)
        return cls(model_spacing_mm=model, **keywords)


def deprecated_spacing(model_spacing: float | None, old_spacing: float | None, *,
                       names: tuple[str, str] = ("model_spacing_mm", "spacing_mm"),
                       input_name: str = "input_spacing_mm") -> tuple[float | None, str | None]:
    """The model spacing from its name or its old, deprecated one (``names``: new, old), and the warning to give
    when the old name was used; a ValueError when both are given and disagree. The one rule for the Python
    keywords and the command line's options."""
    if old_spacing is None:
        return model_spacing, None
    if model_spacing is not None and model_spacing != old_spacing:
        raise ValueError(f"{names[1]} (deprecated) and {names[0]} disagree; give {names[0]} only")
    return old_spacing, (f"{names[1]} is deprecated: it is the model's spacing, now {names[0]} (the input's own "
                         f"spacing is {input_name})")


@dataclass
class Outcome:
    source: Path
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False  # all outputs existed already
    seconds: float = 0.0
    frames: int = 0
    geometry: dict[str, Any] | None = None  # sizes, spacings; "input_spacing" says where the spacing came from
    domain: dict[str, Any] | None = None  # dexrt.inputs.domain.DomainReport.as_dict()
    warnings: list[str] = field(default_factory=list)  # assumptions and doubts, one sentence each, naming the file
    transient: bool = False  # failed for want of space (disk full, quota), not because of the file: retry later

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        return "failed" if self.error else "skipped" if self.skipped else "converted"

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (paths as strings): how an Outcome travels between processes."""
        return {"source": str(self.source), "outputs": [str(p) for p in self.outputs], "error": self.error,
                "skipped": self.skipped, "seconds": self.seconds, "frames": self.frames, "geometry": self.geometry,
                "domain": self.domain, "warnings": list(self.warnings), "transient": self.transient}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Outcome:
        return cls(Path(d["source"]), [Path(p) for p in d["outputs"]], d["error"], d["skipped"], d["seconds"],
                   d["frames"], d["geometry"], d.get("domain"), list(d.get("warnings") or []),
                   bool(d.get("transient")))


def resampling_plan(manifest: dict[str, Any], resample: bool = True,
                    model_mm: float | None = None) -> tuple[float | None, str]:
    """(the model spacing images are resampled to, or None; a one-line note saying which and why).
    ``model_mm`` overrides the engine's recorded training spacing."""
    given = model_mm
    model_mm = (given or model_spacing_mm(manifest)) if resample else None
    if not resample:
        note = "resampling turned off"
    elif model_mm is None:
        note = "the engine records no training pixel spacing (pixel_spacing_mm); images are not resampled"
    else:
        note = f"images are resampled to the model's pixel spacing, {model_mm} mm" + (
            " (--model-spacing)" if given else " (from the engine)")
    return model_mm, note


class Interrupted(DexrtError):
    """The run was stopped before this file was written."""


class Converter:
    """Converts radiograph files with one engine into `out_dir` (see the module docstring), as ``options`` (a
    `ConvertOptions`, or its fields as keywords) say.
    """

    def __init__(self, engine: Engine, out_dir: str | os.PathLike[str], options: ConvertOptions | None = None,
                 /, **keywords: Any) -> None:
        self.options = o = ConvertOptions.of(options, **keywords)
        self.input_spacing_mm = o.input_spacing_mm
        self.strict = o.strict
        self.engine = engine
        self.out_dir = Path(out_dir)
        self.root = o.root
        self.overwrite = o.overwrite
        self.preview = o.preview
        self.jobs = o.jobs
        self.model_spacing_mm, self.resampling_note = resampling_plan(engine.manifest, o.resample, o.model_spacing_mm)
        self._protected: set[Path] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._temporaries: dict[Path, dict[str, list[Path]]] = {}  # folder -> target name -> stale temporaries
        m = engine.manifest
        self._engine_info = {
            "file": engine.path.name,
            "backend": m["backend"],
            "precision": m["precision"],
            "onnx_sha256": m.get("model", {}).get("onnx_sha256"),
            "model_hash": m.get("model", {}).get("model_hash"),
        }

    # -- planning ---------------------------------------------------------------------------------------------
    def targets(self, source: Path) -> list[Path]:
        """The files converting `source` writes (the preview last)."""
        return output_paths(source, self.out_dir, self.engine.channels, root=self.root, preview=self.preview)

    def is_done(self, source: Path) -> bool:
        """All outputs exist (atomic writes: an existing output is complete) and ``overwrite`` is off.

        Outputs that are themselves inputs of this run do not count: converting reports the clash instead."""
        targets = self.targets(source)
        return (not self.overwrite and all(t.exists() for t in targets)
                and not any(t.resolve() in self._protected for t in targets))

    # -- running ----------------------------------------------------------------------------------------------
    def run(self, sources: Iterable[Path], *, protect: Iterable[Path] = (),
            rescan: bool = True) -> Generator[Outcome, None, None]:
        """Convert `sources`, yielding one Outcome per file as each finishes (skipped files first, at once).

        A failing file does not stop the others. If the consumer stops early or an exception (Ctrl-C, SIGTERM
        turned into an exception) arrives while waiting, queued files are dropped, files being converted stop
        before they write, and files being written are completed: no partial output is left.

        No output may overwrite one of `sources` or of ``protect``: the other inputs of a run of which
        `sources` is one share (see :func:`dexrt.io.layout.inputs_at_risk`). Two sources may not claim one output
        file (see :func:`dexrt.io.layout.output_clashes`): the later one fails with an error naming both. Each
        output folder is listed once per run for stale temporaries; a worker converting its share batch by batch
        passes ``rescan=False`` after its first batch, so a large folder is not listed again for every batch.
        """
        sources = list(sources)
        self._protected = {p.resolve() for p in sources} | {Path(p).resolve() for p in protect}
        self._stop.clear()
        if rescan:
            self._temporaries.clear()
        pool = ThreadPoolExecutor(self.jobs, thread_name_prefix="dexrt-convert")
        running: set[Future[Outcome]] = set()
        clashes = output_clashes(sources, self.out_dir, self.engine.channels, root=self.root, preview=self.preview)
        try:
            for source in sources:
                try:
                    if source in clashes:
                        raise InputError(clashes[source])
                    finished = self.is_done(source)
                except InputError as exc:  # no output can be planned for this file: it fails alone
                    yield Outcome(source, error=str(exc))
                    continue
                if finished:
                    yield Outcome(source, self.targets(source), skipped=True)
                    continue
                while len(running) >= 2 * self.jobs:  # a short queue keeps every worker busy
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    yield from (f.result() for f in done)
                running.add(pool.submit(self.convert, source))
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        finally:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def convert(self, source: Path) -> Outcome:
        """Convert one file (blocking; thread-safe). Errors are reported in the Outcome, not raised."""
        outcome = Outcome(source)
        start = time.perf_counter()
        try:
            self._convert(source, outcome)
        except DexrtError as exc:
            message = str(exc)
            outcome.error = message if str(source) in message else f"{source}: {message}"
            outcome.outputs = []
        except Exception as exc:  # a codec or library failing on one file must not end a run of thousands
            log.log(logging.ERROR if os.environ.get("DEXRT_DEBUG") else logging.DEBUG, "%s: unexpected error", source,
                    exc_info=True)
            outcome.error = f"{source}: unexpected {type(exc).__name__}: {exc} (set DEXRT_DEBUG=1 for the traceback)"
            outcome.outputs = []
            outcome.transient = isinstance(exc, OSError) and exc.errno in _OUT_OF_SPACE
        outcome.seconds = time.perf_counter() - start
        return outcome

    def _convert(self, source: Path, outcome: Outcome) -> None:
        targets = self.targets(source)
        clash = [t for t in targets if t.resolve() in self._protected or t.resolve() == source.resolve()]
        if clash:
            raise InputError(f"{source}: its output {clash[0]} would overwrite an input file")
        image = read_radiograph(source)
        frames = image.frames  # (F, H, W)
        outcome.frames = frames.shape[0]
        spacing = self._assess(source, image, outcome)
        size = working_size(frames.shape[1:], spacing.mm if spacing else None, self.model_spacing_mm)
        outcome.geometry = {
            "size": list(frames.shape[1:]),
            "spacing_mm": list(spacing.mm) if spacing else None,
            "input_spacing": spacing.as_dict() if spacing else None,
            "model_spacing_mm": self.model_spacing_mm,
            "resampled": size is not None,
            "working_size": list(size) if size else list(frames.shape[1:]),
        }
        # The engine's full-resolution call does all of it: down to the model's spacing, the network, every output
        # back at the frame's size (guided by the frame), soft = input - bone for a normalised engine (docs/runtime.md).
        results = self._infer(source, frames, spacing.mm if size and spacing else None)  # per frame: (bone, soft)
        channels = self.engine.channels
        outputs = [np.stack([r[c] for r in results]) for c in range(len(channels))]  # (F, H, W) each
        if size and self.engine.soft_from_input:
            outcome.geometry["soft"] = "input - bone at the input's resolution"
        if self._stop.is_set():
            raise Interrupted(f"{source}: interrupted before writing")
        targets[0].parent.mkdir(parents=True, exist_ok=True)
        for index, (target, channel, stack) in enumerate(zip(targets, channels, outputs)):
            self._remove_stale_temporaries(target)
            meta = self._provenance(source, channel, outcome.geometry, outcome.domain)
            if image.dicom is not None:
                write_dicom(target, image.dicom, stack, channel, index, meta)
            else:
                write_image(target, stack[0], meta)
            outcome.outputs.append(target)
        if self.preview:
            target = targets[-1]
            self._remove_stale_temporaries(target)
            write_preview(target, [frames[0], *(s[0] for s in outputs)],
                          self._provenance(source, PREVIEW, outcome.geometry, outcome.domain))
            outcome.outputs.append(target)

    def _assess(self, source: Path, image: Any, outcome: Outcome) -> _spacing.InputSpacing | None:
        """Check the input's patient (for a patient engine) and domain, refusing either when strict, and resolve
        its pixel spacing; warnings go into the outcome. The anatomy is measured on the first frame, at most 512
        pixels a side (dexrt.inputs.chest)."""
        frames = image.frames
        dataset = image.dicom.dataset if image.dicom is not None else None
        doubt = patient_problem(self.engine.manifest, dataset)  # a patient engine (`dexrt fit`): its patient?
        if doubt:
            if self.strict:
                raise PatientMismatchError(f"{source}: refused (strict): {doubt}")
            outcome.warnings.append(f"{source}: {doubt}")
        anatomy = measure(frames[0])
        report = _domain.check(dataset, anatomy)
        outcome.domain = report.as_dict()
        if not report.ok:
            if self.strict:
                raise DomainError(f"{source}: refused (strict): {report.summary()}")
            outcome.warnings.append(f"{source}: {report.summary()}")
        header = _spacing.header_spacing(dataset, frames.shape[1:]) if dataset is not None else None
        # A chest's typical width says nothing about an image that is not a frontal chest.
        chest_like = report.ok
        spacing = _spacing.resolve(header, anatomy if chest_like else None, frames.shape[1:], self.input_spacing_mm)
        if spacing is None:
            if self.model_spacing_mm is not None:
                outcome.warnings.append(f"{source}: no pixel spacing in the file, none given (--input-spacing) and "
                                        "none estimated (no chest found): run at its own pixel size, not resampled")
            log.info("%s: no pixel spacing known", source)
        else:
            log.info("%s: %s", source, spacing.describe())
            if spacing.estimated and self.model_spacing_mm is not None:
                outcome.warnings.append(f"{source}: {spacing.describe()}")
            doubt = _spacing.body_width_doubt(spacing, anatomy) if chest_like else None
            if doubt:
                outcome.warnings.append(f"{source}: {doubt}")
        return spacing

    def _infer(self, source: Path, frames: np.ndarray,
               spacing_mm: tuple[float, float] | None) -> list[tuple[np.ndarray, ...]]:
        futures = [self.engine.submit(np.ascontiguousarray(f), spacing_mm, model_spacing_mm=self.model_spacing_mm)
                   for f in frames]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.2)
            if self._stop.is_set():
                for f in pending:
                    f.cancel()
                raise Interrupted(f"{source}: interrupted during inference")
        return [f.result() for f in futures]

    def _remove_stale_temporaries(self, target: Path) -> None:
        """Remove the temporary files of `target` left by a run killed outright (SIGKILL, power loss).

        Each output folder is listed once per run (not once per file, which would be quadratic). Only
        temporaries of this run's own targets are removed, never those of another process writing other files
        into the same folder.
        """
        folder = target.parent
        with self._lock:
            if folder not in self._temporaries:
                found: dict[str, list[Path]] = {}
                for entry in os.scandir(folder):
                    match = _TEMPORARY.fullmatch(entry.name)
                    if match:
                        found.setdefault(match.group(1), []).append(Path(entry.path))
                self._temporaries[folder] = found
            stale = self._temporaries[folder].pop(target.name, [])
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _provenance(self, source: Path, channel: str, geometry: dict[str, Any] | None,
                    domain: dict[str, Any] | None = None) -> dict[str, Any]:
        from dexrt import __version__

        return {
            "software": f"dexrt {__version__}",
            "derived_from": source.name,
            "channel": channel,
            "engine": dict(self._engine_info),
            "geometry": geometry,
            "domain": domain,
        }



def convert_files(engine: Engine, sources: Iterable[Path], out_dir: str | os.PathLike[str],
                  **options: Any) -> Iterator[Outcome]:
    """Convert each file, yielding one Outcome per file as it finishes; see :class:`Converter` for options."""
    yield from Converter(engine, out_dir, **options).run(sources)
