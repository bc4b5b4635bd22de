"""Run a suite: plan what is left to do in its results folder, fit the classical baselines, and
send the runs to an executor, merging the tables as runs finish.

:func:`run_suite` walks a suite's runs, skips those already complete in the results folder (same
config hash, which covers a fingerprint of the data loaded) and hands the rest to an executor
(:mod:`bench.executor`): one after the other in this process, ``-j N`` at once in a pool of
worker processes, or as submitit jobs. Each run is claimed (a per-run file lock) before it is
trained and writes its own part atomically when it ends (:func:`bench.execution.execute`), so
concurrent processes on one folder share the work instead of repeating it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import legacy, out_of_memory, provenance, results
from .config import RunConfig, Suite
from .device import DTYPES, resolve_device
from .execution import save_npz
from .executor import LocalExecutor
from .metrics import mean_metrics
from .out_of_memory import OutOfMemory, during
from .rows import setting_columns
from .task_data import (
    DATA_SETTINGS,
    TEST_NOISE_SEED,
    TaskData,
    fingerprinted_runs,
    load_task_data,
)


def run_baselines(suite: Suite, out: Path, force: bool = False) -> None:
    """Fit the suite's classical baselines on each data setting's training set (once, resumable).

    Whatever is missing is rebuilt: a baseline's part, or the reference reconstructions
    (``recons/reference.npz``) the report's figure needs.
    """
    if not suite.baselines:
        return
    out = Path(out)
    done = {} if force else results.completed_runs(out)
    for index, (data_cfg, problem_cfg, train_cfg) in enumerate(suite.data_settings()):
        data = load_task_data(data_cfg, problem_cfg)
        run = RunConfig(
            suite.name, "baseline", 0, data_cfg, problem_cfg, suite.model, suite.solver,
            train_cfg, data_fingerprint=data.fingerprint,
        )  # fmt: skip
        ids = {name: f"baseline-{name}-{run.config_hash}" for name in suite.baselines}
        # a baseline an older commit fitted on the same setting (its id hashed another way)
        older = legacy.legacy_config_hashes(run)
        fitted = all(
            any(i in done for i in (ids[name], *(f"baseline-{name}-{h}" for h in older)))
            for name in suite.baselines
        )
        reference_path = out / "recons" / "reference.npz"
        needs_reference = index == 0 and (force or not reference_path.exists())
        if fitted and not needs_reference:
            continue
        with results.claim(out, f"baseline-{run.config_hash}") as claimed:
            if not claimed:  # another process is fitting this setting's baselines
                continue
            what = f"fitting the classical baselines on {len(data.train_x)} training images"
            try:
                with during(what, DATA_SETTINGS):
                    _fit_baselines(
                        suite, out, run, data, ids, reference_path if index == 0 else None
                    )
            except OutOfMemory as err:  # the runs, a batch at a time, may still fit: go on
                results.warn(f"{err}; these baselines are left out (a rerun retries them)")


def _fit_baselines(suite, out: Path, run: RunConfig, data: TaskData, ids: dict, reference_path):
    from .baselines import fit_all

    task = data.task
    train_d = task.simulate(data.train_x, torch.Generator().manual_seed(TEST_NOISE_SEED + 1))
    fitted = fit_all(task, data.train_x, train_d, names=suite.baselines)
    # "measured": the task's naive reconstruction from the measurements (e.g. the blurred input)
    reference = {"original": data.test_x, "measured": task.naive(data.test_d)}
    for baseline in fitted:
        xhat = baseline.reconstruct(task, data.test_d)
        reference[f"baseline_{baseline.name}"] = xhat
        row = {
            **setting_columns(run, torch.device("cpu"), data),
            "run_id": ids[baseline.name],
            "strategy": f"baseline:{baseline.name}",
            "strategy_label": f"baseline:{baseline.name}",
            "params": json.dumps({"lam": baseline.lam}),
            "p_lam": baseline.lam,
            "seed": 0,
            "status": "ok",
            "status_reason": "",
            **{f"final_test_{m}": v for m, v in mean_metrics(xhat, data.test_x).items()},
            **{f"naive_test_{m}": v for m, v in data.naive_metrics.items()},
        }
        frame = pd.DataFrame([row]).reindex(
            columns=list(dict.fromkeys([*results.RUN_COLUMNS, *row]))
        )
        results.write_run(out, ids[baseline.name], {"runs": frame})
    if reference_path is not None:  # the report's grid uses the first setting's test images
        n = suite.train.n_recon
        save_npz(reference_path, **{k: v[:n].float().numpy() for k, v in reference.items()})


class StaleResults(ValueError):
    """Completed runs whose strategy code or defaults changed, with no --rerun/--keep choice."""


STALE_CHOICES = ("error", "rerun", "keep")


def plan(
    suite: Suite, out: Path, force: bool = False, stale: str = "error"
) -> tuple[list[RunConfig], dict[str, int]]:
    """The runs still to do in ``out``, and status counts starting with the skipped ones.

    Checks first that ``out`` is writable (ValueError otherwise), removes the temporary files a
    killed process left there, fingerprints each data setting's images (part of every run's
    identity) and sets broken parts aside. ok and diverged runs are results and are skipped; a
    failed run is retried. With ``force`` everything is redone, but nothing is deleted here: a
    run's old part stays until its new result replaces it.

    A completed run whose provenance no longer matches (``bench.provenance``: its strategy's
    code, parameters or a default setting changed) is never reused silently: with ``stale``
    "error" it raises :class:`StaleResults` naming them, "rerun" plans them again, "keep" keeps
    them (and says so). Runs made at another harness commit are only reported.
    """
    if stale not in STALE_CHOICES:
        raise ValueError(f"stale={stale!r}; accepted: {', '.join(STALE_CHOICES)}")
    out = Path(out)
    results.check_writable(out)
    results.remove_stale_temporaries(out, before=_process_start())
    runs = fingerprinted_runs(suite)
    done = results.completed_runs(out)  # validates (and sets aside broken parts) either way
    if force:
        done = {}
    # parts an older commit wrote for the same runs, under the run ids of its time
    adopted = legacy.adopt(out, runs, done)
    if adopted:
        commits = _commits(out, adopted.values())
        print(
            f"note: {len(adopted)} completed run(s) written by older harness commits "
            f"({commits}) have the settings of this suite's runs: kept, not redone"
        )
    old = provenance.stale_runs(out, runs, done)
    if old and stale == "error":
        first_id, reasons = next(iter(old.items()))
        raise StaleResults(
            f"{len(old)} completed run(s) in {out} are stale (e.g. {first_id}: {reasons[0]}); "
            "rerun them with --rerun-stale or keep them with --keep-stale"
        )
    if old:
        verb = "rerunning" if stale == "rerun" else "keeping (--keep-stale)"
        results.warn(f"{verb} {len(old)} stale run(s): {', '.join(old)}")
    commits = provenance.other_commits(out, runs, done)
    if commits:
        made = ", ".join(f"{n} at {c[:10]}" for c, n in commits.items())
        print(f"note: completed runs made at other harness commits are kept: {made}")
    redo = set(old) if stale == "rerun" else set()
    done |= {current: done[older] for current, older in adopted.items()}
    todo = [r for r in runs if done.get(r.run_id) not in results.COMPLETE or r.run_id in redo]
    counts = {"skipped": len(runs) - len(todo), "ok": 0, "diverged": 0, "failed": 0}
    return todo, counts | {"elsewhere": 0}


def _commits(out: Path, run_ids) -> str:
    """The harness commits (git_commit) the parts ``run_ids`` of ``out`` were written at."""
    commits = []
    for run_id in run_ids:
        row = results.read_part(Path(out) / "parts" / run_id)["runs"].iloc[0]
        commits.append(str(row.get("git_commit", "unknown"))[:10])
    return ", ".join(sorted(set(commits)))


def warn_if_too_big(todo: list[RunConfig], executor) -> None:
    """Warn, before training, for each setting whose runs need more memory than this machine
    has free (a lower bound of their needs: :func:`out_of_memory.minimum_run_bytes`; ``-j N``
    runs N at once). Only for the local executor: submitit's runs go to other machines. The GPU
    is checked when runs train in this process (``-j 1``): workers have GPUs of their own."""
    if not isinstance(executor, LocalExecutor):
        return
    at_once = min(executor.jobs, len(todo))
    seen = set()
    for run in todo:
        if run.setting_hash in seen:
            continue
        seen.add(run.setting_hash)
        device = resolve_device(run.train.device)
        data = load_task_data(run.data, run.problem)
        need = out_of_memory.minimum_run_bytes(
            n_train=len(data.train_x), n_test=len(data.test_x),
            image_shape=tuple(data.test_x.shape[1:]),
            batch_size=min(run.train.batch_size, len(data.train_x)),
            width=run.model.width, depth=run.model.depth,
            dtype_bytes=DTYPES[run.train.dtype].itemsize, on_gpu=device.type == "cuda",
        )  # fmt: skip
        host = torch.device("cpu")
        checks = [(need["host"], at_once, host, "host")]
        if device.type == "cuda" and executor.jobs == 1:
            checks.append((need["gpu"], 1, device, str(device)))
        for bytes_, runs, where, name in checks:
            available = out_of_memory.available_bytes(where)
            line = out_of_memory.fit_warning(run.run_id, bytes_, runs, available, name)
            if line:
                results.warn(line)


@cache
def _process_start() -> float:
    import psutil

    return psutil.Process().create_time()


def run_suite(
    suite: Suite,
    out: Path,
    executor=None,
    force: bool = False,
    progress: bool = True,
    stale: str = "error",
) -> dict[str, int]:
    """Run (or resume) every run of ``suite`` into ``out``; return counts of statuses.

    Plan (what is left to do), baselines, then the runs through ``executor`` (a
    :class:`bench.executor.LocalExecutor`: by default one run at a time in this process, with
    ``jobs=N`` N at once in worker processes; or a :class:`bench.executor.SubmititExecutor`),
    merging the tables as runs finish. ``elsewhere``
    counts the runs another process was training (or finished) meanwhile. The suite-level
    timing (plan, baselines, runs, merges) is printed and written to ``out/suite_timing.json``.
    """
    executor = executor or LocalExecutor(jobs=1)
    out = Path(out)
    started, t0 = time.time(), time.perf_counter()
    for run in suite.runs():  # fail fast on settings, before any training
        resolve_device(run.train.device)
    executor.check(suite.runs())
    todo, counts = plan(suite, out, force, stale)
    warn_if_too_big(todo, executor)
    t_plan = time.perf_counter()
    run_baselines(suite, out, force)
    t_baselines = time.perf_counter()
    merge_s, done = 0.0, []
    # closing: an exception here (Ctrl-C, a write error) stops the executor's workers at once
    outcomes = executor.map(todo, out, started=started, force=force, progress=progress)
    try:
        with contextlib.closing(outcomes):
            for outcome in outcomes:
                counts[outcome.status] += 1
                tqdm.write(outcome.line())
                if outcome.status != "elsewhere":
                    done.append(outcome.row)
                    t = time.perf_counter()
                    results.merge_new(out)  # appends this run's rows: the rewrite is below
                    merge_s += time.perf_counter() - t
    except BaseException as stop:
        if not isinstance(stop, Exception):  # Ctrl-C, SIGTERM: what finished goes in the tables
            _merge_finished(out)
        raise
    t_runs = time.perf_counter()
    results.merge(out)
    t_end = time.perf_counter()
    timing = _suite_timing(
        suite.name, executor.workers(len(todo)), done,
        wall=t_end - t0, plan=t_plan - t0, baselines=t_baselines - t_plan,
        runs=t_runs - t_baselines, merge=merge_s + t_end - t_runs,
    )  # fmt: skip
    results.atomic_write_bytes(out / SUITE_TIMING, (json.dumps(timing, indent=1) + "\n").encode())
    print(_timing_line(timing))
    return counts


def _merge_finished(out: Path) -> None:
    """Merge the parts written so far, when a sweep is stopped: also those of runs that ended
    after the last merge (a job or worker that finished while the sweep was being stopped)."""
    try:
        results.merge(out)
    except Exception as err:  # the stop is what the user sees; the next run merges again
        results.warn(f"could not merge the finished runs ({type(err).__name__}: {err})")


SUITE_TIMING = "suite_timing.json"
PHASES = ("setup_time_s", "train_time_s", "eval_time_s", "diagnostics_time_s", "run_wall_time_s")


def _suite_timing(name: str, jobs: int, rows: list[dict], **seconds: float) -> dict:
    """The command's wall-clock split and the phases summed over the runs it trained.

    wall = plan + baselines + runs + the final merge; ``merge_time_s`` counts every merge,
    including those after each finished run, which are also part of ``runs_time_s``.
    """
    summed = {}
    for phase in PHASES:
        values = [float(r.get(phase, math.nan)) for r in rows]
        summed[phase] = float(np.nansum(values)) if values else 0.0
    return {
        "suite": name,
        "jobs": jobs,
        "runs_trained": len(rows),
        **{f"{k}_time_s" if k != "wall" else "wall_time_s": v for k, v in seconds.items()},
        "runs_phases_s": summed,
    }


def _timing_line(t: dict) -> str:
    return (
        f"time: {t['wall_time_s']:.1f} s (plan {t['plan_time_s']:.1f} s, baselines "
        f"{t['baselines_time_s']:.1f} s, runs {t['runs_time_s']:.1f} s with -j {t['jobs']}, "
        f"merges {t['merge_time_s']:.1f} s)"
    )
