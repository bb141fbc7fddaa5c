"""Image operations of the single-energy imaging chain (docs/synth.md, "Imaging-chain randomisation"): Gaussian
smoothing, the heel-effect profile, collimator and lead-marker fluence masks, burnt-in annotations, and the
post-processing of CR/DX systems (window, equalisation, unsharp masking or multi-scale enhancement, LUT).

Everything here is deterministic: the random draws live in dexrt.synth.chain, which passes the drawn
parameters in.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from dexrt.synth.spectra import ANODE_ANGLE_DEG

COLLIMATOR_MM = 250.0  # focal spot to collimator blades, for the penumbra of the field edges
FOCAL_SPOT_MM = 1.2
MARKER_TRANSMISSION = 0.02  # ~1 mm lead at the SE spectra's mean energies
_MIN_TAKEOFF_DEG = 2.0  # the heel model's 1/sin(takeoff) diverges at grazing emission


def smooth(x: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian filter (sigma in pixels) by FFT on an edge-padded copy, so the cost does not grow with sigma
    (scatter kernels are tens of pixels wide); sigma <= 0 returns a copy."""
    if sigma_px <= 0:
        return np.array(x, np.float64)
    from scipy import ndimage

    h, w = x.shape
    p = int(min(np.ceil(3.0 * sigma_px), max(h, w)))
    padded = np.pad(np.asarray(x, np.float64), p, mode="edge")
    f = ndimage.fourier_gaussian(np.fft.rfft2(padded), sigma_px, n=padded.shape[1])
    return np.fft.irfft2(f, s=padded.shape)[p:p + h, p:p + w]


def detector_coords(rows: int, cols: int, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) positions in mm from the detector centre (the central ray), each (rows, cols)."""
    r = (np.arange(rows) - (rows - 1) / 2.0) * pixel_mm
    c = (np.arange(cols) - (cols - 1) / 2.0) * pixel_mm
    return np.meshgrid(r, c, indexing="ij")


def heel_profile(rows: int, cols: int, pixel_mm: float, sdd_mm: float, anode_edge: float, axis: str) -> np.ndarray:
    """Relative primary fluence (1 on the central ray) of the anode heel effect.

    Photons leaving the target at take-off angle (theta - phi) cross tungsten in proportion to
    1 / sin(theta - phi) (theta: anode angle, phi: angle of the ray towards the anode side), so the fluence is
    exp(-k (1 / sin(theta - phi) - 1 / sin(theta))). k is set so that the fluence at the anode-side edge of the
    detector is `anode_edge` (0 < anode_edge <= 1). `axis` is "rows+", "rows-", "cols+" or "cols-": the detector
    direction that points to the anode. The spectral hardening on the anode side is not modelled (grey factor).
    """
    r, c = detector_coords(rows, cols, pixel_mm)
    u = (r if axis.startswith("rows") else c) * (1.0 if axis.endswith("+") else -1.0)
    theta = np.radians(ANODE_ANGLE_DEG)
    floor = np.radians(_MIN_TAKEOFF_DEG)

    def excess(u_mm: np.ndarray | float) -> np.ndarray:
        takeoff = np.maximum(theta - np.arctan(np.asarray(u_mm) / sdd_mm), floor)
        return 1.0 / np.sin(takeoff) - 1.0 / np.sin(theta)

    edge = (rows if axis.startswith("rows") else cols) * pixel_mm / 2.0
    k = -np.log(anode_edge) / float(excess(edge)) if anode_edge < 1.0 else 0.0
    return np.exp(-k * excess(u))


def collimation_mask(rows: int, cols: int, pixel_mm: float, sdd_mm: float, margins: tuple[float, float, float, float],
                     rotation_deg: float) -> np.ndarray:
    """Primary transmission (0..1) of the collimator: an open rectangle whose sides lie `margins` (top, bottom,
    left, right, fractions of the detector side) inside the detector edges, rotated about the detector centre,
    with a linear penumbra of the focal spot's width projected from the blades."""
    r, c = detector_coords(rows, cols, pixel_mm)
    a = np.radians(rotation_deg)
    rr, cc = np.cos(a) * r + np.sin(a) * c, -np.sin(a) * r + np.cos(a) * c
    half_r, half_c = rows * pixel_mm / 2.0, cols * pixel_mm / 2.0
    top, bottom, left, right = margins
    penumbra = max(FOCAL_SPOT_MM * (sdd_mm - COLLIMATOR_MM) / COLLIMATOR_MM, 1e-3)
    inside = np.minimum.reduce([rr - (-half_r + 2 * half_r * top), (half_r - 2 * half_r * bottom) - rr,
                                cc - (-half_c + 2 * half_c * left), (half_c - 2 * half_c * right) - cc])
    return np.clip(0.5 + inside / penumbra, 0.0, 1.0)


@lru_cache(maxsize=64)
def _glyphs(text: str, height_px: int) -> np.ndarray:
    """A bool bitmap of `text` about `height_px` pixels tall (Pillow's built-in font)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(6, height_px))
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("L", (int(right - left) + 2, int(bottom - top) + 2), 0)
    ImageDraw.Draw(img).text((1 - left, 1 - top), text, fill=255, font=font)
    return np.asarray(img) > 127


def stamp(shape: tuple[int, int], text: str, height_px: int, corner: tuple[float, float]) -> np.ndarray:
    """A bool mask of `text` placed with its top-left corner at fractional image position `corner` (row, col),
    clipped to the image."""
    glyph = _glyphs(text, height_px)
    mask = np.zeros(shape, bool)
    r0 = int(round(corner[0] * max(shape[0] - glyph.shape[0], 0)))
    c0 = int(round(corner[1] * max(shape[1] - glyph.shape[1], 0)))
    g = glyph[: shape[0] - r0, : shape[1] - c0]
    mask[r0:r0 + g.shape[0], c0:c0 + g.shape[1]] = g
    return mask


def apply_lut(u: np.ndarray, lut: str, param: float) -> np.ndarray:
    """A look-up table on [0, 1] -> [0, 1]: "linear", "gamma" (u ** param), "log" (log(1 + param u) /
    log(1 + param)) or "sigmoid" (a film-like S curve of slope `param` at mid-grey, ends pinned to 0 and 1)."""
    u = np.clip(u, 0.0, 1.0)
    if lut == "linear":
        return u
    if lut == "gamma":
        return u ** param
    if lut == "log":
        return np.log1p(param * u) / np.log1p(param)
    if lut == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-param * (u - 0.5)))
        s0, s1 = 1.0 / (1.0 + np.exp(param * 0.5)), 1.0 / (1.0 + np.exp(-param * 0.5))
        return (s - s0) / (s1 - s0)
    raise ValueError(f"unknown LUT {lut!r}")


def post_process(raw: np.ndarray, field: np.ndarray, p: dict, pixel_mm: float,
                 like: dict | None = None) -> tuple[np.ndarray, dict]:
    """The processing of a CR/DX system on the log image `raw` (attenuation, bright = dense), with the drawn
    parameters `p`. Returns the processed image on the attenuation scale of the window (stored lo -> lo,
    hi -> hi, so it stays in the SE channel's range) and the image-dependent values it used: the window
    {"lo", "hi"}, and "equalise_mean" when equalising. Passing those back as `like` puts another image through
    exactly the same mapping (the bone-free image of a view is processed as its SE was).

    Order as in clinical pipelines: window from the histogram of the exposed field (the percentiles), dynamic
    range compression (equalisation), detail enhancement (unsharp mask or multi-scale band gains), then the
    presentation LUT. The area outside `field` (shut by the collimator) ends white, or black with
    ``p["shutter"] == "black"`` (an electronic shutter).
    """
    if like is None:
        values = raw[field] if field.any() else raw.ravel()
        lo, hi = (float(v) for v in np.percentile(values, p["window_pct"]))
        hi = max(hi, lo + 1e-3)
    else:
        lo, hi = like["lo"], like["hi"]
    used = {"lo": lo, "hi": hi}
    # As clinical systems do once they have found the collimator edges, the shut area (noise on no signal) is
    # filled with the window's top before filtering, so its noise neither rings into the image nor shows; it is
    # shuttered at the end.
    shut = ~field if field.any() else np.zeros_like(field)
    u = np.where(shut, 1.0, (raw - lo) / (hi - lo))
    if p.get("equalise"):
        e = p["equalise"]
        low = smooth(u, e["sigma_mm"] / pixel_mm)
        mean = float(np.mean(low[field] if field.any() else low)) if like is None else like["equalise_mean"]
        used["equalise_mean"] = mean
        u = u - e["strength"] * (low - mean)
    if p.get("unsharp"):
        m = p["unsharp"]
        u = u + m["gain"] * (u - smooth(u, m["sigma_mm"] / pixel_mm))
    if p.get("multiscale"):
        # Band-pass pyramid of Gaussian differences (MUSICA-like), each band amplified by its own gain.
        ms = p["multiscale"]
        prev, out = u, np.zeros_like(u)
        for k, gain in enumerate(ms["gains"]):
            cur = smooth(u, ms["base_mm"] * 2.0**k / pixel_mm)
            out += gain * (prev - cur)
            prev = cur
        u = out + prev
    v = apply_lut(u, p["lut"], p["lut_param"])
    v[shut] = 0.0 if p.get("shutter") == "black" else 1.0
    return lo + v * (hi - lo), used
