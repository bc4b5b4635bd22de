"""The report's tables, as formatted cells: per setting a quality table (every registered metric
with values, the primary one compared; metrics that do not fit continue in further tables), a
cost, a memory and a convergence table (each at most :data:`MAX_TABLE_COLUMNS` columns, so that it fits a 1280-pixel
screen without horizontal scrolling), the paired comparisons, the runs that did not finish, every
run, and the setup.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd

from bench.metrics import METRICS, Metric
from bench.report.document import Table
from bench.report.fmt import (
    DASH,
    fmt_bytes,
    fmt_difference,
    fmt_estimate,
    fmt_interval,
    fmt_number,
    fmt_seconds,
    fmt_value,
    status_counts,
    verdict,
)
from bench.report.load import Setting
from bench.report.model import ReportData, natural_key
from bench.report.stats import Comparison, Estimate, Summary, validity
from bench.tasks import setting_labels

# The widest summary table. With the report's CSS (0.9em cells that wrap at spaces, a mean and its
# interval kept together) eight columns fit the 1200-pixel body of a 1280-pixel window: checked in
# headless chromium on the quick suite, where the quality table wraps its Δ PSNR cells to 1200 px.
MAX_TABLE_COLUMNS = 8
# The setup table's rows; each registered task's settings go before noise_std (setup_fields()).
SETUP_FIELDS = (
    ("suite", "suite"), ("task", "task"), ("dataset", "data set"),
    ("image_size", "image size (pixels)"), ("channels", "channels"),
    ("n_train", "training images"), ("n_test", "test images"),
    ("batch_size", "batch size"), ("epochs", "epochs"), ("lr", "learning rate"),
    ("lr_schedule", "learning-rate schedule"),
    ("jac_reg", "Jacobian regularisation weight"),
    ("jac_reg_every", "Jacobian regularisation every N steps"),
    ("noise_std", "noise std"), ("model_width", "model width"), ("model_depth", "model depth"),
    ("model_form", "model form"), ("lipschitz_control", "Lipschitz control"),
    ("model_lipschitz", "model Lipschitz target"), ("model_activation", "activation"),
    ("certified_lipschitz_bound", "certified ||dT/dx|| bound"),
    ("solver", "forward solver"), ("solver_max_iter", "solver max_iter"),
    ("solver_tol", "solver tol"), ("device", "device"), ("device_name", "device name"),
    ("torch_threads", "torch threads per run"), ("cpu_count", "usable cores"),
    ("jobs", "parallel runs (-j)"),
    ("torch_version", "torch"), ("torchdeq_version", "torchdeq"), ("git_commit", "git commit"),
    ("config_hash", "config hash"),
)  # fmt: skip
LABEL = "strategy label"


def setup_fields() -> tuple[tuple[str, str], ...]:
    """(column, label) of the setup table's rows: :data:`SETUP_FIELDS` with every registered
    task's setting columns (bench.tasks.setting_labels), never a list of them here."""
    i = next(i for i, (column, _) in enumerate(SETUP_FIELDS) if column == "noise_std")
    return (*SETUP_FIELDS[:i], *setting_labels().items(), *SETUP_FIELDS[i:])


def _fmt_budget(estimate: Estimate, n_ok: int, digits: int) -> str:
    if n_ok and estimate.n == 0:
        return "no evaluation by then"
    return fmt_estimate(estimate, digits)


def _flags_cell(row: pd.Series) -> str:
    """Short validity flags of one label's ok runs (the findings and observations explain them)."""
    n = row["n_ok"]
    parts = [
        f"{text} {row[column]}/{n}"
        for column, text in (
            ("n_noncontractive", "not contractive"),
            ("n_forward_unconverged", "fwd conv. < 95%"),
            ("n_backward_unconverged", "bwd conv. < 95%"),
            ("n_reference_unconverged", "grad ref. unconverged"),
            ("n_skipped", "skipped steps"),
        )
        if row[column] > 0
    ]
    if parts:
        return "⚠ " + "; ".join(parts)
    return "none" if row["n_measured"] > 0 else DASH


def _timing_cell(row: pd.Series) -> str:
    """Whether the label's step times can be trusted (issue 11 §2); DASH when not recorded."""
    if row["n_timing_unreliable"] > 0:
        return f"⚠ unreliable {row['n_timing_unreliable']}/{row['n_ok']}"
    return "reliable" if row["n_timing_recorded"] > 0 else DASH


def _fmt_cosine(value: float, unavailable: int, runs: int) -> str:
    """A mean cosine; runs whose reference did not converge are n/a, never a number."""
    if unavailable and unavailable >= runs:
        return "n/a (reference unconverged)"
    text = fmt_number(value, "{:.3f}")
    return f"{text} ({unavailable}/{runs} n/a)" if unavailable else text


def _reach_cell(row: pd.Series) -> str:
    if row["target_runs"] == 0:
        return DASH
    if row["target_reached"] == 0:
        return "not reached"
    reach = fmt_seconds(row["target_time"])
    if row["target_reached"] < row["target_runs"]:
        reach += f" ({row['target_reached']}/{row['target_runs']} seeds)"
    return reach


def _drop_empty(headers: list[str], rows: list[list[str]], optional: set[str]) -> Table:
    """The table without the ``optional`` columns that no row fills (e.g. GPU memory on a CPU)."""
    keep = [
        i for i, h in enumerate(headers)
        if h not in optional or any(r[i] != DASH for r in rows)
    ]  # fmt: skip
    return Table([headers[i] for i in keep], [[r[i] for i in keep] for r in rows])


# Columns of the quality table besides the metrics: label, runs, Δ vs jfb, value at the budget,
# time to target, validity flags. The metrics fill the rest, the primary first; any that do not
# fit go to :func:`more_metrics_tables`.
QUALITY_FIXED_COLUMNS = 6


def _metric_rows(data: ReportData, summary: pd.DataFrame, metrics: list[Metric]) -> list[list]:
    """[label, runs, one cell per metric] per strategy label, then per baseline and the naive
    reconstruction: final values with 95 % intervals over seeds (baselines are deterministic)."""
    rows = [
        [label, row["status"]]
        + [fmt_estimate(row[f"final_test_{m.name}_ci"], m.decimals) for m in metrics]
        for label, row in summary.iterrows()
    ]
    baselines = data.runs[data.runs["is_baseline"]]
    for name, group in sorted(baselines.groupby("baseline_name"), key=lambda item: item[0]):
        ok = group[group["status"] == "ok"]
        # Deterministic: one value (repeated rows, e.g. two suites in one folder, are averaged).
        rows.append(
            [f"baseline: {name}", status_counts(group["status"])]
            + [fmt_number(ok[f"final_test_{m.name}"].mean(), f"{{:.{m.decimals}f}}")
               for m in metrics]
        )  # fmt: skip
    if any(m.name in data.naive_metrics for m in metrics):
        rows.append(
            [data.naive_name, DASH]
            + [fmt_number(data.naive_metrics.get(m.name, float("nan")), f"{{:.{m.decimals}f}}")
               for m in metrics]
        )  # fmt: skip
    return rows


def quality_table(data: ReportData, summary: Summary, target: float | None) -> Table:
    """Per strategy label, then per baseline and the naive reconstruction: final quality in each
    metric that fits (95 % intervals), and in the primary metric the paired difference to jfb,
    the value at the equal-time budget and the time to the target; the validity flags of the
    runs behind the numbers."""
    metrics, primary = data.metrics(), data.primary_metric
    shown = metrics[: MAX_TABLE_COLUMNS - QUALITY_FIXED_COLUMNS]
    target_header = (
        f"time to {primary.format(target, unit=True)}" if target is not None else "time to target"
    )
    budget = summary.budget
    budget_header = (
        f"{primary.label} at {fmt_seconds(budget)}" if budget is not None else
        f"{primary.label} at budget"
    )  # fmt: skip
    delta_header = f"Δ {primary.label} vs jfb (95% CI)"
    reference = summary.reference
    headers = [
        LABEL, "runs", *(m.axis_label for m in shown), delta_header, budget_header,
        target_header, "validity flags",
    ]  # fmt: skip
    rows = _metric_rows(data, summary.frame, shown)
    for row, (label, values) in zip(rows, summary.frame.iterrows(), strict=False):
        n = values["n_ok"]
        difference = (
            "reference" if label == reference
            else fmt_difference(values.get(f"vs_reference_{primary.name}"), primary.decimals)
        )  # fmt: skip
        row += [
            difference if n else DASH,
            _fmt_budget(values[f"budget_{primary.name}"], n, primary.decimals),
            _reach_cell(values), _flags_cell(values) if n else DASH,
        ]  # fmt: skip
    for row in rows[len(summary.frame) :]:
        row += [DASH] * (len(headers) - len(row))
    optional = {delta_header, "validity flags"}
    if budget is None:
        optional.add(budget_header)
    return _drop_empty(headers, rows, optional)


def more_metrics_tables(data: ReportData, summary: pd.DataFrame) -> list[Table]:
    """The metrics the quality table has no room for, in tables of at most
    :data:`MAX_TABLE_COLUMNS` columns (none when every metric fits)."""
    rest = data.metrics()[MAX_TABLE_COLUMNS - QUALITY_FIXED_COLUMNS :]
    width = MAX_TABLE_COLUMNS - 2
    tables = []
    for start in range(0, len(rest), width):
        chunk = rest[start : start + width]
        headers = [LABEL, "runs", *(m.axis_label for m in chunk)]
        tables.append(Table(headers, _metric_rows(data, summary, chunk)))
    return tables


def cost_table(summary: pd.DataFrame) -> Table:
    """Per strategy label: median step time (after warm-up), of it the certification of the
    model's weights (the same work for every strategy), warm-up step time, training time,
    Jacobian-vector products per step, and whether the timings can be trusted."""
    headers = [
        LABEL, "median step", "of it certification", "warm-up step", "train time",
        "J products / step", "timing",
    ]  # fmt: skip
    rows = [
        [
            label, fmt_seconds(row["step_time"]), fmt_seconds(row["certify_time"]),
            fmt_seconds(row["warmup_step_time_s"]), fmt_seconds(row["train_time_s"]),
            fmt_number(row["jacobian_products_per_step"], "{:.1f}"),
            _timing_cell(row) if row["n_ok"] else DASH,
        ]
        for label, row in summary.iterrows()
    ]  # fmt: skip
    optional = {"of it certification", "warm-up step", "J products / step", "timing"}
    return _drop_empty(headers, rows, optional)


def memory_table(summary: pd.DataFrame) -> Table:
    """Per strategy label: the exact peak of live tensor bytes in a training step after the
    certification (the main figure: what the strategy costs), the certification's own peak,
    peak GPU memory where measured, bytes saved for backward, peak process RSS."""
    headers = [
        LABEL, "peak step memory", "certification peak", "peak GPU mem", "saved for backward",
        "peak RSS (train steps)",
    ]  # fmt: skip
    rows = [
        [label, fmt_bytes(row["peak_step_bytes"]), fmt_bytes(row["certify_peak_bytes"]),
         fmt_bytes(row["peak_gpu_memory_bytes"]), fmt_bytes(row["saved_bytes"]),
         fmt_bytes(row["peak_rss_bytes"])]
        for label, row in summary.iterrows()
    ]  # fmt: skip
    return _drop_empty(headers, rows, {"peak step memory", "certification peak", "peak GPU mem"})


def convergence_table(summary: pd.DataFrame) -> Table:
    """Per strategy label: forward and backward solves (iterations, share converged), the
    largest measured ||dT/dx|| and the share of its certified bound it uses; the gradient's
    fidelity is :func:`fidelity_table` (one table would not fit the width)."""
    headers = [
        LABEL, "fwd iters", "fwd converged", "bwd iters", "bwd converged", "max ‖∂T/∂x‖",
        "of the bound",
    ]  # fmt: skip
    rows = [
        [
            label, fmt_number(row["mean_forward_iters"], "{:.1f}"),
            fmt_number(row["forward_converged_frac"], "{:.0%}"),
            fmt_number(row["mean_backward_iters"], "{:.1f}"),
            fmt_number(row["backward_converged_frac"], "{:.0%}"),
            fmt_number(row["layer_lipschitz_max"], "{:.3f}"),
            fmt_number(row["contraction_budget_used"], "{:.0%}"),
        ]
        for label, row in summary.iterrows()
    ]  # fmt: skip
    return _drop_empty(headers, rows, {"bwd converged", "max ‖∂T/∂x‖", "of the bound"})


def fmt_adjoint_bound(value: float) -> str:
    """A certified bound on a relative error: a number, or "vacuous" with it where it is > 1
    (it then proves less than v = 0 would), never hidden."""
    if pd.isna(value):
        return DASH
    return f"vacuous ({value:.3g})" if value > 1 else f"{value:.1e}"


def fidelity_table(summary: pd.DataFrame) -> Table:
    """Per strategy label: the gradient's cosine to the exact implicit gradient at the first and
    last evaluation, and its adjoint's relative error measured at the last evaluation next to
    the certified bound there and the largest certified bound of any training step
    (bench/bounds.py; the worst seed of each). A dash: not measured, or no bound (unrolled, or a
    model without certificate)."""
    headers = [
        LABEL, "grad cos first", "grad cos last", "adjoint error (last eval)",
        "certified bound (last eval)", "certified bound (worst step)",
    ]  # fmt: skip
    rows = [
        [
            label,
            _fmt_cosine(row["grad_cosine_first"], row["grad_first_na"], row["n_ok"]),
            _fmt_cosine(row["grad_cosine_last"], row["grad_last_na"], row["n_ok"]),
            fmt_number(row["adjoint_error_last"], "{:.1e}"),
            fmt_adjoint_bound(row["adjoint_error_bound_last"]),
            fmt_adjoint_bound(row["max_adjoint_error_bound"]),
        ]
        for label, row in summary.iterrows()
    ]  # fmt: skip
    optional = {
        "adjoint error (last eval)", "certified bound (last eval)", "certified bound (worst step)"
    }  # fmt: skip
    return _drop_empty(headers, rows, optional)


def unreliable_timings(data: ReportData) -> list[str]:
    """One line per ok run whose timing is flagged unreliable: run id, label and why."""
    flags = validity(data)
    bad = flags[flags["timing_unreliable"]]
    return [
        f"`{run_id}` ({row['label']}): {row['timing_note'] or 'no reason recorded'}"
        for run_id, row in bad.iterrows()
    ]


def _fmt_delta(estimate: Estimate, digits: int) -> str:
    """A difference and its 95 % interval, numbers only (DASH without an interval's seeds)."""
    if estimate.n == 0:
        return DASH
    if not estimate.has_interval:
        return f"{estimate.mean:+.{digits}f}"
    return f"{estimate.mean:+.{digits}f} {fmt_interval(estimate, digits)}"


def comparisons_table(found: Sequence[Comparison]) -> Table | None:
    """The paired differences of one setting with their 95 % intervals and verdicts, one row per
    comparison and metric (the primary metric first), so the width does not grow with metrics."""
    if not found:
        return None
    # The verdict has its own column here, so the difference cells hold only the numbers.
    rows = [
        [c.name, METRICS.get(name).axis_label, str(delta.n),
         _fmt_delta(delta, METRICS.get(name).decimals), verdict(delta), c.note]
        for c in found
        for name, delta in c.deltas.items()
    ]  # fmt: skip
    return Table(["comparison", "metric", "seeds", "Δ [95% CI]", "verdict", "how"], rows)


def problem_runs_table(data: ReportData) -> Table | None:
    """Runs whose status is not ok, with their reasons (None when every run is ok)."""
    bad = data.runs[data.runs["status"] != "ok"].sort_values(["label", "seed"])
    if bad.empty:
        return None
    rows = [
        [r["run_id"], r["label"], fmt_value(r["seed"]), r["status"],
         fmt_value(r["status_reason"]) if pd.notna(r["status_reason"]) else "(no reason recorded)"]
        for _, r in bad.iterrows()
    ]  # fmt: skip
    return Table(["run", LABEL, "seed", "status", "reason"], rows)


def runs_table(data: ReportData, settings: list[Setting] | None = None) -> Table:
    """Every run, one row each (appendix), with its setting when there are several."""
    titles: dict[str, str] = {}
    for setting in settings or []:
        if setting.title is not None:
            for run_id in setting.data.runs["run_id"]:
                titles.setdefault(run_id, setting.title)
    records = sorted(
        (r for _, r in data.runs.iterrows()),
        key=lambda r: (
            r["is_baseline"],
            natural_key(r["label"]),
            natural_key(fmt_value(r["seed"])),
        ),
    )
    metrics = data.metrics()
    rows = [
        [r["run_id"], r["label"], fmt_value(r["seed"]), r["status"]]
        + [fmt_number(r[f"final_test_{m.name}"], f"{{:.{m.decimals}f}}") for m in metrics]
        + [fmt_seconds(r["train_time_s"]), fmt_seconds(r["median_step_time_s"])]
        + ([titles.get(r["run_id"], DASH)] if titles else [])
        for r in records
    ]  # fmt: skip
    headers = [
        "run", LABEL, "seed", "status", *(m.axis_label for m in metrics), "train time",
        "median step",
    ]  # fmt: skip
    return Table(headers + (["setting"] if titles else []), rows)


def _strategy_parameters(learned: pd.DataFrame) -> dict[str, set]:
    """Every strategy parameter the runs recorded, with its values, from the ``params`` JSON
    (which keeps types: a bool reads True, not the 1 of its ``p_`` column); rows whose
    ``params`` is not a JSON object fall back to their ``p_`` columns."""
    found: dict[str, set] = {}
    for _, row in learned.iterrows():
        try:
            params = json.loads(row["params"]) if isinstance(row["params"], str) else None
        except json.JSONDecodeError:
            params = None
        if not isinstance(params, dict):
            params = {
                c[2:]: row[c] for c in learned.columns if c.startswith("p_") and pd.notna(row[c])
            }
        for key, value in params.items():
            found.setdefault(key, set()).add(value if not isinstance(value, list) else str(value))
    return found


def setup_table(data: ReportData, settings: list[Setting] | None = None) -> Table:
    """The experimental setup, one row per field; several values are listed (the sweep varies it)."""
    runs = data.runs
    learned = runs[~runs["is_baseline"]]
    rows = []
    for column, name in setup_fields():
        if column not in runs.columns:
            continue
        source = learned if learned[column].notna().any() else runs
        values = source[column].dropna().unique()
        if not len(values):
            continue
        values = sorted(values, key=lambda v: natural_key(fmt_value(v)))
        text = ", ".join(fmt_value(v) for v in values)
        rows.append([name, text + (" (varies)" if len(values) > 1 else "")])
    seeds = sorted(learned["seed"].dropna().unique())
    rows.append(["seeds", ", ".join(fmt_value(s) for s in seeds) or DASH])
    for name, values in _strategy_parameters(learned).items():
        values = sorted(values, key=lambda v: natural_key(fmt_value(v)))
        rows.append([f"strategy parameter {name}", ", ".join(map(fmt_value, values))])
    if settings and len(settings) > 1:
        rows.append(["settings", f"{len(settings)}: " + "; ".join(s.title for s in settings)])
    rows.append(["runs", f"{len(learned)} learned ({status_counts(learned['status']) or 'none'}), "
                         f"{int(runs['is_baseline'].sum())} baseline"])  # fmt: skip
    return Table(["setting", "value"], rows)
