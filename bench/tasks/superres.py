"""The ``superres`` task: f x f average pooling, d = A x + noise, measurements f times smaller."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from strategies import Param

from . import Task, register_task


@register_task("superres")
class SuperResTask(Task):
    """Super-resolution by an integer ``factor`` f: A averages each f x f block of pixels.

    ``A``: (B, C, H, W) -> (B, C, H/f, W/f), average pooling; H and W must be multiples of f
    (:meth:`check_image_size`). Its exact adjoint spreads each measurement over its block:
    ``A^T`` = nearest-neighbour upsampling / f^2. A A^T = I / f^2 (the blocks are disjoint),
    so ``||A||_2 = 1/f`` exactly and the pseudo-inverse is A^+ = f^2 A^T, nearest-neighbour
    upsampling. A^T A = B / f^2 with B the block-mean projector (each f x f block replaced by
    its mean; B^2 = B), so (A^T A + lam I)^-1 = (I - B) / lam + B / (lam + 1/f^2): exact,
    closed form.

    The naive reconstruction is that pseudo-inverse, clamped: the upsampled input, each
    measurement copied over its block. It is the least-squares image of minimal norm, the
    reconstruction with no prior, as the blurred input is for deblurring; an interpolating
    upsampling (bilinear, bicubic) would already assume smooth images.
    """

    naive_label = "upsampled input"
    settings = {"factor": Param(2, ge=2, le=64, doc="side of the pooled blocks, in pixels")}
    columns = {"factor": "superres_factor"}

    def __init__(self, factor: int = 2, noise_std: float = 0.01):
        super().__init__(noise_std)
        try:
            self.factor = self.settings["factor"].check(factor)
        except ValueError as err:
            raise ValueError(f"superres factor: {err}") from None

    @classmethod
    def from_config(cls, config: Any) -> SuperResTask:
        return cls(config.factor, config.noise_std)

    def check_image_size(self, height: int, width: int) -> None:
        f = self.factor
        if height % f or width % f:
            raise ValueError(
                f"superres factor {f} needs image sides that are multiples of {f}, got a "
                f"{height}x{width} image (set [data] image_size to a multiple of {f}, e.g. "
                f"{max(f, height - height % f)})"
            )

    def _check(self, t: torch.Tensor, what: str) -> None:
        if t.ndim != 4:
            raise ValueError(f"expected {what} of shape (B, C, H, W), got {tuple(t.shape)}")

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Average pooling: (B, C, H, W) -> (B, C, H/f, W/f)."""
        self._check(x, "images")
        self.check_image_size(*x.shape[-2:])  # pooling would drop the remainder silently
        return F.avg_pool2d(x, self.factor)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Nearest-neighbour upsampling / f^2: (B, C, h, w) -> (B, C, f h, f w)."""
        self._check(y, "measurements")
        f = self.factor
        return y.repeat_interleave(f, -2).repeat_interleave(f, -1) / f**2

    def _block_mean(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        return F.avg_pool2d(x, f).repeat_interleave(f, -2).repeat_interleave(f, -1)

    def AtA(self, x: torch.Tensor) -> torch.Tensor:
        return self._block_mean(x) / self.factor**2

    @property
    def norm_bound(self) -> float:
        """1/f, exactly ||A||_2: A A^T = I / f^2."""
        return 1.0 / self.factor

    def normal_solve(self, y: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
        """(A^T A + lam I)^-1 y = (y - B y) / lam + B y / (lam + 1/f^2), B the block mean."""
        self._check(y, "images")
        self.check_image_size(*y.shape[-2:])
        mean = self._block_mean(y)
        return (y - mean) / lam + mean / (lam + 1.0 / self.factor**2)

    def naive(self, d: torch.Tensor) -> torch.Tensor:
        """The upsampled input: f^2 A^T d (nearest-neighbour upsampling), clamped to [0, 1]."""
        return (self.A_adjoint(d) * self.factor**2).clamp(0, 1)

    def __repr__(self) -> str:
        return f"SuperResTask(factor={self.factor}, noise_std={self.noise_std})"
