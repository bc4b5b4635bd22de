"""Execute one run: claim it, train it and write its part of the results folder atomically.

A run that fails (anything but divergence, which is a result) is recorded as failed with a
one-line reason, not raised, so a sweep goes on; :func:`record_failure` records a run whose
process died. An executor (:mod:`bench.executor`) calls :func:`execute` once per run, in this
process or in a worker.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import provenance, results
from .config import RunConfig
from .device import resolve_device
from .metrics import METRICS
from .out_of_memory import OutOfMemory, describe, is_out_of_memory
from .rows import failed_row
from .training import STEP_SETTINGS, train


def save_npz(path: Path, **arrays) -> None:
    """Write ``arrays`` to ``path`` as a compressed .npz, atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    results.atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class RunOutcome:
    """What :func:`execute` did with one run: its status (ok, diverged, failed, or elsewhere when
    another process had it), its runs.csv row (empty when elsewhere) and the process that ran it.
    """

    run_id: str
    status: str
    row: dict = dataclasses.field(default_factory=dict)
    pid: int = dataclasses.field(default_factory=os.getpid)

    def line(self) -> str:
        """The one-line account a sweep prints when the run ends."""
        if self.status == "elsewhere":
            return f"{self.run_id}: running elsewhere (claimed or finished by another process)"
        row = self.row
        reason = f" ({row.get('status_reason')})" if self.status != "ok" else ""
        text = f"{self.run_id}: {self.status}{reason}"
        if self.status == "failed":
            return text
        quality = "".join(
            f"  {m.name} {m.format(row[f'final_test_{m.name}'], unit=True)}"
            for _, m in METRICS.items()
            if f"final_test_{m.name}" in row
        )
        return (
            f"{text}{quality}"
            f"  step {row['median_step_time_s'] * 1e3:.1f} ms"
            f"  saved {row['saved_bytes'] / 2**20:.2f} MiB  [{row['run_wall_time_s']:.1f} s]"
            + ("" if row.get("timing_reliable", True) else "  timing unreliable")
        )


def execute(
    run: RunConfig,
    out: Path,
    progress: bool = False,
    *,
    started: float | None = None,
    force: bool = False,
    jobs: int = 1,
) -> RunOutcome:
    """Claim, train and write one run; a failure is recorded, not raised.

    Returns the run's outcome; its status is ``"elsewhere"`` when another process holds the
    run's claim or did the run meanwhile: a part written since ``started`` (the sweep's start
    time), or, unless ``force``, any complete part. That is what lets concurrent (and forced)
    sweeps share one folder without training a run twice. ``jobs`` (the runs the sweep runs at
    once on this machine) is recorded in the row. KeyboardInterrupt propagates: the run in
    progress is simply lost and its old part, if any, is untouched.
    """
    out = Path(out)
    elsewhere = RunOutcome(run.run_id, "elsewhere")
    with results.claim(out, run.run_id) as claimed:
        if not claimed:
            return elsewhere
        if started is not None and results.part_status(out, run.run_id, written_after=started):
            return elsewhere
        if (
            not force
            and results.part_status(out, run.run_id) in results.COMPLETE
            and not provenance.stale_reasons(out, run)  # stale: planned for a rerun
        ):
            return elsewhere
        row = _train_and_write(run, out, progress, jobs)
        return RunOutcome(run.run_id, str(row["status"]), row)


def _train_and_write(run: RunConfig, out: Path, progress: bool, jobs: int) -> dict:
    device = resolve_device(run.train.device)
    part = out / "parts" / run.run_id
    try:
        tables = train(run, device, progress)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # anything but divergence: record it, keep the sweep going
        results.atomic_write_bytes(part / "error.log", traceback.format_exc().encode())
        tables = {"runs": failed_row(run, device, _failure_reason(err))}
    tables["runs"] = tables["runs"].assign(jobs=jobs)
    recon = tables.pop("recon", None)
    weights = tables.pop("model", None)
    if weights is not None:  # before runs.csv, which marks the part complete
        buf = io.BytesIO()
        torch.save(weights, buf)
        results.atomic_write_bytes(part / "model.pt", buf.getvalue())
        config = json.dumps(run.to_dict(), indent=1, sort_keys=True).encode()
        results.atomic_write_bytes(part / "config.json", config)
    if recon is not None:
        save_npz(out / "recons" / f"{run.run_id}.npz", x=recon)
    provenance.write(out, run)  # before runs.csv, which marks the part complete
    results.write_run(out, run.run_id, tables)
    row = tables["runs"].iloc[0].to_dict()
    if row["status"] != "failed":  # an earlier attempt's traceback no longer describes this run
        (part / "error.log").unlink(missing_ok=True)
    return row


def _failure_reason(err: Exception) -> str:
    """A failed run's one-line reason; out of memory says where and what to lower."""
    if isinstance(err, OutOfMemory):
        return str(err)
    if is_out_of_memory(err):  # outside the phases train() names
        return describe(err, "in the run", STEP_SETTINGS)
    return f"{type(err).__name__}: {err}".splitlines()[0][:500]


def record_failure(run: RunConfig, out: Path, reason: str, **columns) -> RunOutcome:
    """Record ``run`` as failed for ``reason`` when the process training it died (a worker
    killed by a signal, e.g. the out-of-memory killer), so the folder says why it is missing.
    ``columns`` replace the row's values of this process (e.g. the dead worker's ``jobs`` and
    ``torch_threads``).

    The part is written only when ``run`` can be claimed and has no complete part (a
    concurrent sweep may have taken it over); the outcome is returned either way.
    """
    out = Path(out)
    frame = failed_row(run, resolve_device(run.train.device), reason).assign(**columns)
    with results.claim(out, run.run_id) as claimed:
        if claimed and results.part_status(out, run.run_id) not in results.COMPLETE:
            results.write_run(out, run.run_id, {"runs": frame})
    return RunOutcome(run.run_id, "failed", frame.iloc[0].to_dict())
