"""One run's summary: every runs.csv cell that derives from its step and evaluation rows.

``run_summary`` is the single place these numbers are computed: the runner writes them, and the
report recomputes them from old folders with the same function. ``timing_verdict`` decides, from
numbers only, whether a run's timings can be trusted (the runner records the inputs: threads,
usable cores, load average, CPU utilisation).
"""

from __future__ import annotations

import math

import pandas as pd
from scipy.stats import norm

from .metrics import METRICS

# Steps excluded from every median as warm-up. Measured on the quick layer (2-core CPU): step 1
# took 1.5-2.2x the median (allocator growth, oneDNN primitive creation, and it is also the step
# whose saved tensors are counted), steps 2 and 3 were within the spread of the rest. The peak
# byte replay runs just before step 2 (it can evict caches); a CUDA run pays its context, cuBLAS
# handles and kernel selection in the first steps. Three steps cover all of these.
WARMUP_STEPS = 3

# Thresholds of timing_verdict (see its docstring for what was measured).
MIN_CPU_UTIL = 0.75
MAX_ROBUST_CV = 0.3
MAD_TO_SIGMA = 1 / norm.ppf(0.75)  # MAD x this estimates a normal sample's standard deviation


def warmup_count(n_steps: int, warmup: int = WARMUP_STEPS) -> int:
    """Warm-up steps of a run of ``n_steps``: ``warmup``, but never more than half the steps, so
    that a short run keeps at least half of its steps measured."""
    return min(warmup, n_steps // 2)


def run_summary(
    steps: pd.DataFrame, epochs: pd.DataFrame, warmup: int = WARMUP_STEPS
) -> dict[str, float]:
    """The runs-row columns derived from one run's ``steps`` and ``epochs`` rows.

    Medians and the step-time spread leave out the first ``warmup_count(len(steps))`` steps
    (reported apart as ``warmup_step_time_s``); means and counts cover every step, since the
    warm-up steps trained the model like the others. ``train_time_s`` is the sum of all step
    times (the training-time budget; it is not wall-clock). The first / last gradient cosine are
    those of the first / last evaluation that measured the fidelity (NaN where its reference did
    not converge). Either frame may be empty.
    """
    steps = steps.sort_values("step") if "step" in steps and len(steps) else steps
    epochs = epochs.sort_values("step", kind="stable") if "step" in epochs else epochs
    n = len(steps)
    w = warmup_count(n, warmup)
    timed, warm = steps.iloc[w:], steps.iloc[:w]
    times = timed["step_time_s"] if n else pd.Series(dtype=float)

    def median(frame, column):
        return float(frame[column].median()) if len(frame) and column in frame else math.nan

    def mean(column):
        return float(steps[column].mean()) if n and column in steps else math.nan

    last = epochs.iloc[-1] if len(epochs) else {}
    # evaluations that measured the fidelity (older folders lack the reference columns)
    checked = "grad_reference_converged" if "grad_reference_converged" in epochs else "grad_cosine"
    fidelity = epochs[epochs[checked].notna()] if len(epochs) else epochs
    lipschitz = epochs["layer_lipschitz"] if "layer_lipschitz" in epochs else pd.Series(dtype=float)
    return {
        "final_train_loss": float(last.get("train_loss", math.nan)),
        **{f"final_test_{m}": float(last.get(f"test_{m}", math.nan)) for m in METRICS},
        "train_time_s": float(steps["step_time_s"].sum()) if n else 0.0,
        "median_step_time_s": median(timed, "step_time_s"),
        "median_certify_time_s": median(timed, "certify_time_s"),
        "median_forward_time_s": median(timed, "forward_time_s"),
        "median_backward_time_s": median(timed, "backward_time_s"),
        "median_optimizer_time_s": median(timed, "optimizer_time_s"),
        "warmup_steps": w,
        "warmup_step_time_s": median(warm, "step_time_s"),
        "step_time_cv": float(times.std() / times.mean()) if len(times) >= 2 else math.nan,
        "step_time_robust_cv": robust_cv(timed),
        "mean_forward_iters": mean("forward_iters"),
        "forward_converged_frac": mean("forward_converged"),
        "mean_backward_iters": mean("backward_iters"),
        "backward_converged_frac": mean("backward_converged"),
        "jacobian_products_per_step": mean("jacobian_products"),
        "skipped_steps": float(steps["skipped"].sum()) if n and "skipped" in steps else 0.0,
        "grad_cosine_first": float(fidelity["grad_cosine"].iloc[0]) if len(fidelity) else math.nan,
        "grad_cosine_last": float(fidelity["grad_cosine"].iloc[-1]) if len(fidelity) else math.nan,
        "lipschitz_estimate": float(lipschitz.iloc[-1]) if len(lipschitz) else math.nan,
        "max_layer_lipschitz": float(lipschitz.max()) if len(lipschitz) else math.nan,
        # the adjoint's measured error and certified bound at the last fidelity evaluation, and
        # the largest certified bound of any step (bench/bounds.py)
        "adjoint_error_last": _last(fidelity, "adjoint_error"),
        "adjoint_error_bound_last": _last(fidelity, "adjoint_error_bound"),
        "max_adjoint_error_bound": float(steps["adjoint_error_bound"].max())
        if n and "adjoint_error_bound" in steps
        else math.nan,
        "contraction_budget_used": float(epochs["contraction_budget_used"].max())
        if len(epochs) and "contraction_budget_used" in epochs
        else math.nan,
    }


def _last(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].iloc[-1]) if len(frame) and column in frame else math.nan


def robust_cv(steps: pd.DataFrame) -> float:
    """Spread of step times among steps that did the same solver work, relative to their median.

    A forward (or backward) solve legitimately takes more iterations on some batches, so the
    plain CV mixes noise with work. Steps are grouped by (forward_iters, backward_iters); each
    step's time is compared with its group's median, and the result is 1.4826 x the median
    absolute relative deviation (a standard-deviation estimate that one slow step cannot move).
    Only groups of two or more steps carry information; NaN when there are none.
    """
    if len(steps) < 2:
        return math.nan
    keys = [steps[c].fillna(-1.0) for c in ("forward_iters", "backward_iters") if c in steps]
    groups = steps.groupby(keys, dropna=False)["step_time_s"] if keys else None
    if groups is None:
        group_median = pd.Series(steps["step_time_s"].median(), index=steps.index)
        size = pd.Series(len(steps), index=steps.index)
    else:
        group_median, size = groups.transform("median"), groups.transform("size")
    deviation = (steps["step_time_s"] / group_median - 1.0).abs()[size >= 2]
    return float(MAD_TO_SIGMA * deviation.median()) if len(deviation) else math.nan


def timing_verdict(
    *,
    load_avg_max: float,
    machine_cpus: int,
    cpu_util: float,
    robust_cv: float,
    device_type: str = "cpu",
) -> tuple[bool, str]:
    """Whether a run's step times can be trusted, and if not, why (``(True, "")`` otherwise).

    A run is unreliable when any of these held (NaN inputs are no evidence either way):

    - ``load_avg_max > machine_cpus + 1``: at least one runnable thread more than the machine
      has cores, on average over the minute before some sample. The load average counts the
      whole machine, so it is compared with the machine's cores, not with the cores this process
      may use; and it counts the run's own threads: a 2-thread run alone on the quiet 2-core
      machine reads about 2 (its threads, the parent process, the OS; 1.03 and 1.37 measured),
      and the plain ``> cores`` rule flagged 7 of 12 quiet quick-suite runs whose CPU
      utilisation was 0.99. With other processes competing, the machine read 4-11.
    - ``cpu_util < MIN_CPU_UTIL`` on the CPU: the process got less CPU time than its threads
      x the steps' wall time, i.e. its threads waited for cores. Measured on the shared 2-core
      machine (a quick-layer jfb run, 20 steps): 0.97-0.99 with one thread that had its core;
      0.51 with the run and a busy process pinned to one core; 0.50 with two threads and one
      core free (steps 3x slower), 0.19-0.28 with two threads at load 8-9. 0.75 is halfway.
      (Two threads on two idle cores could not be measured on the shared machine.) Not used on
      a GPU, where the CPU mostly waits for the device.
    - ``robust_cv > MAX_ROBUST_CV``: steps that did the same work took very different times.
      Measured: 0.05-0.13 where the threads had their cores (a single 3 s stall among 0.07 s
      steps moved the plain CV to 2.8 and this one not at all), 0.39-0.43 with two threads
      fighting for one core. Time-slicing against a busy process slows every step alike (0.09
      pinned beside one): that case is cpu_util's.
    """
    reasons = []
    if load_avg_max > machine_cpus + 1:
        reasons.append(f"load average {load_avg_max:.2f} > {machine_cpus} cores + 1")
    if device_type == "cpu" and cpu_util < MIN_CPU_UTIL:
        reasons.append(
            f"CPU utilisation {cpu_util:.2f} < {MIN_CPU_UTIL} (threads waited for cores)"
        )
    if robust_cv > MAX_ROBUST_CV:
        reasons.append(f"step-time spread {robust_cv:.2f} > {MAX_ROBUST_CV} (robust CV)")
    return not reasons, "; ".join(reasons)
