"""The training losses: pix2pix's GAN term and the structure terms of the default recipe (MS-SSIM, Laplacian
pyramid, neighbour differences, the parts' sum). Each takes (B, C, h, w) tensors in the network's [-1, 1] units
and returns a scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dexrt_train.config import SOFT_OFFSET


def consistency_l1(se: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean L1 of SE - (bone + soft) of normalised (B, 1, h, w) inputs and (B, 2, h, w) outputs, in window units."""
    return (pred[:, 1:2] - (se - pred[:, 0:1] + SOFT_OFFSET)).abs().mean()


# Wang, Simoncelli & Bovik, "Multi-scale structural similarity for image quality assessment" (2003): per-scale
# exponents, the last scale's also for luminance. Gaussian window of 11 px, sigma 1.5, as for SSIM.
_MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """MS-SSIM of (B, C, h, w) pairs on [-1, 1] windows (data range 2), averaged over batch and channels. Scales
    that no longer hold the 11 px window are left out and the exponents of the others renormalised; negative
    contrast-structure terms are clamped to a small positive value so the power stays defined."""
    channels = pred.shape[1]
    g = torch.exp(-((torch.arange(11, dtype=pred.dtype, device=pred.device) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(channels, 1, 11, 11).contiguous()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    scales = [w for i, w in enumerate(_MSSSIM_WEIGHTS) if min(pred.shape[-2:]) >= 11 * 2**i]
    weights = torch.tensor(scales, dtype=pred.dtype, device=pred.device)
    weights = weights / weights.sum()
    terms = []
    for i in range(len(scales)):
        mu_p, mu_t = blur(pred), blur(target)
        var_p = blur(pred * pred) - mu_p**2
        var_t = blur(target * target) - mu_t**2
        cov = blur(pred * target) - mu_p * mu_t
        cs = ((2 * cov + c2) / (var_p + var_t + c2)).mean(dim=(-2, -1))
        if i == len(scales) - 1:
            lum = ((2 * mu_p * mu_t + c1) / (mu_p**2 + mu_t**2 + c1)).mean(dim=(-2, -1))
            cs = cs * lum
        terms.append(cs.clamp(min=1e-4))
        pred, target = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2)
    return torch.prod(torch.stack(terms) ** weights[:, None, None], dim=0).mean()


def laplacian_l1(pred: torch.Tensor, target: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """Mean over `levels` band-pass images (x - up(down(x)), 2x2 averages down, bilinear up) of their L1
    distance: (B, C, h, w) pairs -> scalar. Each band weighs the same, so fine and coarse structure count alike."""
    total = pred.new_zeros(())
    for _ in range(levels):
        if min(pred.shape[-2:]) < 2:
            break
        low_p, low_t = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2)
        band_p = pred - F.interpolate(low_p, size=pred.shape[-2:], mode="bilinear", align_corners=False)
        band_t = target - F.interpolate(low_t, size=target.shape[-2:], mode="bilinear", align_corners=False)
        total = total + (band_p - band_t).abs().mean()
        pred, target = low_p, low_t
    return total / levels


def gradient_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance of the horizontal and vertical neighbour differences: (B, C, h, w) pairs -> scalar."""
    dx = (pred[..., :, 1:] - pred[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])
    dy = (pred[..., 1:, :] - pred[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])
    return 0.5 * (dx.abs().mean() + dy.abs().mean())

def gan_loss(logits: torch.Tensor, real: bool, mode: str) -> torch.Tensor:
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)
