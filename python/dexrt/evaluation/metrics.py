"""Image-quality metrics and panels for SE -> (bone, soft): numpy only, shared by `dexrt eval`, the trainer's
validation and the TensorRT accuracy check.

Images are scored in physical units through each quantity's fixed metric window onto [0, 1]
(`dexrt.runtime.contract.metric_unit`), so ``data_range = 1`` and scores of different datasets and engines compare.
Definitions are in docs/training.md.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from dexrt.runtime.contract import metric_unit

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11x11 Gaussian window, as in Wang et al. 2004
SSIM_K1, SSIM_K2 = 0.01, 0.03
CNR_GAP, CNR_RING = 2, 12  # background ring: pixels 3..12 (chessboard distance) outside the lesion mask


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (H, W) images of one shape, got {a.shape} and {b.shape}")
    return a, b


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute error."""
    p, t = _pair(pred, true)
    return float(np.mean(np.abs(p - t)))


def psnr(pred: np.ndarray, true: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``; inf for identical arrays (any rank)."""
    p, t = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if p.shape != t.shape:
        raise ValueError(f"expected two arrays of one shape, got {p.shape} and {t.shape}")
    mse = float(np.mean((p - t) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return k / k.sum()


def _blur_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable filter with kernel `k` on both axes, 'valid' part only: (H, W) -> (H - 2r, W - 2r)."""
    n = len(k) - 1
    h, w = x.shape
    rows = sum(k[j] * x[j : h - n + j] for j in range(len(k)))
    return sum(k[j] * rows[:, j : w - n + j] for j in range(len(k)))


ERROR_BAND_WAVELENGTHS = (4.0, 8.0, 16.0, 32.0, 64.0)  # px: bands < 4, 4-8, 8-16, 16-32, 32-64, >= 64 (with the mean)


def error_bands(pred: np.ndarray, true: np.ndarray,
                wavelengths: tuple[float, ...] = ERROR_BAND_WAVELENGTHS) -> np.ndarray:
    """Where the error lies in scale: the mean squared error of ``pred - true`` split by spatial wavelength.

    len(wavelengths) + 1 values, finest first: the error's power at wavelengths below wavelengths[0] px, between
    successive ones, and at wavelengths[-1] and longer (the mean error included). Split in the Fourier domain
    (the image taken as periodic), so the bands add up to the MSE exactly (Parseval).
    """
    p, t = _pair(pred, true)
    h, w = p.shape
    power = np.abs(np.fft.fft2(p - t)) ** 2 / float(h * w) ** 2
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))  # cycles per px
    with np.errstate(divide="ignore"):
        wavelength = 1.0 / freq  # inf for the mean
    band = np.searchsorted(np.asarray(wavelengths, np.float64), wavelength, side="right")
    return np.bincount(band.ravel(), weights=power.ravel(), minlength=len(wavelengths) + 1)


def ssim(pred: np.ndarray, true: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004): 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
    Gaussian-weighted moments, averaged over the window positions that lie fully inside the image."""
    p, t = _pair(pred, true)
    h, w = p.shape
    r = SSIM_RADIUS
    if h <= 2 * r or w <= 2 * r:
        raise ValueError(f"SSIM needs images larger than {2 * r + 1}x{2 * r + 1}, got {h}x{w}")
    k = _gaussian_kernel(SSIM_SIGMA, r)

    def blur(x: np.ndarray) -> np.ndarray:
        return _blur_valid(x, k)

    mu_p, mu_t = blur(p), blur(t)
    var_p = blur(p * p) - mu_p**2
    var_t = blur(t * t) - mu_t**2
    cov = blur(p * t) - mu_p * mu_t
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return float(s.mean())


def bone_content(image: np.ndarray, bone: np.ndarray, soft: np.ndarray) -> float:
    """Coefficient of the true bone image in the least-squares fit ``image ~ c0 + cb * bone + cs * soft``.

    The soft-tissue regressor keeps the anatomy that bone and soft share (body outline) from counting as bone.
    """
    x, b = _pair(image, bone)
    _, s = _pair(image, soft)
    design = np.stack([np.ones(b.size), b.ravel(), s.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design, x.ravel(), rcond=None)
    return float(coef[1])


def bone_suppression(pred_soft: np.ndarray, se: np.ndarray, true_bone: np.ndarray, true_soft: np.ndarray) -> float:
    """Fraction of the SE image's bone signal that is gone from the predicted soft image.

    ``1 - |bone_content(pred_soft)| / |bone_content(se)|``: 1 when the prediction holds no more bone than the
    true soft image (whose bone content is 0 by construction), 0 when it holds as much as SE, negative when
    more. NaN when SE carries no bone signal.
    """
    ref = bone_content(se, true_bone, true_soft)
    if abs(ref) < 1e-12:
        return math.nan
    return 1.0 - abs(bone_content(pred_soft, true_bone, true_soft)) / abs(ref)


def bone_suppression_ratio(pred_soft: np.ndarray, se: np.ndarray, true_bone: np.ndarray, true_soft: np.ndarray,
                           no_bone: float = 0.0) -> float:
    """The bone suppression ratio of the bone-suppression literature (Yang et al. 2017 and later):
    ``1 - sum((S_pred - S)^2) / sum(B^2)``, with the soft error and the bone image B both in the SE image's units,
    as they are in a radiograph that is the sum of its soft-tissue and bone images.

    Here the SE image is ``a + kb * bone + ks * soft`` (fitted per view, `dexrt.runtime.contract.decomposition`), so the
    soft error counts as ``ks * (S_pred - S)`` and the bone image as ``kb * (bone - no_bone)``, where `no_bone` is
    the value of an image without bone (0 g/cm^2 in the images' units). NaN without bone signal.
    """
    from dexrt.runtime.contract import decomposition

    _, kb, ks = decomposition(se, true_bone, true_soft)
    signal = float(np.sum((kb * (np.asarray(true_bone, np.float64) - no_bone)) ** 2))
    if signal < 1e-20:
        return math.nan
    residual = float(np.sum((ks * (np.asarray(pred_soft, np.float64) - true_soft)) ** 2))
    return 1.0 - residual / signal


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by a (2*steps+1)^2 square: chessboard distance <= steps."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[1:, 1:] |= out[:-1, :-1]
        grown[1:, :-1] |= out[:-1, 1:]
        grown[:-1, 1:] |= out[1:, :-1]
        grown[:-1, :-1] |= out[1:, 1:]
        out = grown
    return out


def background_ring(mask: np.ndarray, gap: int = CNR_GAP, ring: int = CNR_RING) -> np.ndarray:
    """Pixels whose chessboard distance to the mask is in (gap, ring]: local background, clear of the edge."""
    m = np.asarray(mask, bool)
    return _dilate(m, ring) & ~_dilate(m, gap)


def cnr(image: np.ndarray, mask: np.ndarray, gap: int = CNR_GAP, ring: int = CNR_RING) -> float:
    """Lesion contrast-to-noise ratio: ``|mean(lesion) - mean(ring)| / std(ring)``.

    The ring is the local background around the mask (see `background_ring`); NaN when the mask or the ring is
    empty or the ring has no variation.
    """
    img = np.asarray(image, np.float64)
    m = np.asarray(mask, bool)
    if img.shape != m.shape:
        raise ValueError(f"image {img.shape} and mask {m.shape} differ in shape")
    bg = background_ring(m, gap, ring)
    if not m.any() or bg.sum() < 2:
        return math.nan
    sd = float(img[bg].std())
    if sd == 0:
        return math.nan
    return abs(float(img[m].mean()) - float(img[bg].mean())) / sd


def view_metrics(se: np.ndarray, true: np.ndarray, pred: np.ndarray, mask: np.ndarray | None,
                 channels: tuple[str, ...] = ("bone", "soft")) -> dict[str, float]:
    """All metrics of one view. se (H, W), true/pred (C, H, W), all in [0, 1]; mask (H, W) bool or None."""
    out: dict[str, float] = {}
    for c, name in enumerate(channels):
        out[f"{name}/psnr"] = psnr(pred[c], true[c])
        out[f"{name}/ssim"] = ssim(pred[c], true[c])
        out[f"{name}/mae"] = mae(pred[c], true[c])
    if "bone" in channels and "soft" in channels:
        b, s = channels.index("bone"), channels.index("soft")
        out["bone_suppression"] = bone_suppression(pred[s], se, true[b], true[s])
        # 0 g/cm^2 of bone in the metric units the images are in
        out["bone_suppression_ratio"] = bone_suppression_ratio(pred[s], se, true[b], true[s],
                                                               float(metric_unit(np.zeros(1), "bone")[0]))
        if mask is not None and np.any(mask):
            out["cnr/se"] = cnr(se, mask)
            out["cnr/soft_true"] = cnr(true[s], mask)
            out["cnr/soft_pred"] = cnr(pred[s], mask)
    return out


def mean_metrics(per_view: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over the views that have it (NaN values skipped; inf PSNR kept as inf)."""
    keys = sorted({k for m in per_view for k in m})
    out: dict[str, float] = {}
    for k in keys:
        values = [m[k] for m in per_view if k in m and not math.isnan(m[k])]
        if values:
            out[k] = float(np.mean(values))
    return out


def scored_view(se: np.ndarray, true: dict[str, np.ndarray], pred: dict[str, np.ndarray], mask: np.ndarray | None
                ) -> tuple[dict[str, float], np.ndarray]:
    """One view's metrics and its panel row, from physical images (se, and bone/soft true and predicted)."""
    channels = tuple(true)
    se_u = metric_unit(se, "se")
    true_u = np.stack([metric_unit(true[c], c) for c in channels])
    pred_u = np.stack([metric_unit(pred[c], c) for c in channels])
    row = np.concatenate([_display(se_u)] + [_display(a) for c in range(len(channels)) for a in (true_u[c], pred_u[c])],
                         axis=1)
    return view_metrics(se_u, true_u, pred_u, mask, channels), row


def summarize(per_view: list[dict[str, float]]) -> dict[str, float]:
    """Mean metrics over views, with the tumour CNR of the predicted soft image relative to the true one."""
    out = mean_metrics(per_view)
    if "cnr/soft_true" in out and "cnr/soft_pred" in out:
        out["cnr/soft_pred_over_true"] = out["cnr/soft_pred"] / out["cnr/soft_true"]
    return out


def _display(a: np.ndarray) -> np.ndarray:
    """A panel tile: the image stretched over its own 0.5-99.5 percentiles onto [0, 1]."""
    lo, hi = np.percentile(a, [0.5, 99.5])
    return np.clip((a - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0)


def write_panel(path: str | os.PathLike[str], rows: list[np.ndarray]) -> None:
    """Rows of SE | true bone | pred bone | true soft | pred soft, each in [0, 1] -> 16-bit PNG (atomic)."""
    from dexrt.io.images import write_image

    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows]
    image = np.clip(np.concatenate(rows, axis=0), 0.0, 1.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.rint(image * 65535).astype(np.uint16),
                {"panel": "rows of views; columns: se | true bone | pred bone | true soft | pred soft"})
