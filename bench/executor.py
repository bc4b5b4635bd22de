"""Run a suite's runs as a submitit job array (SLURM, or submitit's local/debug backends).

Each run is one job that trains and writes its own part of the results folder (atomically,
exactly as a local run does), so a sweep spread over many nodes merges into one folder, and a
rerun skips the runs already complete. The launcher waits for the jobs, then merges the tables.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from . import results
from .config import RunConfig, Suite
from .runner import execute, plan, run_baselines


def _job(run: RunConfig, out: str, started: float | None = None, force: bool = False) -> str:
    """The function each array task runs: one training run, written to ``out``.

    The task claims its run as a local sweep does, so a local process working on the same
    folder (or a resubmitted array) does not train it twice.
    """
    return execute(run, Path(out), started=started, force=force)


def run_suite_submitit(suite: Suite, out: Path, args) -> dict[str, int]:
    """Submit the suite's unfinished runs as one job array and wait for them.

    ``args`` carries the CLI's ``force``, ``submitit_cluster`` ('slurm', 'local' or 'debug'),
    ``submitit_folder``, ``slurm_partition``, ``slurm_time`` (minutes), ``slurm_gpus`` and
    ``slurm_array_parallelism``. submitit's ``local`` backend starts every job at once, as
    subprocesses of this machine: meant for testing the path, not for big sweeps.
    """
    import submitit

    out = Path(out)
    if args.submitit_cluster == "slurm" and shutil.which("sbatch") is None:
        raise ValueError(
            "--executor submitit: SLURM not found (no sbatch on PATH); "
            "use --submitit-cluster local to run the jobs as local processes"
        )
    started = time.time()
    stale = "rerun" if args.rerun_stale else "keep" if args.keep_stale else "error"
    todo, counts = plan(suite, out, args.force, stale)
    run_baselines(suite, out, args.force)  # cheap, once per data setting: done here, not in a job
    if todo:
        executor = submitit.AutoExecutor(
            folder=args.submitit_folder or out / "submitit", cluster=args.submitit_cluster
        )
        params = {"timeout_min": args.slurm_time, "gpus_per_node": args.slurm_gpus}
        params["slurm_array_parallelism"] = args.slurm_array_parallelism
        if args.slurm_partition:
            params["slurm_partition"] = args.slurm_partition
        executor.update_parameters(name=f"implicit-bench-{suite.name}", **params)
        n = len(todo)
        jobs = executor.map_array(_job, todo, [str(out)] * n, [started] * n, [args.force] * n)
        print(f"submitted {len(jobs)} job(s) to {executor.cluster}: {jobs[0].job_id.split('_')[0]}")
        for run, job in zip(todo, jobs, strict=True):
            try:
                status = job.result()
            except Exception as err:  # the job itself died (timeout, node failure, OOM kill)
                print(f"{run.run_id}: job {job.job_id} failed: {str(err).splitlines()[0]}")
                status = "failed"
            counts[status] += 1
            print(f"{run.run_id}: {status}")
    results.merge(out)
    return counts
