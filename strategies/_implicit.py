"""Shared machinery for strategies that replace the backward pass by a linear solve.

``implicit_output(f, z_star, adjoint)`` returns f(z*) attached to the parameters' graph; its
backward receives g = dl/dz and passes ``adjoint(jac, g)`` on through f(z*), so the parameters
get v^T df/dtheta. For the exact implicit gradient, v solves (I - J)^T v = g with J = df/dz at z*.
"""

from __future__ import annotations

import torch
from torch.func import jvp, vjp


class Jacobian:
    """Products with J = df/dz at z*, built with torch.func: ``J(u)`` = J u, ``J.T(u)`` = J^T u."""

    def __init__(self, f, z_star: torch.Tensor):
        self.f, self.z_star = f, z_star
        _, self._vjp = vjp(f, z_star)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return jvp(self.f, (self.z_star,), (u,))[1]

    def T(self, u: torch.Tensor) -> torch.Tensor:
        return self._vjp(u)[0]


class _AdjointBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z_out, z_star, f, adjoint):
        ctx.f, ctx.adjoint = f, adjoint
        ctx.save_for_backward(z_star)  # saved, so it counts in saved-bytes measurements
        return z_out.view_as(z_out)

    @staticmethod
    def backward(ctx, grad):
        (z_star,) = ctx.saved_tensors
        return ctx.adjoint(Jacobian(ctx.f, z_star), grad), None, None, None


def implicit_output(f, z_star: torch.Tensor, adjoint) -> torch.Tensor:
    """f(z*) whose incoming gradient g is replaced by ``adjoint(jacobian, g)`` in backward."""
    z_star = z_star.detach()
    return _AdjointBackward.apply(f(z_star), z_star, f, adjoint)


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner products (dim 0 is the batch), shaped to broadcast against ``a``.

    Tensors of fewer than 2 dims are one system.
    """
    if a.ndim < 2:
        return (a * b).sum()
    return (a * b).flatten(1).sum(1).view(-1, *([1] * (a.ndim - 1)))
