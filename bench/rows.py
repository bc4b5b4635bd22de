"""The rows a run writes: what it records while it trains (:class:`RunRecord`), its tables
(``runs``/``epochs``/``steps``) made from that record, and the columns every runs.csv row has
(settings, host, code versions), for a failed run too."""

from __future__ import annotations

import json
import math
import os

import pandas as pd
import torch

from . import provenance, results
from .config import RunConfig
from .device import usable_cores
from .measure import PeakMemory, device_name
from .summary import run_summary, timing_verdict
from .task_data import TaskData
from .tasks import make_task


class RunRecord:
    """The rows a run accumulates, and the per-run measurements, while it trains."""

    def __init__(self):
        self.steps: list[dict] = []
        self.evals: list[dict] = []
        self.saved_bytes = math.nan
        self.peak_step_bytes = math.nan
        self.certify_peak_bytes = math.nan
        # Phases of the run (wall-clock seconds): setup, evaluation, diagnostics (gradient
        # fidelity, ||dT/dx||, the replayed peak-bytes step). Training is the sum of step times.
        self.setup_time_s = 0.0
        self.eval_time_s = 0.0
        self.diagnostics_time_s = 0.0
        self.train_time_s = 0.0  # sum of step times: the training-time budget
        # CPU time and wall-clock of the process over the training steps (for cpu_util)
        self.step_cpu_s = 0.0
        self.step_wall_s = 0.0
        self.load_samples: list[float] = []
        self.status, self.reason = "ok", ""
        self.recon = None

    def sample_load(self) -> None:
        """Record the machine's 1-minute load average (at the start, each evaluation, the end)."""
        self.load_samples.append(os.getloadavg()[0])


def host_columns() -> dict:
    """Threads and cores of this process: ``torch_threads`` and ``cpu_count`` (the cores it may
    run on, which a job scheduler or ``taskset`` can restrict below the machine's)."""
    return {"torch_threads": torch.get_num_threads(), "cpu_count": usable_cores()}


def _timing_columns(rec: RunRecord, summary: dict, device) -> dict:
    threads = torch.get_num_threads()
    cpu_util = rec.step_cpu_s / (rec.step_wall_s * threads) if rec.step_wall_s > 0 else math.nan
    load_avg_max = max(rec.load_samples) if rec.load_samples else math.nan
    reliable, note = timing_verdict(
        load_avg_max=load_avg_max,
        machine_cpus=os.cpu_count() or 1,
        cpu_util=cpu_util,
        robust_cv=summary["step_time_robust_cv"],
        device_type=torch.device(device).type,
    )
    return {
        **host_columns(),
        "load_avg_max": load_avg_max,
        "cpu_util": cpu_util,
        "timing_reliable": reliable,
        "timing_note": note,
    }


def run_tables(
    run: RunConfig,
    strategy,
    data: TaskData,
    rec: RunRecord,
    memory: PeakMemory,
    device,
    run_wall_time_s: float,
    *,
    certified_lipschitz_bound: float,
    fidelity_images: int,
) -> dict:
    """A trained (or diverged) run's tables from its record: ``runs`` (its one row), ``epochs``
    and ``steps``, and ``recon`` (its first ``n_recon`` test reconstructions, or None)."""
    keys = {"run_id": run.run_id, "strategy": strategy.name, "seed": run.seed}
    steps_df = pd.DataFrame([{**keys, **r} for r in rec.steps])
    steps_df = steps_df.reindex(
        columns=list(dict.fromkeys([*results.STEP_COLUMNS, *steps_df.columns]))
    )
    epochs_df = pd.DataFrame([{**keys, **e} for e in rec.evals])
    # the declared columns first, then any the schema does not name (a metric registered after
    # bench.results was imported), as steps do: nothing measured is dropped
    epochs_df = epochs_df.reindex(
        columns=list(dict.fromkeys([*results.EPOCH_COLUMNS, *epochs_df.columns]))
    )
    summary = run_summary(steps_df, epochs_df)
    row = {
        **setting_columns(run, device, data),
        **keys,
        "strategy_label": run.strategy,
        "params": json.dumps(strategy.params, sort_keys=True),
        **{f"p_{k}": v for k, v in strategy.params.items()},
        "status": rec.status,
        "status_reason": rec.reason,
        **{f"naive_test_{m}": v for m, v in data.naive_metrics.items()},
        **summary,
        "setup_time_s": rec.setup_time_s,
        "eval_time_s": rec.eval_time_s,
        "diagnostics_time_s": rec.diagnostics_time_s,
        "run_wall_time_s": run_wall_time_s,
        **_timing_columns(rec, summary, device),
        "saved_bytes": rec.saved_bytes,
        "peak_step_bytes": rec.peak_step_bytes,
        "certify_peak_bytes": rec.certify_peak_bytes,
        "peak_rss_bytes": memory.rss_bytes or math.nan,
        "peak_gpu_memory_bytes": memory.gpu_bytes if memory.gpu_bytes is not None else math.nan,
        "peak_gpu_device_memory_bytes": memory.gpu_device_bytes or math.nan,
        "certified_lipschitz_bound": certified_lipschitz_bound,
        "fidelity_images": fidelity_images,
    }
    return {
        "runs": pd.DataFrame([row]),
        "epochs": epochs_df,
        "steps": steps_df,
        "recon": None
        if rec.recon is None
        else rec.recon[: run.train.n_recon].float().cpu().numpy(),
    }


def setting_columns(run: RunConfig, device, data: TaskData | None) -> dict:
    """The columns that say what ``run`` is: its settings, the data it saw (NaN without
    ``data``), the device and the code versions."""
    return {
        "suite": run.suite,
        "dataset": run.data.dataset,
        "image_size": int(data.test_x.shape[-1]) if data else run.data.image_size,
        "channels": int(data.test_x.shape[1]) if data else math.nan,
        "n_train": len(data.train_x) if data else math.nan,
        "n_test": len(data.test_x) if data else math.nan,
        "batch_size": run.train.batch_size,
        "epochs": run.train.epochs,
        "lr": run.train.lr,
        "lr_schedule": run.train.lr_schedule,
        "jac_reg": run.train.jac_reg,
        "jac_reg_every": run.train.jac_reg_every,
        "task": run.problem.task,
        **(data.task if data else make_task(run.problem)).setting_columns(),
        "noise_std": run.problem.noise_std,
        "solver": run.solver.name,
        "solver_max_iter": run.solver.max_iter,
        "solver_tol": run.solver.tol,
        "model_width": run.model.width,
        "model_depth": run.model.depth,
        "model_form": run.model.form,
        "lipschitz_control": run.model.lipschitz_control,
        "model_activation": run.model.activation,
        "model_lipschitz": run.model.lipschitz,
        "device": str(device),
        "device_name": device_name(device),
        "config_hash": run.config_hash,
        "setting_hash": run.setting_hash,
        **_versions(),
    }


def failed_row(run: RunConfig, device, reason: str) -> pd.DataFrame:
    """A failed run's runs.csv row: its settings, this process's host columns and the reason."""
    row = {
        **setting_columns(run, device, None),
        **host_columns(),
        "run_id": run.run_id,
        "strategy": run.strategy.split(":")[0],
        "strategy_label": run.strategy,
        "params": "",
        "seed": run.seed,
        "status": "failed",
        "status_reason": reason.splitlines()[0][:500],
    }
    # the schema's columns, plus the task's own setting columns (blur_sigma, ...)
    columns = list(dict.fromkeys([*results.RUN_COLUMNS, *row]))
    return pd.DataFrame([row]).reindex(columns=columns)


def _versions() -> dict:
    from importlib.metadata import version

    return {
        "torch_version": torch.__version__,
        "torchdeq_version": version("torchdeq"),
        "git_commit": provenance.harness_commit()[:12] or "unknown",
    }
