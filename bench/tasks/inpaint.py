"""The ``inpaint`` task: a seeded random pixel mask, d = M x + noise."""

from __future__ import annotations

import math
from typing import Any

import torch

from strategies import Param

from . import Task, register_task


@register_task("inpaint")
class InpaintTask(Task):
    """Keep a random fraction of the pixels: A x = m * x with a fixed 0/1 mask m.

    The mask is drawn per image size (H, W) from ``seed``: exactly ``round(keep_fraction * H * W)``
    pixels are kept, the same pixels in every channel and every image, so it is one fixed
    operator, as a blur is; a fraction that keeps no pixel of the images is a ValueError
    (:meth:`check_image_size`: found when the suite is loaded). A is diagonal with entries 0
    and 1: self-adjoint, A^T A = A, ``||A||_2 = 1``, and (A^T A + lam I)^-1 is the elementwise division by m + lam.
    Measurements get the same white noise on every pixel as the blur's; the masked-out pixels
    of d are pure noise, which A^T = A discards.
    """

    naive_label = "masked input"
    settings = {
        "mask_keep_fraction": Param(
            0.5, gt=0, le=1, doc="share of the pixels kept (at least one per image)"
        ),
        "mask_seed": Param(0, ge=0, doc="seed of the random mask"),
    }

    def __init__(self, keep_fraction: float = 0.5, seed: int = 0, noise_std: float = 0.01):
        super().__init__(noise_std)
        if not (
            isinstance(keep_fraction, (int, float))
            and not isinstance(keep_fraction, bool)
            and math.isfinite(keep_fraction)
            and 0 < keep_fraction <= 1
        ):
            raise ValueError(f"mask keep_fraction must be in (0, 1], got {keep_fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"mask seed must be an int >= 0, got {seed!r}")
        self.keep_fraction, self.seed = float(keep_fraction), seed
        self._masks: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, config: Any) -> InpaintTask:
        return cls(config.mask_keep_fraction, config.mask_seed, config.noise_std)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The 0/1 mask for images like ``x`` (B, C, H, W), shape (1, 1, H, W), x's dtype/device.

        Drawn on the CPU from ``seed`` alone, so it is the same on every device and dtype.
        """
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        key = (h, w, x.dtype, x.device)
        m = self._masks.get(key)
        if m is None:  # cached per (size, dtype, device): no per-call draw or copy
            self.check_image_size(h, w)
            keep = round(self.keep_fraction * h * w)
            order = torch.randperm(h * w, generator=torch.Generator().manual_seed(self.seed))
            flat = torch.zeros(h * w, dtype=torch.float64)
            flat[order[:keep]] = 1.0
            m = flat.view(1, 1, h, w).to(dtype=x.dtype, device=x.device)
            self._masks[key] = m
        return m

    def check_image_size(self, height: int, width: int) -> None:
        """At least one pixel of a height x width image must be kept: nothing measured leaves
        no reconstruction to learn or compare."""
        if round(self.keep_fraction * height * width) < 1:
            n = height * width
            raise ValueError(
                f"mask_keep_fraction = {self.keep_fraction:g} keeps 0 of the {n} pixels "
                f"of a {height}x{width} image; at least one pixel per image must be kept: "
                f"mask_keep_fraction >= {1 / n:.3g} (1/{n})"
            )

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.mask(y)  # a diagonal 0/1 matrix is its own transpose

    def AtA(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)  # m * m = m

    @property
    def norm_bound(self) -> float:
        """1: the largest entry of the diagonal 0/1 matrix (at least one pixel is kept)."""
        return 1.0

    def normal_solve(self, y: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
        """(A^T A + lam I)^-1 y = y / (m + lam), elementwise: exact, differentiable."""
        return y / (self.mask(y) + lam)

    def naive(self, d: torch.Tensor) -> torch.Tensor:
        """The zero-filled masked input A^T d = m * d, clamped to [0, 1]."""
        return self.A_adjoint(d).clamp(0, 1)

    def setting_columns(self) -> dict[str, Any]:
        return {"mask_keep_fraction": self.keep_fraction, "mask_seed": self.seed}

    def __repr__(self) -> str:
        return (
            f"InpaintTask(keep_fraction={self.keep_fraction}, seed={self.seed}, "
            f"noise_std={self.noise_std})"
        )
