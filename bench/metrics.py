"""Image quality: per-image PSNR and SSIM (torchmetrics), and their means over a batch.

All functions take two batches of images of shape (B, C, H, W) with values expected in [0, 1]
(``data_range=1``). Nothing is clamped here: clamp reconstructions to [0, 1] before calling, so that
the metric reports on the images that would actually be shown. Values are returned per image as
float64; a batch score is the mean of the per-image scores, never a PSNR of the MSE pooled over the
batch.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

SSIM_SIGMA = 1.5
# Side of the Gaussian window torchmetrics derives from sigma: 2 * int(3.5 * 1.5 + 0.5) + 1.
SSIM_WINDOW = 11


def _check_pair(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError(f"expected two tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of shape (B, C, H, W), got {tuple(x.shape)}")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(
            f"expected floating-point images in [0, 1], got dtypes {x.dtype} and {y.dtype}"
        )


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB, shape (B,), float64, with data range 1.

    ``10 * log10(1 / mse)`` with the MSE over each image's C*H*W values. Inputs are expected in
    [0, 1] and are not clamped (clamp reconstructions first). Identical images give ``inf``.
    Computed in float64; symmetric in ``x`` and ``y``.
    """
    _check_pair(x, y)
    x, y = x.to(torch.float64), y.to(torch.float64)
    return peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image SSIM, shape (B,), float64, with data range 1 (``x`` prediction, ``y`` target).

    torchmetrics' ``structural_similarity_index_measure`` with its defaults: 11x11 Gaussian window
    (sigma 1.5), K1 = 0.01, K2 = 0.03, population covariances, channels averaged. Inputs are
    expected in [0, 1] and are not clamped (clamp reconstructions first). Computed in the inputs'
    precision, at least float32: float64 convolutions are several times slower on CPUs, and the
    float32 result differs by ~1e-7.

    The SSIM map is averaged over the interior where the 11x11 window fits (a 5-pixel border is
    dropped), as scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)`` and Wang et al.'s reference code do; the interior
    values are identical, so the means agree to float precision. torchmetrics' own mean covers
    the reflect-padded border too, which on 25x25 images moved SSIM by -0.14 to +0.11.

    Raises:
        ValueError: on a shape mismatch, a non-4-D input, or images smaller than the 11x11
            window (the window would then consist mostly of reflected padding).
    """
    _check_pair(x, y)
    h, w = x.shape[-2:]
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (its Gaussian "
            f"window), got {h}x{w}"
        )
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    _, ssim_map = structural_similarity_index_measure(
        x.to(dtype),
        y.to(dtype),
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        data_range=1.0,
        reduction="none",
        return_full_image=True,
    )
    pad = SSIM_WINDOW // 2
    return ssim_map[..., pad:-pad, pad:-pad].flatten(1).mean(1).to(torch.float64)


def mean_psnr_ssim(x: Tensor, y: Tensor) -> tuple[float, float]:
    """Means over the batch of the per-image PSNR and SSIM, as Python floats."""
    return psnr(x, y).mean().item(), ssim(x, y).mean().item()
