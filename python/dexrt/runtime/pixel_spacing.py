"""Pixel spacing, the rule: what a radiograph's pixel spacing may be, and where an engine records its model's.

One home for the check that every spacing dexrt is given or reads passes (an option, a DICOM header value, the
model's training spacing in an ONNX file, a bundle manifest or a dataset manifest): a finite number of mm within
`PLAUSIBLE_MM`. Outside it a value is a typo or a placeholder, never a spacing. Where an input's spacing comes
from (header, user, estimate) is `dexrt.inputs.spacing`'s business.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

# Real radiograph pixels (dental sensors to binned fluoroscopy) lie well inside this.
PLAUSIBLE_MM = (0.01, 10.0)
# Where an engine manifest may record the model's training pixel spacing, looked up in this order: the bundle's
# top level (`dexrt build-engine`), the model section, and the trainer's config inside it.
MANIFEST_PLACES = ("pixel_spacing_mm", "model.pixel_spacing_mm", "model.config.pixel_spacing_mm")


def plausible(value: float) -> bool:
    return math.isfinite(value) and PLAUSIBLE_MM[0] <= value <= PLAUSIBLE_MM[1]


def spacing_problem(value: Any) -> str | None:
    """Why ``value`` is not a radiograph's pixel spacing in mm, or None when it is one."""
    text = repr(value) if len(repr(value)) <= 24 else repr(value)[:20] + "..."
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and value > 0):
        return f"must be a positive number of mm, got {text} (not a plausible pixel spacing)"
    # abs() first: a JSON integer of hundreds of digits overflows float() (and math.isfinite)
    if not (abs(value) < 1e6 and plausible(float(value))):
        return (f"{text} mm is not a radiograph's pixel spacing (a plausible one is {PLAUSIBLE_MM[0]:g} to "
                f"{PLAUSIBLE_MM[1]:g} mm)")
    return None


def check_option(name: str, value: float | None) -> None:
    """A spacing given as an option (None: not given): a ValueError naming ``name`` unless it is plausible."""
    if value is not None and (problem := spacing_problem(value)):
        raise ValueError(f"{name} {problem}")


def recorded_spacings(manifest: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(place, value) for each of `MANIFEST_PLACES` that holds a value, in lookup order."""
    for place in MANIFEST_PLACES:
        holder: Any = manifest
        *path, key = place.split(".")
        for part in path:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and holder.get(key) is not None:
            yield place, holder[key]


def model_spacing_mm(manifest: dict[str, Any]) -> float | None:
    """The model's training pixel spacing recorded in an engine manifest (the first plausible one of
    `MANIFEST_PLACES`), or None."""
    for _, value in recorded_spacings(manifest):
        if spacing_problem(value) is None:
            return float(value)
    return None
