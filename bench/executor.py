"""Executors: how :func:`bench.sweep.run_suite` runs the runs it has planned.

- :class:`LocalExecutor` ``(jobs=N)``: on this machine. N = 1 trains the runs one after the other
  in this process; N > 1 starts N worker processes (spawned, so nothing of this process's torch
  state leaks into them; never more than there are runs, and a warning when more than cores),
  each with ``torch.set_num_threads(cores // N)`` so that the runs do not fight over cores
  (measured: two processes with torch's default threads on 2 cores made a step 40x slower). On
  a CUDA machine each worker gets its own GPU (``CUDA_VISIBLE_DEVICES``, set before CUDA
  initialises), or ``runs_per_gpu`` workers share one. A worker that dies (the out-of-memory
  killer's SIGKILL) costs only the run it was running, recorded as failed with the signal; a
  new worker takes its place.
- :class:`SubmititExecutor`: a submitit job array (SLURM, or submitit's local/debug backends).

Either way each run is one call of :func:`bench.execution.execute`, which claims the run, trains it
and writes its own part of the results folder atomically, so runs spread over processes or nodes
merge into one folder with no row lost or duplicated, and a rerun skips the runs already
complete. An executor yields each run's :class:`~bench.execution.RunOutcome` as it finishes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import results
from .config import RunConfig
from .device import resolve_device, usable_cores
from .execution import RunOutcome, execute, record_failure

JOB_POLL_S = 1.0  # how often a submitit sweep checks its jobs (submitit's own Job.wait: 1 s)
JOB_STOP_TIMEOUT_S = 30  # a cancelled local job's processes are killed after this long
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

    def threads(self, workers: int) -> int:
        """Torch threads of each run: the cores this process may use (capped by torch's own
        default) shared among the ``workers`` running at once."""
        return threads_per_job(min(usable_cores(), TORCH_DEFAULT_THREADS), workers)

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
            gpu_per_slot(_visible_gpus(), self.workers(len(runs)), self.runs_per_gpu)

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
        torch.set_num_threads(self.threads(1))
        try:
            bar = tqdm(runs, desc="runs", unit="run", disable=not progress)
            for run in bar:
                bar.set_postfix_str(run.strategy)
                yield execute(run, out, progress=progress, started=started, force=force, jobs=1)
        finally:
            torch.set_num_threads(previous)

    def workers(self, n_runs: int) -> int:
        """Worker processes a sweep of ``n_runs`` runs starts: never more than it has runs."""
        return max(1, min(self.jobs, n_runs))

    def _in_workers(self, runs, out, started, force) -> Iterator[RunOutcome]:
        workers = self.workers(len(runs))
        cores = usable_cores()
        if workers > cores:
            results.warn(
                f"-j {self.jobs}: {workers} worker processes on {cores} core(s) share them (1 "
                "torch thread each); their step times are not comparable to a sweep with fewer"
            )
        threads = self.threads(workers)
        gpus = (
            gpu_per_slot(_visible_gpus(), workers, self.runs_per_gpu)
            if self._uses_cuda(runs)
            else None
        )
        pool = _WorkerPool(threads, gpus or [None] * workers)
        try:
            for item in pool.run(runs, lambda run: (run, str(out), started, force, workers)):
                if isinstance(item, RunOutcome):
                    yield item
                    continue
                run, reason = item  # its worker died: the run is failed, the others go on
                yield record_failure(run, out, reason, jobs=workers, torch_threads=threads)
        finally:  # Ctrl-C, SIGTERM, a write error: leave no worker behind
            pool.stop()


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    run: RunConfig | None = None  # the run it was sent (or will be sent once started)
    started: bool = False  # it said it is ready (torch imported, threads set)
    retired: bool = False  # it was told to exit


class _WorkerPool:
    """One spawned process per slot (``gpus``: each slot's GPU, or None), each running one run
    at a time, sent to it over its own pipe.

    Not concurrent.futures' pool: there the death of one worker (SIGKILL from the out-of-memory
    killer) breaks the pool and fails every run in progress or not yet started. Here the parent
    knows which run each worker holds, so a death costs that run only: :meth:`run` yields
    ``(run, reason)`` for it and starts a new worker in the slot, and the others go on. Pipes
    only: no queue, lock or barrier (named semaphores, which a worker terminated mid-run would
    leave for multiprocessing's resource tracker to report as leaked).
    """

    def __init__(self, threads: int, gpus: list[str | None]):
        self._context = multiprocessing.get_context("spawn")  # fork would copy torch's threads
        self._threads, self._gpus = threads, gpus
        self._workers: dict[int, _Worker] = {}

    def _start(self, slot: int, run: RunConfig | None) -> None:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main,
            args=(child_end, self._threads, self._gpus[slot]),
            name=f"implicit-bench-worker-{slot}",
        )
        with _sigint_ignored():  # inherited: Ctrl-C reaches the parent only
            process.start()
        child_end.close()
        self._workers[slot] = _Worker(process, parent_end, run)

    def run(self, runs: list[RunConfig], task) -> Iterator[RunOutcome | tuple[RunConfig, str]]:
        """Send each of ``runs`` (as the arguments ``task(run)`` of :func:`execute`) to a free
        worker; yield each outcome as it comes, or ``(run, reason)`` when its worker died."""
        pending = deque(runs)
        for slot in range(len(self._gpus)):  # one run reserved for each: all share the work
            self._start(slot, pending.popleft() if pending else None)
        while self._workers:
            ready = set(
                wait(
                    [w.conn for w in self._workers.values()]
                    + [w.process.sentinel for w in self._workers.values()]
                )
            )
            for slot, worker in list(self._workers.items()):
                while worker.conn in ready and worker.conn.poll():
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):  # it died: its sentinel says so
                        break
                    if message[0] == "raised":  # a write error...: the sweep stops
                        raise message[1]
                    if message[0] == "done":
                        worker.run = None
                        yield message[1]
                    worker.started = True
                    if worker.run is None and pending:
                        worker.run = pending.popleft()
                    try:
                        worker.conn.send(None if worker.run is None else task(worker.run))
                    except OSError:  # it died meanwhile: the run goes back, its sentinel tells
                        if worker.run is not None:
                            pending.appendleft(worker.run)
                            worker.run = None
                        break
                    worker.retired = worker.run is None  # sent None: nothing left, it exits
                if worker.process.sentinel not in ready:
                    continue
                worker.process.join()
                worker.conn.close()
                del self._workers[slot]
                if worker.retired:
                    continue
                death = _death(worker.process.exitcode)
                if worker.run is None and not worker.started:
                    raise RuntimeError(f"a worker process died while starting ({death})")
                if worker.run is not None:
                    yield worker.run, f"worker process died: {death}"
                if pending:
                    results.warn(f"a worker process died ({death}); starting a new one")
                    self._start(slot, pending.popleft())

    def stop(self) -> None:
        """Terminate the workers still running (a run in progress is lost, as with Ctrl-C)."""
        workers = list(self._workers.values())
        self._workers.clear()
        for worker in workers:
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()


def _death(exitcode: int | None) -> str:
    """How a worker process ended, from its exit code (minus the signal number if killed)."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        oom = ", likely out of memory" if -exitcode == signal.SIGKILL else ""
        return f"killed by signal {-exitcode} ({name}{oom})"
    return f"exit status {exitcode}"


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore SIGINT meanwhile: a process started now inherits SIG_IGN through exec (a blocked
    mask is not inherited), so a Ctrl-C, which the terminal sends to the whole process group,
    never interrupts a worker, even while it imports torch; the parent stops the workers
    itself. A Ctrl-C in the few milliseconds of the start is lost (press it again)."""
    if threading.current_thread() is not threading.main_thread():  # signals: main thread only
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_main(conn: Connection, threads: int, gpu: str | None) -> None:
    """A worker process: its GPU and threads, then one run per message until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops workers
    # tqdm's default lock is a multiprocessing RLock: in a spawned process, a named semaphore
    # that the resource tracker reports as leaked ("There appear to be N leaked semaphore
    # objects") when the worker is terminated mid-run. A worker shows no bars of its own.
    tqdm.set_lock(threading.RLock())
    if gpu is not None:  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    torch.set_num_threads(threads)
    conn.send(("ready",))
    while (task := conn.recv()) is not None:
        try:
            outcome = execute(*task[:2], started=task[2], force=task[3], jobs=task[4])
        except Exception as err:  # not the run's own failure (execute records those)
            try:
                conn.send(("raised", err))
            except Exception:  # an exception that cannot be pickled: its text
                conn.send(("raised", RuntimeError(traceback.format_exc())))
            continue
        conn.send(("done", outcome))


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

    def workers(self, n_runs: int) -> int:
        """Runs at once: all of them with the local backends, one per allocation on SLURM."""
        return max(1, n_runs) if self.cluster != "slurm" else 1

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
        jobs = self.workers(n)
        # Local jobs start with SIGINT ignored (inherited), so that a Ctrl-C, which the terminal
        # sends to the whole process group, reaches this process only: it cancels them, and no
        # job prints its KeyboardInterrupt traceback here (their stderr is this one).
        local = _sigint_ignored() if self.cluster == "local" else contextlib.nullcontext()
        with local:
            jobs_list = executor.map_array(
                _job, runs, [str(out)] * n, [started] * n, [force] * n, [jobs] * n
            )
        print(f"submitted {n} job(s) to {executor.cluster}: {jobs_list[0].job_id.split('_')[0]}")
        remaining = dict(enumerate(zip(runs, jobs_list, strict=True)))
        try:
            while remaining:  # each outcome as its job ends, so that it is merged at once
                done = next((i for i, (_, job) in remaining.items() if _job_done(job)), None)
                if done is None:
                    time.sleep(JOB_POLL_S)
                    continue
                run, job = remaining.pop(done)
                try:
                    yield job.result()
                except Exception as err:  # the job died (timeout, node failure, OOM kill)
                    reason = f"job {job.job_id} failed: {str(err).splitlines()[0]}"
                    yield record_failure(run, out, reason, jobs=jobs)
        finally:  # Ctrl-C, SIGTERM, a write error: the jobs stop with the sweep
            _cancel([job for _, job in remaining.values()])


def _cancel(jobs: list) -> None:
    """Cancel submitit ``jobs``; local ones are stopped before this returns.

    A local job is a controller process running a task process; both ignore SIGINT (see
    :meth:`SubmititExecutor.map`) and submitit's task bypasses SIGTERM, so its task is killed
    (its run is lost, as with Ctrl-C) and the controller then exits by itself. submitit's own
    cancel (SIGINT to the controller) would also print the controller's traceback here.
    """
    import psutil

    stopping = []
    for job in jobs:
        controller = getattr(job, "_process", None)  # a local job's controller (a Popen)
        try:
            if controller is None:  # SLURM (scancel), or the debug backend
                job.cancel(check=False)
                continue
            process = psutil.Process(controller.pid)
            tasks = process.children(recursive=True)
            for task in tasks if tasks else [process]:  # no task yet: the controller
                task.kill()
            stopping += [process, *tasks]
        except (psutil.Error, OSError, subprocess.SubprocessError) as err:
            if not isinstance(err, psutil.NoSuchProcess):  # it had ended
                results.warn(f"could not cancel submitit job {job.job_id}: {err}")
    _, alive = psutil.wait_procs(stopping, timeout=JOB_STOP_TIMEOUT_S)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _job_done(job) -> bool:
    try:
        return job.done()
    except Exception:  # the debug backend runs the job here: its error comes from result()
        return True


def _job(run: RunConfig, out: str, started: float | None = None, force: bool = False, jobs=1):
    """The function each array task runs: one training run, written to ``out``.

    The task claims its run as a local sweep does, so a local process working on the same
    folder (or a resubmitted array) does not train it twice. Its threads share the cores of
    its allocation with the other jobs that run there at once.
    """
    torch.set_num_threads(threads_per_job(min(usable_cores(), TORCH_DEFAULT_THREADS), jobs))
    return execute(run, Path(out), started=started, force=force, jobs=jobs)
