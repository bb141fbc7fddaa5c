"""Which files a folder run takes as inputs, and where each output goes: names, folders, and the checks that keep
every output inside the output folder and never on an input or on another input's output.

For each input `<name>.<ext>` the outputs are `<name>_<channel>.<ext>` (``_bone``, ``_soft``; a DICOM file
without a known suffix gives `<name>_<channel>`), and `<name>_preview.png` with a preview, in the output folder
under the input's folder relative to `root`. These are pure functions of names (and of the provenance of files
named like outputs), so a driver can plan a run, on one machine or many, without loading the engine.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path

from dexrt._errors import InputError
from dexrt.io.dicom import DICOM_SUFFIXES
from dexrt.io.images import SUFFIXES, image_kind, written_by_dexrt

PREVIEW = "preview"


def find_images(source: str | os.PathLike[str], *, recursive: bool = False, include: Sequence[str] = (),
                exclude: Sequence[str] = (), skip: str | os.PathLike[str] | None = None,
                channels: Sequence[str] = ()) -> list[Path]:
    """The images to convert: `source` itself, or the DICOM, PNG and TIFF files in the folder `source`.

    ``include``/``exclude`` are glob patterns (``*``, ``?``, ``[...]``): a pattern with a ``/`` is matched
    against the path relative to `source`, one without against the file name. A file is taken if it matches
    any ``include`` (or there are none) and no ``exclude``. Hidden files and folders are ignored, and so is
    the folder ``skip`` (the output folder, when it lies inside `source`).

    dexrt's own outputs are never inputs: a file named like an output for one of ``channels`` (the engine's) or
    a preview (``NAME_bone.png``, ``NAME_preview.png``) whose provenance says dexrt wrote it is left out, so
    `dexrt infer same -o same` run again resumes instead of converting its outputs.
    """
    source = Path(source)
    suffixes = tuple(f"_{c}" for c in (*channels, PREVIEW)) if channels else ()
    if source.is_file():
        if _is_own_output(source, suffixes):
            raise InputError(f"{source}: an output of dexrt (its provenance says so); not converted again")
        return [source]
    if not source.is_dir():
        raise InputError(f"{source}: no such file or folder")
    skip_dir = Path(skip).resolve() if skip is not None else None
    found: list[Path] = []
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(folder, d).resolve() != skip_dir))
        if not recursive:
            dirs.clear()
        for name in sorted(files):
            path = Path(folder, name)
            if name.startswith(".") or name == "DICOMDIR" or not _selected(path.relative_to(source), include, exclude):
                continue
            if image_kind(path) is not None and not _is_own_output(path, suffixes):
                found.append(path)
    if not found:
        raise InputError(f"{source}: no images to convert (looked for DICOM, {', '.join(SUFFIXES)} files"
                         + (" in its subfolders too)" if recursive else "; use --recursive for subfolders)"))
    return found


def _is_own_output(path: Path, suffixes: tuple[str, ...]) -> bool:
    """Named like a dexrt output (the cheap test, by name) and written by dexrt (its provenance, headers only)."""
    return bool(suffixes) and _stem(path)[0].endswith(suffixes) and written_by_dexrt(path)


def _selected(relative: Path, include: Sequence[str], exclude: Sequence[str]) -> bool:
    def matches(pattern: str) -> bool:
        return fnmatch.fnmatch(relative.as_posix() if "/" in pattern else relative.name, pattern)

    return (not include or any(matches(p) for p in include)) and not any(matches(p) for p in exclude)


def _stem(source: Path) -> tuple[str, str]:
    """(stem, suffix); a DICOM file named without a known suffix (`IM0001`, `1.2.840.1`) keeps its whole name."""
    if source.suffix.lower() in SUFFIXES + DICOM_SUFFIXES:
        return source.stem, source.suffix
    return source.name, ""


def output_names(source: Path, channels: Sequence[str]) -> list[str]:
    """`a.png` -> `a_bone.png`, `IM0001` -> `IM0001_bone`."""
    stem, suffix = _stem(source)
    return [f"{stem}_{channel}{suffix}" for channel in channels]


def output_paths(source: Path, out_dir: Path, channels: Sequence[str], *, root: Path | None = None,
                 preview: bool = False) -> list[Path]:
    """The files converting `source` writes into `out_dir` (under its folder relative to `root`; the preview
    last). A pure function of the names, so a driver can plan a run without loading the engine."""
    folder = out_dir
    if root is not None and root.is_dir():
        with contextlib.suppress(ValueError):
            folder = out_dir / source.parent.relative_to(root)
    names = output_names(source, channels)
    if preview:
        names.append(f"{_stem(source)[0]}_{PREVIEW}.png")
    targets = [folder / n for n in names]
    _check_inside(source, out_dir, targets)
    return targets


def _check_inside(source: Path, out_dir: Path, targets: list[Path]) -> None:
    """Every output lies inside `out_dir`, as named and once symlinks are resolved; InputError otherwise.

    The one check every writer's paths pass through: a name part from outside (a channel name in a manifest, a
    file name) or a symlinked folder under `out_dir` must never place a file elsewhere."""
    base = out_dir.resolve()
    for target in targets:
        if target.name in ("", ".", "..") or os.sep in target.name or (os.altsep and os.altsep in target.name):
            raise InputError(f"{source}: output name {target.name!r} is not a plain file name")
        resolved = target.resolve()
        if not resolved.is_relative_to(base):
            raise InputError(f"{source}: its output {target} resolves to {resolved}, outside the output folder "
                             f"{out_dir}; refusing to write there")


def inputs_at_risk(sources: Sequence[Path], out_dir: Path, channels: Sequence[str], *, root: Path | None = None,
                   preview: bool = False) -> set[Path]:
    """The inputs (resolved) that converting some other input would overwrite: what a worker converting only a
    share of `sources` must also protect (`Converter.run(share, protect=...)`). Usually empty."""
    inputs = {p.resolve() for p in sources}
    at_risk = set()
    for s in sources:
        with contextlib.suppress(InputError):  # such a file fails on its own when converted
            at_risk |= {t.resolve() for t in output_paths(s, out_dir, channels, root=root, preview=preview)} & inputs
    return at_risk


def output_clashes(sources: Sequence[Path], out_dir: Path, channels: Sequence[str], *, root: Path | None = None,
                   preview: bool = False) -> dict[Path, str]:
    """The sources that cannot be converted in one run because an earlier source claims one of their output
    files (`a.png` and `a.tiff` both make `a_preview.png`), each with an error naming both files. The earlier
    source (in `sources` order) keeps its outputs; a run stays deterministic and never overwrites its own work."""
    claimed: dict[Path, Path] = {}
    clashes: dict[Path, str] = {}
    for source in sources:
        try:
            targets = output_paths(source, out_dir, channels, root=root, preview=preview)
        except InputError:
            continue  # reported when converted
        keys = [t.absolute() for t in targets]
        other = next(((claimed[k], t) for k, t in zip(keys, targets) if k in claimed), None)
        if other is not None:
            clashes[source] = (f"{source}: its output {other[1]} is also the output of {other[0]}; rename one of "
                               "the two files (outputs are named after the input without its suffix)")
            continue
        claimed.update((k, source) for k in keys)
    return clashes
