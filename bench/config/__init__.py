"""Suite configuration: TOML files -> validated dataclasses -> one RunConfig per run.

A suite file has the sections below; every key is optional (defaults are the dataclass fields)
and an unknown key, a value of the wrong type or out of its range (declared with the field, see
``setting``) is an error naming the file, section and key.

    name = "quick"                      # defaults to the file name
    strategies = ["jfb", "cg:tol=1e-6", "neumann:k=10", "unrolled:k=10"]
    seeds = 2                           # seeds 0..N-1, or a list [0, 3]
    baselines = ["direct_inverse", "tikhonov", "gd_tikhonov", "gd_tv"]
    [data]    dataset, root, image_size, n_images, test_fraction, patch_size, channels
    [problem] task, noise_std, and the task's own settings (blur: kernel_size, sigma; inpaint:
              mask_keep_fraction, mask_seed; superres: factor; implicit-bench list tasks)
    [model]   width, depth, eta, alpha, lipschitz, form, lipschitz_control, activation
    [solver]  name, max_iter, tol, and the solver's own options (anderson: m, lam;
              implicit-bench list solvers)
    [train]   epochs, batch_size, lr, device, dtype, n_recon, grad_fidelity, eval_every,
              lr_schedule, jac_reg, jac_reg_every
    [sweep]   "section.key" = [values]  # cartesian product, e.g. "solver.max_iter" = [10, 100]

The package's modules, each one step: :mod:`~bench.config.settings` (how a field declares its
default and range), :mod:`~bench.config.sections` (the five sections; ``[problem]`` and
``[solver]`` are built from the task and solver registries), :mod:`~bench.config.suite` (a
:class:`Suite` and its :class:`RunConfig` s) and :mod:`~bench.config.suite_file` (TOML and
command-line overrides -> a validated Suite). Everything is imported from here.
"""

from __future__ import annotations

from .sections import SECTIONS, DataConfig, ModelConfig, ProblemConfig, SolverConfig, TrainConfig
from .settings import INT64_MAX, Range, check_ranges, param_fields, setting
from .suite import MAX_RUN_ID, RunConfig, Suite
from .suite_file import (
    MAX_SEEDS,
    SHORTCUTS,
    SUITE_NAME,
    SUITES_DIR,
    TOP_KEYS,
    list_suites,
    load_suite,
    suite_from_dict,
    suite_to_dict,
    with_overrides,
)

__all__ = [
    "INT64_MAX",
    "MAX_RUN_ID",
    "MAX_SEEDS",
    "SECTIONS",
    "SHORTCUTS",
    "SUITES_DIR",
    "SUITE_NAME",
    "TOP_KEYS",
    "DataConfig",
    "ModelConfig",
    "ProblemConfig",
    "Range",
    "RunConfig",
    "SolverConfig",
    "Suite",
    "TrainConfig",
    "check_ranges",
    "list_suites",
    "load_suite",
    "param_fields",
    "setting",
    "suite_from_dict",
    "suite_to_dict",
    "with_overrides",
]
