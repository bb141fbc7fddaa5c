"""The value contract: what the numbers in dexrt's images mean, defined once (docs/dataset-format.md).

Three physical quantities flow through dexrt:

* ``se``: the single-energy image as attenuation ``-ln(I / I0)`` (dimensionless);
* ``bone``: the dual-energy bone image, bone-equivalent areal density in g/cm^2 of ICRU-44 cortical bone;
* ``soft``: the dual-energy soft-tissue image, water-equivalent areal density in g/cm^2.

Stored images are 16-bit. A linear **encoding** per channel says what a stored value means:
``physical = offset + scale * stored``. Every quantity has one **fixed encoding** (its storage window mapped onto
0..65535) that does not depend on the CT, the seed or the number of views; `dexrt synth` writes it, and every
reader honours whatever encoding a manifest states, so old datasets with a per-dataset encoding still read
correctly.

The network sees a **window** per channel: ``lo -> -1``, ``hi -> +1`` (the C++ runtime applies the same map,
cpp/include/dexrt/prepost.h). Metrics are computed on physical values divided by a fixed per-quantity
**metric window** (`Quantity.metric_window`, mapped onto [0, 1]), so scores from different datasets and engines
are comparable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

from dexrt import _core

STORED_MAX = 65535
INPUT_CHANNEL = "se"
OUTPUT_CHANNELS = ("bone", "soft")
DATASET_CHANNELS = (INPUT_CHANNEL, *OUTPUT_CHANNELS)
# An engine or checkpoint that records no quantity maps stored uint16 straight onto the network.
STORED_WINDOW = (0.0, float(STORED_MAX))
INPUT_NAME, OUTPUT_NAME = "se", "de"  # the ONNX tensors of a dexrt generator


@dataclass(frozen=True)
class Quantity:
    name: str
    unit: str
    meaning: str
    window: tuple[float, float]  # physical values stored as 0..65535 by the fixed encoding
    # PSNR/SSIM see (value - lo) / (hi - lo), data range 1. The offset matters to SSIM (its luminance term), so the
    # window keeps one: a bone image with no bone sits at 0.25, not 0.
    metric_window: tuple[float, float]

    @property
    def encoding(self) -> Encoding:
        return Encoding.from_window(*self.window)


# Storage windows hold every chest view of 70-140 kVp with margin (SE of the example CT spans 0.1-8; bone images
# dip to -1.5 g/cm^2 in noisy views; lateral soft tissue reaches 41 g/cm^2). Metric windows are close to the
# per-dataset windows the default protocol used to get (SE -0.76..8.4, bone -2.3..7.6, soft -3.6..41), so PSNR
# and SSIM figures stay comparable with earlier ones.
QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in (
        Quantity("se", "1", "attenuation -ln(I/I0) of the single-energy protocol (dimensionless)",
                 (-1.0, 15.0), (-1.0, 9.0)),
        Quantity("bone", "g/cm^2", "dual-energy bone image: bone-equivalent areal density, g/cm^2 of ICRU-44 "
                 "cortical bone", (-4.0, 12.0), (-2.5, 7.5)),
        Quantity("soft", "g/cm^2", "dual-energy soft-tissue image: water-equivalent areal density, g/cm^2",
                 (-8.0, 56.0), (-4.0, 41.0)),
        Quantity("bone_ideal", "g/cm^2", "ideal material image: cortical-bone basis areal density along the ray, "
                 "g/cm^2", (0.0, 16.0), (-2.5, 7.5)),
        Quantity("soft_ideal", "g/cm^2", "ideal material image: adipose + soft-tissue basis areal density along "
                 "the ray, g/cm^2", (0.0, 64.0), (-4.0, 41.0)),
    )
}


@dataclass(frozen=True)
class Encoding:
    """``physical = offset + scale * stored`` for one channel of 16-bit images."""

    offset: float
    scale: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.offset) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"an encoding needs a finite offset and a positive scale, got {self}")

    @classmethod
    def from_window(cls, lo: float, hi: float) -> Encoding:
        """The encoding that stores physical ``lo..hi`` as ``0..65535``."""
        return cls(float(lo), (float(hi) - float(lo)) / STORED_MAX)

    @classmethod
    def from_manifest(cls, entry: Any) -> Encoding:
        """From a manifest's ``{"offset": .., "scale": ..}``; ValueError names what is wrong."""
        if not isinstance(entry, Mapping):
            raise ValueError(f"an encoding must be an object with offset and scale, got {entry!r}")
        offset, scale = entry.get("offset"), entry.get("scale")
        if not (_is_number(offset) and _is_number(scale)):
            raise ValueError(f"an encoding needs numeric offset and scale, got {dict(entry)!r}")
        return cls(float(offset), float(scale))

    @property
    def window(self) -> tuple[float, float]:
        """The physical values of stored 0 and 65535."""
        return (self.offset, self.offset + self.scale * STORED_MAX)

    def physical(self, stored: np.ndarray) -> np.ndarray:
        return self.offset + self.scale * np.asarray(stored, np.float64)

    def stored(self, physical: np.ndarray) -> tuple[np.ndarray, int]:
        """Physical values -> uint16 (rounded, clipped) and the number of values that were clipped."""
        q = np.rint((np.asarray(physical, np.float64) - self.offset) / self.scale)
        clipped = int(np.count_nonzero((q < 0) | (q > STORED_MAX)))
        return np.clip(q, 0, STORED_MAX).astype(np.uint16), clipped

    def stored_float(self, physical: np.ndarray) -> np.ndarray:
        """Physical values -> float32 stored values, neither rounded nor clipped (an engine's float32 input)."""
        return ((np.asarray(physical, np.float64) - self.offset) / self.scale).astype(np.float32)

    def as_manifest(self) -> dict[str, float]:
        return {"offset": self.offset, "scale": self.scale}  # JSON keeps a float exactly


def _is_number(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def recorded_encodings(inp: Any, out: Any, n_out: int) -> tuple[Encoding, ...] | None:
    """The input's and outputs' encodings as a manifest or ONNX metadata records them (``input.encoding``,
    ``output.encodings``): all of them (input first), or None when neither is recorded; ValueError otherwise."""
    if inp is None and out is None:
        return None
    if not isinstance(out, list) or len(out) != n_out:
        raise ValueError(f"'output.encodings' must give one encoding per output channel ({n_out})")
    return tuple(Encoding.from_manifest(e) for e in (inp, *out))


def fixed_encoding(channel: str) -> Encoding:
    return QUANTITIES[channel].encoding


def window_to_unit(values: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Values -> network range: ``lo -> -1``, ``hi -> +1`` (float32), as the runtime's pre-processing."""
    lo, hi = float(window[0]), float(window[1])
    return ((np.asarray(values, np.float32) - lo) * (2.0 / (hi - lo)) - 1.0).astype(np.float32)


def unit_to_window(unit: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Network range -> values: the inverse of `window_to_unit` (float64)."""
    lo, hi = float(window[0]), float(window[1])
    return (np.asarray(unit, np.float64) + 1.0) * ((hi - lo) / 2.0) + lo


def metric_unit(physical: np.ndarray, channel: str) -> np.ndarray:
    """Physical values through the channel's metric window onto [0, 1]: PSNR and SSIM then use data range 1."""
    lo, hi = QUANTITIES[channel].metric_window
    return (np.asarray(physical, np.float64) - lo) / (hi - lo)


# -- padding: the runtime's own geometry, so Python never re-derives it -------------------------------------------
def pad_geometry(height: int, width: int, size_multiple: int) -> tuple[int, int, int, int]:
    """``(padded_height, padded_width, top, left)`` of an (H, W) image inside the network input."""
    return tuple(_core.pad_geometry(height, width, size_multiple))  # type: ignore[return-value]


def mirror_pad(x: np.ndarray, size_multiple: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """(..., H, W) -> mirror-padded (..., Hp, Wp) as the runtime pads, and the slices that crop it back."""
    h, w = x.shape[-2:]
    hp, wp, top, left = pad_geometry(h, w, size_multiple)
    crop = (slice(top, top + h), slice(left, left + w))
    if (hp, wp) == (h, w):
        return x, crop
    # numpy's reflect also handles padding wider than the image (repeated reflection), like the runtime
    pad = [(0, 0)] * (x.ndim - 2) + [(top, hp - h - top), (left, wp - w - left)]
    return np.pad(x, pad, mode="reflect"), crop


# -- ONNX metadata: the contract travels inside an exported model -------------------------------------------------
ONNX_METADATA_KEY = "dexrt"
ONNX_METADATA_VERSION = 1


def write_onnx_metadata(model: Any, meta: dict[str, Any]) -> None:
    """Replace an ``onnx.ModelProto``'s metadata with dexrt's (one ``metadata_props`` entry, JSON)."""
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(meta, sort_keys=True)


def read_onnx_metadata(model: Any) -> dict[str, Any] | None:
    """dexrt's metadata of an ``onnx.ModelProto``, or None when it has none; ValueError when it is not a JSON
    object."""
    props = {p.key: p.value for p in model.metadata_props}
    if ONNX_METADATA_KEY not in props:
        return None
    meta = json.loads(props[ONNX_METADATA_KEY])
    if not isinstance(meta, dict):
        raise ValueError(f"the {ONNX_METADATA_KEY!r} metadata is not a JSON object")
    return meta


# -- scale-free input: the robust normalisation of the SE image ----------------------------------------------------
# A processed clinical image, a raw detector image (after log) and a DRR differ in offset and scale. An engine that
# records `NORMALISATION` sees every SE image affinely mapped by its own robust range, and its outputs are mapped
# back by the same affine map, into the input's own grey values:
#     x_n = (x - lo) / s,   bone = s * bone_n,   soft = lo + s * soft_n,   s = hi - lo,
# where lo and hi are the 1st and 99th percentiles of the central 80 % of the image (collimation edges and corner
# markers mostly lie outside it; the percentiles ignore the rest). The network is trained on attenuation-
# equivalent targets normalised the same way (`attenuation_targets`), so bone + soft ~ SE holds in its units.
# The runtime applies all of it in C++ (cpp/include/dexrt/robust_range.h, prepost.h; which part carries the
# offset: parts.h), the home of these numbers; Python reads them from there.
NORMALISATION: dict[str, Any] = {"method": _core.normalisation["method"],
                                 "percentiles": list(_core.normalisation["percentiles"]),
                                 "central_fraction": _core.normalisation["central_fraction"]}
NORMALISED_WINDOW = (-0.25, 1.25)  # network window of every normalised channel: room beyond lo..hi, no Tanh saturation


def robust_range(image: np.ndarray) -> tuple[float, float]:
    """``(lo, hi)`` of one (H, W) image by `NORMALISATION`; ``hi > lo`` always (a flat image gets a unit span).

    Computed by the runtime itself (a regular subsample of at most 65536 pixels, numpy's percentiles to the bit),
    so a view the trainer normalises gets exactly the window the engine will give it."""
    lo, hi = _core.robust_range(np.asarray(image))
    return float(lo), float(hi)


def decomposition(se: np.ndarray, bone: np.ndarray, soft: np.ndarray) -> tuple[float, float, float]:
    """``(a, kb, ks)`` of the least-squares fit ``se ~ a + kb * bone + ks * soft`` of one view (physical units).

    To first order the SE attenuation is this linear mix of the bone and soft areal densities (R^2 0.9997 on the
    example CT); the coefficients depend on the SE protocol (kVp, filtration), so they are fitted per view.
    """
    design = np.stack([np.ones(se.size), np.ravel(bone), np.ravel(soft)], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.ravel(se).astype(np.float64), rcond=None)
    return float(coef[0]), float(coef[1]), float(coef[2])


def attenuation_targets(bone: np.ndarray, soft: np.ndarray, coefficients: tuple[float, float, float]
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Bone and soft areal densities -> their parts of the SE image: ``kb * bone`` and ``a + ks * soft``."""
    a, kb, ks = coefficients
    return kb * np.asarray(bone, np.float64), a + ks * np.asarray(soft, np.float64)


def areal_densities(bone_att: np.ndarray, soft_att: np.ndarray, coefficients: tuple[float, float, float]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `attenuation_targets`: g/cm^2 back from the SE-unit outputs of a normalised engine."""
    a, kb, ks = coefficients
    return np.asarray(bone_att, np.float64) / kb, (np.asarray(soft_att, np.float64) - a) / ks


def view_normalisation(se: np.ndarray, bone: np.ndarray, soft: np.ndarray) -> tuple[float, float, float, float, float]:
    """``(lo, span, a, kb, ks)`` of one whole view (physical units): the SE image's robust range, as `normalise`
    takes it, and the view's `decomposition`. Taken on the whole view: a crop would change the range."""
    lo, hi = robust_range(se)
    return (lo, hi - lo, *decomposition(se, bone, soft))


def normalised_parts(se: np.ndarray, bone: np.ndarray, soft: np.ndarray, norm: Sequence[float]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A view (or a crop of it) in physical units -> a normalised engine's input and targets, by the view's
    `view_normalisation` `norm`: ``(se - lo) / span``, ``kb * bone / span`` and ``(a + ks * soft - lo) / span``."""
    lo, span, a, kb, ks = (float(v) for v in norm)
    bone_att, soft_att = attenuation_targets(bone, soft, (a, kb, ks))
    return (np.asarray(se, np.float64) - lo) / span, bone_att / span, (soft_att - lo) / span


def normalise(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """One (H, W) SE image -> (its normalised float32 image, lo, span) by `NORMALISATION`: what a normalised
    engine's network sees before its input window (calibration data for INT8 builds)."""
    lo, hi = robust_range(image)
    x = np.asarray(image, np.float32) - np.float32(lo)
    x *= np.float32(1.0 / (hi - lo))
    return x, lo, hi - lo

