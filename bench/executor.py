"""Executors: how :func:`bench.runner.run_suite` runs the runs it has planned.

- :class:`LocalExecutor` ``(jobs=N)``: on this machine. N = 1 trains the runs one after the other
  in this process; N > 1 starts N worker processes (spawned, so nothing of this process's torch
  state leaks into them), each with ``torch.set_num_threads(cores // N)`` so that the runs do not
  fight over cores (measured: two processes with torch's default threads on 2 cores made a step
  40x slower). On a CUDA machine each worker gets its own GPU (``CUDA_VISIBLE_DEVICES``, set
  before CUDA initialises), or ``runs_per_gpu`` workers share one.
- :class:`SubmititExecutor`: a submitit job array (SLURM, or submitit's local/debug backends).

Either way each run is one call of :func:`bench.runner.execute`, which claims the run, trains it
and writes its own part of the results folder atomically, so runs spread over processes or nodes
merge into one folder with no row lost or duplicated, and a rerun skips the runs already
complete. An executor yields each run's :class:`~bench.runner.RunOutcome` as it finishes.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import RunConfig
from .runner import RunOutcome, execute, resolve_device, usable_cores

WORKER_START_TIMEOUT_S = 300  # all workers wait for each other once, before the first run
# torch's own thread count when this module was imported: physical cores, or OMP_NUM_THREADS
# when the user set it. The cores shared among the jobs are the usable ones, capped by it, so
# that -j 1 never runs more threads than torch itself would (hyperthreads, a user's setting).
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def threads_per_job(cores: int, jobs: int) -> int:
    """Torch threads for each of ``jobs`` parallel runs sharing ``cores`` cores (at least 1)."""
    return max(1, cores // jobs)


def gpu_per_slot(visible: list[str], workers: int, runs_per_gpu: int) -> list[str]:
    """The GPU (an entry of ``visible``, the devices this process sees) for each worker slot:
    ``runs_per_gpu`` consecutive slots per GPU. ValueError when there are too few GPUs."""
    if workers > len(visible) * runs_per_gpu:
        raise ValueError(
            f"-j {workers} needs {-(-workers // runs_per_gpu)} GPU(s) at {runs_per_gpu} run(s) "
            f"per GPU; {len(visible)} visible (raise --runs-per-gpu or lower -j)"
        )
    return [visible[slot // runs_per_gpu] for slot in range(workers)]


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class LocalExecutor:
    """``jobs`` runs at once on this machine (see the module docstring)."""

    jobs: int = 1
    runs_per_gpu: int = 1

    def __post_init__(self):
        for name in ("jobs", "runs_per_gpu"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    @property
    def threads(self) -> int:
        """Torch threads of each run: the cores this process may use (capped by torch's own
        default) shared among the jobs."""
        return threads_per_job(min(usable_cores(), TORCH_DEFAULT_THREADS), self.jobs)

    def check(self, runs: list[RunConfig]) -> None:
        """Settings that cannot work, as a ValueError before anything runs."""
        if self.jobs == 1:
            return
        for run in runs:
            device = resolve_device(run.train.device)
            if device.type == "cuda" and device.index is not None:
                raise ValueError(
                    f"device {run.train.device!r} with -j {self.jobs}: each worker is given its "
                    "own GPU; use device 'cuda' or 'auto'"
                )
        if self._uses_cuda(runs):
            gpu_per_slot(_visible_gpus(), self.jobs, self.runs_per_gpu)

    @staticmethod
    def _uses_cuda(runs: list[RunConfig]) -> bool:
        return any(resolve_device(r.train.device).type == "cuda" for r in runs)

    def map(
        self, runs: list[RunConfig], out: Path, *, started: float, force: bool, progress: bool
    ) -> Iterator[RunOutcome]:
        """Run ``runs`` into ``out``; yield each outcome as its run ends."""
        if self.jobs == 1:
            yield from self._in_process(runs, out, started, force, progress)
        elif runs:
            yield from self._in_workers(runs, out, started, force)

    def _in_process(self, runs, out, started, force, progress) -> Iterator[RunOutcome]:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            bar = tqdm(runs, desc="runs", unit="run", disable=not progress)
            for run in bar:
                bar.set_postfix_str(run.strategy)
                yield execute(run, out, progress=progress, started=started, force=force, jobs=1)
        finally:
            torch.set_num_threads(previous)

    def _in_workers(self, runs, out, started, force) -> Iterator[RunOutcome]:
        workers = min(self.jobs, len(runs))
        context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
        slots = context.Queue()
        for slot in range(workers):
            slots.put(slot)
        gpus = (
            gpu_per_slot(_visible_gpus(), workers, self.runs_per_gpu)
            if self._uses_cuda(runs)
            else None
        )
        pool = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(self.threads, slots, context.Barrier(workers), gpus),
        )
        try:
            futures = {
                pool.submit(_run_in_worker, run, str(out), started, force, self.jobs): run
                for run in runs
            }
            for future in as_completed(futures):
                run = futures[future]
                try:
                    yield future.result()
                except BrokenProcessPool as err:  # a worker died (killed, out of memory...)
                    reason = f"worker process died: {err}"
                    yield RunOutcome(run.run_id, "failed", {"status_reason": reason})
        except BaseException:  # Ctrl-C, SIGTERM, a write error: leave no worker behind
            _stop_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(threads: int, slots, barrier, gpus: list[str] | None) -> None:
    """Each worker process, once: its GPU and threads, then wait until all workers are up (so
    that the runs are shared among all of them from the start)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops workers
    slot = slots.get()
    if gpus is not None:  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot]
    torch.set_num_threads(threads)
    barrier.wait(timeout=WORKER_START_TIMEOUT_S)


def _run_in_worker(run: RunConfig, out: str, started: float, force: bool, jobs: int):
    return execute(run, Path(out), started=started, force=force, jobs=jobs)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes now (a run in progress is lost, as with Ctrl-C)."""
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
        return
    # Before 3.14 ProcessPoolExecutor has no public way to stop running workers; its
    # ``_processes`` (pid -> Process) has been there since 3.2.
    processes = list(getattr(pool, "_processes", {}).values())
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()


@dataclass
class SubmititExecutor:
    """Each run one job of a submitit job array; waits for the jobs.

    ``cluster`` is 'slurm', 'local' or 'debug'. submitit's ``local`` backend starts every job at
    once, as subprocesses of this machine: meant for testing the path, not for big sweeps.
    """

    cluster: str = "slurm"
    folder: Path | None = None
    partition: str | None = None
    time_min: int = 60
    gpus: int = 0
    array_parallelism: int = 32

    @property
    def jobs(self) -> int:
        return 1  # per allocation; the local backend's concurrency is recorded per run

    def check(self, runs: list[RunConfig]) -> None:
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ValueError(
                "--executor submitit: SLURM not found (no sbatch on PATH); "
                "use --submitit-cluster local to run the jobs as local processes"
            )

    def map(
        self, runs: list[RunConfig], out: Path, *, started: float, force: bool, progress: bool
    ) -> Iterator[RunOutcome]:
        if not runs:
            return
        import submitit

        executor = submitit.AutoExecutor(
            folder=self.folder or out / "submitit", cluster=self.cluster
        )
        params = {"timeout_min": self.time_min, "gpus_per_node": self.gpus}
        params["slurm_array_parallelism"] = self.array_parallelism
        if self.partition:
            params["slurm_partition"] = self.partition
        executor.update_parameters(name=f"implicit-bench-{runs[0].suite}", **params)
        n = len(runs)
        # the local backend runs every job at once on this machine: they share its cores
        jobs = n if self.cluster != "slurm" else 1
        jobs_list = executor.map_array(
            _job, runs, [str(out)] * n, [started] * n, [force] * n, [jobs] * n
        )
        print(f"submitted {n} job(s) to {executor.cluster}: {jobs_list[0].job_id.split('_')[0]}")
        for run, job in zip(runs, jobs_list, strict=True):
            try:
                yield job.result()
            except Exception as err:  # the job itself died (timeout, node failure, OOM kill)
                reason = f"job {job.job_id} failed: {str(err).splitlines()[0]}"
                yield RunOutcome(run.run_id, "failed", {"status_reason": reason})


def _job(run: RunConfig, out: str, started: float | None = None, force: bool = False, jobs=1):
    """The function each array task runs: one training run, written to ``out``.

    The task claims its run as a local sweep does, so a local process working on the same
    folder (or a resubmitted array) does not train it twice. Its threads share the cores of
    its allocation with the other jobs that run there at once.
    """
    torch.set_num_threads(threads_per_job(min(usable_cores(), TORCH_DEFAULT_THREADS), jobs))
    return execute(run, Path(out), started=started, force=force, jobs=jobs)
