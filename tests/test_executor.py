"""Sweeps through submitit: tested with submitit's local backend (no SLURM needed)."""

from __future__ import annotations

import shutil

import pytest
from helpers import TINY, cli

from bench import results
from bench.cli import main

SUITE = TINY.replace(
    'strategies = ["jfb", "cg:tol=1e-6:max_iter=300", "neumann:k=3", "unrolled:k=3"]',
    'strategies = ["jfb", "unrolled:k=3"]',
).replace("epochs = 2", "epochs = 1")


@pytest.mark.slow
def test_submitit_jobs_merge_into_one_results_folder_and_resume(tmp_path):
    assert 'strategies = ["jfb", "unrolled:k=3"]' in SUITE
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    local = cli("run", suite, "--out", out, "--quiet", "--strategies", "jfb", cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    sub = cli(
        "run", suite, "--out", out, "--executor", "submitit", "--submitit-cluster", "local",
        cwd=tmp_path,
    )  # fmt: skip
    assert sub.returncode == 0, sub.stderr + sub.stdout
    assert "submitted 1 job(s) to local" in sub.stdout and "1 already complete" in sub.stdout
    runs = results.load(out)["runs"]
    learned = runs[~runs.strategy.str.startswith("baseline:")]
    assert sorted(learned.strategy) == ["jfb", "unrolled"] and (learned.status == "ok").all()
    assert runs.run_id.is_unique
    steps = results.load(out)["steps"]
    assert set(steps.strategy) == {"jfb", "unrolled"}
    assert list((out / "submitit").glob("*_log.out"))  # submitit really ran the job
    again = cli(
        "run", suite, "--out", out, "--executor", "submitit", "--submitit-cluster", "local",
        cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0 and "2 already complete" in again.stdout
    assert "submitted" not in again.stdout


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="SLURM is installed here")
def test_submitit_without_slurm_is_a_clear_usage_error(tmp_path, capsys):
    code = main(["run", "--executor", "submitit", "--out", str(tmp_path), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "SLURM not found" in err and "--submitit-cluster local" in err
