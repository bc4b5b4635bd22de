"""Tidy result tables: their columns, atomic writes, and loading.

A results folder holds ``runs.csv`` (one row per run), ``epochs.csv`` (run x epoch) and
``steps.csv`` (run x step), plus Parquet copies where pyarrow is installed, and
``recons/<run_id>.npz`` (reconstructions of fixed test images, for figures).

Each finished run is first written to ``parts/<run_id>/`` (temporary file + rename, so a killed
sweep loses at most the run in progress); the top-level tables are the concatenation of the parts,
rebuilt atomically after every run. Several processes (e.g. SLURM array jobs) can therefore write
into one folder: each owns its run's part files, and the merge is idempotent.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

TABLES = ("runs", "epochs", "steps")
_UMASK = os.umask(0)
os.umask(_UMASK)

# Columns every writer must provide (more are allowed, e.g. p_<param> for strategy parameters).
RUN_COLUMNS = (
    "run_id", "suite", "strategy", "strategy_label", "params", "seed", "status", "status_reason",
    "dataset", "image_size", "channels", "n_train", "n_test", "batch_size", "epochs", "lr",
    "blur_kernel_size", "blur_sigma", "noise_std", "solver", "solver_max_iter", "solver_tol",
    "model_width", "model_depth", "device", "device_name", "torch_version", "torchdeq_version",
    "git_commit", "config_hash",
    "final_train_loss", "final_test_psnr", "final_test_ssim", "blurred_test_psnr",
    "blurred_test_ssim", "total_wall_time_s", "median_step_time_s", "median_forward_time_s",
    "median_backward_time_s", "median_optimizer_time_s", "saved_bytes", "peak_rss_bytes",
    "peak_gpu_memory_bytes", "peak_gpu_device_memory_bytes", "mean_forward_iters",
    "forward_converged_frac", "mean_backward_iters", "grad_cosine_first", "grad_cosine_last",
    "lipschitz_estimate",
    # validity and cost columns (see bench/runner.py): the layer's contraction at every
    # evaluation, the backward solves, the exact peak of live bytes of a training step, phases
    "lr_schedule", "model_form", "lipschitz_control", "model_lipschitz", "setting_hash",
    "max_layer_lipschitz", "certified_lipschitz_bound", "backward_converged_frac",
    "skipped_steps", "peak_step_bytes", "run_wall_time_s", "eval_time_s", "diagnostics_time_s",
)  # fmt: skip
EPOCH_COLUMNS = (
    "run_id", "strategy", "seed", "epoch", "train_loss", "test_psnr", "test_ssim",
    "blurred_test_psnr", "blurred_test_ssim", "wall_time_s", "grad_cosine",
    # one row per evaluation: at each epoch's end (epoch_end = 1) and every [train] eval_every steps
    "step", "epoch_end", "layer_lipschitz", "layer_lipschitz_converged",
    "grad_reference_converged", "grad_reference_forward_residual",
    "grad_reference_backward_residual",
)  # fmt: skip
STEP_COLUMNS = (
    "run_id", "strategy", "seed", "epoch", "step", "loss", "forward_time_s", "backward_time_s",
    "optimizer_time_s", "step_time_s", "forward_iters", "forward_residual", "forward_converged",
    "backward_iters", "backward_residual",
)  # fmt: skip
COLUMNS = {"runs": RUN_COLUMNS, "epochs": EPOCH_COLUMNS, "steps": STEP_COLUMNS}
# Identifiers and text are always read as strings: pandas would otherwise turn an all-digit hash
# or commit into an int (or "1e5..." into a float) in one part and not in another.
TEXT_COLUMNS = (
    "run_id", "suite", "strategy", "strategy_label", "params", "status", "status_reason",
    "dataset", "solver", "device", "device_name", "torch_version", "torchdeq_version",
    "git_commit", "config_hash", "setting_hash", "lr_schedule", "model_form", "lipschitz_control",
)  # fmt: skip


def read_table(path: Path) -> pd.DataFrame:
    """Read one CSV table with identifier/text columns as strings (missing text stays NaN)."""
    return pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})


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


def write_run(out: Path, run_id: str, tables: dict[str, pd.DataFrame]) -> None:
    """Write one finished run's rows to ``out/parts/<run_id>/`` (runs.csv last: it marks completion)."""
    part = Path(out) / "parts" / run_id
    for name in ("epochs", "steps", "runs"):
        frame = tables.get(name)
        if frame is None:
            frame = pd.DataFrame(columns=list(COLUMNS[name]))
        missing = [c for c in COLUMNS[name] if c not in frame.columns]
        if missing:
            raise RuntimeError(
                f"{name} rows for run {run_id} lack columns {missing}"
            )  # a bug, not bad input
        atomic_write_csv(part / f"{name}.csv", frame)


def completed_runs(out: Path) -> dict[str, str]:
    """run_id -> status of every run whose part is complete (its runs.csv exists)."""
    done = {}
    for path in sorted((Path(out) / "parts").glob("*/runs.csv")):
        frame = read_table(path)
        if len(frame):
            done[path.parent.name] = str(frame["status"].iloc[0])
    return done


def merge(out: Path) -> dict[str, pd.DataFrame]:
    """Concatenate all complete parts into ``out/{runs,epochs,steps}.csv`` (and .parquet)."""
    out = Path(out)
    parts = sorted(p.parent for p in (out / "parts").glob("*/runs.csv"))
    tables = {}
    for name in TABLES:
        frames = [read_table(p / f"{name}.csv") for p in parts if (p / f"{name}.csv").exists()]
        frames = [f for f in frames if len(f)]
        frame = (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=list(COLUMNS[name]))
        )
        atomic_write_csv(out / f"{name}.csv", frame)
        if _has_pyarrow():
            import io

            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            atomic_write_bytes(out / f"{name}.parquet", buf.getvalue())
        tables[name] = frame
    return tables


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
