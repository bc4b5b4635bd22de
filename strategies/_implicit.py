"""Shared machinery for strategies that replace the backward pass by a linear solve.

``implicit_output(f, z_star, adjoint)`` returns f(z*) attached to the parameters' graph; its
backward receives g = dl/dz and passes ``adjoint(jac, g)`` on through f(z*), so the parameters
get v^T df/dtheta. For the exact implicit gradient, v solves (I - J)^T v = g with J = df/dz at z*.
Tensors a strategy keeps for its backward (shine's inverse-Jacobian factors) are passed as
``keep``: they are saved like z* (so saved-bytes measurements count them) and handed to
``adjoint(jac, g, *keep)``.
"""

from __future__ import annotations

import torch

# Callables the harness appends to count J u products (bench.measure.JacobianProducts); J^T u
# products it counts itself, by a hook on the layer's outputs.
JVP_LISTENERS: list = []


class Jacobian:
    """Products with J = df/dz at z*: ``J(u)`` = J u, ``J.T(u)`` = J^T u.

    J^T u is a vector-Jacobian product through one recorded evaluation of f, made on first use
    (a strategy that takes no product, shine without refinement, never evaluates f). J u uses the
    double-backward trick: w -> J^T w is linear, so J u is the vector-Jacobian product of that
    map with u. On the CPU this measured 2.1x faster than forward mode (torch.func.jvp, 13.4 vs
    6.4 ms on the quick suite's layer), and it reuses the same recorded graph. That map's graph
    (one VJP with create_graph) is built on the first ``J(u)``, so a strategy that only needs
    J^T u (neumann, gmres) never pays for it.
    """

    def __init__(self, f, z_star: torch.Tensor):
        self._f, self._z_star = f, z_star
        self._z = self._fz = self._w = self._jt_w = None

    def _record(self) -> None:
        if self._fz is None:
            with torch.enable_grad():
                self._z = self._z_star.detach().requires_grad_()
                self._fz = self._f(self._z)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        self._record()
        if self._jt_w is None:
            with torch.enable_grad():
                self._w = torch.zeros_like(self._fz, requires_grad=True)
                (self._jt_w,) = torch.autograd.grad(self._fz, self._z, self._w, create_graph=True)
        for listener in JVP_LISTENERS:
            listener()
        (ju,) = torch.autograd.grad(self._jt_w, self._w, u, retain_graph=True)
        return ju.detach()

    def T(self, u: torch.Tensor) -> torch.Tensor:
        self._record()
        (jtu,) = torch.autograd.grad(self._fz, self._z, u, retain_graph=True)
        return jtu.detach()


class _AdjointBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z_out, z_star, f, adjoint, *keep):
        ctx.f, ctx.adjoint = f, adjoint
        ctx.save_for_backward(z_star, *keep)  # saved, so they count in saved-bytes measurements
        return z_out.view_as(z_out)

    @staticmethod
    def backward(ctx, grad):
        z_star, *keep = ctx.saved_tensors
        v = ctx.adjoint(Jacobian(ctx.f, z_star), grad, *keep)
        return (v, None, None, None, *(None for _ in keep))


def implicit_output(f, z_star: torch.Tensor, adjoint, keep: tuple = ()) -> torch.Tensor:
    """f(z*) whose incoming gradient g is replaced by ``adjoint(jacobian, g, *keep)`` in
    backward; ``keep``: detached tensors the adjoint needs, saved for backward like z*."""
    z_star = z_star.detach()
    return _AdjointBackward.apply(f(z_star), z_star, f, adjoint, *keep)


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner products (dim 0 is the batch), shaped to broadcast against ``a``.

    Tensors of fewer than 2 dims are one system.
    """
    if a.ndim < 2:
        return (a * b).sum()
    return (a * b).flatten(1).sum(1).view(-1, *([1] * (a.ndim - 1)))
