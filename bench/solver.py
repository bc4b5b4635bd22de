"""Forward fixed-point solvers: a registry of solve functions, run by :class:`FixedPointSolver`.

A solver is any callable ``solver(f, z0) -> (z_star, info)`` that runs without building an
autograd graph; ``info`` maps str to a Python number. ``SOLVERS`` maps a ``[solver] name`` to a
solve function with torchdeq's signature, ``fn(f, z0, max_iter=, tol=, stop_mode=, **kwargs) ->
(z, trajectory, stats)`` with ``stats`` holding ``nstep`` and ``<stop_mode>_lowest`` per sample;
torchdeq's three solvers are registered, and :func:`register_solver` adds another.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torchdeq.solver import get_solver as _torchdeq_solver

from strategies import Jacobian

from .registry import Registry

SOLVERS: Registry = Registry("solver")


def register_solver(name: str):
    """Decorator: register a solve function (torchdeq's signature, see above) under ``name``."""
    return SOLVERS.register(name)


for _name in ("anderson", "fixed_point_iter", "broyden"):
    register_solver(_name)(_torchdeq_solver(_name))


class FixedPointSolver:
    """A torchdeq solver with its settings, run under ``torch.no_grad``.

    ``info`` holds ``forward_iters`` (the step of the returned iterate, worst sample),
    ``forward_residual`` (relative residual ||f(z)-z|| / ||f(z)||, worst sample) and
    ``forward_converged`` (1.0 when every sample met ``tol``, else 0.0): a solve that hits
    ``max_iter`` is recorded as such, never hidden.
    """

    def __init__(
        self,
        name: str = "anderson",
        max_iter: int = 50,
        tol: float = 1e-3,
        stop_mode: str = "rel",
        **kwargs,
    ):
        solve = SOLVERS.get(name)  # ValueError naming the accepted solvers
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"solver max_iter must be an int >= 1, got {max_iter!r}")
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"solver tol must be a finite number > 0, got {tol!r}")
        if stop_mode not in ("rel", "abs"):
            raise ValueError(f"solver stop_mode must be 'rel' or 'abs', got {stop_mode!r}")
        self.name, self.max_iter, self.tol, self.stop_mode = name, max_iter, float(tol), stop_mode
        self.kwargs = kwargs
        self._solve = solve

    def __call__(self, f, z0: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            z, _, stat = self._solve(
                f,
                z0,
                max_iter=self.max_iter,
                tol=self.tol,
                stop_mode=self.stop_mode,
                **self.kwargs,
            )
        residual = stat[f"{self.stop_mode}_lowest"].max().item()
        info = {
            "forward_iters": float(stat["nstep"].max().item()),
            "forward_residual": residual,
            "forward_converged": float(residual < self.tol),
        }
        return z, info

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return (
            f"FixedPointSolver({self.name!r}, max_iter={self.max_iter}, tol={self.tol}, "
            f"stop_mode={self.stop_mode!r}{extra})"
        )


def make_solver(name: str = "anderson", **settings) -> FixedPointSolver:
    """Build a forward solver by its registered name (see ``SOLVERS``)."""
    return FixedPointSolver(name, **settings)


class LipschitzEstimate(NamedTuple):
    value: float  # ||df/dz||_2 at z, worst sample (a lower bound that converges to it)
    iters: int
    converged: bool  # relative change of every sample's estimate <= rtol at the last iteration


def lipschitz_estimate(
    f, z: torch.Tensor, rtol: float = 1e-3, max_iter: int = 500, seed: int = 0
) -> LipschitzEstimate:
    """||df/dz||_2 at ``z`` (worst sample) by power iteration on J^T J, run to convergence.

    J u and J^T u through one recorded evaluation of f (:class:`strategies.Jacobian`), each
    sample's own vector (J is block diagonal over the batch). Stops when every sample's estimate changed by at most
    ``rtol`` (relative) in one iteration, or after ``max_iter``. Power iteration approaches the
    largest singular value from below; a value below 1 means f is locally contractive there.
    """
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(z.shape, generator=g, dtype=torch.float64).to(z)
    jac = Jacobian(f, z.detach())
    shape = (-1, *([1] * (z.ndim - 1)))
    sigma = torch.zeros(z.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for it in range(1, max_iter + 1):
            u = u / u.flatten(1).norm(dim=1).clamp_min(1e-30).view(shape)
            ju = jac(u)
            new = ju.flatten(1).norm(dim=1).double().cpu()
            change = ((new - sigma).abs() / new.clamp_min(1e-30)).max().item()
            sigma = new
            if change <= rtol and it > 1:
                return LipschitzEstimate(float(sigma.max()), it, True)
            u = jac.T(ju)
    return LipschitzEstimate(float(sigma.max()), max_iter, False)
