"""The sections of a suite file as frozen dataclasses: ``[data]``, ``[problem]``, ``[model]``,
``[solver]`` and ``[train]``, each field with its default and valid range.

``[problem]`` and ``[solver]`` are built from the registries: every registered task's settings
and every registered solver's options are their fields (declared as :class:`strategies.Param`
by the plug-in), so a task or solver file adds its keys without an edit here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..data import DATASETS
from ..model import ACTIVATIONS, FORMS, LIPSCHITZ_CONTROLS, check_activation_width
from ..solver import SOLVERS, check_solver_settings, solver_options
from ..tasks import TASKS, check_task_settings
from .settings import check_ranges, param_fields, setting


@dataclass(frozen=True)
class DataConfig:
    dataset: str = setting("faces", choices=DATASETS)
    root: str = ""
    # 0: the data set's own size (faces: 25) or its default; at most 4096 (a 4096^2 RGB image
    # is 200 MB in float64)
    image_size: int = setting(0, ge=0, le=4096)
    n_images: int = setting(0, ge=0, le=10_000_000)  # 0: all (CelebA has 202,599)
    test_fraction: float = setting(0.2, gt=0, lt=1)
    patch_size: int = setting(32, ge=1, le=4096)
    channels: int = setting(0, choices=(0, 1, 3))  # 0: the data set's own; 1 gray, 3 RGB

    __post_init__ = check_ranges


def _problem_post_init(self) -> None:
    check_ranges(self)
    check_task_settings(self)


# The ``[problem]`` section: which task (bench/tasks), the noise, and every registered task's
# own settings (``Task.settings``), so that a task file adds its keys without an edit here. The
# keys of one task must stay at their defaults when another task is selected, so that no key
# is silently ignored; a blur suite's hash-relevant values are the ones it always had (a new
# task's settings enter a run's identity only away from their defaults).
ProblemConfig = dataclasses.make_dataclass(
    "ProblemConfig",
    [
        ("task", str, setting("blur", choices=TASKS)),
        ("noise_std", float, setting(0.01, ge=0)),
        *param_fields((key, p) for _, cls in TASKS.items() for key, p in cls.settings.items()),
    ],
    frozen=True,
    namespace={
        "__post_init__": _problem_post_init,
        "__doc__": "The ``[problem]`` section: task, noise_std and the tasks' settings.",
    },
)
ProblemConfig.__module__ = __name__  # pickled runs (submitit) find it here


@dataclass(frozen=True)
class ModelConfig:
    # hidden channels; even for activation "maxmin" (bench.model.check_activation_width)
    width: int = setting(32, ge=1, le=4096)
    depth: int = setting(3, ge=1, le=256)  # convolutions of the learned denoiser
    eta: float = setting(0.3, gt=0, lt=0.5)
    alpha: float = setting(0.05, gt=0, lt=1.5)
    lipschitz: float = setting(0.9, gt=0, lt=1)
    # "prox": T(x) = (A^T A + alpha I)^-1 (A^T d + alpha D(x)); "grad": the seed's gradient step.
    form: str = setting("prox", choices=FORMS)
    # "operator": each conv divided by its operator norm (a contraction by construction, see
    # bench/model.py); "aol": a cheaper certified rescaling; "kernel": torch's spectral_norm of
    # the reshaped kernel (the common practice, which bounds nothing).
    lipschitz_control: str = setting("operator", choices=LIPSCHITZ_CONTROLS)
    # between the convolutions of the learned denoiser, both 1-Lipschitz: "relu", or "maxmin"
    # (GroupSort-2, gradient-norm preserving; needs an even width)
    activation: str = setting("relu", choices=ACTIVATIONS)

    def __post_init__(self):
        check_ranges(self)
        check_activation_width(self.activation, self.width, self.depth)


def _solver_post_init(self) -> None:
    """Ranges, and no option the chosen solver would silently ignore: an option it does not
    declare must stay at its default (as a task's keys do under another task)."""
    check_ranges(self)
    check_solver_settings(self)


# The ``[solver]`` section: which solver (bench/solver.py), its iteration limit and tolerance,
# and every registered solver's options (``register_solver(..., options=)``: anderson's ``m``,
# past iterates kept, and ``lam``), which go to the solvers that declare them.
SolverConfig = dataclasses.make_dataclass(
    "SolverConfig",
    [
        ("name", str, setting("anderson", choices=SOLVERS)),
        ("max_iter", int, setting(50, ge=1, le=100_000)),
        ("tol", float, setting(1e-3, gt=0)),
        *param_fields(solver_options().items()),
    ],
    frozen=True,
    namespace={
        "__post_init__": _solver_post_init,
        "__doc__": "The ``[solver]`` section: name, max_iter, tol and the solvers' options.",
    },
)
SolverConfig.__module__ = __name__


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = setting(5, ge=1, le=100_000)
    batch_size: int = setting(16, ge=1, le=65_536)
    lr: float = setting(1e-3, gt=0)
    device: str = "auto"  # checked against the machine by bench.device.resolve_device
    dtype: str = setting("float32", choices=("float32", "float64"))
    n_recon: int = setting(6, ge=0, le=1000)  # test images kept for the reconstruction figure
    grad_fidelity: bool = True  # cosine to the exact gradient at the first and last epoch
    # evaluate every N training steps too (0: at the end of each epoch only)
    eval_every: int = setting(0, ge=0, le=10_000_000)
    # per step
    lr_schedule: str = setting("constant", choices=("constant", "cosine", "onecycle"))
    # Jacobian regularisation (Bai et al. 2021): weight of the Hutchinson estimate of
    # ||dT/dx||_F^2 / dim added to the loss (0: off), on every jac_reg_every-th step
    jac_reg: float = setting(0.0, ge=0)
    jac_reg_every: int = setting(1, ge=1, le=10_000_000)

    __post_init__ = check_ranges


SECTIONS = {
    "data": DataConfig,
    "problem": ProblemConfig,
    "model": ModelConfig,
    "solver": SolverConfig,
    "train": TrainConfig,
}
