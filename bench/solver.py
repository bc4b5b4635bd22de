"""Forward fixed-point solvers: a registry of solve functions, run by :class:`FixedPointSolver`.

A solver is any callable ``solver(f, z0) -> (z_star, info)`` that runs without building an
autograd graph; ``info`` maps str to a Python number. ``SOLVERS`` maps a ``[solver] name`` to a
:class:`SolverEntry`: a solve function with torchdeq's signature, ``fn(f, z0, max_iter=, tol=,
stop_mode=, **kwargs) -> (z, trajectory, stats)`` with ``stats`` holding ``nstep`` and
``<stop_mode>_lowest`` per sample, and the ``[solver]`` settings it takes besides ``max_iter``
and ``tol`` (its ``options``, passed by :func:`solver_from_config`). torchdeq's three solvers are
registered, and :func:`register_solver` adds another.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torchdeq.loss import jac_reg as _torchdeq_jac_reg
from torchdeq.solver import get_solver as _torchdeq_solver

from strategies import Jacobian

from .registry import Registry

if TYPE_CHECKING:
    from .config import SolverConfig

# [solver] settings every solver gets; the others go to the solvers that declare them
COMMON_SETTINGS = ("name", "max_iter", "tol")


@dataclasses.dataclass(frozen=True)
class SolverEntry:
    """A registered forward solver: ``solve`` (torchdeq's signature, see above) and the names of
    the ``[solver]`` settings (fields of :class:`bench.config.SolverConfig`) it takes as keyword
    arguments besides ``max_iter`` and ``tol``."""

    name: str
    solve: Callable
    options: tuple[str, ...] = ()

    def __call__(self, *args, **kwargs):
        return self.solve(*args, **kwargs)


SOLVERS: Registry[SolverEntry] = Registry("solver")


def solver_settings() -> tuple[str, ...]:
    """The ``[solver]`` settings a solver may declare: SolverConfig's fields but name, max_iter
    and tol."""
    from .config import SolverConfig  # here, not at the top: bench.config imports this module

    return tuple(f.name for f in dataclasses.fields(SolverConfig) if f.name not in COMMON_SETTINGS)


def register_solver(name: str, options: tuple[str, ...] = ()):
    """Decorator: register a solve function (torchdeq's signature, see above) under ``name``.

    ``options`` names the ``[solver]`` settings the function takes as keyword arguments, e.g.
    ``register_solver("anderson", options=("m", "lam"))``; a name that is not a field of
    :class:`bench.config.SolverConfig` (or is one every solver gets) is a ValueError.
    """
    options = _check_options(name, options, solver_settings())

    def add(solve: Callable) -> Callable:
        SOLVERS.register(name)(SolverEntry(name, solve, options))
        return solve

    return add


def _check_options(name: str, options, accepted: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(options, str):  # ("m") for ("m",): a string would declare its letters
        raise ValueError(f"solver {name!r}: options must be a tuple of names, got {options!r}")
    options = tuple(options)
    unknown = [o for o in options if o not in accepted]
    if unknown:
        raise ValueError(
            f"solver {name!r}: unknown [solver] setting {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted)}"
        )
    return options


# torchdeq's solvers, with the settings of theirs that SolverConfig holds. Registered directly:
# this runs while bench.config (which imports this module for SOLVERS) may be half-imported, so
# the options cannot be checked against SolverConfig here; a test checks them.
for _name, _options in (("anderson", ("m", "lam")), ("fixed_point_iter", ()), ("broyden", ())):
    SOLVERS.register(_name)(SolverEntry(_name, _torchdeq_solver(_name), _options))


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


def solver_from_config(config: SolverConfig) -> FixedPointSolver:
    """The forward solver a ``[solver]`` section describes: ``max_iter``, ``tol`` and exactly the
    settings its registered entry declares (``anderson``: ``m`` and ``lam``)."""
    entry = SOLVERS.get(config.name)
    options = {key: getattr(config, key) for key in entry.options}
    return FixedPointSolver(config.name, max_iter=config.max_iter, tol=config.tol, **options)


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


def jacobian_frobenius_sq(f, z: torch.Tensor, probes: int = 1) -> torch.Tensor:
    """Hutchinson estimate of ||df/dz||_F^2 / dim at ``z``, differentiable in f's parameters.

    The Jacobian regulariser of Bai, Koltun & Kolter, "Stabilizing Equilibrium Models by
    Jacobian Regularization" (ICML 2021, arXiv 2106.14342), as torchdeq computes it
    (``torchdeq.loss.jac_reg``): E ||e^T J||^2 = ||J||_F^2 for a standard Gaussian probe e, one
    vector-Jacobian product per probe with its graph kept, divided by ``z.numel()`` (over a
    batch, J is block diagonal: the mean over samples of ||J_b||_F^2 / dim).
    """
    with torch.enable_grad():
        z = z.detach().requires_grad_()
        return _torchdeq_jac_reg(f(z), z, vecs=probes, create_graph=True)
