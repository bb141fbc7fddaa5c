"""What a frontal chest radiograph looks like, measured: the body's width and the lung-field contrast.

Two numbers, read from one frame in the engine's convention (bright = attenuating), feed the pixel-spacing estimate
(`dexrt.inputs.spacing`) and the out-of-domain check (`dexrt.inputs.domain`). Both are built to survive what real
radiographs carry: any monotonic processing (log or gamma look-up tables, windowing, equalisation) because they work on
the frame's own robust range, collimated borders and saturated air because those are recognised as flat regions at
either end of that range (so a bright collimator and dark direct exposure are both "not body", and an image of inverted
polarity segments the same way), and burnt-in markers because every figure is a median over many rows.

Measures, on the frame block-averaged to at most `WORK_SIDE` pixels a side and scaled to its 0.5-99.5 percentile
range (0..1):

- **background**: pixels within `EXTREME` of either end of the range where the image is flat (the 5x5 standard
  deviation of its 5x5 box mean below `FLAT`, so quantum noise does not count as texture): direct exposure,
  collimator shadow, padding. Anatomy, even the smooth lungs of a DRR, varies more than that.
- **body run** (in about 40 rows spread over the band 40-70 % of the height, the lower lung zones of a frontal
  chest, below the shoulders): from the first to the last non-background pixel, less a narrow piece at either end
  (under `SIDE` of the extent, behind a background gap of at least `GAP` of the width: an arm beside the chest, a
  marker), its ends moved to where the level first leaves the background by `SKIN` (the skin). Its length is the
  body's width in that row; ``body_width_px`` is the median over the rows, in the frame's own pixels. ``cut``
  says the run meets the image edge or a collimator's shadow (not air) in most rows: the body may be wider than
  the image shows.
- **lung contrast**: the column profile (median over the band) inside the body run, centre band (the middle
  20 % of the body: spine and mediastinum) minus the mean of the two lung bands (20-40 % and 60-80 %), over the
  body's 5-95 percentile range. A frontal chest has two dark lung fields either side of a bright mediastinum, so
  this is clearly positive (0.31 to 0.58 on the example CT's frontal DRRs, docs/infer.md); a lateral view, a
  skull or a uniform slab give small or negative values, and an image of inverted polarity a clearly negative
  one. It cannot tell an abdomen (a bright spine between darker flanks) from a chest: the header must.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

WORK_SIDE = 512  # measuring at this size is enough for widths to +-0.5 %, and keeps a 4k image cheap
EXTREME = 0.08  # background lies within this fraction of the range from either end...
FLAT = 0.004  # ...and flat: the 5x5 standard deviation of its 5x5 box mean is below this fraction of the range
SKIN = 0.02  # the body's edge: where the level first differs from the background by this fraction of the range
BAND = (0.40, 0.70)  # rows measured, as fractions of the height
GAP = 0.015  # a piece beside the body counts apart when a background gap of this fraction of the width separates it
SIDE = 0.2  # ...and it is narrower than this fraction of the whole extent (an arm, a marker)


@dataclass(frozen=True)
class Anatomy:
    body_width_px: float | None  # in the frame's own pixels (columns); None when no body was found
    body_fraction: float  # body width over image width (0..1)
    cut: bool  # the body reaches the image edge in most measured rows
    lung_contrast: float | None  # see the module docstring; None without a body
    dynamic_range: float  # 0.5-99.5 percentile spread over the frame's full value range (0 for a blank frame)

    def as_dict(self) -> dict[str, Any]:
        return {"body_width_px": None if self.body_width_px is None else round(self.body_width_px, 1),
                "body_fraction": round(self.body_fraction, 3), "cut": self.cut,
                "lung_contrast": None if self.lung_contrast is None else round(self.lung_contrast, 3),
                "dynamic_range": round(self.dynamic_range, 4)}


def measure(frame: np.ndarray) -> Anatomy:
    """Measure one (H, W) frame (uint16 or float, bright = attenuating)."""
    h, w = frame.shape
    factor = max(1, math.ceil(max(h, w) / WORK_SIDE))
    small = _block_mean(np.asarray(frame), factor)
    finite = small[np.isfinite(small)]
    # The range from every other pixel each way: the same percentiles to well within the thresholds, 4x cheaper.
    sample = small[::2, ::2][np.isfinite(small[::2, ::2])] if min(small.shape) >= 64 else finite
    lo, hi = (np.percentile(sample, (0.5, 99.5)) if sample.size else (0.0, 0.0))
    full = float(np.ptp(finite)) if finite.size else 0.0
    dynamic = float((hi - lo) / full) if full > 0 else 0.0
    if not hi > lo:
        return Anatomy(None, 0.0, False, None, dynamic)
    sh, sw = small.shape
    first, last = int(BAND[0] * sh), max(int(BAND[0] * sh) + 1, int(BAND[1] * sh))
    # Only the band is measured, with the 4 rows each side that its 9x9 flatness windows reach.
    top, bottom = max(0, first - 4), min(sh, last + 4)
    scaled = (np.nan_to_num(small[top:bottom], nan=lo) - lo) / (hi - lo)
    unit = np.clip(scaled, 0.0, 1.0)
    # Flatness on the unclipped values: clipping at the percentiles would make the densest bone look flat.
    # ...and on a 5x5 box mean, so quantum noise in the air does not read as texture (anatomy survives it).
    background = ((unit < EXTREME) | (unit > 1 - EXTREME)) & (_local_std(_box(scaled, 2), 2) < FLAT)
    # The band, in the rows of `unit`; about 40 of its rows are enough for medians, and keep this cheap.
    rows = range(first - top, last - top, max(1, (last - first) // 40))
    # The flatness windows reach 4 pixels past the skin; the skin is where the level first leaves the end.
    skin = (unit < SKIN) | (unit > 1 - SKIN)
    runs = [_trim(_body_extent(~background[r], max(1, round(GAP * sw))), skin[r]) for r in rows]
    lengths = np.array([b - a for a, b in runs], dtype=np.float64)
    if not lengths.size or np.median(lengths) < 0.05 * sw:
        return Anatomy(None, 0.0, False, None, dynamic)
    # Column profile over the band, within the median run's extent.
    left, right = (int(np.median([a for a, _ in runs])), int(np.median([b for _, b in runs])))
    profile = np.median(unit[rows.start:rows.stop:rows.step, left:right], axis=0)
    contrast = _lung_contrast(profile)
    # The body is cut when it meets the image edge or a collimator (unexposed: the attenuating end of the range,
    # which is the bright end unless the lung contrast says the polarity is inverted), not air.
    collimator = (lambda v: v > 0.5) if (contrast is None or contrast >= 0) else (lambda v: v < 0.5)
    cut = float(np.mean([a == 0 or b == sw or collimator(unit[r, a - 1]) or collimator(unit[r, b])
                         for r, (a, b) in zip(rows, runs)])) > 0.5
    width = float(np.median(lengths)) * factor  # back in the frame's own columns
    return Anatomy(width, float(np.median(lengths)) / sw, cut, contrast, dynamic)


def _lung_contrast(profile: np.ndarray) -> float | None:
    n = profile.size
    if n < 10:
        return None
    def band(a: float, b: float) -> float:
        return float(np.median(profile[int(a * n):max(int(a * n) + 1, int(b * n))]))

    centre = band(0.4, 0.6)
    lungs = (band(0.2, 0.4) + band(0.6, 0.8)) / 2
    lo, hi = np.percentile(profile, (5, 95))
    return float((centre - lungs) / max(hi - lo, 1e-6))


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) -> (H // f, W // f) float32 means, without a float copy of a large frame."""
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    if factor == 1 or h == 0 or w == 0:
        return image.astype(np.float32)
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def _box(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over (2r+1)^2 neighbourhoods (the part inside the image at its edges), separably from running sums."""
    out = image.astype(np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        sums = np.concatenate([np.zeros_like(out.take([0], axis=axis)), out.cumsum(axis=axis)], axis=axis)
        index = np.arange(n)
        lo, hi = np.maximum(index - radius, 0), np.minimum(index + radius + 1, n)
        count = (hi - lo).reshape((-1, 1) if axis == 0 else (1, -1))
        out = (sums.take(hi, axis=axis) - sums.take(lo, axis=axis)) / count
    return out


def _local_std(image: np.ndarray, radius: int) -> np.ndarray:
    """Standard deviation over (2r+1)^2 neighbourhoods, from box means of x and x^2."""
    mean = _box(image, radius)
    return np.sqrt(np.maximum(_box(image * image, radius) - mean * mean, 0.0))


def _trim(run: tuple[int, int], extreme: np.ndarray) -> tuple[int, int]:
    a, b = run
    while a < b and extreme[a]:
        a += 1
    while b > a and extreme[b - 1]:
        b -= 1
    return a, b


def _body_extent(mask: np.ndarray, gap: int) -> tuple[int, int]:
    """[start, stop) of the body in one row's mask of non-background pixels: from the first to the last such
    pixel, less narrow pieces at either end (an arm or a marker beside the chest, less than `SIDE` of the
    extent and separated from the rest by a background gap of at least `gap` pixels); (0, 0) for no body.
    Gaps inside (a flat, saturated spine) never split the body: only pieces at the ends are dropped."""
    idx = np.flatnonzero(mask)
    if not idx.size:
        return (0, 0)
    breaks = np.flatnonzero(np.diff(idx) > gap)
    starts = [int(idx[0]), *(int(i) for i in idx[breaks + 1])]
    stops = [*(int(i) + 1 for i in idx[breaks]), int(idx[-1]) + 1]
    first, last = 0, len(starts) - 1
    while first < last:
        extent = stops[last] - starts[first]
        if stops[first] - starts[first] < SIDE * extent:
            first += 1
        elif stops[last] - starts[last] < SIDE * extent:
            last -= 1
        else:
            break
    return starts[first], stops[last]
