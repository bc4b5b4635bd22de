"""Forward fixed-point solvers: a registry of solve functions, run by :class:`FixedPointSolver`.

A solver is any callable ``solver(f, z0) -> (z_star, info)`` that runs without building an
autograd graph; ``info`` maps str to a Python number. ``SOLVERS`` maps a ``[solver] name`` to a
:class:`SolverEntry`: a solve function with torchdeq's signature, ``fn(f, z0, max_iter=, tol=,
stop_mode=, **kwargs) -> (z, trajectory, stats)`` with ``stats`` holding ``nstep`` and
``<stop_mode>_lowest`` per sample, and the ``[solver]`` settings it takes besides ``max_iter``
and ``tol`` (its ``options``, each declared as a :class:`strategies.Param`, the type tasks and
strategies declare their settings with). The registered solvers' options become fields of
:class:`bench.config.SolverConfig`, as the tasks' settings become fields of ``[problem]``, and
:func:`solver_from_config` passes a solver exactly its own. torchdeq's three solvers are
registered, and :func:`register_solver` adds another.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from torchdeq.loss import jac_reg as _torchdeq_jac_reg
from torchdeq.solver import get_solver as _torchdeq_solver

from strategies import Jacobian, Param

from .registry import Registry

# [solver] settings every solver gets (bench.config.SolverConfig); a solver cannot declare them
COMMON_SETTINGS = ("name", "max_iter", "tol")


@dataclasses.dataclass(frozen=True)
class SolverEntry:
    """A registered forward solver: ``solve`` (torchdeq's signature, see above) and the
    ``[solver]`` settings it takes as keyword arguments besides ``max_iter`` and ``tol``
    (``params``: name -> :class:`strategies.Param`, its default and valid range)."""

    name: str
    solve: Callable
    params: Mapping[str, Param] = dataclasses.field(default_factory=dict)

    @property
    def options(self) -> tuple[str, ...]:
        """The names of the settings it takes besides ``max_iter`` and ``tol``."""
        return tuple(self.params)

    def __call__(self, *args, **kwargs):
        return self.solve(*args, **kwargs)


SOLVERS: Registry[SolverEntry] = Registry("solver")


def solver_options() -> dict[str, Param]:
    """Every ``[solver]`` setting the registered solvers declare besides name, max_iter and tol,
    in registration order: the fields :class:`bench.config.SolverConfig` adds to those three
    (a setting two solvers take, with one type and default, is one field)."""
    out: dict[str, Param] = {}
    for _, entry in SOLVERS.items():
        for key, param in entry.params.items():
            out.setdefault(key, param)
    return out


def register_solver(name: str, options: Mapping[str, Param] | tuple[str, ...] = ()):
    """Decorator: register a solve function (torchdeq's signature, see above) under ``name``.

    ``options`` names the ``[solver]`` settings the function takes as keyword arguments. A dict
    declares them, name -> :class:`strategies.Param`, as a task declares its settings, e.g.
    ``register_solver("anderson", options={"m": Param(5, ge=1, le=100), "lam": Param(1e-4,
    ge=0)})``; a tuple of names takes settings another solver declared (``("m",)``). A name that
    no solver declares, one every solver gets (``max_iter``, ``tol``, ``name``), or a setting
    declared with another type or default than another solver's is a ValueError, and nothing is
    registered. A new setting becomes a field of :class:`bench.config.SolverConfig` only when
    the solver is registered before bench.config is imported (a test or session registering one
    later can take existing settings by name).
    """
    params = _check_options(name, options, solver_options())

    def add(solve: Callable) -> Callable:
        SOLVERS.register(name)(SolverEntry(name, solve, MappingProxyType(params)))
        return solve

    return add


def _check_options(name: str, options: Any, declared: dict[str, Param]) -> dict[str, Param]:
    """``options`` as name -> Param, or ValueError saying which one is not a [solver] setting."""
    if isinstance(options, str):  # ("m") for ("m",): a string would declare its letters
        raise ValueError(f"solver {name!r}: options must be a tuple of names, got {options!r}")
    if not isinstance(options, Mapping):
        unknown = [o for o in options if o not in declared]
        if unknown:
            raise ValueError(
                f"solver {name!r}: unknown [solver] setting {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(declared) or 'none'} (or declare a new one as a Param)"
            )
        return {o: declared[o] for o in options}
    for key, param in options.items():
        if not isinstance(param, Param):
            raise ValueError(f"solver {name!r}: option {key!r} must be declared as Param(...)")
        if not isinstance(key, str) or not key.isidentifier() or key in COMMON_SETTINGS:
            raise ValueError(f"solver {name!r}: {key!r} cannot be a [solver] option's name")
        other = declared.get(key)
        if other is not None and (other.type, other.default) != (param.type, param.default):
            raise ValueError(
                f"solver {name!r} declares option {key!r} ({param.describe()}), which another "
                f"solver declares as {other.describe()}: one [solver] key has one type and default"
            )
    return dict(options)


def check_solver_settings(config: Any) -> None:
    """ValueError unless ``config`` (a :class:`bench.config.SolverConfig`) fits its solver: each
    option the solver declares is a field (not one registered too late to become one), and no
    other option is away from its default (the solver would silently ignore it)."""
    entry = SOLVERS.get(config.name)
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for key in entry.options:
        if key not in defaults:  # a new option, registered after [solver] was built
            raise ValueError(
                f"solver {config.name!r} declares option {key!r}, which [solver] does not have: "
                "the solver was registered after bench.config was imported; register it in "
                "bench/solver.py (or a module imported before bench.config)"
            )
    for key, default in defaults.items():
        value = getattr(config, key)
        if key in COMMON_SETTINGS or key in entry.options or value == default:
            continue
        raise ValueError(
            f"solver.{key} = {value!r} has no effect on solver {config.name!r} (its options: "
            f"{', '.join(entry.options) or 'none'}); leave it out, or at its default {default!r}"
        )


# torchdeq's solvers, with the settings of theirs that [solver] holds
register_solver(
    "anderson",
    options={
        "m": Param(5, ge=1, le=100, doc="past iterates kept"),
        "lam": Param(1e-4, ge=0, doc="regularisation of the least-squares mixing"),
    },
)(_torchdeq_solver("anderson"))
for _name in ("fixed_point_iter", "broyden"):
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


def solver_from_config(config: Any) -> FixedPointSolver:
    """The forward solver a ``[solver]`` section (:class:`bench.config.SolverConfig`) describes:
    ``max_iter``, ``tol`` and exactly the settings its registered entry declares (``anderson``:
    ``m`` and ``lam``)."""
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
