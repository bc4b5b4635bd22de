"""Tidy result tables: their columns, atomic writes, and loading.

A results folder holds ``runs.csv`` (one row per run), ``epochs.csv`` (run x epoch) and
``steps.csv`` (run x step), plus Parquet copies where pyarrow is installed, and
``recons/<run_id>.npz`` (reconstructions of fixed test images, for figures).

Each finished run is first written to ``parts/<run_id>/`` (temporary file + rename, so a killed
sweep loses at most the run in progress); the top-level tables are the concatenation of the parts,
rebuilt atomically after every run. Several processes (e.g. SLURM array jobs) can therefore write
into one folder: a process claims a run (``claim``, a lock file per run) before training it, and
part writes and merges happen under one folder-wide lock (``folder_lock``), so no row is lost.

A part is trusted only after it is validated against the schema (``read_part``); a broken one is
named in a warning, moved to ``parts/.broken/`` and its run redone.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout

from .metrics import METRICS

TABLES = ("runs", "epochs", "steps")
_UMASK = os.umask(0)
os.umask(_UMASK)

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
    # validity and cost columns (see bench/runner.py): the layer's contraction at every
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
    "backward_time_s", "optimizer_time_s", "step_time_s", "forward_iters", "forward_residual", "forward_converged",
    "backward_iters", "backward_residual", "jacobian_products",
    # always present, empty where they do not apply (a jfb-only sweep solves nothing in backward):
    # a missing column would read as a folder from before they existed
    "backward_converged", "skipped",
    # the adjoint's relative residual and the certified bound on its relative error (NaN for
    # unrolled and for a model without certificate)
    "adjoint_residual", "adjoint_error_bound",
)  # fmt: skip
COLUMNS = {"runs": RUN_COLUMNS, "epochs": EPOCH_COLUMNS, "steps": STEP_COLUMNS}
STATUSES = ("ok", "diverged", "failed")
COMPLETE = ("ok", "diverged")  # results: skipped on resume (a failed run is retried)
# Cells a complete row must fill: a runs.csv cut off mid-row parses, with these left empty.
REQUIRED_CELLS = ("run_id", "status", "config_hash")
REQUIRED_OK_METRICS = tuple(f"final_test_{m}" for m in METRICS)
LOCK_NAME = ".results.lock"
BROKEN_DIR = ".broken"
CLAIMS_DIR = ".claims"
# Identifiers and text are always read as strings: pandas would otherwise turn an all-digit hash
# or commit into an int (or "1e5..." into a float) in one part and not in another.
TEXT_COLUMNS = (
    "run_id", "suite", "strategy", "strategy_label", "params", "status", "status_reason",
    "dataset", "task", "solver", "device", "device_name", "torch_version", "torchdeq_version",
    "git_commit", "config_hash", "setting_hash", "lr_schedule", "model_form", "lipschitz_control",
    "model_activation",
    "timing_note",
)  # fmt: skip


# Tables written before the task became a plug-in (issue 10): the naive reconstruction's
# metrics were the blurred input's, and blur was the only task. Read as the new names.
LEGACY_COLUMNS = {
    # the sum of step times, named for what it is (it never was wall-clock)
    "total_wall_time_s": "train_time_s",
    "wall_time_s": "train_time_s",
    "blurred_test_psnr": "naive_test_psnr",
    "blurred_test_ssim": "naive_test_ssim",
}


def read_table(path: Path) -> pd.DataFrame:
    """Read one CSV table with identifier/text columns as strings (missing text stays NaN);
    a table of the older schema is read under the current column names (``LEGACY_COLUMNS``,
    and ``task`` = "blur" for runs that have blur settings but no task)."""
    frame = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})
    frame = frame.rename(columns={k: v for k, v in LEGACY_COLUMNS.items() if v not in frame})
    if "task" not in frame.columns and "blur_kernel_size" in frame.columns:
        frame.insert(frame.columns.get_loc("blur_kernel_size"), "task", "blur")
    return frame


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False).encode())


def warn(message: str) -> None:
    """One warning line on stderr (the sweep goes on)."""
    print(f"implicit-bench: warning: {message}", file=sys.stderr, flush=True)


def folder_lock(out: Path) -> FileLock:
    """The lock that serialises part writes, merges and quarantines in one results folder.

    A file lock (fcntl on POSIX), so it holds across processes and SLURM tasks sharing the folder.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # One reentrant instance per path in a process: merge() scans parts under the same lock.
    return FileLock(out / LOCK_NAME, is_singleton=True)


@contextlib.contextmanager
def claim(out: Path, run_id: str) -> Iterator[bool]:
    """Try to claim ``run_id`` for this process (non-blocking); yields whether it was claimed.

    The claim is a lock held on ``parts/.claims/<run_id>.lock`` until the block ends, and the
    operating system drops it if the process dies, so a killed run never blocks a rerun.
    """
    folder = Path(out) / "parts" / CLAIMS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / f"{run_id}.lock")
    try:
        lock.acquire(blocking=False)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def check_writable(out: Path) -> None:
    """Create ``out`` and write and remove a probe file there; ValueError naming why not.

    Called before any training, so a bad results folder never costs a trained run.
    """
    out = Path(out)
    probe = out / f".write-probe-{os.getpid()}"  # per process: concurrent sweeps probe too
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(probe, b"probe")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"results folder {str(out)!r} is not writable: {describe_os_error(err)}"
        ) from None


def describe_os_error(err: OSError) -> str:
    """A one-line account of an OSError: what failed, on which path."""
    what = err.strerror or (errno.errorcode.get(err.errno, "") if err.errno else "") or str(err)
    where = f" ({err.filename})" if err.filename else ""
    return f"{what}{where}"


def remove_stale_temporaries(out: Path, before: float) -> list[Path]:
    """Delete hidden ``.*.tmp`` files under ``out`` last modified before ``before`` (a time).

    They are what a process killed during an atomic write leaves; a live writer's temporary
    file is newer than this process's start, so it is left alone.
    """
    removed = []
    for path in Path(out).rglob(".*.tmp"):
        try:
            if path.is_file() and path.stat().st_mtime < before:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # another process finished (or cleaned) it meanwhile
            continue
    return removed


def write_run(out: Path, run_id: str, tables: dict[str, pd.DataFrame]) -> None:
    """Write one finished run's rows to ``out/parts/<run_id>/`` (runs.csv last: it marks completion).

    Each file is replaced atomically and only now, so a run redone with ``--force`` keeps its old
    part until the new one is written; the folder lock keeps a concurrent merge from seeing a
    part half replaced.
    """
    part = Path(out) / "parts" / run_id
    frames = {}
    for name in ("epochs", "steps", "runs"):
        frame = tables.get(name)
        if frame is None:
            frame = pd.DataFrame(columns=list(COLUMNS[name]))
        missing = [c for c in COLUMNS[name] if c not in frame.columns]
        if missing:
            raise RuntimeError(
                f"{name} rows for run {run_id} lack columns {missing}"
            )  # a bug, not bad input
        frames[name] = frame
    with folder_lock(out):
        for name, frame in frames.items():
            atomic_write_csv(part / f"{name}.csv", frame)


class BrokenPart(ValueError):
    """A part folder whose files do not hold one valid run (its message says why)."""


def _read_checked(path: Path, name: str) -> pd.DataFrame:
    try:
        frame = read_table(path)
    except (ValueError, UnicodeDecodeError) as err:  # pandas' parser errors are ValueErrors
        raise BrokenPart(f"{path.name} is unreadable ({str(err).splitlines()[0]})") from None
    except OSError as err:
        raise BrokenPart(f"{path.name} cannot be read ({describe_os_error(err)})") from None
    missing = [c for c in COLUMNS[name] if c not in frame.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise BrokenPart(f"{path.name} lacks the column(s) {shown}")
    return frame


def read_part(part: Path) -> dict[str, pd.DataFrame]:
    """The tables of one part folder, validated: one row in runs.csv with a known status, its
    required cells filled, and every file holding its table's columns. BrokenPart otherwise."""
    part = Path(part)
    runs = _read_checked(part / "runs.csv", "runs")
    if len(runs) != 1:
        raise BrokenPart(f"runs.csv has {len(runs)} rows, expected 1")
    row = runs.iloc[0]
    empty = [c for c in REQUIRED_CELLS if pd.isna(row[c]) or str(row[c]) == ""]
    if empty:
        raise BrokenPart(f"runs.csv is incomplete (no {', '.join(empty)})")
    if row["run_id"] != part.name:
        raise BrokenPart(f"runs.csv is for run {row['run_id']!r}, not {part.name!r}")
    if row["status"] not in STATUSES:
        raise BrokenPart(f"runs.csv has status {row['status']!r}, not one of {STATUSES}")
    if row["status"] == "ok":
        blank = [c for c in REQUIRED_OK_METRICS if _is_blank(row[c])]
        if blank:
            raise BrokenPart(f"runs.csv is incomplete: an ok run without {', '.join(blank)}")
    tables = {"runs": runs}
    for name in ("epochs", "steps"):
        path = part / f"{name}.csv"
        tables[name] = (
            _read_checked(path, name) if path.exists() else pd.DataFrame(columns=COLUMNS[name])
        )
    return tables


def _is_blank(value) -> bool:
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def _part_folders(out: Path) -> list[Path]:
    """Part folders that claim to be complete (hold runs.csv); hidden ones are bookkeeping."""
    return sorted(
        p.parent
        for p in (Path(out) / "parts").glob("*/runs.csv")
        if not p.parent.name.startswith(".")
    )


def quarantine(out: Path, part: Path, reason: str) -> Path | None:
    """Move a broken part to ``parts/.broken/<id>-<timestamp>/`` and say so; returns where."""
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    target = Path(out) / "parts" / BROKEN_DIR / f"{part.name}-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        part.rename(target)
    except FileNotFoundError:  # another process set it aside first
        return None
    warn(
        f"broken part {part.relative_to(out)}: {reason}; moved to {target.relative_to(out)}, "
        "its run will be redone"
    )
    return target


def scan_parts(out: Path) -> dict[str, dict[str, pd.DataFrame]]:
    """Every valid part of ``out`` (run_id -> its tables); broken parts are set aside."""
    out = Path(out)
    valid = {}
    with folder_lock(out):
        for part in _part_folders(out):
            try:
                valid[part.name] = read_part(part)
            except BrokenPart as err:
                quarantine(out, part, str(err))
    return valid


def completed_runs(out: Path) -> dict[str, str]:
    """run_id -> status of every run whose part is complete and valid (broken ones set aside)."""
    return {run_id: str(t["runs"]["status"].iloc[0]) for run_id, t in scan_parts(out).items()}


def part_status(out: Path, run_id: str, written_after: float | None = None) -> str | None:
    """The status in ``parts/<run_id>`` if it is valid (and written after the given time)."""
    path = Path(out) / "parts" / run_id / "runs.csv"
    try:
        if written_after is not None and path.stat().st_mtime < written_after:
            return None
        return str(read_part(path.parent)["runs"]["status"].iloc[0])
    except (FileNotFoundError, BrokenPart):
        return None


def merge(out: Path) -> dict[str, pd.DataFrame]:
    """Concatenate all valid parts into ``out/{runs,epochs,steps}.csv`` (and .parquet).

    Runs under the folder lock, so concurrent processes cannot overwrite each other's merge
    with a stale one. The CSVs are written first; the Parquet copies are a convenience, and a
    failure there (pyarrow missing memory, say) is a warning, never a lost CSV.
    """
    out = Path(out)
    with folder_lock(out):
        parts = scan_parts(out)
        tables = {}
        for name in TABLES:
            frames = [t[name] for t in parts.values() if len(t[name])]
            frame = (
                pd.concat(frames, ignore_index=True)
                if frames
                else pd.DataFrame(columns=list(COLUMNS[name]))
            )
            atomic_write_csv(out / f"{name}.csv", frame)
            # the table as the CSV reads back: mixed columns (a bool parameter that baselines
            # lack) then hold the same values in both copies
            tables[name] = read_table(out / f"{name}.csv") if len(frame) else frame
        _write_parquet(out, tables)
    return tables


def _write_parquet(out: Path, tables: dict[str, pd.DataFrame]) -> None:
    import io

    try:
        if not _has_pyarrow():
            return
        for name, frame in tables.items():
            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            atomic_write_bytes(out / f"{name}.parquet", buf.getvalue())
    except Exception as err:  # MemoryError included: the CSVs above are the results
        warn(f"Parquet copies not written ({type(err).__name__}: {err}); the CSV tables are")


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def load(path: str | Path) -> dict[str, pd.DataFrame]:
    """Load a results folder's tables as DataFrames: ``{"runs": ..., "epochs": ..., "steps": ...}``."""
    path = Path(path)
    if not (path / "runs.csv").exists():
        raise ValueError(f"no results at {str(path)!r}: expected {path / 'runs.csv'}")
    tables = {}
    for name in TABLES:
        file = path / f"{name}.csv"
        tables[name] = (
            read_table(file) if file.exists() else pd.DataFrame(columns=list(COLUMNS[name]))
        )
    return tables
