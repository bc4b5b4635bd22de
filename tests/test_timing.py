"""Timings you can trust (issue 11 §2): what a real run records about its own timing.

The verdict itself is tested from given numbers in tests/test_summary.py (a quiet machine cannot
be guaranteed in a test). Here: a real run's columns agree with its step rows, and a run made
to share its only core with a busy process is flagged, by construction rather than by luck.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_config

from bench import results, training
from bench.config import RunConfig
from bench.summary import MIN_CPU_UTIL

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _run(epochs=2) -> RunConfig:
    return run_config(
        "jfb",
        0,
        suite="timing",
        data=dict(dataset="faces", image_size=12, n_images=30),
        model=dict(width=4, depth=2),
        solver=dict(name="anderson", max_iter=50, tol=1e-3),
        train=dict(epochs=epochs, batch_size=8, grad_fidelity=True, n_recon=1, device="cpu"),
    )


@pytest.mark.slow
def test_a_run_records_its_threads_load_and_phases_and_leaves_warmup_out():
    tables = training.train(_run(), CPU)
    run, steps, epochs = tables["runs"].iloc[0], tables["steps"], tables["epochs"]
    times = steps.sort_values("step")["step_time_s"].to_numpy()
    assert len(times) == 6  # 2 epochs of ceil(24 train images / 8)
    assert run["warmup_steps"] == 3
    assert run["median_step_time_s"] == pytest.approx(np.median(times[3:]))
    assert run["warmup_step_time_s"] == pytest.approx(np.median(times[:3]))
    assert run["step_time_cv"] == pytest.approx(np.std(times[3:], ddof=1) / np.mean(times[3:]))
    # train_time_s is the sum of step times, in runs.csv and (cumulative) in epochs.csv
    assert run["train_time_s"] == pytest.approx(times.sum())
    assert epochs["train_time_s"].iloc[-1] == pytest.approx(times.sum())
    assert "total_wall_time_s" not in tables["runs"] and "wall_time_s" not in epochs
    # the phases are disjoint parts of the run's wall-clock
    phases = [run[c] for c in ("setup_time_s", "train_time_s", "eval_time_s", "diagnostics_time_s")]
    assert all(p > 0 for p in phases) and sum(phases) <= run["run_wall_time_s"]
    assert run["torch_threads"] == torch.get_num_threads()
    assert run["cpu_count"] == len(os.sched_getaffinity(0))
    assert run["load_avg_max"] >= 0 and run["cpu_util"] > 0
    assert bool(run["timing_reliable"]) == (run["timing_note"] == "")


@pytest.mark.slow
def test_a_run_sharing_its_core_with_a_busy_process_is_flagged(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(
        """
strategies = ["jfb"]
[data]
dataset = "faces"
n_images = 40
[model]
width = 4
depth = 2
[solver]
name = "fixed_point_iter"
max_iter = 30
tol = 1e-3
[train]
epochs = 4
batch_size = 4
n_recon = 1
grad_fidelity = false
device = "cpu"
"""
    )
    core = min(os.sched_getaffinity(0))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(spinner.pid, {core})  # the busy process and the run: one core
        proc = subprocess.run(
            [sys.executable, "-m", "bench.cli", "run", str(suite), "--out", str(tmp_path / "out"),
             "--quiet"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
            preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        )  # fmt: skip
    finally:
        spinner.kill()
        spinner.wait()
    assert proc.returncode == 0, proc.stderr
    run = results.load(tmp_path / "out")["runs"].iloc[0]
    assert run["cpu_count"] == 1 and run["torch_threads"] == 1 and run["jobs"] == 1
    # the core was shared half and half: the run got about half of it
    assert run["cpu_util"] < MIN_CPU_UTIL
    assert not run["timing_reliable"] and "CPU utilisation" in run["timing_note"]
    assert "timing unreliable" in proc.stdout
