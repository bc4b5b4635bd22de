"""The ``blur`` task: convolution with a kernel (Gaussian from a suite), d = A x + noise."""

from __future__ import annotations

import math
import weakref
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from strategies import Param

from . import Task, register_task


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


class BlurTask(Task):
    """Convolution with a fixed kernel, zero 'same' padding, applied to each channel alone.

    ``A`` is a cross-correlation (torch's conv2d) and ``A_adjoint`` its exact transpose, for any
    kernel, symmetric or not: with stride 1 and symmetric 'same' padding of an odd kernel, the
    transpose is the correlation with the flipped kernel. (conv_transpose2d computes the same
    thing but is several times slower on CPUs, and the adjoint runs in every layer evaluation.)
    ``||A||_2 <= sum |k|`` (Young's inequality): 1 for a non-negative kernel that sums to 1.
    """

    naive_label = "blurred input"

    def __init__(self, kernel: torch.Tensor, noise_std: float = 0.01):
        super().__init__(noise_std)
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

    @classmethod
    def from_config(cls, config: Any) -> BlurTask:
        return GaussianBlur(config.kernel_size, config.sigma, config.noise_std)

    @property
    def norm_bound(self) -> float:
        """sum |k| (Young's inequality), for every image size."""
        return float(self.kernel.abs().sum())

    @property
    def has_normal_solve(self) -> bool:
        return _is_plain_blur(self) and _separable_taps(self.kernel) is not None

    def fast_operator(self, x: torch.Tensor) -> Any:
        """For a separable kernel, A as two small matmuls per image (:class:`_SeparableBlur`):
        the same linear map, ~10x faster than float64 convolutions on CPUs."""
        plan = _separable_plan(self, x)
        return self if plan is None else plan

    def naive(self, d: torch.Tensor) -> torch.Tensor:
        """The blurred measurements themselves, clamped to [0, 1]."""
        return d.clamp(0, 1)

    def setting_columns(self) -> dict[str, Any]:
        # an arbitrary kernel has no sigma; a GaussianBlur's is its attribute
        sigma = getattr(self, "sigma", math.nan)
        return {"blur_kernel_size": int(self.kernel.shape[0]), "blur_sigma": sigma}

    def normal_solve(self, y: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
        """(A^T A + lam I)^-1 y, exactly, for a separable kernel (every Gaussian); lam > 0.

        Differentiable in ``y`` and ``lam``. Four small matmuls per image in the singular bases of
        the two 1-D factors of A (see :class:`_SeparableBlur`). A non-separable kernel is a
        ValueError: it would need an iterative solve, whose error the prox-form layer's
        contraction argument does not cover.
        """
        plan = _separable_plan(self, y)
        if plan is None:
            raise ValueError(
                f"normal_solve needs a separable kernel (rank 1), got {self!r}; "
                "use the gradient-step layer (model form 'grad') for this operator"
            )
        y_hat = plan.Vh.T @ y @ plan.Vw
        return plan.Vh @ (y_hat / (plan.sigma.pow(2) + lam)) @ plan.Vw.T

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_shape={tuple(self.kernel.shape)})"


# ------------------------------------------------------------------------------------------
# Exact solves with A^T A + lam I for separable blurs (the prox-form layer and the baselines).


def _is_plain_blur(operator) -> bool:
    """A ``BlurTask`` whose A / A^T are the stock convolutions (so its kernel describes it)."""
    cls = type(operator)
    return (
        isinstance(operator, BlurTask)
        and cls.A is BlurTask.A
        and cls.A_adjoint is BlurTask.A_adjoint
    )


def _separable_taps(kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(u, v) with kernel == outer(u, v) to float64 round-off, or None if not separable."""
    k = kernel.to(torch.float64).cpu()
    U, S, Vh = torch.linalg.svd(k)
    if S[0] == 0 or (S.numel() > 1 and S[1] > 1e-13 * S[0]):
        return None
    u, v = U[:, 0] * S[0].sqrt(), Vh[0] * S[0].sqrt()
    if not torch.allclose(torch.outer(u, v), k, rtol=0, atol=1e-14 * float(k.abs().max())):
        return None
    return u, v


def _band_matrix(taps: torch.Tensor, n: int, pad: int) -> torch.Tensor:
    """The n x n matrix of 1-D cross-correlation with ``taps`` and zero 'same' padding."""
    i = torch.arange(n)
    off = i[None, :] - i[:, None] + pad  # M[i, j] = taps[j - i + pad]
    valid = (off >= 0) & (off < taps.numel())
    return torch.where(valid, taps[off.clamp(0, taps.numel() - 1)], torch.zeros(()))


class _SeparableBlur(NamedTuple):
    """A plain separable ``BlurTask`` on H x W images as 1-D matrices, with their SVDs.

    A X = Mh X Mw^T for every (H, W) slice X. With Mh = Uh diag(s_h) Vh^T and
    Mw = Uw diag(s_w) Vw^T, A^T A + lam I = (Vh (x) Vw) diag(sigma^2 + lam) (Vh (x) Vw)^T with
    sigma[i, j] = s_h[i] s_w[j]: solving it is four small matmuls and a division, exact up to
    round-off. Everything is computed in float64, then stored in the images' dtype and device.

    Accuracy: the transforms are orthogonal, so the only amplification of round-off is the
    filter sigma / (sigma^2 + lam) <= 1 / (2 sqrt(lam)), i.e. <= 500 for the direct inverse's
    lam = 1e-6: ~1e-13 relative error in float64 and ~1e-4 in float32, both far below the
    effects measured (the noise itself is amplified up to that same 500x). The tests check it
    against a dense float64 solve to 1e-8.
    """

    Mh: torch.Tensor
    Mw: torch.Tensor
    Uh: torch.Tensor
    Vh: torch.Tensor
    Uw: torch.Tensor
    Vw: torch.Tensor
    sigma: torch.Tensor

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self.Mh @ x @ self.Mw.T

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.Mh.T @ y @ self.Mw

    def AtA(self, x: torch.Tensor) -> torch.Tensor:
        return self.A_adjoint(self.A(x))


# operator -> {(H, W, dtype, device): plan}; weak, so that cached plans die with the operator
_PLAN_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _separable_plan(operator, x: torch.Tensor) -> _SeparableBlur | None:
    """The matrix form of a plain separable ``BlurTask`` for images like ``x``, else None."""
    if not _is_plain_blur(operator):
        return None
    per_op = _PLAN_CACHE.setdefault(operator, {})
    key = (tuple(x.shape[-2:]), x.dtype, x.device)
    if key not in per_op:
        taps = _separable_taps(operator.kernel)
        if taps is None:
            per_op[key] = None
        else:
            (u, v), (ph, pw), (H, W) = taps, operator.padding, x.shape[-2:]
            Mh, Mw = _band_matrix(u, H, ph), _band_matrix(v, W, pw)
            Uh, sh, VhT = torch.linalg.svd(Mh)
            Uw, sw, VwT = torch.linalg.svd(Mw)
            mats = (Mh, Mw, Uh, VhT.T, Uw, VwT.T, torch.outer(sh, sw))
            per_op[key] = _SeparableBlur(*(m.to(dtype=x.dtype, device=x.device) for m in mats))
    return per_op[key]


@register_task("blur")
class GaussianBlur(BlurTask):
    """Gaussian blur (default 5x5, sigma 1.0, as in the reference work) with noise_std 0.01."""

    settings = {
        "kernel_size": Param(5, ge=1, le=255, doc="side of the Gaussian kernel (odd)"),
        "sigma": Param(1.0, gt=0, doc="standard deviation of the Gaussian kernel, in pixels"),
    }
    columns = {"kernel_size": "blur_kernel_size", "sigma": "blur_sigma"}

    def __init__(self, kernel_size: int = 5, sigma: float = 1.0, noise_std: float = 0.01):
        super().__init__(gaussian_kernel(kernel_size, sigma), noise_std)
        self.kernel_size, self.sigma = kernel_size, sigma

    def __repr__(self) -> str:
        return (
            f"GaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma}, "
            f"noise_std={self.noise_std})"
        )
