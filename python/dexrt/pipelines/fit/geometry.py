"""The room's kV imaging geometry for `dexrt fit`: presets (TOML files shipped in ``presets/``) or a file of the
same keys, with command-line overrides.

    name = "varian-truebeam"
    description = "..."
    sources = ["where each number comes from"]
    sid_mm = 1000.0                  # source to isocentre
    sdd_mm = 1500.0                  # source to detector plane
    detector_mm = [397.312, 297.984] # panel width (columns, across the patient) and height (rows, along it)
    detector_px = [1024, 768]        # the panel's pixels (columns, rows), as its planar images come
    kv_offset_deg = 90.0             # kV source angle = MV gantry angle + this (IEC 61217 scale)
    kv_offset_verified = true        # whether a source states the side of the kV source
    kv_offset_note = "..."

Views are rendered at the working pixel spacing at the isocentre (by default the starting model's), over the
panel's field: `Geometry.field_px` gives the panel in those pixels (a 40 cm panel at magnification 1.5 and the
default model's 1.474 mm: 181 x 181).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from dexrt._errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_KEYS = {"name": str, "description": str, "sources": list, "sid_mm": float, "sdd_mm": float, "detector_mm": list,
         "detector_px": list, "kv_offset_deg": float, "kv_offset_verified": bool, "kv_offset_note": str}
_REQUIRED = ("sid_mm", "sdd_mm", "detector_mm", "detector_px")


@dataclass(frozen=True)
class Geometry:
    name: str
    sid_mm: float
    sdd_mm: float
    detector_mm: tuple[float, float]  # width (columns), height (rows)
    detector_px: tuple[int, int]  # columns, rows
    kv_offset_deg: float = 90.0
    kv_offset_verified: bool = False
    kv_offset_note: str = ""
    description: str = ""
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"geometry {self.name!r}"
        if not (0 < self.sid_mm < self.sdd_mm <= 10_000):
            raise ConfigError(f"{where}: need 0 < sid_mm ({self.sid_mm}) < sdd_mm ({self.sdd_mm}) <= 10000")
        if len(self.detector_mm) != 2 or not all(10.0 <= v <= 2000.0 for v in self.detector_mm):
            raise ConfigError(f"{where}: detector_mm must be [width, height], each 10..2000 mm, got "
                              f"{list(self.detector_mm)}")
        if len(self.detector_px) != 2 or not all(16 <= v <= 16384 for v in self.detector_px):
            raise ConfigError(f"{where}: detector_px must be [columns, rows], each 16..16384, got "
                              f"{list(self.detector_px)}")
        if not math.isfinite(self.kv_offset_deg):
            raise ConfigError(f"{where}: kv_offset_deg must be a number of degrees")

    @property
    def magnification(self) -> float:
        return self.sdd_mm / self.sid_mm

    @property
    def panel_pixel_mm(self) -> tuple[float, float]:
        """The panel's own pixel pitch (columns, rows), mm at the detector."""
        return (self.detector_mm[0] / self.detector_px[0], self.detector_mm[1] / self.detector_px[1])

    def field_px(self, pixel_at_iso_mm: float) -> tuple[int, int]:
        """(rows, cols) of the panel's field at `pixel_at_iso_mm` (the working pixel at the isocentre)."""
        at_iso = [d / self.magnification for d in self.detector_mm]
        return (max(16, round(at_iso[1] / pixel_at_iso_mm)), max(16, round(at_iso[0] / pixel_at_iso_mm)))

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["detector_mm"], d["detector_px"], d["sources"] = (list(self.detector_mm), list(self.detector_px),
                                                            list(self.sources))
        return d


def preset_names() -> list[str]:
    folder = resources.files("dexrt.pipelines.fit").joinpath("presets")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_geometry(spec: str | os.PathLike[str] | None = None) -> Geometry:
    """A preset by name (`preset_names`), or a TOML file of the same keys; None: the "default" preset."""
    name = "default" if spec is None else str(spec)
    if name in preset_names():
        entry = resources.files("dexrt.pipelines.fit").joinpath("presets").joinpath(f"{name}.toml")
        text, where = entry.read_text(encoding="utf-8"), f"preset {name}"
    else:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"{path}: no such geometry file, and not a preset ({', '.join(preset_names())})")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the geometry file ({exc})") from exc
        where = str(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from exc
    return _from_toml(raw, where, default_name=Path(name).stem)


def _from_toml(raw: dict[str, Any], where: str, default_name: str) -> Geometry:
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_KEYS)})")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        kind = _KEYS[key]
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = float(value)
        elif kind is list and key in ("detector_mm", "detector_px") and isinstance(value, list) and len(value) == 2 \
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            if key == "detector_px" and not all(float(v).is_integer() for v in value):
                raise ConfigError(f"{where}: detector_px must be two whole numbers, got {value}")
            values[key] = tuple(int(v) for v in value) if key == "detector_px" else tuple(float(v) for v in value)
        elif kind is list and key == "sources" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            values[key] = tuple(value)
        elif kind in (str, bool) and isinstance(value, kind):
            values[key] = value
        else:
            raise ConfigError(f"{where}: {key} has the wrong type ({type(value).__name__}: {value!r})")
    values.setdefault("name", default_name)
    try:
        return Geometry(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def with_overrides(geometry: Geometry, *, sid_mm: float | None = None, sdd_mm: float | None = None,
                   detector_mm: tuple[float, float] | None = None,
                   detector_px: tuple[int, int] | None = None) -> Geometry:
    """The geometry with the given values replaced (command-line options); recorded as a modified preset."""
    given: dict[str, Any] = {k: v for k, v in (("sid_mm", sid_mm), ("sdd_mm", sdd_mm), ("detector_mm", detector_mm),
                                               ("detector_px", detector_px)) if v is not None}
    if not given:
        return geometry
    changed = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in given.items())
    return replace(geometry, name=f"{geometry.name} ({changed})", **given)


def parse_pair(text: str, what: str, kind: type = float) -> tuple[Any, Any]:
    """'400' or '397x298' -> a (width, height) pair; ConfigError naming the option otherwise."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [kind(float(p)) if kind is int else kind(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{what}: expected a number or WIDTHxHEIGHT, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ConfigError(f"{what}: expected a number or WIDTHxHEIGHT, got {text!r}")
    return values[0], values[1]
