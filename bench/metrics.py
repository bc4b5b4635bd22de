"""Image quality metrics, in one registry: name -> per-image function, label, direction.

``METRICS`` holds PSNR and SSIM (torchmetrics); the result tables have a ``test_<name>``,
``final_test_<name>`` and ``naive_test_<name>`` column for each entry, and this module is the one
place a metric is computed (the baselines choose their lambda by :func:`psnr` too). Adding a
metric is one :func:`register_metric` entry: the report then gives it columns, paired
comparisons, figure panels and observations, and ``implicit-bench report --metric <name>`` makes
it the primary metric (:data:`PRIMARY_METRIC` by default) that rankings and targets use.

All functions take two batches of images of shape (B, C, H, W) with values expected in [0, 1]
(``data_range=1``). Nothing is clamped here: clamp reconstructions to [0, 1] before calling, so that
the metric reports on the images that would actually be shown. Values are returned per image as
float64; a batch score is the mean of the per-image scores, never a PSNR of the MSE pooled over the
batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from .registry import Registry


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``fn(x, y)`` gives one float64 value per image, shape (B,).

    ``label`` names it in tables and sentences ("PSNR"), ``unit`` follows its values ("dB", or
    "" for none), ``decimals`` is how many digits the report shows, and ``higher_is_better``
    says which way "best", "reaches the target" and the Pareto front point.
    """

    name: str
    fn: Callable[[Tensor, Tensor], Tensor]
    label: str
    higher_is_better: bool = True
    unit: str = ""
    decimals: int = 4

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.fn(x, y)

    @property
    def axis_label(self) -> str:
        """The label with its unit, for figure axes and table headers: "PSNR (dB)"."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def format(self, value: float, signed: bool = False, unit: bool = False) -> str:
        """``value`` with the metric's decimals (``+`` sign when ``signed``, unit when ``unit``)."""
        text = f"{value:{'+' if signed else ''}.{self.decimals}f}"
        return f"{text} {self.unit}" if unit and self.unit else text

    def oriented(self, values):
        """``values`` turned so that larger is better (negated for a lower-is-better metric):
        rank, take the best (max) or compare with a target (>=) on the result."""
        return values if self.higher_is_better else -values


METRICS: Registry[Metric] = Registry("metric")
# The metric the report ranks, compares and sets its target in, unless the user names another
# (``implicit-bench report --metric``); every registered metric still gets its columns.
PRIMARY_METRIC = "psnr"


def register_metric(
    name: str, label: str, higher_is_better: bool = True, *, unit: str = "", decimals: int = 4
):
    """Decorator: register a per-image metric function ``fn(x, y) -> (B,)`` under ``name``.

    ``label``, ``unit`` and ``decimals`` are how the report shows it; ``higher_is_better`` which
    way is better (see :class:`Metric`).
    """
    if isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 0:
        raise ValueError(f"metric decimals must be an int >= 0, got {decimals!r}")

    def add(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
        METRICS.register(name)(Metric(name, fn, label, higher_is_better, unit, decimals))
        return fn

    return add


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


@register_metric("psnr", "PSNR", unit="dB", decimals=2)
def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB, shape (B,), float64, with data range 1.

    ``10 * log10(1 / mse)`` with the MSE over each image's C*H*W values. Inputs are expected in
    [0, 1] and are not clamped (clamp reconstructions first). Identical images give ``inf``.
    Computed in float64; symmetric in ``x`` and ``y``.
    """
    _check_pair(x, y)
    x, y = x.to(torch.float64), y.to(torch.float64)
    return peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))


@register_metric("ssim", "SSIM", decimals=4)
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


# Values (images x channels x pixels) scored in one call by mean_metrics: SSIM's Gaussian filter
# holds about a dozen float32 copies of what it is given, so 2**22 values keep a call near
# 200 MiB however many images a set has (one call on 20 test images of 1024x1024 RGB asked 10 GB).
METRIC_CHUNK_VALUES = 2**22


def mean_metrics(x: Tensor, y: Tensor, chunk_values: int = METRIC_CHUNK_VALUES) -> dict[str, float]:
    """Every registered metric's mean over the batch of per-image values, as Python floats.

    The batch is scored in chunks of whole images of at most ``chunk_values`` values (at least
    one image each), so memory stays bounded whatever the number of images; the per-image
    values, hence the means, are those of one call on the whole batch.
    """
    if isinstance(chunk_values, bool) or not isinstance(chunk_values, int) or chunk_values < 1:
        raise ValueError(f"chunk_values must be an int >= 1, got {chunk_values!r}")
    _check_pair(x, y)
    per_chunk = max(1, chunk_values // x[0].numel())
    values: dict[str, list[Tensor]] = {name: [] for name in METRICS}
    for start in range(0, len(x), per_chunk):
        xs, ys = x[start : start + per_chunk], y[start : start + per_chunk]
        for name, metric in METRICS.items():
            values[name].append(metric(xs, ys))
    return {name: torch.cat(v).mean().item() for name, v in values.items()}
