"""Executors: local parallel sweeps (-j N) and submitit (tested with its local backend, no SLURM
needed)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from helpers import MINI, TINY, cli_in_process, subprocess_env

from bench import results, sweep
from bench.cli import main
from bench.config import load_suite
from bench.executor import LocalExecutor, gpu_per_slot, threads_per_job

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
    local = cli_in_process("run", suite, "--out", out, "--quiet", "--strategies", "jfb")
    assert local.returncode == 0, local.stderr
    sub = cli_in_process(
        "run", suite, "--out", out, "--executor", "submitit", "--submitit-cluster", "local"
    )
    assert sub.returncode == 0, sub.stderr + sub.stdout
    assert "submitted 1 job(s) to local" in sub.stdout and "1 already complete" in sub.stdout
    runs = results.load(out)["runs"]
    learned = runs[~runs.strategy.str.startswith("baseline:")]
    assert sorted(learned.strategy) == ["jfb", "unrolled"] and (learned.status == "ok").all()
    assert runs.run_id.is_unique
    steps = results.load(out)["steps"]
    assert set(steps.strategy) == {"jfb", "unrolled"}
    assert list((out / "submitit").glob("*_log.out"))  # submitit really ran the job
    again = cli_in_process(
        "run", suite, "--out", out, "--executor", "submitit", "--submitit-cluster", "local"
    )
    assert again.returncode == 0 and "2 already complete" in again.stdout
    assert "submitted" not in again.stdout


@pytest.mark.slow
@pytest.mark.parametrize("group", [False, True])
def test_interrupting_a_submitit_sweep_cancels_its_jobs_and_merges_what_finished(tmp_path, group):
    suite = tmp_path / "two.toml"  # one short run, one long: interrupted between their ends
    suite.write_text(
        MINI.replace("seeds = 3", "seeds = 1") + '[sweep]\n"train.epochs" = [1, 1000]\n'
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "run", str(suite), "--out", str(out), "--quiet",
         "--executor", "submitit", "--submitit-cluster", "local"],
        cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(out.glob("parts/*/runs.csv")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)  # polling for the short run's part, not waiting for timing
    (short,) = [p.parent.name for p in out.glob("parts/*/runs.csv")]
    jobs = psutil.Process(proc.pid).children(recursive=True)  # the jobs, and their tasks
    if group:  # Ctrl-C: the terminal signals the whole process group, jobs included
        os.killpg(proc.pid, signal.SIGINT)
    else:  # `kill -INT`: the jobs get no signal of their own
        proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=120)  # returns once the jobs let go of its pipes
        _, alive = psutil.wait_procs(jobs, timeout=60)
    finally:  # a job left running would train for minutes
        if proc.poll() is None:
            proc.kill()
        for process in jobs:
            with contextlib.suppress(psutil.Error):
                process.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        "implicit-bench: interrupted; finished runs are saved, rerun to resume"
    ]
    assert not alive, alive  # cancelled, not left to run to the end
    runs = results.load(out)["runs"]  # merged, as a local sweep merges each finished run
    assert list(runs.run_id) == [short] and list(runs.status) == ["ok"]
    assert len(list(out.glob("parts/*/runs.csv"))) == 1  # the long run never finished


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="SLURM is installed here")
def test_submitit_without_slurm_is_a_clear_usage_error(tmp_path, capsys):
    code = main(["run", "--executor", "submitit", "--out", str(tmp_path), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "SLURM not found" in err and "--submitit-cluster local" in err


# ---- local parallel sweeps (-j N) -------------------------------------------------------------

FAST = (
    MINI.replace('strategies = ["jfb"]', 'strategies = ["jfb", "unrolled:k=2"]')
    .replace("seeds = 3", "seeds = 2")
    .replace("n_images = 6", "n_images = 12")
)


def _cores() -> int:
    """Cores shared among the jobs: usable by this process, at most torch's own thread count."""
    return min(len(os.sched_getaffinity(0)), torch.get_num_threads())


@pytest.mark.slow
def test_two_jobs_use_two_processes_lose_no_row_and_resume(tmp_path):
    suite = load_suite(str(_write(tmp_path, FAST)))
    out = tmp_path / "out"
    todo, _ = sweep.plan(suite, out)
    assert len(todo) == 4
    outcomes = list(
        LocalExecutor(jobs=2).map(todo, out, started=time.time(), force=False, progress=False)
    )
    pids = {o.pid for o in outcomes}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes really ran
    assert sorted(o.run_id for o in outcomes) == sorted(r.run_id for r in todo)
    assert all(o.status == "ok" for o in outcomes)
    runs = results.merge(out)["runs"]
    assert len(runs) == 4 and runs.run_id.is_unique
    assert (runs.jobs == 2).all() and (runs.torch_threads == max(1, _cores() // 2)).all()
    assert (runs.cpu_count == len(os.sched_getaffinity(0))).all()
    # the same suite from the command line with -j 2: everything is already there
    again = cli_in_process("run", tmp_path / "fast.toml", "--out", out, "-j", "2")
    assert again.returncode == 0, again.stderr
    assert "4 already complete" in again.stdout and len(results.load(out)["runs"]) == 4


@pytest.mark.slow
def test_jobs_from_the_command_line_print_a_line_per_run_and_the_suite_timing(tmp_path):
    _write(tmp_path, FAST.replace("seeds = 2", "seeds = 1"))
    out = tmp_path / "out"
    proc = cli_in_process("run", tmp_path / "fast.toml", "--out", out, "-j", "2")
    assert proc.returncode == 0, proc.stderr
    runs = results.load(out)["runs"]
    lines = [line for line in proc.stdout.splitlines() if line.split(":")[0] in set(runs.run_id)]
    assert len(lines) == 2 and all(": ok" in line for line in lines)
    timing = json.loads((out / "suite_timing.json").read_text())
    assert timing["jobs"] == 2 and timing["runs_trained"] == 2
    phases = timing["runs_phases_s"]
    assert phases["train_time_s"] == pytest.approx(runs.train_time_s.sum())
    assert timing["wall_time_s"] >= timing["runs_time_s"] > 0
    assert "time:" in proc.stdout and "with -j 2" in proc.stdout
    # a run's phases fit in its wall-clock
    parts = runs[["setup_time_s", "train_time_s", "eval_time_s", "diagnostics_time_s"]]
    assert (parts.sum(axis=1) <= runs.run_wall_time_s).all()


def _sweep_until(tmp_path: Path, runs_under_way: bool) -> tuple[subprocess.Popen, dict]:
    """Start ``implicit-bench run -j 2`` on a slow FAST suite (in its own process group, as a
    terminal runs it) and wait until its two worker processes are loading torch, or until each
    holds a run's claim: returns the process and {worker: the run id it trains, or None}."""
    suite = _write(
        tmp_path, FAST.replace("seeds = 2", "seeds = 3").replace("epochs = 1", "epochs = 20")
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "run", str(suite), "--out", str(tmp_path / "out"),
         "--quiet", "-j", "2"],
        cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    parent = psutil.Process(proc.pid)

    def workers() -> dict:
        found = {}
        try:
            for child in parent.children():
                if "spawn_main" not in " ".join(child.cmdline()):
                    continue  # e.g. multiprocessing's resource tracker
                if not any("libtorch" in m.path for m in child.memory_maps()):
                    continue  # not yet past its start (the parent may still be starting it)
                claims = [f.path for f in child.open_files() if "/.claims/" in f.path]
                # a claim is a lock file held open while its run trains
                found[child] = Path(claims[0]).stem if claims else None
        except psutil.Error:  # a child that ended meanwhile
            pass
        return found

    def ready(found: dict) -> bool:
        return len(found) == 2 and (not runs_under_way or None not in found.values())

    deadline = time.monotonic() + 300
    while not ready(found := workers()) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)  # polling for the workers' state, not waiting for timing
    assert ready(found), proc.communicate(timeout=60)
    return proc, found


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, code, runs_under_way",
    [(signal.SIGTERM, 143, True), (signal.SIGINT, 130, True), (signal.SIGINT, 130, False)],
)
def test_stopping_a_parallel_sweep_leaves_no_worker_behind(tmp_path, sig, code, runs_under_way):
    proc, found = _sweep_until(tmp_path, runs_under_way)
    if sig == signal.SIGINT:  # Ctrl-C: the terminal signals the whole process group
        os.killpg(proc.pid, sig)  # (while the workers train, or still import torch)
    else:  # a scheduler signals the process it started
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    # the harness's one line, nothing else (no multiprocessing "leaked semaphore" warning, no
    # worker's KeyboardInterrupt traceback)
    assert stderr.strip().splitlines()[-1].endswith("finished runs are saved, rerun to resume")
    assert all(line.startswith("implicit-bench: ") for line in stderr.strip().splitlines())
    _, alive = psutil.wait_procs(list(found), timeout=30)
    assert not alive, [p.pid for p in alive]


@pytest.mark.slow
def test_a_killed_worker_costs_only_the_run_it_was_running(tmp_path):
    proc, found = _sweep_until(tmp_path, runs_under_way=True)
    worker, killed = next(iter(found.items()))
    worker.send_signal(signal.SIGKILL)  # what the out-of-memory killer does
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr  # a run failed
    runs = results.load(tmp_path / "out")["runs"].set_index("run_id")
    assert len(runs) == 6, stdout + stderr  # every run is recorded
    assert runs.status.drop(killed).eq("ok").all(), runs.status_reason
    assert runs.status[killed] == "failed"
    reason = runs.status_reason[killed]
    assert "signal 9" in reason and "SIGKILL" in reason and "out of memory" in reason
    assert runs.jobs.eq(2).all()
    assert f"{killed}: failed (worker process died: killed by signal 9" in stdout
    assert "starting a new one" in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_more_jobs_than_runs_or_cores_records_the_workers_used(tmp_path, monkeypatch, capsys):
    suite = load_suite(str(_write(tmp_path, FAST.replace("seeds = 2", "seeds = 1"))))
    out = tmp_path / "out"
    todo, _ = sweep.plan(suite, out)
    monkeypatch.setattr("bench.executor.usable_cores", lambda: 1)  # as on a 1-core machine
    executor = LocalExecutor(jobs=1000)
    outcomes = list(executor.map(todo, out, started=time.time(), force=False, progress=False))
    assert [o.status for o in outcomes] == ["ok", "ok"]
    runs = results.merge(out)["runs"]
    assert (runs.jobs == 2).all() and (runs.torch_threads == 1).all()  # 2 workers, not 1000
    err = capsys.readouterr().err
    assert "-j 1000: 2 worker processes on 1 core(s)" in err
    assert executor.workers(len(todo)) == 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["-j", "0"], "-j/--jobs must be >= 1, got 0"),
        (["-j", "-3"], "-j/--jobs must be >= 1, got -3"),
        (["-j", "two"], "invalid int value"),
        (["--runs-per-gpu", "0"], "--runs-per-gpu must be >= 1"),
        (["-j", "2", "--executor", "submitit"], "-j/--jobs applies to --executor local"),
    ],
)
def test_bad_job_counts_are_one_line_and_exit_status_2(args, words, tmp_path, capsys):
    try:
        code = main(["run", "--out", str(tmp_path), "--epochs", "1", *args])
    except SystemExit as exit:  # argparse's own errors (not an int)
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_executor_settings_are_checked_as_values():
    with pytest.raises(ValueError, match="jobs must be an integer >= 1, got 0"):
        LocalExecutor(jobs=0)
    with pytest.raises(ValueError, match="runs_per_gpu must be an integer >= 1, got 1.5"):
        LocalExecutor(jobs=2, runs_per_gpu=1.5)


def test_threads_share_the_cores_among_the_jobs():
    # (cores, jobs) -> threads: every job gets at least one, none more than its share
    for cores in range(1, 17):
        for jobs in range(1, 9):
            threads = threads_per_job(cores, jobs)
            assert threads >= 1 and (threads * jobs <= cores or threads == 1)
            assert (threads + 1) * jobs > cores  # no core left idle that a job could use


def test_each_worker_slot_gets_a_gpu_and_too_few_gpus_is_an_error():
    assert gpu_per_slot(["0", "1"], workers=2, runs_per_gpu=1) == ["0", "1"]
    assert gpu_per_slot(["3", "5"], workers=4, runs_per_gpu=2) == ["3", "3", "5", "5"]
    assert gpu_per_slot(["3", "5"], workers=3, runs_per_gpu=2) == ["3", "3", "5"]
    with pytest.raises(ValueError, match="-j 3 needs 3 GPU"):
        gpu_per_slot(["0", "1"], workers=3, runs_per_gpu=1)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fast.toml"
    path.write_text(text)
    return path
