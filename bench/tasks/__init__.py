"""Inverse problems ("tasks") as plug-ins: a linear operator with its exact adjoint, how
measurements are simulated, and the naive reconstruction results are compared against.

A task is a :class:`Task` subclass registered under a name with :func:`register_task`; a suite
selects it with ``[problem] task = "<name>"``. Built in: ``blur`` (Gaussian deblurring,
:mod:`bench.tasks.blur`), ``inpaint`` (a seeded random pixel mask, :mod:`bench.tasks.inpaint`)
and ``superres`` (f x f average pooling, :mod:`bench.tasks.superres`).

Adding one is one file: every module in this folder (not starting with ``_``) is imported with
this package, and installed packages add tasks through the entry-point group
``implicit_bench.tasks`` (a Task subclass; one not registered yet is registered under the entry
point's name). A task declares its ``[problem]`` settings (``settings``, name -> :class:`Param`,
the type strategies declare theirs with), which become fields of
:class:`bench.config.ProblemConfig` and columns of runs.csv (:func:`setting_columns`); the
image sizes it takes (:meth:`Task.check_image_size`); and its naive reconstruction
(:meth:`Task.naive`, named ``naive_label``). A module or plugin that fails to load is reported
(a warning on stderr, and :func:`broken_tasks`) while the others load.

The interface follows deepinv's ``LinearPhysics`` (``A``, ``A_adjoint``, ``A_adjoint_A``, a norm
bound, an adjointness test): the model (bench/model.py) and the classical baselines
(bench/baselines.py) use nothing else of a task. Measurements may have another shape than the
images (super-resolution's are smaller).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, ClassVar

import torch

from strategies import Param

from ..registry import Registry

ENTRY_POINT_GROUP = "implicit_bench.tasks"
# [problem] keys every task has (bench.config.ProblemConfig); a task cannot declare them again
COMMON_SETTINGS = ("task", "noise_std")
TASKS: Registry[type[Task]] = Registry("task")
_BROKEN: dict[str, str] = {}  # module file or plugin -> why it did not load


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: register a :class:`Task` subclass under ``name`` (its ``name``).

    The class must declare ``naive_label`` and implement :meth:`Task.naive`, and its
    ``settings`` must be :class:`Param` s whose names no other task declares differently (two
    tasks may share a setting with the same type and default, as one ``[problem]`` key).
    """

    def add(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task expects a Task subclass, got {cls!r}")
        _check_declarations(name, cls)
        TASKS.register(name)(cls)
        cls.name = name
        return cls

    return add


def _check_declarations(name: str, cls: type[Task]) -> None:
    if not isinstance(cls.naive_label, str) or not cls.naive_label:
        raise TypeError(
            f"task {name!r} ({cls.__qualname__}) must declare naive_label, what its naive "
            'reconstruction is called in tables and figures (e.g. "blurred input")'
        )
    if getattr(cls.naive, "__isabstractmethod__", False):
        raise TypeError(f"task {name!r} ({cls.__qualname__}) must implement naive(d)")
    for key, param in cls.settings.items():
        if not isinstance(param, Param):
            raise TypeError(f"task {name!r}: setting {key!r} must be declared as Param(...)")
        if key in COMMON_SETTINGS or not key.isidentifier():
            raise TypeError(f"task {name!r}: {key!r} cannot be a task setting's name")
        for other, other_cls in TASKS.items():
            mine = other_cls.settings.get(key)
            if (
                other != name
                and mine is not None
                and (mine.type, mine.default)
                != (
                    param.type,
                    param.default,
                )
            ):
                raise TypeError(
                    f"task {name!r} declares setting {key!r} ({param.describe()}), which task "
                    f"{other!r} declares as {mine.describe()}: rename one of them"
                )


class Task(ABC):
    """A linear inverse problem d = A x + noise_std * e, e ~ N(0, I), for images x in [0, 1].

    Subclasses implement :meth:`A`, :meth:`A_adjoint` (the exact adjoint: <A x, y> = <x, A^T y>),
    :attr:`norm_bound`, :meth:`from_config` and :meth:`naive`, and declare ``naive_label`` and
    their ``settings``; they may implement :meth:`check_image_size` (the image sizes A takes)
    and :meth:`normal_solve` (the prox-form layer needs it; the baselines fall back to
    conjugate gradients without it).
    """

    name: ClassVar[str] = ""  # set by register_task
    #: how tables and figures name :meth:`naive` (e.g. "blurred input"); required
    naive_label: ClassVar[str] = ""
    #: the ``[problem]`` keys this task reads besides ``task`` and ``noise_std``, each with its
    #: default and range: fields of ProblemConfig, which must stay at their defaults under
    #: another task (a key that would be silently ignored is an error)
    settings: ClassVar[dict[str, Param]] = {}
    #: runs.csv column of a setting, where it is not the setting's own name
    #: (e.g. blur's ``sigma`` is ``blur_sigma``)
    columns: ClassVar[dict[str, str]] = {}

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
        """The exact adjoint of :meth:`A` (measurements -> images)."""

    def AtA(self, x: torch.Tensor) -> torch.Tensor:
        """The normal operator A^T A."""
        return self.A_adjoint(self.A(x))

    @property
    @abstractmethod
    def norm_bound(self) -> float:
        """An upper bound of ||A||_2 valid for every image size (the grad-form layer's step
        size and the gradient-descent baselines' step rely on it)."""

    def check_image_size(self, height: int, width: int) -> None:
        """ValueError saying why, if A cannot take height x width images (every size by
        default). Checked when a suite is loaded, for the sizes known then, and on the data."""
        return None  # noqa: B027 (optional, not abstract: most operators take every size)

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

    @abstractmethod
    def naive(self, d: torch.Tensor) -> torch.Tensor:
        """The reconstruction without any prior that results are compared against: an image
        (B, C, H, W) in [0, 1] (e.g. the blurred measurements themselves, clamped)."""

    def setting_columns(self) -> dict[str, Any]:
        """The task's own columns of runs.csv: each declared setting's value (the attribute of
        the same name) under its column name (:attr:`columns`), e.g. ``blur_sigma``."""
        return {type(self).column(key): getattr(self, key) for key in self.settings}

    @classmethod
    def column(cls, key: str) -> str:
        """The runs.csv column of setting ``key``."""
        return cls.columns.get(key, key)


def make_task(config: Any) -> Task:
    """The task a :class:`bench.config.ProblemConfig` names (``config.task``)."""
    return TASKS.get(config.task).from_config(config)


def check_task_settings(config: Any) -> None:
    """ValueError unless ``config`` (a ProblemConfig) fits its task: every setting the task
    declares is a field (not one registered too late to become one), no other task's setting is
    away from its default (it would be silently ignored), and the task accepts the values (its
    own checks, e.g. blur's odd kernel size)."""
    cls = TASKS.get(config.task)
    declared = {f.name: f.default for f in dataclasses.fields(config)}
    missing = [key for key in cls.settings if key not in declared]
    if missing:
        raise ValueError(
            f"task {config.task!r} declares setting(s) {', '.join(missing)} that [problem] does "
            "not have: the task was registered after bench.config was imported; put it in a "
            "file in bench/tasks/ or in the entry-point group implicit_bench.tasks"
        )
    for other, other_cls in TASKS.items():
        for key in other_cls.settings:
            value, default = getattr(config, key, None), declared.get(key)
            if key in declared and key not in cls.settings and value != default:
                raise ValueError(
                    f"{key} is a setting of task {other!r}, not of task {config.task!r} "
                    f"(leave it out, or at its default {default!r})"
                )
    cls.from_config(config)


def setting_columns() -> tuple[str, ...]:
    """The runs.csv columns of every registered task's settings, in registration order: what
    tells two configurations of one task apart in a results folder (the report reads it)."""
    names = (cls.column(key) for _, cls in TASKS.items() for key in cls.settings)
    return tuple(dict.fromkeys(names))


def setting_labels() -> dict[str, str]:
    """Column -> its label in the report's setup table ("blur_sigma" -> "blur sigma")."""
    return {column: column.replace("_", " ") for column in setting_columns()}


def broken_tasks() -> dict[str, str]:
    """Task modules and plugins that failed to load: their file (or plugin) -> the error."""
    return dict(_BROKEN)


def _broken(source: str, err: BaseException) -> None:
    problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    _BROKEN[source] = problem
    print(f"implicit-bench: warning: task {source} could not be loaded: {problem}", file=sys.stderr)


def _discover() -> None:
    """Import every task module of this folder, then the installed plugins' tasks. Eager (at
    import, unlike strategies): ProblemConfig's fields are the registered tasks' settings."""
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            try:
                importlib.import_module(f"{__name__}.{mod.name}")
            except Exception as err:  # one broken file must not take the others down
                path = getattr(mod.module_finder, "path", "")
                _broken(f"{path}/{mod.name}.py" if path else mod.name, err)
    load_plugins()


def load_plugins() -> None:
    """Register the tasks of the entry-point group ``implicit_bench.tasks`` (done on import)."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if not (isinstance(obj, type) and issubclass(obj, Task)):
                raise TypeError(f"{ep.value} is not a Task subclass")
            if obj not in dict(TASKS.items()).values():
                register_task(ep.name)(obj)
        except Exception as err:  # a broken plugin must not pass silently
            _broken(f"plugin {ep.name!r} ({ep.value})", err)


_discover()
from .blur import BlurTask, GaussianBlur  # noqa: E402
from .inpaint import InpaintTask  # noqa: E402
from .superres import SuperResTask  # noqa: E402

__all__ = [
    "TASKS",
    "BlurTask",
    "GaussianBlur",
    "InpaintTask",
    "Param",
    "SuperResTask",
    "Task",
    "broken_tasks",
    "check_task_settings",
    "make_task",
    "register_task",
    "setting_columns",
]
