"""Certified error bars on a strategy's adjoint (issue 19 §2).

Every gradient strategy of a fixed-point layer T passes some v on through f = T at the fixed
point, the gradient being v^T dT/dtheta; the implicit-function-theorem gradient uses v*, the
solution of (I - J)^T v* = g with J = dT/dx and g = dl/dx. With gamma >= ||J|| (the model's
certified contraction bound, :meth:`bench.model.ReconstructionDEQ.contraction_bound`) and the
residual r = g - (I - J)^T v, the Banach lemma gives ||(I - J^T)^-1|| <= 1 / (1 - gamma), so

    ||v - v*|| <= ||r|| / (1 - gamma),   ||v - v*|| / ||v*|| <= (1 + gamma) / (1 - gamma) ||r|| / ||g||

(the second since ||v*|| >= ||g|| / (1 + gamma)). J is block diagonal over a batch, so this holds
for each sample; the bound recorded is the worst sample's, which also bounds the relative error
of the whole batch (sum ||r_b||^2 / sum ||g_b||^2 <= max_b ||r_b||^2 / ||g_b||^2).

Where the harness reads v, g and J, the same way for every strategy (:class:`AdjointProbe`):

- v: the gradient that reaches an additive zero ``delta`` the harness puts on every output of
  f the strategy evaluates with grad. For a strategy whose gradient is v^T df/dtheta at one
  point (jfb: v = g; neumann, damped-neumann, cg, gmres, shine, torchdeq-ift: their adjoint) it is
  exactly that v; for phantom (and correction) it is the sum of what its unrolled damped steps
  pass through f, the adjoint those steps imply (damped Neumann terms), exact in the limit where
  every step sits at the fixed point. Products a strategy takes with ``torch.autograd.grad``
  (its backward solve) leave ``delta`` untouched: only the final backward reaches it.
- g: the gradient of the training objective at the reconstruction x (the strategy's output).
- J: dT/dx at that reconstruction, by one extra J^T v product on the raw layer (not the counted
  one: it is no product of the strategy's and is not in ``jacobian_products``).

``unrolled`` (``has_adjoint = False``) has no bound: its reconstruction is k layers from x0, not
a fixed point, and its gradient is ordinary backprop of that k-layer network, not an
approximation of an adjoint. A model without a certificate (``kernel`` control: gamma NaN) has
none either.
"""

from __future__ import annotations

import math

import torch


class AdjointProbe:
    """Reads the adjoint v a strategy used and the gradient g at its output (see the module
    docstring). ``layer(f, z0)`` wraps the layer given to the strategy; ``watch(x)`` marks its
    output; after ``backward()``, :meth:`read` returns (v, g, x), or None where nothing was read
    (no evaluation of f reached the loss, or the output has no gradient)."""

    def __init__(self):
        self.delta: torch.Tensor | None = None
        self.g: torch.Tensor | None = None
        self.x: torch.Tensor | None = None

    def layer(self, f, z0: torch.Tensor):
        self.delta = torch.zeros_like(z0, requires_grad=True)

        def probed(z, *args, **kwargs):
            out = f(z, *args, **kwargs)
            # the solver's iterations (no grad) are left alone: nothing to differentiate there
            return out + self.delta if torch.is_grad_enabled() else out

        return probed

    def watch(self, x: torch.Tensor) -> None:
        self.x = x.detach()
        if x.requires_grad:
            x.register_hook(self._keep_g)

    def _keep_g(self, grad: torch.Tensor) -> None:
        self.g = grad.detach()

    def read(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        if self.delta is None or self.delta.grad is None or self.g is None or self.x is None:
            return None
        return self.delta.grad.detach(), self.g, self.x


def per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """Norm of each sample (dim 0 is the batch; a tensor of < 2 dims is one sample)."""
    return t.reshape(1, -1).norm(dim=1) if t.ndim < 2 else t.flatten(1).norm(dim=1)


def relative_residual(f, x: torch.Tensor, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-sample ||g - (I - J)^T v|| / ||g|| with J = df/dx at ``x``: one J^T v product."""
    with torch.enable_grad():
        z = x.detach().requires_grad_()
        (jtv,) = torch.autograd.grad(f(z), z, v)
    r = g - v + jtv.detach()
    return per_sample_norm(r) / per_sample_norm(g).clamp_min(torch.finfo(g.dtype).tiny)


def relative_bound(relative_residual: float, gamma: float) -> float:
    """(1 + gamma) / (1 - gamma) * ||r|| / ||g||: the certified bound on ||v - v*|| / ||v*||.
    NaN without a certificate (gamma NaN) or where gamma >= 1 proves nothing."""
    if not (math.isfinite(gamma) and 0 <= gamma < 1) or math.isnan(relative_residual):
        return math.nan
    return (1 + gamma) / (1 - gamma) * relative_residual


def relative_error(v: torch.Tensor, v_ref: torch.Tensor) -> torch.Tensor:
    """Per-sample ||v - v_ref|| / ||v_ref||."""
    return per_sample_norm(v - v_ref) / per_sample_norm(v_ref).clamp_min(
        torch.finfo(v_ref.dtype).tiny
    )
