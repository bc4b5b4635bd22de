"""The per-run summary (bench/summary.py) and the timing verdict, from constructed numbers.

Expected values are computed here independently (statistics, numpy, scipy), never copied from
the code under test; nothing is timed.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy.stats import median_abs_deviation

from bench import summary
from bench.summary import run_summary, timing_verdict, warmup_count

TIMES = [0.9, 0.5, 0.4, 0.10, 0.12, 0.11, 0.13, 0.10]  # three slow warm-up steps, then five


def _steps(times, forward_iters=None, backward_iters=None, **extra) -> pd.DataFrame:
    n = len(times)
    frame = pd.DataFrame(
        {
            "step": range(1, n + 1),
            "step_time_s": times,
            "forward_time_s": [t * 0.6 for t in times],
            "backward_time_s": [t * 0.3 for t in times],
            "optimizer_time_s": [t * 0.1 for t in times],
            "forward_iters": forward_iters if forward_iters is not None else [5.0] * n,
            "backward_iters": backward_iters if backward_iters is not None else [math.nan] * n,
            "forward_converged": [1.0] * n,
            "backward_converged": [math.nan] * n,
            "skipped": [0.0] * n,
        }
    )
    for name, values in extra.items():
        frame[name] = values
    return frame


def _epochs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "step": [3, 6, 8],
            "train_loss": [0.5, 0.3, 0.2],
            "test_psnr": [20.0, 22.0, 23.5],
            "test_ssim": [0.6, 0.7, 0.75],
            "grad_cosine": [0.9, math.nan, math.nan],
            "grad_reference_converged": [1.0, math.nan, 0.0],  # last reference unconverged
            "layer_lipschitz": [0.8, 0.95, 0.9],
        }
    )


def test_summary_leaves_warmup_out_of_medians_and_counts_every_step_elsewhere():
    steps = _steps(
        TIMES,
        forward_iters=[4.0, 4, 5, 5, 5, 6, 6, 5],
        skipped=[0.0, 1, 0, 0, 1, 0, 0, 0],
        jacobian_products=[1.0, 1, 1, 3, 1, 1, 1, 1],
    )
    s = run_summary(steps, _epochs())
    timed = TIMES[3:]
    assert s["warmup_steps"] == 3
    assert s["warmup_step_time_s"] == pytest.approx(statistics.median(TIMES[:3]))
    assert s["median_step_time_s"] == pytest.approx(statistics.median(timed))
    assert s["median_forward_time_s"] == pytest.approx(statistics.median(t * 0.6 for t in timed))
    assert s["step_time_cv"] == pytest.approx(statistics.stdev(timed) / statistics.mean(timed))
    assert s["train_time_s"] == pytest.approx(sum(TIMES))  # every step is training time
    assert s["mean_forward_iters"] == pytest.approx(statistics.mean([4, 4, 5, 5, 5, 6, 6, 5]))
    assert s["skipped_steps"] == 2
    assert s["jacobian_products_per_step"] == pytest.approx(10 / 8)  # every step counts
    assert math.isnan(s["mean_backward_iters"])  # jfb-like: no backward solve
    # evaluations: the last one's numbers, the cosine of the first and last fidelity check
    assert (s["final_test_psnr"], s["final_test_ssim"], s["final_train_loss"]) == (23.5, 0.75, 0.2)
    assert s["grad_cosine_first"] == 0.9 and math.isnan(s["grad_cosine_last"])
    assert s["lipschitz_estimate"] == 0.9 and s["max_layer_lipschitz"] == 0.95


def test_summary_orders_rows_by_step_and_handles_no_rows():
    shuffled = _steps(TIMES).sample(frac=1.0, random_state=0)
    assert run_summary(shuffled, _epochs().iloc[::-1])["median_step_time_s"] == pytest.approx(
        statistics.median(TIMES[3:])
    )
    assert run_summary(shuffled, _epochs().iloc[::-1])["final_test_psnr"] == 23.5
    empty = run_summary(_steps([]), _epochs().iloc[:0])
    assert empty["train_time_s"] == 0 and empty["warmup_steps"] == 0
    assert math.isnan(empty["median_step_time_s"]) and math.isnan(empty["final_test_psnr"])


def test_warmup_never_takes_more_than_half_of_a_short_run():
    for n in range(40):
        w = warmup_count(n)
        assert 0 <= w <= n - w  # at least half of the steps stay measured
        if n >= 2 * summary.WARMUP_STEPS:
            assert w == summary.WARMUP_STEPS


def test_robust_cv_ignores_work_that_varies_and_a_single_stall():
    # step time exactly proportional to the solver's iterations: no noise at all
    iters = [5.0, 10.0] * 10
    proportional = _steps([0.01 * i for i in iters], forward_iters=iters)
    s = run_summary(proportional, _epochs())
    assert s["step_time_cv"] > 0.3  # the plain CV sees the work as spread
    assert s["step_time_robust_cv"] == pytest.approx(0.0, abs=1e-12)
    # one 100x stall among identical steps moves the plain CV, not the robust one
    stalled = _steps([0.05] * 10 + [5.0] + [0.05] * 9)
    s = run_summary(stalled, _epochs())
    assert s["step_time_cv"] > 2 and s["step_time_robust_cv"] == pytest.approx(0.0, abs=1e-12)


def test_robust_cv_is_the_normal_scaled_mad_within_groups_of_equal_work():
    rng = np.random.default_rng(0)
    a = 0.1 * (1 + 0.05 * rng.standard_normal(40))  # 5 % noise at 5 iterations
    b = 0.2 * (1 + 0.05 * rng.standard_normal(40))  # the same noise at 10 iterations
    times = np.concatenate([[1.0, 1.0, 1.0], np.ravel(np.column_stack([a, b]))])
    iters = np.concatenate([[5.0] * 3, np.tile([5.0, 10.0], 40)])
    s = run_summary(_steps(list(times), forward_iters=list(iters)), _epochs())
    relative = np.concatenate([a / np.median(a), b / np.median(b)])
    expected = median_abs_deviation(relative, center=lambda x, axis: 1.0, scale="normal")
    assert s["step_time_robust_cv"] == pytest.approx(expected, rel=1e-9)
    assert 0.03 < s["step_time_robust_cv"] < 0.07  # and it recovers the 5 % put in


def test_robust_cv_has_no_evidence_without_repeated_work():
    s = run_summary(
        _steps([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], forward_iters=range(8)), _epochs()
    )
    assert math.isnan(s["step_time_robust_cv"])


QUIET = dict(load_avg_max=1.9, machine_cpus=2, cpu_util=0.97, robust_cv=0.08)


def test_a_quiet_run_is_reliable():
    assert timing_verdict(**QUIET) == (True, "")
    # a 2-thread run alone on 2 cores: its own threads and the OS put the load a little above 2
    assert timing_verdict(**(QUIET | {"load_avg_max": 2.4})) == (True, "")


@pytest.mark.parametrize(
    "change, words",
    [
        ({"load_avg_max": 3.5}, "load average 3.50 > 2 cores + 1"),
        ({"cpu_util": 0.5}, "CPU utilisation 0.50"),
        ({"robust_cv": 0.8}, "step-time spread 0.80"),
    ],
)
def test_each_sign_of_contention_makes_a_run_unreliable_and_says_why(change, words):
    reliable, note = timing_verdict(**(QUIET | change))
    assert not reliable and words in note and ";" not in note


def test_all_reasons_are_given_and_missing_numbers_are_no_evidence():
    reliable, note = timing_verdict(load_avg_max=9.0, machine_cpus=2, cpu_util=0.2, robust_cv=1.0)
    assert not reliable and note.count(";") == 2
    nan = dict(load_avg_max=math.nan, machine_cpus=2, cpu_util=math.nan, robust_cv=math.nan)
    assert timing_verdict(**nan) == (True, "")


def test_cpu_utilisation_is_not_judged_on_a_gpu():
    gpu = QUIET | {"cpu_util": 0.1}
    assert timing_verdict(**gpu, device_type="cuda") == (True, "")
    assert not timing_verdict(**gpu, device_type="cpu")[0]


def test_old_folders_without_the_newer_columns_are_summarised():
    # a folder from before the validity columns: no skipped / converged / reference columns
    steps = _steps(TIMES).drop(columns=["skipped", "backward_converged"])
    epochs = _epochs().drop(columns=["grad_reference_converged", "layer_lipschitz"])
    s = run_summary(steps, epochs)
    assert s["skipped_steps"] == 0 and math.isnan(s["backward_converged_frac"])
    assert s["grad_cosine_first"] == 0.9 and s["grad_cosine_last"] == 0.9  # the one measured
    assert math.isnan(s["max_layer_lipschitz"])
    assert s["median_step_time_s"] == pytest.approx(statistics.median(TIMES[3:]))
