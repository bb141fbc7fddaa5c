"""Many patients: `dexrt fit --jobs FITS.toml [--ray ADDRESS]`, one fit per job, in turn or on a Ray cluster with
one fit per actor (docs/fit.md, "A clinic with many patients").

The jobs file lists one table per patient; every key but ``ct`` and ``output`` is optional and overrides the
command line's value for that job::

    [[fit]]
    ct = "/data/p0001/ct"              # a DICOM folder, a NIfTI/NRRD/MHA file or a catalogue name
    plan = "/data/p0001/rtplan.dcm"
    output = "/engines/p0001.dexrt"
    report = "/engines/p0001-report"
    patient_id = "P0001"               # when the CT carries none
    isocentre = [[0.0, -20.0, 35.0]]   # DICOM patient coordinates, mm
    angles = "180:0"
    minutes = 20

On Ray each job is a task of one actor that holds ``cpus_per_fit`` CPUs (its projector and PyTorch use that many
threads), so a cluster with N such slots runs N fits at once and queues the rest; each fit's budget starts when its
actor starts it. Inputs and outputs must be at paths every node sees (a shared filesystem). A failing fit is
reported and the others go on.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from dexrt._errors import ConfigError, DexrtError
from dexrt.pipelines.fit.fit import FitOptions, FitTrainer, fit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_JOB_KEYS: dict[str, Any] = {"ct": str, "output": str, "plan": str, "report": str, "patient_id": str, "angles": str,
                             "work": str, "position": str, "minutes": (int, float), "seed": int, "isocentre": list}


def read_jobs(path: str | os.PathLike[str], base: FitOptions) -> list[FitOptions]:
    """The jobs of a TOML file, each `base` with the job's values; ConfigError naming the file and the job."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the jobs file ({exc})") from exc
    tables = raw.get("fit")
    if set(raw) - {"fit"} or not isinstance(tables, list) or not tables:
        raise ConfigError(f"{p}: expected [[fit]] tables (and nothing else), one per patient")
    jobs, outputs = [], set()
    folder = p.parent
    for i, table in enumerate(tables, 1):
        where = f"{p}: job {i}"
        unknown = sorted(set(table) - set(_JOB_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_JOB_KEYS)})")
        for key in ("ct", "output"):
            if key not in table:
                raise ConfigError(f"{where}: missing {key}")
        for key, value in table.items():
            if not isinstance(value, _JOB_KEYS[key]) or isinstance(value, bool):
                raise ConfigError(f"{where}: {key} has the wrong type ({type(value).__name__})")

        def at(key: str) -> Path | None:  # relative paths: from the jobs file's folder
            return None if key not in table else (folder / table[key])

        ct = table["ct"] if not (folder / table["ct"]).exists() else str(folder / table["ct"])
        isos = tuple(tuple(float(v) for v in point) for point in table.get("isocentre", ()))
        if any(len(point) != 3 for point in isos):
            raise ConfigError(f"{where}: isocentre must be a list of [x, y, z] points (mm)")
        output = at("output")
        assert output is not None
        if output.resolve() in outputs:
            raise ConfigError(f"{where}: output {output} is another job's too")
        outputs.add(output.resolve())
        jobs.append(replace(base, ct=ct, output=output, plan=at("plan"), report=at("report"),
                            work=at("work"), patient_id=table.get("patient_id", base.patient_id),
                            angles=table.get("angles", base.angles), position=table.get("position", base.position),
                            minutes=float(table.get("minutes", base.minutes)), seed=table.get("seed", base.seed),
                            isocentres_lps=isos or base.isocentres_lps))  # type: ignore[arg-type]
    return jobs


def _one(opts: FitOptions, trainer: FitTrainer) -> dict[str, Any]:
    try:
        return {"job": str(opts.output), "ok": True, **fit(opts, trainer)}
    except DexrtError as exc:
        return {"job": str(opts.output), "ok": False, "error": str(exc)}


def fit_all(jobs: list[FitOptions], make_trainer: Callable[[], FitTrainer], *, address: str | None = None,
            cpus_per_fit: int = 2) -> list[dict[str, Any]]:
    """Run every job: in this process, one after the other (`address` None), or on Ray, one fit per actor.
    Returns one result per job, in order: the fit's summary, or {"ok": False, "error": ...}."""
    if address is None:
        return [_one(job, make_trainer()) for job in jobs]
    from dexrt.pipelines.distributed import import_ray

    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        local = address == "local"
        ray.init(address=address, **(dict(include_dashboard=False) if local else {}),
                 logging_level=logging.WARNING, log_to_driver=True)
    try:
        threads = {"OMP_NUM_THREADS": str(cpus_per_fit), "MKL_NUM_THREADS": str(cpus_per_fit)}
        actor = ray.remote(num_cpus=cpus_per_fit, runtime_env={"env_vars": threads})(_FitActor)
        actors = [actor.remote(make_trainer) for _ in jobs]
        runs = [a.run.remote(replace(job, threads=cpus_per_fit, progress=False)) for a, job in zip(actors, jobs)]
        return list(ray.get(runs))
    finally:
        if started:
            ray.shutdown()


class _FitActor:
    """One Ray actor: one fit at a time, with its own trainer (its own PyTorch threads)."""

    def __init__(self, make_trainer: Callable[[], FitTrainer]) -> None:
        self.trainer = make_trainer()

    def run(self, opts: FitOptions) -> dict[str, Any]:
        import socket

        result = _one(opts, self.trainer)
        result["worker"] = f"{socket.gethostname()}:{os.getpid()}"
        return result
