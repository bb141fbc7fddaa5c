"""Converting image files with an engine: the work behind `dexrt infer`, reusable from Python.

For each input `<name>.<ext>` the outputs are `<name>_<channel>.<ext>` (``_bone``, ``_soft``) in the output
folder, same format and dtype, written atomically with provenance metadata. Inputs are never overwritten.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dexrt._errors import DexrtError, InputError
from dexrt.engine import Engine
from dexrt.images import SUFFIXES, is_image_path, read_image, write_image


@dataclass
class Outcome:
    source: Path
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def find_images(source: str | os.PathLike[str]) -> list[Path]:
    """The images to convert: `source` itself, or the PNG/TIFF files directly inside the folder `source`."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise InputError(f"{source}: no such file or folder")
    images = sorted(p for p in source.iterdir() if p.is_file() and is_image_path(p) and not p.name.startswith("."))
    if not images:
        raise InputError(f"{source}: no images to convert (looked for {', '.join(SUFFIXES)} files)")
    return images


def output_paths(source: Path, out_dir: Path, channels: tuple[str, ...]) -> list[Path]:
    return [out_dir / f"{source.stem}_{channel}{source.suffix}" for channel in channels]


def provenance(engine: Engine, source: Path, channel: str) -> dict[str, Any]:
    from dexrt import __version__

    m = engine.manifest
    return {
        "software": f"dexrt {__version__}",
        "derived_from": source.name,
        "channel": channel,
        "engine": {
            "file": engine.path.name,
            "backend": m["backend"],
            "precision": m["precision"],
            "onnx_sha256": m.get("model", {}).get("onnx_sha256"),
            "model_hash": m.get("model", {}).get("model_hash"),
        },
    }


def convert_files(engine: Engine, sources: list[Path], out_dir: Path) -> Iterator[Outcome]:
    """Convert each file, yielding one Outcome per file; a failing file does not stop the others."""
    out_dir.mkdir(parents=True, exist_ok=True)
    protected = {p.resolve() for p in sources}
    for source in sources:
        outcome = Outcome(source)
        start = time.perf_counter()
        try:
            targets = output_paths(source, out_dir, engine.channels)
            clash = [t for t in targets if t.resolve() in protected]
            if clash:
                raise InputError(f"{source}: its output {clash[0]} would overwrite an input file")
            image = read_image(source)
            results = engine.infer(image)
            for target, channel, result in zip(targets, engine.channels, results):
                write_image(target, result, provenance(engine, source, channel))
                outcome.outputs.append(target)
        except DexrtError as exc:
            message = str(exc)
            outcome.error = message if str(source) in message else f"{source}: {message}"
        outcome.seconds = time.perf_counter() - start
        yield outcome
