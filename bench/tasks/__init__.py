"""Inverse problems ("tasks") as plug-ins: a linear operator with its exact adjoint, how
measurements are simulated, and the naive reconstruction results are compared against.

A task is a :class:`Task` subclass registered under a name with :func:`register_task`; a suite
selects it with ``[problem] task = "<name>"``. Built in: ``blur`` (Gaussian deblurring,
:mod:`bench.tasks.blur`) and ``inpaint`` (a seeded random pixel mask, :mod:`bench.tasks.inpaint`).
Adding one is one file here that defines and registers a subclass (imported below).

The interface follows deepinv's ``LinearPhysics`` (``A``, ``A_adjoint``, ``A_adjoint_A``, a norm
bound, an adjointness test): the model (bench/model.py) and the classical baselines
(bench/baselines.py) use nothing else of a task.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ..registry import Registry

TASKS: Registry[type[Task]] = Registry("task")


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: register a :class:`Task` subclass under ``name`` (its ``name``)."""

    def add(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task expects a Task subclass, got {cls!r}")
        TASKS.register(name)(cls)
        cls.name = name
        return cls

    return add


class Task(ABC):
    """A linear inverse problem d = A x + noise_std * e, e ~ N(0, I), for images x in [0, 1].

    Subclasses implement :meth:`A`, :meth:`A_adjoint` (the exact adjoint: <A x, y> = <x, A^T y>),
    :attr:`norm_bound` and :meth:`from_config`, and may implement :meth:`normal_solve` (needed by
    the prox-form layer; the baselines fall back to conjugate gradients without it).
    """

    name: ClassVar[str] = ""  # set by register_task
    #: how tables and figures name :meth:`naive` (e.g. "blurred input")
    naive_label: ClassVar[str] = "naive reconstruction"
    #: the ``[problem]`` keys this task reads, besides ``task`` and ``noise_std``; the others
    #: must stay at their defaults (a key that would be silently ignored is an error)
    config_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, noise_std: float = 0.01):
        if not (
            isinstance(noise_std, (int, float))
            and not isinstance(noise_std, bool)
            and math.isfinite(noise_std)
            and noise_std >= 0
        ):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        self.noise_std = float(noise_std)

    @classmethod
    @abstractmethod
    def from_config(cls, config: Any) -> Task:
        """The task a :class:`bench.config.ProblemConfig` describes."""

    @abstractmethod
    def A(self, x: torch.Tensor) -> torch.Tensor:
        """The forward operator on a batch of images (B, C, H, W)."""

    @abstractmethod
    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The exact adjoint of :meth:`A`."""

    def AtA(self, x: torch.Tensor) -> torch.Tensor:
        """The normal operator A^T A."""
        return self.A_adjoint(self.A(x))

    @property
    @abstractmethod
    def norm_bound(self) -> float:
        """An upper bound of ||A||_2 valid for every image size (the grad-form layer's step
        size and the gradient-descent baselines' step rely on it)."""

    @property
    def has_normal_solve(self) -> bool:
        """Whether :meth:`normal_solve` is exact for this task (the prox-form layer needs it)."""
        return type(self).normal_solve is not Task.normal_solve

    def normal_solve(self, y: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
        """(A^T A + lam I)^-1 y exactly, differentiable in ``y`` and ``lam``; lam > 0 is a number
        or broadcasts against ``y`` (e.g. one value per image, shape (B, 1, 1, 1))."""
        raise ValueError(
            f"task {self.name or type(self).__name__!r} has no exact normal_solve; "
            "use the gradient-step layer (model form 'grad')"
        )

    def fast_operator(self, x: torch.Tensor) -> Any:
        """Something with the same ``A``, ``A_adjoint`` and ``AtA`` for images like ``x``,
        possibly faster for many iterations on one batch shape (the baselines use it)."""
        return self

    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Measurements A x + noise_std * e, the noise drawn from ``generator``.

        The noise is drawn on the CPU in float64 and moved, so a seed gives the same data on
        every device and dtype.
        """
        d = self.A(x)
        if self.noise_std > 0:
            e = torch.randn(d.shape, generator=generator, dtype=torch.float64)
            d = d + self.noise_std * e.to(dtype=d.dtype, device=d.device)
        return d

    def naive(self, d: torch.Tensor) -> torch.Tensor:
        """The reconstruction without any prior that results are compared against, in [0, 1]:
        A^T d, clamped (a task whose measurements are images themselves may return d)."""
        return self.A_adjoint(d).clamp(0, 1)

    def setting_columns(self) -> dict[str, Any]:
        """The task's own columns of runs.csv (its parameters), e.g. ``blur_sigma``."""
        return {}


def make_task(config: Any) -> Task:
    """The task a :class:`bench.config.ProblemConfig` names (``config.task``)."""
    return TASKS.get(config.task).from_config(config)


# The built-in tasks register themselves on import.
from . import blur, inpaint  # noqa: E402, F401
from .blur import BlurTask, GaussianBlur  # noqa: E402
from .inpaint import InpaintTask  # noqa: E402

__all__ = [
    "TASKS",
    "BlurTask",
    "GaussianBlur",
    "InpaintTask",
    "Task",
    "make_task",
    "register_task",
]
