"""Unrolled k-layer network: k differentiable applications of f from z0, ordinary backprop."""

import torch

from strategies import Param, Strategy, register
from strategies._implicit import batch_dot


@register
class Unrolled(Strategy):
    """Backprop through k iterations of f; no solver, memory grows linearly with k.

    Its output is not a fixed point and its gradient is exact backprop of the k-layer network,
    not an approximate adjoint: no certified adjoint bound (``has_adjoint = False``)."""

    name = "unrolled"
    has_adjoint = False
    cost_params = ("k",)
    parameters = {"k": Param(10, ge=1, le=1000, doc="number of unrolled layers")}

    def __call__(self, f, z0, solver):
        z_prev = z = z0
        for _ in range(self.k):
            z_prev, z = z, f(z)
        with torch.no_grad():  # ||f(z_{k-1}) - z_{k-1}|| / ||f(z_{k-1})||, from iterates we have
            diff = z - z_prev
            rel = (batch_dot(diff, diff) / batch_dot(z, z).clamp_min(1e-30)).sqrt()
        return z, {"forward_iters": float(self.k), "forward_residual": float(rel.max())}
