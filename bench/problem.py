"""The inverse problem: a blur operator A with its exact adjoint, and noisy measurements d = A x + e."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(kernel_size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """A normalised (sum 1) isotropic Gaussian kernel of shape (kernel_size, kernel_size), float64."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (centred kernel), got {kernel_size}")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    r = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    g = torch.exp(-(r**2) / (2.0 * sigma**2))
    k = torch.outer(g, g)
    return k / k.sum()


class Blur:
    """Convolution with a fixed kernel, zero 'same' padding, applied to each channel alone.

    ``A`` is a cross-correlation (torch's conv2d) and ``A_adjoint`` its exact transpose, for any
    kernel, symmetric or not: with stride 1 and symmetric 'same' padding of an odd kernel, the
    transpose is the correlation with the flipped kernel. (conv_transpose2d computes the same
    thing but is several times slower on CPUs, and the adjoint runs in every layer evaluation.) With a
    non-negative kernel that sums to 1, ``||A||_2 <= 1`` (Young's inequality), which the model's
    contraction argument relies on.
    """

    def __init__(self, kernel: torch.Tensor):
        if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ValueError(f"kernel must be 2-D with odd sides, got shape {tuple(kernel.shape)}")
        self.kernel = kernel.detach().to(torch.float64)
        self.padding = (kernel.shape[0] // 2, kernel.shape[1] // 2)
        self._weights: dict[tuple, torch.Tensor] = {}

    def _weight(self, x: torch.Tensor, flipped: bool = False) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
        key = (x.shape[1], x.dtype, x.device, flipped)
        w = self._weights.get(key)
        if w is None:  # cache per (channels, dtype, device): no per-call conversion or copy
            k = self.kernel.flip(0, 1) if flipped else self.kernel
            w = k.to(dtype=x.dtype, device=x.device).expand(x.shape[1], 1, *k.shape).contiguous()
            self._weights[key] = w
        return w

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Blur: (B, C, H, W) -> (B, C, H, W)."""
        return F.conv2d(x, self._weight(x), padding=self.padding, groups=x.shape[1])

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact adjoint of :meth:`A`."""
        w = self._weight(y, flipped=True)
        return F.conv2d(y, w, padding=self.padding, groups=y.shape[1])

    def AtA(self, x: torch.Tensor) -> torch.Tensor:
        """The normal operator A^T A."""
        return self.A_adjoint(self.A(x))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_shape={tuple(self.kernel.shape)})"


class GaussianBlur(Blur):
    """Gaussian blur (default 5x5, sigma 1.0, as in the reference work)."""

    def __init__(self, kernel_size: int = 5, sigma: float = 1.0):
        super().__init__(gaussian_kernel(kernel_size, sigma))
        self.kernel_size, self.sigma = kernel_size, sigma

    def __repr__(self) -> str:
        return f"GaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma})"


class DeblurProblem:
    """Measurements d = A x + noise_std * e, e ~ N(0, I), for images x in [0, 1]."""

    def __init__(self, operator: Blur, noise_std: float = 0.01):
        if not (
            isinstance(noise_std, (int, float)) and math.isfinite(noise_std) and noise_std >= 0
        ):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        self.operator = operator
        self.noise_std = float(noise_std)

    def measure(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Blur ``x`` and add Gaussian noise drawn from ``generator`` (reproducible when seeded).

        The noise is drawn on the CPU and moved, so a seed gives the same data on every device.
        """
        d = self.operator.A(x)
        if self.noise_std > 0:
            e = torch.randn(x.shape, generator=generator, dtype=torch.float64)
            d = d + self.noise_std * e.to(dtype=x.dtype, device=x.device)
        return d
