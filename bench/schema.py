"""The result tables' schema, declared once: their columns and types, the columns renamed since
older harness commits, the columns added since (absent in older folders: missing values), and
the settings an older folder implies. :mod:`bench.results` (writing and merging parts) and
:mod:`bench.report.load` (reading a folder for the report) both read tables through it, so a
part the report can read is a part the merge keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .metrics import METRICS

# Columns every writer must provide (more are allowed, e.g. p_<param> for strategy parameters,
# and each task's own setting columns, e.g. blur_sigma or mask_keep_fraction: bench/tasks).
# One column per registered metric (bench/metrics.py) in each place a metric is reported:
# final_test_<m> / naive_test_<m> (the task's naive reconstruction, e.g. the blurred input).
RUN_COLUMNS = (
    "run_id", "suite", "strategy", "strategy_label", "params", "seed", "status", "status_reason",
    "dataset", "image_size", "channels", "n_train", "n_test", "batch_size", "epochs", "lr",
    "task", "noise_std", "solver", "solver_max_iter", "solver_tol",
    "model_width", "model_depth", "device", "device_name", "torch_version", "torchdeq_version",
    "git_commit", "config_hash", "final_train_loss",
    *(f"final_test_{m}" for m in METRICS), *(f"naive_test_{m}" for m in METRICS),
    "train_time_s", "median_step_time_s", "median_certify_time_s", "median_forward_time_s",
    "median_backward_time_s", "median_optimizer_time_s", "saved_bytes", "peak_rss_bytes",
    "peak_gpu_memory_bytes", "peak_gpu_device_memory_bytes", "mean_forward_iters",
    "forward_converged_frac", "mean_backward_iters", "grad_cosine_first", "grad_cosine_last",
    "lipschitz_estimate",
    # validity and cost columns (see bench/rows.py and bench/training.py): the layer's contraction at every
    # evaluation, the backward solves, the exact peak of live bytes of a training step, phases
    "lr_schedule", "model_form", "lipschitz_control", "model_lipschitz", "model_activation",
    "setting_hash",
    "max_layer_lipschitz", "certified_lipschitz_bound", "backward_converged_frac",
    "skipped_steps", "peak_step_bytes", "run_wall_time_s", "eval_time_s", "diagnostics_time_s",
    # the certification's own peak bytes (peak_step_bytes is the rest of the step's), and the
    # largest measured ||dT/dx|| / certified bound over the evaluations (1: the budget all used)
    "certify_peak_bytes", "contraction_budget_used",
    # J u + J^T u products per training step, counted by the harness (bench.measure)
    "jacobian_products_per_step",
    # timings you can trust (bench/summary.py): where the run's time went (train_time_s above
    # is the sum of step times, not wall-clock), the warm-up left out of medians, the threads and
    # cores the run had, the load it saw, and the verdict drawn from them
    "setup_time_s", "warmup_steps", "warmup_step_time_s", "step_time_cv", "step_time_robust_cv",
    "torch_threads", "cpu_count", "jobs", "load_avg_max", "cpu_util", "timing_reliable",
    "timing_note",
    # certified bound on the adjoint's relative error (bench/bounds.py): the measured error and
    # its bound at the last fidelity evaluation, the largest bound of any step
    "adjoint_error_last", "adjoint_error_bound_last", "max_adjoint_error_bound",
    # images of the fixed batch the diagnostics (||dT/dx||, gradient fidelity) use
    "fidelity_images",
)  # fmt: skip
EPOCH_COLUMNS = (
    "run_id", "strategy", "seed", "epoch", "train_loss",
    *(f"test_{m}" for m in METRICS), *(f"naive_test_{m}" for m in METRICS),
    "train_time_s", "grad_cosine",
    # one row per evaluation: at each epoch's end (epoch_end = 1) and every [train] eval_every steps
    "step", "epoch_end", "layer_lipschitz", "layer_lipschitz_converged",
    "grad_reference_converged", "grad_reference_forward_residual",
    "grad_reference_backward_residual", "certified_lipschitz_bound", "contraction_budget_used",
    # at each fidelity evaluation: measured relative adjoint error and its certified bound
    "adjoint_error", "adjoint_error_bound",
)  # fmt: skip
STEP_COLUMNS = (
    "run_id", "strategy", "seed", "epoch", "step", "loss", "certify_time_s", "forward_time_s",
    "backward_time_s", "optimizer_time_s", "step_time_s", "forward_iters", "forward_residual",
    "forward_converged",
    "backward_iters", "backward_residual", "jacobian_products",
    # always present, empty where they do not apply (a jfb-only sweep solves nothing in backward):
    # a missing column would read as a folder from before they existed
    "backward_converged", "skipped",
    # the adjoint's relative residual and the certified bound on its relative error (NaN for
    # unrolled and for a model without certificate), and the seconds the residual's product took
    # (not in step_time_s)
    "adjoint_residual", "adjoint_error_bound", "adjoint_bound_time_s",
)  # fmt: skip
COLUMNS = {"runs": RUN_COLUMNS, "epochs": EPOCH_COLUMNS, "steps": STEP_COLUMNS}

# Identifiers and text are always read as strings: pandas would otherwise turn an all-digit hash
# or commit into an int (or "1e5..." into a float) in one part and not in another.
TEXT_COLUMNS = (
    "run_id", "suite", "strategy", "strategy_label", "params", "status", "status_reason",
    "dataset", "task", "solver", "device", "device_name", "torch_version", "torchdeq_version",
    "git_commit", "config_hash", "setting_hash", "lr_schedule", "model_form", "lipschitz_control",
    "model_activation",
    "timing_note",
)  # fmt: skip
# Per table, the columns holding text (every other declared column holds numbers) ...
TABLE_TEXT_COLUMNS = {
    "runs": frozenset(TEXT_COLUMNS),
    "epochs": frozenset({"run_id", "strategy"}),
    "steps": frozenset({"run_id", "strategy"}),
}
# ... and True / False cells (written by pandas as "True" / "False").
BOOL_COLUMNS = {"runs": frozenset({"timing_reliable"}), "epochs": frozenset(), "steps": frozenset()}

# Columns renamed since results folders were first written: old name -> current name (the old
# "wall-clock" columns were sums of step times; the "blurred" columns are the naive
# reconstruction's, from before the task became a plug-in).
RENAMED_COLUMNS = {
    "total_wall_time_s": "train_time_s",
    "wall_time_s": "train_time_s",
    "blurred_test_psnr": "naive_test_psnr",
    "blurred_test_ssim": "naive_test_ssim",
}
RENAMED = {
    name: {old: new for old, new in RENAMED_COLUMNS.items() if new in columns}
    for name, columns in COLUMNS.items()
}
# Columns added after the first harness commit: an older table lacks them, and its rows hold
# missing values there ("not measured"). A table lacking any other declared column is damaged.
ADDED_COLUMNS = {
    "runs": (
        "setting_hash", "model_form", "lipschitz_control", "lr_schedule", "model_lipschitz",
        "model_activation",
        "certified_lipschitz_bound", "max_layer_lipschitz",
        "backward_converged_frac", "skipped_steps", "peak_step_bytes", "eval_time_s",
        "diagnostics_time_s", "run_wall_time_s", "setup_time_s", "train_time_s",
        *(f"naive_test_{m}" for m in METRICS), "jacobian_products_per_step",
        "torch_threads", "cpu_count", "jobs", "load_avg_max", "cpu_util", "step_time_cv",
        "step_time_robust_cv", "warmup_steps", "warmup_step_time_s", "timing_reliable",
        "timing_note", "task", "median_certify_time_s", "certify_peak_bytes",
        "contraction_budget_used", "adjoint_error_last", "adjoint_error_bound_last",
        "max_adjoint_error_bound", "fidelity_images",
        # a metric registered later has no column in older tables
        *(f"final_test_{m}" for m in METRICS if m not in ("psnr", "ssim")),
    ),
    "epochs": (
        "step", "epoch_end", "layer_lipschitz", "layer_lipschitz_converged",
        "grad_reference_converged", "grad_reference_forward_residual",
        "grad_reference_backward_residual", "train_time_s", *(f"naive_test_{m}" for m in METRICS),
        "certified_lipschitz_bound", "contraction_budget_used", "adjoint_error",
        "adjoint_error_bound",
        *(f"test_{m}" for m in METRICS if m not in ("psnr", "ssim")),
    ),
    "steps": (
        "backward_converged", "skipped", "jacobian_products", "certify_time_s", "adjoint_residual",
        "adjoint_error_bound", "adjoint_bound_time_s",
    ),
}  # fmt: skip
# Settings added after results were written, with the value every earlier run had (the harness
# had no other choice then): filled in where absent, since nothing is missing.
IMPLIED_SETTINGS = {
    "runs": {"model_activation": "relu", "jac_reg": 0.0, "jac_reg_every": 1},
    "epochs": {},
    "steps": {},
}
# Cells a complete runs row must fill: a runs.csv cut off mid-row parses, with these left empty.
REQUIRED_CELLS = ("run_id", "status", "config_hash")


@dataclass
class Conformed:
    """What :func:`conform` did to an older table: renames (old -> new), implied settings and the
    declared columns it lacks (left out: missing values)."""

    renamed: dict[str, str] = field(default_factory=dict)
    implied: dict[str, object] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def conform(frame: pd.DataFrame, name: str) -> tuple[pd.DataFrame, Conformed]:
    """``frame`` (table ``name`` as read) under the current schema: renamed columns under their
    current names (a table holding both keeps the current one, filled from the old one where
    empty), implied settings filled in; the declared columns still absent are named, not added.
    """
    renames = {old: new for old, new in RENAMED[name].items() if old in frame.columns}
    if renames:
        frame = frame.copy()
        for old, new in renames.items():
            if new in frame.columns:
                frame[new] = frame[new].fillna(frame[old])
        both = [old for old, new in renames.items() if new in frame.columns]
        frame = frame.drop(columns=both).rename(columns=renames)
    implied = {c: v for c, v in IMPLIED_SETTINGS[name].items() if c not in frame.columns}
    # runs written before the task became a plug-in were deblurring (blur was the only task)
    if name == "runs" and "task" not in frame.columns and "blur_kernel_size" in frame.columns:
        frame = frame.copy()
        frame.insert(frame.columns.get_loc("blur_kernel_size"), "task", "blur")
        implied["task"] = "blur"
    if implied:
        frame = frame.assign(**{c: v for c, v in implied.items() if c != "task"})
    missing = [c for c in COLUMNS[name] if c not in frame.columns]
    return frame, Conformed(renames, implied, missing)


def read_csv(path, name: str) -> pd.DataFrame:
    """Table ``name`` from the CSV at ``path``, text columns as strings (missing text stays NaN)."""
    text = TABLE_TEXT_COLUMNS[name] | frozenset(TEXT_COLUMNS)
    return pd.read_csv(path, dtype=dict.fromkeys(text, str))
