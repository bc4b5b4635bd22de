"""The comparison report of one results folder: ``report.md``, ``report.html`` and the figures.

:func:`build_report` reads the tidy tables written by the runner (see :mod:`bench.results`),
summarises every strategy label (final quality over seeds, cost, memory, convergence, gradient
fidelity, time to a target PSNR), draws the figures of :mod:`bench.plots` as PNG and SVG, derives
short observations from the numbers, and lists what is missing or did not finish instead of
failing on partial results.

The default target PSNR (for "time to reach a quality") is the best classical baseline's PSNR when
at least one learned strategy reaches it on average, else the midpoint between the blurred input's
PSNR and the best learned strategy's mean final PSNR; ``target_psnr=`` overrides it.
"""

from __future__ import annotations

import base64
import html
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench import plots
from bench.plots import PlotResult, ReportData, natural_key
from bench.results import COLUMNS, atomic_write_bytes, read_table

# runs.csv columns that hold text; every other known column is coerced to numbers.
TEXT_RUN_COLUMNS = {
    "run_id", "suite", "strategy", "strategy_label", "params", "status", "status_reason",
    "dataset", "solver", "device", "device_name", "torch_version", "torchdeq_version",
    "git_commit", "config_hash",
}  # fmt: skip
BASELINE_PREFIX = "baseline:"
# Known strategies first (in the order the project introduces them), others alphabetically.
STRATEGY_ORDER = ("jfb", "cg", "neumann", "unrolled")
SETUP_FIELDS = (
    ("suite", "suite"), ("dataset", "data set"), ("image_size", "image size (pixels)"),
    ("channels", "channels"), ("n_train", "training images"), ("n_test", "test images"),
    ("batch_size", "batch size"), ("epochs", "epochs"), ("lr", "learning rate"),
    ("blur_kernel_size", "blur kernel size"), ("blur_sigma", "blur sigma"),
    ("noise_std", "noise std"), ("model_width", "model width"), ("model_depth", "model depth"),
    ("solver", "forward solver"), ("solver_max_iter", "solver max_iter"),
    ("solver_tol", "solver tol"), ("device", "device"), ("device_name", "device name"),
    ("torch_version", "torch"), ("torchdeq_version", "torchdeq"), ("git_commit", "git commit"),
    ("config_hash", "config hash"),
)  # fmt: skip
# Below this fraction of converged forward solves, or with mean iterations this close to
# max_iter, the solver is reported as stopped by its iteration cap rather than its tolerance.
CAP_CONVERGED_FRACTION = 0.05
CAP_ITERATION_FRACTION = 0.95
DASH = "—"


# ---------------------------------------------------------------------------------------------
# Loading and cleaning


def _read_table(results_dir: Path, name: str, notes: list[str]) -> pd.DataFrame:
    """One table as a DataFrame with at least its declared columns (empty when absent)."""
    path = results_dir / f"{name}.csv"
    columns = list(COLUMNS[name])
    if not path.exists():
        if name == "runs":
            raise ValueError(
                f"no results at {str(results_dir)!r}: expected {path} (run a suite first, "
                "e.g. `implicit-bench run quick`)"
            )
        notes.append(f"`{name}.csv` is missing")
        return pd.DataFrame(columns=columns)
    try:
        frame = read_table(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        if name == "runs":
            raise ValueError(f"cannot read {path}: {error}") from error
        notes.append(f"`{name}.csv` cannot be read ({error}); treated as empty")
        return pd.DataFrame(columns=columns)
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        notes.append(f"`{name}.csv` lacks columns {', '.join(absent)} (treated as not measured)")
        frame = frame.assign(**{c: np.nan for c in absent})
    return frame


def _numeric(frame: pd.DataFrame, text_columns: set[str]) -> pd.DataFrame:
    frame = frame.copy()
    for column in frame.columns:
        if column in text_columns:
            continue
        converted = pd.to_numeric(frame[column], errors="coerce")
        # p_<param> columns may legitimately hold text (e.g. a solver name): keep those as text.
        if column.startswith("p_") and converted.isna().sum() > frame[column].isna().sum():
            continue
        frame[column] = converted
    return frame


def _strategy_sort_key(label: str, strategy: str) -> tuple:
    rank = STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)
    return (rank, natural_key(strategy), natural_key(label))


def _fill_from(runs: pd.DataFrame, column: str, per_run: pd.Series) -> None:
    """Fill NaN cells of ``runs[column]`` from a run_id-indexed series (in place)."""
    runs[column] = runs[column].fillna(runs["run_id"].map(per_run))


def _complete_from_tables(runs: pd.DataFrame, epochs: pd.DataFrame, steps: pd.DataFrame) -> None:
    """Derive summary columns a runs row lacks from its epochs / steps rows (in place)."""
    if len(epochs):
        ordered = epochs.sort_values(["run_id", "epoch"])
        last = ordered.groupby("run_id").last()  # last non-NaN value per column
        for run_col, epoch_col in (
            ("final_train_loss", "train_loss"), ("final_test_psnr", "test_psnr"),
            ("final_test_ssim", "test_ssim"), ("total_wall_time_s", "wall_time_s"),
            ("blurred_test_psnr", "blurred_test_psnr"), ("blurred_test_ssim", "blurred_test_ssim"),
        ):  # fmt: skip
            _fill_from(runs, run_col, last[epoch_col])
        cosines = ordered.dropna(subset=["grad_cosine"]).groupby("run_id")["grad_cosine"]
        _fill_from(runs, "grad_cosine_first", cosines.first())
        _fill_from(runs, "grad_cosine_last", cosines.last()[cosines.count() >= 2])
    if len(steps):
        by_run = steps.groupby("run_id")
        for run_col, step_col in (
            ("median_step_time_s", "step_time_s"), ("median_forward_time_s", "forward_time_s"),
            ("median_backward_time_s", "backward_time_s"),
            ("median_optimizer_time_s", "optimizer_time_s"),
        ):  # fmt: skip
            _fill_from(runs, run_col, by_run[step_col].median())
        _fill_from(runs, "mean_forward_iters", by_run["forward_iters"].mean())
        _fill_from(runs, "forward_converged_frac", by_run["forward_converged"].mean())
        _fill_from(runs, "mean_backward_iters", by_run["backward_iters"].mean())


def prepare(results_dir: Path) -> tuple[ReportData, list[str]]:
    """Load a results folder into a :class:`ReportData`, plus notes on what is missing."""
    notes: list[str] = []
    runs = _numeric(_read_table(results_dir, "runs", notes), TEXT_RUN_COLUMNS)
    epochs = _numeric(_read_table(results_dir, "epochs", notes), {"run_id", "strategy"})
    steps = _numeric(_read_table(results_dir, "steps", notes), {"run_id", "strategy"})

    runs["run_id"] = runs["run_id"].astype(str)
    if runs["run_id"].duplicated().any():
        duplicated = sorted(set(runs.loc[runs["run_id"].duplicated(), "run_id"]))
        notes.append(f"runs.csv repeats run ids {', '.join(duplicated)}; the last row is used")
        runs = runs.drop_duplicates("run_id", keep="last")
    runs["strategy"] = runs["strategy"].fillna("unknown").astype(str)
    runs["label"] = runs["strategy_label"].where(runs["strategy_label"].notna(), runs["strategy"])
    runs["label"] = runs["label"].astype(str)
    runs["status"] = runs["status"].fillna("unknown").astype(str).str.strip().str.lower()
    runs["is_baseline"] = runs["strategy"].str.startswith(BASELINE_PREFIX)
    runs["baseline_name"] = (
        runs["strategy"].str.removeprefix(BASELINE_PREFIX).where(runs["is_baseline"])
    )

    for name, frame in (("epochs", epochs), ("steps", steps)):
        frame["run_id"] = frame["run_id"].astype(str)
        unknown = sorted(set(frame["run_id"]) - set(runs["run_id"]))
        if unknown:
            notes.append(
                f"`{name}.csv` has rows of {len(unknown)} run(s) absent from runs.csv "
                f"({', '.join(unknown[:5])}{', …' if len(unknown) > 5 else ''}); ignored"
            )
    learned = runs[~runs["is_baseline"]].copy()
    _complete_from_tables(learned, epochs, steps)
    runs.loc[learned.index, learned.columns] = learned
    learned_ok = learned[learned["status"] == "ok"].copy()
    ok_ids = set(learned_ok["run_id"])
    join = runs[["run_id", "label"]]
    epochs = epochs[epochs["run_id"].isin(ok_ids)].drop(columns=["label"], errors="ignore")
    epochs = epochs.merge(join, on="run_id").sort_values(["run_id", "epoch"])
    steps = steps[steps["run_id"].isin(ok_ids)].drop(columns=["label"], errors="ignore")
    steps = steps.merge(join, on="run_id")

    first_strategy = learned.groupby("label")["strategy"].first()
    labels = sorted(
        first_strategy.index, key=lambda lab: _strategy_sort_key(lab, first_strategy[lab])
    )
    blurred_psnr = _mean_or_none(runs["blurred_test_psnr"], epochs["blurred_test_psnr"])
    blurred_ssim = _mean_or_none(runs["blurred_test_ssim"], epochs["blurred_test_ssim"])
    data = ReportData(
        runs=runs, learned_ok=learned_ok,
        baselines=runs[runs["is_baseline"] & (runs["status"] == "ok")].copy(),
        epochs=epochs, steps=steps, labels=labels, palette=plots.make_palette(labels),
        recons_dir=results_dir / "recons", blurred_psnr=blurred_psnr, blurred_ssim=blurred_ssim,
    )  # fmt: skip
    notes += _coverage_notes(results_dir, data, ok_step_rows=len(steps))
    return data, notes


def _mean_or_none(*candidates: pd.Series) -> float | None:
    for series in candidates:
        values = pd.to_numeric(series, errors="coerce").dropna()
        if len(values):
            return float(values.mean())
    return None


def _coverage_notes(results_dir: Path, data: ReportData, ok_step_rows: int) -> list[str]:
    """Pieces missing for runs that did finish: epochs, steps, reconstructions, seeds."""
    notes = []
    ok = data.learned_ok
    no_epochs = sorted(set(ok["run_id"]) - set(data.epochs["run_id"]))
    if no_epochs and (results_dir / "epochs.csv").exists():
        notes.append(f"no epochs.csv rows for ok run(s): {', '.join(no_epochs)}")
    counts = data.epochs.groupby("run_id")["epoch"].nunique()
    planned = ok.set_index("run_id")["epochs"]
    short = [
        f"{run_id} ({counts[run_id]} of {int(planned[run_id])})"
        for run_id in counts.index
        if pd.notna(planned.get(run_id)) and counts[run_id] < planned[run_id]
    ]
    if short:
        notes.append("ok runs with fewer recorded epochs than planned: " + ", ".join(short))
    if (results_dir / "steps.csv").exists():
        if ok_step_rows == 0 and len(ok):
            notes.append("`steps.csv` has no rows of ok runs: per-step figures use runs.csv")
        else:
            no_steps = sorted(set(ok["run_id"]) - set(data.steps["run_id"]))
            if no_steps:
                notes.append(f"no steps.csv rows for ok run(s): {', '.join(no_steps)}")
    else:
        notes.append(
            "per-step timings, iterations and convergence come from runs.csv only "
            "(steps.csv missing)"
        )
    if not data.recons_dir.exists():
        notes.append("`recons/` is missing: no reconstruction grid")
    elif not (data.recons_dir / "reference.npz").exists():
        notes.append("`recons/reference.npz` is missing: no reconstruction grid")
    learned = data.runs[~data.runs["is_baseline"]]
    seeds = learned.dropna(subset=["seed"]).groupby("label")["seed"].apply(set)
    every_seed = set().union(*seeds) if len(seeds) else set()
    for label, present in seeds.items():
        absent = sorted(every_seed - present)
        if absent:
            notes.append(
                f"{label} has no run for seed(s) {', '.join(_fmt_value(s) for s in absent)} "
                "(present for other labels)"
            )
    return notes


# ---------------------------------------------------------------------------------------------
# Target PSNR and the summary


def choose_target(data: ReportData, psnr_by_label: pd.Series, override: float | None):
    """The target PSNR for "time to target", and the rule that chose it (a sentence)."""
    if override is not None:
        return float(override), "given by the caller (`target_psnr`)"
    best_learned = psnr_by_label.max() if psnr_by_label.notna().any() else None
    baseline_psnr = plots.finite_rows(data.baselines, "final_test_psnr")
    baseline_psnr = baseline_psnr.groupby("baseline_name")["final_test_psnr"].mean()
    if len(baseline_psnr) and best_learned is not None and best_learned >= baseline_psnr.max():
        name = baseline_psnr.idxmax()
        return float(baseline_psnr.max()), (
            f"the best classical baseline's PSNR ({name}), which at least one learned strategy "
            "reaches on average"
        )
    if best_learned is not None and data.blurred_psnr is not None:
        return (data.blurred_psnr + best_learned) / 2, (
            "midway between the blurred input's PSNR and the best learned strategy's mean final "
            "PSNR"
            + (" (no learned strategy reaches the best baseline)" if len(baseline_psnr) else "")
        )
    if len(baseline_psnr):
        return float(baseline_psnr.max()), "the best classical baseline's PSNR"
    if best_learned is not None:
        return float(best_learned), "the best learned strategy's mean final PSNR"
    return None, "no PSNR was recorded"


def time_to_target(data: ReportData, target: float | None) -> pd.DataFrame:
    """Per ok run: wall-clock seconds at the end of the first epoch with test PSNR >= target."""
    epochs = plots.finite_rows(data.epochs, "test_psnr")
    rows = []
    for run_id, group in epochs.groupby("run_id"):
        reached = group[group["test_psnr"] >= target] if target is not None else group.iloc[0:0]
        seconds = float(reached["wall_time_s"].iloc[0]) if len(reached) else math.nan
        rows.append({"run_id": run_id, "label": group["label"].iloc[0], "time": seconds,
                     "reached": bool(len(reached))})  # fmt: skip
    return pd.DataFrame(rows, columns=["run_id", "label", "time", "reached"])


def summarize(data: ReportData, target: float | None) -> pd.DataFrame:
    """Numbers per learned strategy label (index), means over its ok runs (seeds)."""
    learned = data.runs[~data.runs["is_baseline"]]
    ok = data.learned_ok.groupby("label")
    summary = pd.DataFrame(index=pd.Index(data.labels, name="label"))
    summary["strategy"] = learned.groupby("label")["strategy"].first()
    summary["status"] = learned.groupby("label")["status"].apply(_status_counts)
    summary["n_ok"] = ok.size().reindex(summary.index).fillna(0).astype(int)
    for column in ("final_test_psnr", "final_test_ssim"):
        summary[column + "_mean"] = ok[column].mean()
        summary[column + "_std"] = ok[column].std()  # sample sd (ddof=1); NaN for one seed
    summary["step_time"] = plots.step_phase_medians(data)["step_time_s"]
    for column in (
        "total_wall_time_s", "peak_gpu_memory_bytes", "saved_bytes", "peak_rss_bytes",
        "mean_forward_iters", "forward_converged_frac", "mean_backward_iters",
        "grad_cosine_first", "grad_cosine_last", "solver_max_iter",
    ):  # fmt: skip
        summary[column] = ok[column].mean()
    times = time_to_target(data, target)
    per_label = times.groupby("label")
    summary["target_time"] = per_label["time"].mean()  # over the seeds that reached it
    summary["target_reached"] = per_label["reached"].sum()
    summary["target_runs"] = per_label.size()
    summary[["target_reached", "target_runs"]] = (
        summary[["target_reached", "target_runs"]].fillna(0).astype(int)
    )
    return summary


def _status_counts(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    order = ["ok", "diverged", "failed"] + sorted(set(counts.index) - {"ok", "diverged", "failed"})
    return ", ".join(f"{counts[s]} {s}" for s in order if s in counts)


# ---------------------------------------------------------------------------------------------
# Formatting


def _fmt_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


def _fmt_mean_sd(mean: float, sd: float, digits: int) -> str:
    if pd.isna(mean):
        return DASH
    return f"{mean:.{digits}f}" if pd.isna(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _fmt_seconds(value: float) -> str:
    if pd.isna(value):
        return DASH
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"


def _fmt_bytes(value: float) -> str:
    if pd.isna(value):
        return DASH
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _fmt_number(value: float, pattern: str = "{:.3g}") -> str:
    return DASH if pd.isna(value) else pattern.format(value)


@dataclass
class Table:
    """A table of already formatted cells, rendered as Markdown or HTML."""

    headers: list[str]
    rows: list[list[str]]

    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown (no ``tabulate`` dependency); pipes in cells escaped."""

        def cell(text: str) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        cells = [[cell(h) for h in self.headers]] + [[cell(c) for c in row] for row in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]
        lines = [
            "| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"
        ]
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in cells[1:]:
            lines.append(
                "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
            )
        return "\n".join(lines)

    def to_html(self, css_class: str = "") -> str:
        """An escaped HTML table."""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.headers)
        body = "\n".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in self.rows
        )
        return (
            f'<div class="scroll"><table class="{css_class}">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody>\n</table></div>"
        )


def setup_table(data: ReportData) -> Table:
    """The experimental setup, one row per field; several values are listed (the sweep varies it)."""
    runs = data.runs
    learned = runs[~runs["is_baseline"]]
    rows = []
    for column, name in SETUP_FIELDS:
        source = learned if learned[column].notna().any() else runs
        values = source[column].dropna().unique()
        if not len(values):
            continue
        values = sorted(values, key=lambda v: natural_key(_fmt_value(v)))
        text = ", ".join(_fmt_value(v) for v in values)
        rows.append([name, text + (" (varies)" if len(values) > 1 else "")])
    seeds = sorted(learned["seed"].dropna().unique())
    rows.append(["seeds", ", ".join(_fmt_value(s) for s in seeds) or DASH])
    parameters = [c for c in runs.columns if c.startswith("p_")]
    for column in parameters:
        values = sorted(learned[column].dropna().unique(), key=lambda v: natural_key(_fmt_value(v)))
        if len(values):
            rows.append([f"strategy parameter {column[2:]}", ", ".join(map(_fmt_value, values))])
    rows.append(["runs", f"{len(learned)} learned ({_status_counts(learned['status']) or 'none'}), "
                         f"{int(runs['is_baseline'].sum())} baseline"])  # fmt: skip
    return Table(["setting", "value"], rows)


def summary_table(data: ReportData, summary: pd.DataFrame, target: float | None) -> Table:
    """Per strategy label and per baseline: quality, cost, memory, convergence, gradient fidelity."""
    target_header = f"time to {target:.2f} dB" if target is not None else "time to target"
    headers = [
        "strategy label", "runs", "PSNR (dB)", "SSIM", "median step", "total time",
        target_header, "peak GPU mem", "saved for backward", "peak RSS", "fwd iters",
        "bwd iters", "fwd converged", "grad cos first", "grad cos last",
    ]  # fmt: skip
    rows = []
    for label, row in summary.iterrows():
        if row["target_runs"] == 0:
            reach = DASH
        elif row["target_reached"] == 0:
            reach = "not reached"
        else:
            reach = _fmt_seconds(row["target_time"])
            if row["target_reached"] < row["target_runs"]:
                reach += f" ({row['target_reached']}/{row['target_runs']} seeds)"
        rows.append(
            [
                label, row["status"],
                _fmt_mean_sd(row["final_test_psnr_mean"], row["final_test_psnr_std"], 2),
                _fmt_mean_sd(row["final_test_ssim_mean"], row["final_test_ssim_std"], 4),
                _fmt_seconds(row["step_time"]), _fmt_seconds(row["total_wall_time_s"]), reach,
                _fmt_bytes(row["peak_gpu_memory_bytes"]), _fmt_bytes(row["saved_bytes"]),
                _fmt_bytes(row["peak_rss_bytes"]), _fmt_number(row["mean_forward_iters"], "{:.1f}"),
                _fmt_number(row["mean_backward_iters"], "{:.1f}"),
                _fmt_number(row["forward_converged_frac"], "{:.0%}"),
                _fmt_number(row["grad_cosine_first"], "{:.3f}"),
                _fmt_number(row["grad_cosine_last"], "{:.3f}"),
            ]
        )  # fmt: skip
    baselines = data.runs[data.runs["is_baseline"]]
    for name, group in sorted(baselines.groupby("baseline_name"), key=lambda item: item[0]):
        ok = group[group["status"] == "ok"]
        psnr, ssim = ok["final_test_psnr"], ok["final_test_ssim"]
        rows.append(
            [f"baseline: {name}", _status_counts(group["status"]),
             _fmt_mean_sd(psnr.mean(), psnr.std(), 2), _fmt_mean_sd(ssim.mean(), ssim.std(), 4)]
            + [DASH] * (len(headers) - 4)
        )  # fmt: skip
    if data.blurred_psnr is not None:
        rows.append(
            ["blurred input", DASH, f"{data.blurred_psnr:.2f}",
             _fmt_number(data.blurred_ssim, "{:.4f}")] + [DASH] * (len(headers) - 4)
        )  # fmt: skip
    if data.learned_ok["peak_gpu_memory_bytes"].isna().all():  # CPU runs: drop an empty column
        index = headers.index("peak GPU mem")
        headers = headers[:index] + headers[index + 1 :]
        rows = [row[:index] + row[index + 1 :] for row in rows]
    return Table(headers, rows)


def problem_runs_table(data: ReportData) -> Table | None:
    """Runs whose status is not ok, with their reasons (None when every run is ok)."""
    bad = data.runs[data.runs["status"] != "ok"].sort_values(["label", "seed"])
    if bad.empty:
        return None
    rows = [
        [r["run_id"], r["label"], _fmt_value(r["seed"]), r["status"],
         _fmt_value(r["status_reason"]) if pd.notna(r["status_reason"]) else "(no reason recorded)"]
        for _, r in bad.iterrows()
    ]  # fmt: skip
    return Table(["run", "strategy label", "seed", "status", "reason"], rows)


def runs_table(data: ReportData) -> Table:
    """Every run, one row each (appendix)."""
    records = sorted(
        (r for _, r in data.runs.iterrows()),
        key=lambda r: (
            r["is_baseline"],
            natural_key(r["label"]),
            natural_key(_fmt_value(r["seed"])),
        ),
    )
    rows = [
        [r["run_id"], r["label"], _fmt_value(r["seed"]), r["status"],
         _fmt_number(r["final_test_psnr"], "{:.2f}"), _fmt_number(r["final_test_ssim"], "{:.4f}"),
         _fmt_seconds(r["total_wall_time_s"]), _fmt_seconds(r["median_step_time_s"])]
        for r in records
    ]  # fmt: skip
    return Table(
        [
            "run",
            "strategy label",
            "seed",
            "status",
            "PSNR (dB)",
            "SSIM",
            "total time",
            "median step",
        ],
        rows,
    )


# ---------------------------------------------------------------------------------------------
# Observations


def observations(data: ReportData, summary: pd.DataFrame, target: float | None) -> list[str]:
    """Short findings computed from the numbers, most important first."""
    found: list[str] = []
    ok = summary[summary["n_ok"] > 0]
    psnr = ok["final_test_psnr_mean"].dropna()
    baseline_psnr = plots.finite_rows(data.baselines, "final_test_psnr")
    baseline_psnr = baseline_psnr.groupby("baseline_name")["final_test_psnr"].mean()
    if len(psnr):
        best = psnr.idxmax()
        text = (
            f"Best final test PSNR: {best} with {psnr[best]:.2f} dB "
            f"(mean over {ok.loc[best, 'n_ok']} seed(s))"
        )
        if len(baseline_psnr):
            name = baseline_psnr.idxmax()
            text += (
                f"; best classical baseline {name}: {baseline_psnr.max():.2f} dB "
                f"({psnr[best] - baseline_psnr.max():+.2f} dB)"
            )
        if data.blurred_psnr is not None:
            text += f"; blurred input: {data.blurred_psnr:.2f} dB"
        found.append(text + ".")
    elif len(baseline_psnr):  # classical baselines only (e.g. no learned run finished yet)
        text = (
            f"Best classical baseline: {baseline_psnr.idxmax()} with {baseline_psnr.max():.2f} dB"
        )
        if data.blurred_psnr is not None:
            text += f" (blurred input: {data.blurred_psnr:.2f} dB)"
        found.append(text + "; no learned run finished ok.")

    if target is not None:
        everyone = ok[(ok["target_runs"] > 0) & (ok["target_reached"] == ok["target_runs"])]
        ranking = everyone["target_time"].sort_values()
        partly = ok[(ok["target_reached"] > 0) & (ok["target_reached"] < ok["target_runs"])]
        never = ok[(ok["target_runs"] > 0) & (ok["target_reached"] == 0)]
        if len(ranking):
            first = ranking.index[0]
            text = f"{first} reached {target:.2f} dB first ({ranking.iloc[0]:.3g} s"
            text += ", mean over seeds)" if everyone.loc[first, "target_runs"] > 1 else ")"
            if len(ranking) > 1:
                text += "; then " + ", ".join(
                    f"{lab} ({t:.3g} s)" for lab, t in ranking[1:].items()
                )
            found.append(text + ".")
        for label, row in partly.iterrows():
            found.append(
                f"{label} reached {target:.2f} dB in only {row['target_reached']} of "
                f"{row['target_runs']} seeds ({row['target_time']:.3g} s for those)."
            )
        if len(never):
            found.append(f"Never reached {target:.2f} dB: {', '.join(never.index)}.")

    times = ok["step_time"].dropna()
    if len(times) > 1:
        fastest, slowest = times.idxmin(), times.idxmax()
        found.append(
            f"Cheapest training step: {fastest} ({times[fastest]:.3g} s median); {slowest} is "
            f"{times[slowest] / times[fastest]:.1f}× slower per step ({times[slowest]:.3g} s)."
        )

    found += _memory_observations(ok)
    found += _convergence_observations(ok)

    cosine = ok["grad_cosine_last"].dropna()
    if len(cosine):
        low, high = cosine.idxmin(), cosine.idxmax()
        text = f"Gradient cosine to the exact implicit gradient at the last epoch: {high} {cosine[high]:.3f}"
        if len(cosine) > 1:
            text += f" (highest), {low} {cosine[low]:.3f} (lowest)"
        found.append(text + ".")
        drift = (ok["grad_cosine_first"] - ok["grad_cosine_last"]).dropna()
        for label in drift[drift > 0.1].index:
            found.append(
                f"{label}'s gradient cosine fell from {ok.loc[label, 'grad_cosine_first']:.3f} "
                f"to {cosine[label]:.3f} during training."
            )

    found += _scaling_observations(data)

    bad = data.runs[data.runs["status"] != "ok"]
    if len(bad):
        found.append(
            f"{len(bad)} run(s) did not finish ok ({_status_counts(bad['status'])}): "
            + "; ".join(
                f"{r['run_id']} ({r['status']}: {_fmt_value(r['status_reason'])})"
                for _, r in bad.head(5).iterrows()
            )
            + ("; …" if len(bad) > 5 else "")
            + " — see Partial results."
        )
    return found


def _memory_observations(ok: pd.DataFrame) -> list[str]:
    found = []
    for column, noun in (("saved_bytes", "the bytes saved for backward"),
                         ("peak_gpu_memory_bytes", "the peak GPU memory")):  # fmt: skip
        values = ok[column].dropna()
        values = values[values > 0]
        if len(values) < 2:
            continue
        jfb = values[ok.loc[values.index, "strategy"] == "jfb"]
        reference = jfb.idxmin() if len(jfb) else values.idxmin()
        ratios = (values / values[reference]).drop(reference).sort_values(ascending=False)
        big = ratios[ratios >= 1.5]
        verb = "saves" if column == "saved_bytes" else "needs"
        object_ = "the bytes" if column == "saved_bytes" else "the peak GPU memory"
        for label, ratio in big.head(4).items():
            found.append(
                f"{label} {verb} {ratio:.1f}× {object_} of {reference} "
                f"({_fmt_bytes(values[label])} vs {_fmt_bytes(values[reference])}"
                f"{' for backward' if column == 'saved_bytes' else ''})."
            )
        if len(ratios) and not len(big):
            found.append(f"All strategies need within 1.5× {noun} of {reference}.")
    return found


def _convergence_observations(ok: pd.DataFrame) -> list[str]:
    found = []
    fractions = ok["forward_converged_frac"].dropna()
    for label, fraction in fractions.items():
        if fraction >= 1.0:
            continue
        iters, cap = ok.loc[label, "mean_forward_iters"], ok.loc[label, "solver_max_iter"]
        text = f"Forward solve converged in {fraction:.0%} of steps for {label}"
        at_cap = fraction <= CAP_CONVERGED_FRACTION or (
            pd.notna(iters) and pd.notna(cap) and iters >= CAP_ITERATION_FRACTION * cap
        )
        if at_cap:
            text += ": the solver hit its iteration cap"
            if pd.notna(cap):
                text += f" (max_iter={_fmt_value(cap)}"
                text += f", mean {iters:.1f} iterations)" if pd.notna(iters) else ")"
            text += ", so its fixed point is not reached to tolerance"
        found.append(text + ".")
    if len(fractions) and (fractions >= 1.0).all():
        found.append(
            "Every forward solve converged to tolerance (strategies that record convergence: "
            + ", ".join(fractions.index)
            + ")."
        )
    return found


def _scaling_observations(data: ReportData) -> list[str]:
    found = []
    for variable in plots.scaling_variables(data):
        rows = plots.scaling_rows(data, variable)
        rows = rows.assign(**{variable: pd.to_numeric(rows[variable], errors="coerce")})
        column = (
            "peak_gpu_memory_bytes"
            if rows["peak_gpu_memory_bytes"].notna().any()
            else "saved_bytes"
        )
        name = variable.removeprefix("p_")
        for strategy, group in rows.groupby("strategy"):
            means = group.dropna(subset=[column]).groupby(variable)[column].mean()
            if len(means) >= 2 and means.iloc[0] > 0:
                lo, hi = means.index.min(), means.index.max()
                found.append(
                    f"{strategy}: {'peak GPU memory' if column.startswith('peak') else 'saved bytes'}"
                    f" ×{means[hi] / means[lo]:.2f} from {name}={_fmt_value(lo)} to "
                    f"{name}={_fmt_value(hi)} ({_fmt_bytes(means[lo])} → {_fmt_bytes(means[hi])})."
                )
    return found


# ---------------------------------------------------------------------------------------------
# Documents


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3 { color: #123; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #eef2f6; }
td:first-child, th:first-child { text-align: left; }
table.kv td, table.kv th { text-align: left; }
td { white-space: nowrap; }
.scroll { overflow-x: auto; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
.skipped { color: #8a4b00; }
.note { color: #555; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


@dataclass
class ReportParts:
    """Everything both documents show, computed once."""

    title: str
    results_dir: Path
    generated: str
    setup: Table
    summary: Table
    target: float | None
    target_rule: str
    observations: list[str]
    plots: list[PlotResult]
    problem_runs: Table | None
    missing: list[str]
    runs: Table


def _markdown(parts: ReportParts) -> str:
    lines = [f"# {parts.title}", ""]
    lines += [f"Results: `{parts.results_dir}` · generated {parts.generated}", ""]
    lines += ["## Setup", "", parts.setup.to_markdown(), ""]
    lines += ["## Summary", ""]
    lines += [
        "Means ± sample standard deviation over the seeds of each label's ok runs; "
        "median step: median per-step time; time to target: training wall-clock at the end of "
        "the first epoch whose test PSNR reaches the target (mean over the seeds that reach it).",
        "",
    ]
    target = f"{parts.target:.2f} dB" if parts.target is not None else "none"
    lines += [f"Target PSNR: **{target}** — {parts.target_rule}.", ""]
    lines += [parts.summary.to_markdown(), ""]
    lines += ["## Observations", ""]
    lines += [f"- {text}" for text in parts.observations] or ["- (no data to observe)"]
    lines += ["", "## Figures", ""]
    for plot in parts.plots:
        lines += [f"### {plot.title}", ""]
        if plot.skipped:
            lines += [f"*Skipped: {plot.skipped}.*", ""]
        else:
            lines += [f"![{plot.title}]({plot.png.name})", ""]
            lines += [f"{plot.caption} ([SVG]({plot.svg.name}))", ""]
    lines += ["## Partial results", ""]
    lines += _partial_markdown(parts)
    lines += ["## All runs", "", parts.runs.to_markdown(), ""]
    return "\n".join(lines)


def _partial_markdown(parts: ReportParts) -> list[str]:
    lines = []
    if parts.problem_runs is not None:
        lines += ["Runs that did not finish ok:", "", parts.problem_runs.to_markdown(), ""]
    if parts.missing:
        lines += ["Missing pieces:", ""] + [f"- {note}" for note in parts.missing] + [""]
    if parts.problem_runs is None and not parts.missing:
        lines += ["Every run finished ok and every table and file is present.", ""]
    return lines


def _inline_markdown_to_html(text: str) -> str:
    """Escape text, then render the only markup the report's prose uses: `code` spans."""
    pieces = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


def _html(parts: ReportParts) -> str:
    esc = html.escape
    body = [f"<h1>{esc(parts.title)}</h1>"]
    body.append(
        f'<p class="note">Results: <code>{esc(str(parts.results_dir))}</code> · generated '
        f"{esc(parts.generated)}</p>"
    )
    body += ["<h2>Setup</h2>", parts.setup.to_html("kv")]
    body += ["<h2>Summary</h2>"]
    body.append(
        '<p class="note">Means ± sample standard deviation over the seeds of each label\'s ok runs; '
        "median step: median per-step time; time to target: training wall-clock at the end of the "
        "first epoch whose test PSNR reaches the target (mean over the seeds that reach it).</p>"
    )
    target = f"{parts.target:.2f} dB" if parts.target is not None else "none"
    body.append(f"<p>Target PSNR: <strong>{esc(target)}</strong> — {esc(parts.target_rule)}.</p>")
    body.append(parts.summary.to_html("summary"))
    body.append("<h2>Observations</h2>")
    items = "".join(f"<li>{_inline_markdown_to_html(t)}</li>" for t in parts.observations)
    body.append(f"<ul>{items or '<li>(no data to observe)</li>'}</ul>")
    body.append("<h2>Figures</h2>")
    for plot in parts.plots:
        body.append(f'<h3 id="{esc(plot.name)}">{esc(plot.title)}</h3>')
        if plot.skipped:
            body.append(f'<p class="skipped">Skipped: {esc(plot.skipped)}.</p>')
            continue
        data_uri = "data:image/png;base64," + base64.b64encode(plot.png.read_bytes()).decode()
        body.append(
            f'<figure><img src="{data_uri}" alt="{esc(plot.title)}">'
            f"<figcaption>{esc(plot.caption)} "
            f'(<a href="{esc(plot.svg.name)}">SVG</a>, <a href="{esc(plot.png.name)}">PNG</a>)'
            "</figcaption></figure>"
        )
    body.append("<h2>Partial results</h2>")
    if parts.problem_runs is not None:
        body += ["<p>Runs that did not finish ok:</p>", parts.problem_runs.to_html()]
    if parts.missing:
        items = "".join(f"<li>{_inline_markdown_to_html(n)}</li>" for n in parts.missing)
        body.append(f"<p>Missing pieces:</p><ul>{items}</ul>")
    if parts.problem_runs is None and not parts.missing:
        body.append("<p>Every run finished ok and every table and file is present.</p>")
    body.append("<h2>All runs</h2>")
    body.append(f"<details><summary>{len(parts.runs.rows)} runs</summary>")
    body += [parts.runs.to_html(), "</details>"]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(parts.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _remove_stale_figures(out_dir: Path, results: list[PlotResult]) -> None:
    """Delete figure files of an earlier build that this build did not draw (e.g. now skipped)."""
    drawn = {r.name for r in results if not r.skipped}
    known = {r.name for r in results} | {
        "scaling_k",
        "scaling_solver_max_iter",
        "scaling_image_size",
    }
    for name in known - drawn:
        for suffix in (".png", ".svg"):
            (out_dir / f"{name}{suffix}").unlink(missing_ok=True)


def build_report(
    results_dir: str | Path, out_dir: str | Path | None = None, *, target_psnr: float | None = None
) -> Path:
    """Write the comparison report of a results folder and return the path of ``report.html``.

    Writes ``report.md``, a self-contained ``report.html`` (figures embedded as data URIs) and
    every figure as ``<name>.png`` and ``<name>.svg`` into ``out_dir`` (default
    ``reports/<name of results_dir>/``, relative to the working directory), each file atomically.
    ``target_psnr`` (dB) overrides the default target of the "time to target" column (see the
    module docstring). Partial results (diverged or failed runs, missing tables or
    reconstructions) are reported, not fatal. Raises ValueError when ``results_dir`` has no
    readable ``runs.csv``.
    """
    results_dir = Path(results_dir)
    if target_psnr is not None and not (
        isinstance(target_psnr, (int, float)) and math.isfinite(target_psnr)
    ):
        raise ValueError(f"target_psnr must be a finite number of dB, got {target_psnr!r}")
    data, missing = prepare(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path("reports") / results_dir.resolve().name
    out_dir.mkdir(parents=True, exist_ok=True)

    psnr_by_label = data.learned_ok.groupby("label")["final_test_psnr"].mean()
    target, target_rule = choose_target(data, psnr_by_label, target_psnr)
    data.target_psnr = target
    summary = summarize(data, target)
    figures = plots.render_plots(data, out_dir)
    _remove_stale_figures(out_dir, figures)
    missing += data.notes  # notes the figures found (e.g. reconstructions of some runs missing)
    missing += [f"figure '{p.title}' skipped: {p.skipped}" for p in figures if p.skipped]

    suite = data.runs["suite"].dropna().unique()
    parts = ReportParts(
        title=f"implicit-bench report: {', '.join(map(str, suite)) or results_dir.name}",
        results_dir=results_dir,
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        setup=setup_table(data),
        summary=summary_table(data, summary, target),
        target=target,
        target_rule=target_rule,
        observations=observations(data, summary, target),
        plots=figures,
        problem_runs=problem_runs_table(data),
        missing=list(dict.fromkeys(missing)),  # de-duplicated, order kept
        runs=runs_table(data),
    )
    atomic_write_bytes(out_dir / "report.md", _markdown(parts).encode())
    html_path = out_dir / "report.html"
    atomic_write_bytes(html_path, _html(parts).encode())
    return html_path
