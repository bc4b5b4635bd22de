"""The implicit deblurring network (the reference work's DE-GRAD layer).

T(x) = x - eta * (A^T (A x - d) + R(x)),   R(x) = alpha * (x - D(x)),

with D a small CNN whose convolutions are spectrally normalised and whose output is scaled by
``lipschitz`` < 1, and eta, alpha > 0 learnable (alpha is the write-up's regularisation weight).
Writing the learned regulariser gradient as alpha (I - D) (the "regularisation by denoising" form)
is what makes T a contraction: with ||A|| <= 1 and eta (1 + 2 alpha) <= 2,
||dT/dx|| <= 1 - eta * alpha * (1 - Lip(D)) < 1. A bare CNN R, as in the write-up, has no such
bound. eta < ETA_MAX and alpha < ALPHA_MAX keep eta (1 + 2 alpha) < 2.

Caveat: torch's spectral norm normalises each kernel reshaped to a matrix, which is the standard
practice but not a bound on the convolution's operator norm; tests measure ||dT/dx|| by power
iteration, and every run records the solver's convergence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .problem import Blur

ETA_MAX = 0.5
ALPHA_MAX = 1.5  # with ETA_MAX: eta * (1 + 2 alpha) < 2, where the contraction bound holds


class Denoiser(nn.Module):
    """D: ``depth`` 3x3 spectrally normalised convolutions with ReLUs, output scaled by ``lipschitz``."""

    def __init__(self, channels: int = 1, width: int = 32, depth: int = 3, lipschitz: float = 0.9):
        super().__init__()
        for name, value in (("channels", channels), ("width", width), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model {name} must be an int >= 1, got {value!r}")
        if not (isinstance(lipschitz, (int, float)) and 0 < lipschitz < 1):
            raise ValueError(f"model lipschitz must be in (0, 1), got {lipschitz!r}")
        sizes = [channels] + [width] * (depth - 1) + [channels]
        self.convs = nn.ModuleList(
            spectral_norm(nn.Conv2d(c_in, c_out, 3, padding=1))
            for c_in, c_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.lipschitz = float(lipschitz)

    def weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised (weight, bias) of each conv, read once.

        Reading ``conv.weight`` runs one spectral-norm power iteration in training mode, so it is
        done once per layer construction, never inside the fixed-point loop: T must stay the same
        function while it is solved and differentiated.
        """
        return [(conv.weight, conv.bias) for conv in self.convs]

    @staticmethod
    def apply(weights, lipschitz: float, x: torch.Tensor) -> torch.Tensor:
        for i, (w, b) in enumerate(weights):
            x = F.conv2d(x, w, b, padding=1)
            if i < len(weights) - 1:
                x = F.relu(x)
        return lipschitz * x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(self.weights(), self.lipschitz, x)


class DeblurDEQ(nn.Module):
    """Implicit deblurring network: x* = T(x*), solved from x0 = A^T d."""

    def __init__(
        self,
        operator: Blur,
        channels: int = 1,
        width: int = 32,
        depth: int = 3,
        eta: float = 0.3,
        alpha: float = 0.05,
        lipschitz: float = 0.9,
    ):
        super().__init__()
        for name, value, top in (("eta", eta, ETA_MAX), ("alpha", alpha, ALPHA_MAX)):
            if not (isinstance(value, (int, float)) and 0 < value < top):
                raise ValueError(f"model {name} must be in (0, {top}), got {value!r}")
        self.operator = operator
        self.denoiser = Denoiser(channels, width, depth, lipschitz)
        # x = top * sigmoid(raw): learnable, positive and bounded.
        self.eta_raw = nn.Parameter(torch.tensor(math.log(eta / (ETA_MAX - eta))))
        self.alpha_raw = nn.Parameter(torch.tensor(math.log(alpha / (ALPHA_MAX - alpha))))

    @property
    def eta(self) -> torch.Tensor:
        return ETA_MAX * torch.sigmoid(self.eta_raw)

    @property
    def alpha(self) -> torch.Tensor:
        return ALPHA_MAX * torch.sigmoid(self.alpha_raw)

    def initial_iterate(self, d: torch.Tensor) -> torch.Tensor:
        """x0 = A^T d (no graph)."""
        with torch.no_grad():
            return self.operator.A_adjoint(d)

    def make_layer(self, d: torch.Tensor):
        """Return f: z -> T(z) for the measurements ``d``.

        Everything that does not depend on z (A^T d, eta, the normalised weights) is computed here
        once, with its graph to the parameters, and captured by the closure.
        """
        op, lip = self.operator, self.denoiser.lipschitz
        atd = op.A_adjoint(d).to(d.dtype)
        eta, alpha = self.eta.to(d.dtype), self.alpha.to(d.dtype)
        weights = [(w.to(d.dtype), b.to(d.dtype)) for w, b in self.denoiser.weights()]

        def f(z: torch.Tensor) -> torch.Tensor:
            r = op.AtA(z) - atd + alpha * (z - Denoiser.apply(weights, lip, z))
            return z - eta * r

        return f

    def forward(self, d: torch.Tensor, strategy, solver):
        """Reconstruct from ``d`` with a gradient ``strategy`` and forward ``solver``: (x, info)."""
        return strategy(self.make_layer(d), self.initial_iterate(d), solver)
