"""Figures of the comparison report: seaborn on matplotlib's Agg canvas.

Figures are built with :class:`matplotlib.figure.Figure` directly (no ``pyplot``), so no global
figure state leaks, nothing needs closing, and the interactive backend is never touched. Every plot
function takes a :class:`ReportData` and returns a figure, or raises :class:`PlotSkipped` with a
reason the report shows instead of the figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from bench.baselines import BASELINES
from bench.metrics import METRICS, Metric
from bench.report.model import (
    PHASES,
    PlotResult,
    ReportData,
    ScalingVariable,
    evaluation_index,
    finite_rows,
    memory_column,
    scaling_rows,
    scaling_variables,
    step_phase_medians,
)
from bench.results import atomic_write_bytes

MIB = 2.0**20
RECON_MAX_IMAGES = 3
RECON_MAX_STRATEGIES = 12
# Styling is applied through rc_context, so building a report does not change global rcParams.
_STYLE = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.85),
    "svg.hashsalt": "implicit-bench",  # stable SVG ids between builds
}
BASELINE_STYLES = ["--", "-.", ":", (0, (5, 1, 1, 1, 1, 1))]


class PlotSkipped(Exception):
    """A figure cannot be drawn from the data at hand; ``str(exc)`` says why."""


def _figure(nrows: int = 1, ncols: int = 1, width: float = 6.0, height: float = 3.8):
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _strategy_handles(data: ReportData, labels: list[str], marker: str | None = "o") -> list:
    return [
        Line2D([], [], color=data.palette[label], marker=marker, label=label) for label in labels
    ]


def _baseline_lines(data: ReportData, ax, metric: str, with_target: bool = False) -> list:
    """Horizontal reference lines in column ``metric`` (``final_test_<name>``): classical
    baselines, the task's naive reconstruction (``data.naive_name``), and, with ``with_target`` in
    the primary metric's panel, the target."""
    handles = []
    oriented = METRICS.get(metric.removeprefix("final_test_")).oriented
    baselines = finite_rows(data.baselines, metric)
    means = baselines.groupby("baseline_name")[metric].mean()
    naive = data.naive_metrics.get(metric.removeprefix("final_test_"))
    for i, (name, value) in enumerate(sorted(means.items(), key=lambda item: -oriented(item[1]))):
        if naive is not None and oriented(value) < oriented(naive):
            # Worse than doing nothing (e.g. the noise-amplifying direct inverse): a line there
            # would stretch the axis and squash every curve of interest.
            handles.append(
                Line2D([], [], linestyle="none", label=f"baseline: {name} ({value:.3g}, off scale)")
            )
            continue
        style = BASELINE_STYLES[i % len(BASELINE_STYLES)]
        gray = str(0.15 + 0.5 * i / max(len(means), 1))
        ax.axhline(value, color=gray, linestyle=style, linewidth=1.2)
        handles.append(
            Line2D([], [], color=gray, linestyle=style, label=f"baseline: {name} ({value:.3g})")
        )
    if naive is not None:
        ax.axhline(naive, color="black", linestyle=":", linewidth=1.0)
        handles.append(
            Line2D([], [], color="black", linestyle=":", label=f"{data.naive_name} ({naive:.3g})")
        )
    if with_target and metric == f"final_test_{data.primary}" and data.target is not None:
        ax.axhline(data.target, color="crimson", linestyle="--", linewidth=0.9, alpha=0.8)
        target = data.primary_metric.format(data.target, unit=True)
        handles.append(Line2D([], [], color="crimson", linestyle="--", label=f"target {target}"))
    return handles


def _epoch_axis(ax, epochs: pd.Series) -> None:
    """Integer epoch ticks (a locator alone shows 0.95 ... 1.05 when there is one epoch)."""
    values = sorted(pd.to_numeric(epochs, errors="coerce").dropna().unique())
    if 0 < len(values) <= 12:
        ax.set_xticks(values, [f"{v:g}" for v in values])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _seconds_label(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms"


def _legend(fig: Figure, handles: list) -> None:
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)


# ---------------------------------------------------------------------------------------------
# 1. Training loss


def plot_loss(data: ReportData) -> Figure:
    """Training loss vs epoch, mean over seeds with a ±1 sd band, one line per strategy label."""
    epochs = finite_rows(data.end_of_epoch(), "train_loss")
    if epochs.empty:
        raise PlotSkipped("epochs.csv has no finite train_loss for an ok learned run")
    labels = data.plotted_labels(epochs)
    fig, axes = _figure()
    ax = axes[0, 0]
    sns.lineplot(
        data=epochs, x="epoch", y="train_loss", hue="label", hue_order=labels,
        palette=data.palette, errorbar="sd", marker="o", markersize=4, legend=False, ax=ax,
    )  # fmt: skip
    losses = epochs["train_loss"].astype(float)
    if (losses > 0).all() and losses.max() / losses.min() > 30:
        ax.set_yscale("log")  # early epochs would otherwise flatten the interesting part
    _epoch_axis(ax, epochs["epoch"])
    ax.set(xlabel="epoch", ylabel="training loss", title="Training loss (mean over seeds ± 1 sd)")
    _legend(fig, _strategy_handles(data, labels))
    return fig


# ---------------------------------------------------------------------------------------------
# 2. Test quality vs epoch and vs wall-clock time


def plot_quality_vs_epoch(data: ReportData) -> Figure:
    """Test quality in each registered metric vs epoch (mean ± sd over seeds), baselines as
    horizontal lines."""
    epochs = data.end_of_epoch()
    metrics = _quality_metrics(epochs, data.primary)
    if not metrics:
        raise PlotSkipped("epochs.csv has no test metric for an ok learned run")
    labels = data.plotted_labels(epochs)
    fig, axes = _figure(1, len(metrics), width=4.6)
    handles = _strategy_handles(data, labels)
    for ax, (metric, name) in zip(axes[0], metrics.items(), strict=True):
        rows = finite_rows(epochs, metric)
        if not rows.empty:
            sns.lineplot(
                data=rows, x="epoch", y=metric, hue="label", hue_order=data.plotted_labels(rows),
                palette=data.palette, errorbar="sd", marker="o", markersize=4, legend=False, ax=ax,
            )  # fmt: skip
        extra = _baseline_lines(data, ax, metric.replace("test_", "final_test_"), True)
        if metric == next(iter(metrics)):  # the reference lines' legend, once
            handles += extra
        _epoch_axis(ax, epochs["epoch"])
        ax.set(xlabel="epoch", ylabel=f"test {name}", title=f"Test {name} vs epoch")
    _legend(fig, handles)
    return fig


def _quality_metrics(epochs: pd.DataFrame, primary: str) -> dict[str, str]:
    """``test_<m>`` column -> axis label, for each registered metric with values in ``epochs``
    (the metric registry decides the panels: adding a metric adds one), ``primary`` first."""
    found = {
        f"test_{name}": metric.axis_label
        for name, metric in METRICS.items()
        if not finite_rows(epochs, f"test_{name}").empty
    }
    # the primary metric's panel first: it carries the target line, and the legend is the first's
    return dict(sorted(found.items(), key=lambda item: item[0] != f"test_{primary}"))


def _mean_curves(epochs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per label and evaluation: mean training time, mean and sd of ``metric`` over seeds."""
    rows = finite_rows(finite_rows(epochs, metric), "train_time_s")
    rows = rows.assign(evaluation=evaluation_index(rows))
    return (
        rows.groupby(["label", "evaluation"])
        .agg(time=("train_time_s", "mean"), mean=(metric, "mean"), sd=(metric, "std"))
        .reset_index()
        .sort_values(["label", "evaluation"])
    )


def plot_quality_vs_time(data: ReportData) -> Figure:
    """Test quality in each registered metric vs cumulative training time (the sum of step
    times): who reaches a quality first."""
    metrics = _quality_metrics(data.epochs, data.primary)
    curves = {m: _mean_curves(data.epochs, m) for m in metrics}
    if all(c.empty for c in curves.values()):
        raise PlotSkipped("epochs.csv has no test metric with train_time_s for an ok learned run")
    labels = data.plotted_labels(pd.concat(list(curves.values())))
    fig, axes = _figure(1, len(metrics), width=4.6)
    handles = _strategy_handles(data, labels)
    for ax, (metric, name) in zip(axes[0], metrics.items(), strict=True):
        curve = curves[metric]
        for label in data.plotted_labels(curve):
            part = curve[curve["label"] == label]
            color = data.palette[label]
            ax.plot(part["time"], part["mean"], marker="o", markersize=4, color=color)
            sd = part["sd"].fillna(0.0)
            ax.fill_between(
                part["time"], part["mean"] - sd, part["mean"] + sd, color=color, alpha=0.2
            )
        extra = _baseline_lines(data, ax, metric.replace("test_", "final_test_"), True)
        if metric == next(iter(metrics)):  # the reference lines' legend, once
            handles += extra
        times = curve["time"]
        if len(times) and times.min() > 0 and times.max() / times.min() > 50:
            ax.set_xscale("log")  # strategies can differ by orders of magnitude in cost
        ax.set(
            xlabel="training time: sum of step times (s)", ylabel=f"test {name}",
            title=f"Test {name} vs time (mean over seeds)",
        )  # fmt: skip
    _legend(fig, handles)
    return fig


# ---------------------------------------------------------------------------------------------
# 3. Time per step


def plot_step_time(data: ReportData) -> Figure:
    """Stacked horizontal bars: median certification / forward / backward / optimizer time per
    step, per label (older folders have no certification column: that segment is empty)."""
    medians = step_phase_medians(data)
    phase_cols = [s for s, _, _ in PHASES]
    medians = medians[medians[phase_cols].notna().any(axis=1)]
    if medians.empty:
        raise PlotSkipped(
            "no per-step timings of an ok learned run (steps.csv or runs.csv medians)"
        )
    labels = list(medians.index)
    fig, axes = _figure(width=7.0, height=max(2.2, 0.45 * len(labels) + 1.2))
    ax = axes[0, 0]
    left = np.zeros(len(labels))
    colors = sns.color_palette("Set2", len(PHASES))
    handles = []
    for (col, _, name), color in zip(PHASES, colors, strict=True):
        values = medians[col].fillna(0.0).to_numpy()
        ax.barh(labels, values, left=left, color=color, edgecolor="white")
        handles.append(Patch(color=color, label=f"{name} (median)"))
        left += values
    totals = medians["step_time_s"].to_numpy(dtype=float)
    if np.isfinite(totals).any():
        ax.scatter(totals, labels, marker="|", s=250, color="black", zorder=3)
        handles.append(
            Line2D([], [], marker="|", linestyle="", color="black", markersize=12,
                   label="median whole step")
        )  # fmt: skip
    for y, (stacked, whole) in enumerate(zip(left, totals, strict=True)):
        # Label the median whole step (the tick) when measured, at the end of the longer mark.
        shown = whole if np.isfinite(whole) else stacked
        ax.annotate(
            " " + _seconds_label(shown), (np.nanmax([stacked, whole]), y), va="center",
            fontsize="x-small",
        )  # fmt: skip
    ax.invert_yaxis()  # first label on top, like the summary table
    ax.margins(x=0.15)
    ax.set(xlabel="seconds per training step", title="Time per training step (medians)")
    _legend(fig, handles)
    return fig


# ---------------------------------------------------------------------------------------------
# 4. Memory, and memory / time vs k or solver iterations


# The exact peak of live tensor bytes in a training step is the main figure (device-independent,
# measured on the CPU too); process RSS includes the Python/torch baseline, so it comes last.
MEMORY_METRICS = (
    ("peak_step_bytes", "peak tensor memory of a training step (MiB)"),
    ("peak_gpu_memory_bytes", "peak GPU memory over training steps (MiB)"),
    ("saved_bytes", "bytes saved for backward (MiB)"),
    ("peak_rss_bytes", "peak process RSS over training steps (MiB)"),
)


def plot_memory(data: ReportData) -> Figure:
    """Bar charts per label: peak tensor memory of a training step, peak GPU memory where
    measured, saved-for-backward bytes, peak RSS over training steps."""
    runs = data.learned_ok
    metrics = [(col, name) for col, name in MEMORY_METRICS if not finite_rows(runs, col).empty]
    if not metrics:
        raise PlotSkipped(
            "no memory measurement (peak step memory, peak GPU, saved bytes, peak RSS) in runs.csv"
        )
    labels = data.plotted_labels(runs)
    fig, axes = _figure(1, len(metrics), width=4.0, height=max(2.6, 0.4 * len(labels) + 1.5))
    for ax, (col, name) in zip(axes[0], metrics, strict=True):
        rows = finite_rows(runs, col).assign(mib=lambda f, c=col: f[c].astype(float) / MIB)
        order = data.plotted_labels(rows)
        sns.barplot(
            data=rows, y="label", x="mib", hue="label", order=order, hue_order=order,
            palette=data.palette, errorbar="sd", legend=False, ax=ax,
        )  # fmt: skip
        sns.stripplot(
            data=rows, y="label", x="mib", order=order, color="black", size=3, ax=ax
        )  # one dot per seed
        ax.set(xlabel=name, ylabel="", title=name.split(" (")[0].replace(" over", "\nover"))
    for ax in axes[0][1:]:
        ax.tick_params(labelleft=False)  # same label order in every panel
    return fig


def plot_scaling(data: ReportData, variable: ScalingVariable) -> Figure:
    """Memory and median step time vs one scaling knob, one line per strategy.

    Strategies whose runs do not vary the knob (e.g. JFB has no k) are drawn as flat lines at their
    mean, which is exactly the comparison of interest (unrolled grows with k, JFB does not).
    """
    rows = scaling_rows(data, variable)
    column = variable.column
    memory_col, memory_name = memory_column(rows)
    memory_name += " (MiB)"
    panels = [(memory_col, memory_name, 1 / MIB), ("median_step_time_s", "median step time (s)", 1)]
    panels = [p for p in panels if not finite_rows(rows, p[0]).empty]
    if not panels:
        raise PlotSkipped(f"no memory or step time measured for runs varying {variable.name}")
    strategies = [s for s in data.strategy_colors if s in set(rows["strategy"])]
    colors = data.strategy_colors  # the palette of every other figure
    fig, axes = _figure(1, len(panels), width=4.6)
    handles = []
    for ax, (col, name, scale) in zip(axes[0], panels, strict=True):
        measured = finite_rows(rows, col).assign(
            value=lambda f, c=col, s=scale: f[c].astype(float) * s
        )
        varying = finite_rows(measured, column)
        n_values = varying.groupby("strategy")[column].nunique()
        line_strategies = [s for s in strategies if n_values.get(s, 0) >= 2]
        if line_strategies:
            sns.lineplot(
                data=varying[varying["strategy"].isin(line_strategies)], x=column, y="value",
                hue="strategy", palette=colors, errorbar="sd", marker="o", legend=False, ax=ax,
            )  # fmt: skip
        for strategy in strategies:
            if strategy in line_strategies:
                continue
            flat = measured[measured["strategy"] == strategy]["value"]
            if len(flat):  # constant in this knob: a flat reference line
                ax.axhline(flat.mean(), color=colors[strategy], linestyle="--")
        ax.set(xlabel=variable.axis, ylabel=name, title=name.split(" (")[0])
        ax.set_ylim(bottom=0)
    for strategy in strategies:
        handles.append(Line2D([], [], color=colors[strategy], marker="o", label=strategy))
    handles.append(Line2D([], [], color="gray", linestyle="--", label="does not vary (flat)"))
    _legend(fig, handles)
    return fig


# ---------------------------------------------------------------------------------------------
# 5. Gradient fidelity


def plot_grad_cosine(data: ReportData) -> Figure:
    """Cosine of each strategy's gradient with the exact implicit gradient, first vs last epoch;
    beside it, where measured, the adjoint's relative error at the last evaluation and its
    certified bound (bench/bounds.py), on a log axis with the vacuous region (> 1) shaded."""
    runs = data.learned_ok
    long = pd.concat(
        [
            finite_rows(runs, col)[["label", col]].rename(columns={col: "cosine"}).assign(when=when)
            for col, when in (
                ("grad_cosine_first", "first epoch"),
                ("grad_cosine_last", "last epoch"),
            )
        ]
    )
    if long.empty:
        raise PlotSkipped("no gradient cosine measured (grad_cosine_first/last are empty)")
    order = data.plotted_labels(long)
    errors = finite_rows(runs, "adjoint_error_last")
    bounds = finite_rows(runs, "adjoint_error_bound_last")
    panels = 2 if len(errors) or len(bounds) else 1
    fig, axes = _figure(ncols=panels, width=6.5, height=max(2.4, 0.5 * len(order) + 1.3))
    ax = axes[0, 0]
    sns.barplot(
        data=long, y="label", x="cosine", hue="when", order=order,
        hue_order=["first epoch", "last epoch"], palette=["#9ecae1", "#3182bd"],
        errorbar="sd", ax=ax,
    )  # fmt: skip
    ax.axvline(1.0, color="black", linewidth=0.8)
    low = min(0.0, float(long["cosine"].min()) - 0.05)
    ax.set_xlim(low, 1.05)
    ax.set(xlabel="cosine similarity to the exact implicit gradient", ylabel="")
    ax.set_title("Gradient fidelity (1 = exact)")
    # Outside the axes: inside, it would cover the bars of the last label.
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), title=None, fontsize="small")
    if panels == 2:
        _plot_adjoint_bounds(axes[0, 1], errors, bounds, order)
    return fig


def _plot_adjoint_bounds(ax, errors: pd.DataFrame, bounds: pd.DataFrame, order: list) -> None:
    """Measured relative adjoint error (dots) and certified bound (bars to it) per label, every
    seed, log scale; the region where a bound proves nothing (> 1) shaded and named."""
    rank = {label: i for i, label in enumerate(order)}
    values = []
    for frame, column, style in (
        (bounds, "adjoint_error_bound_last", dict(marker="|", s=200, color="#d62728")),
        (errors, "adjoint_error_last", dict(marker="o", s=30, color="#3182bd")),
    ):
        shown = frame[frame["label"].isin(rank)]
        y = shown["label"].map(rank).to_numpy(dtype=float)
        x = shown[column].to_numpy(dtype=float).clip(min=1e-16)  # 0 cannot sit on a log axis
        values.extend(x)
        ax.scatter(x, y, **style, zorder=3)
    ax.set_xscale("log")
    right = max(10.0, 3 * max(values, default=1.0))
    ax.axvspan(1.0, right, color="0.9", zorder=0)
    left = min(1e-8, 0.3 * min(values, default=1.0))
    ax.text(1.2, 0.02, "vacuous (> 1)", fontsize="small", color="0.3",
            transform=ax.get_xaxis_transform())  # fmt: skip
    measured = set(errors["label"]) | set(bounds["label"])
    for label in order:
        if label not in measured:
            ax.text(left * 2, rank[label], "not measured / no bound", fontsize="small",
                    va="center", color="0.4")  # fmt: skip
    ax.set_xlim(left, right)
    ax.set_yticks(range(len(order)), order)
    ax.set_ylim(len(order) - 0.5, -0.7)
    ax.set(xlabel="relative adjoint error ‖v − v*‖/‖v*‖ at the last evaluation", ylabel="")
    ax.set_title("Adjoint error (●) and its certified bound (|)")


# ---------------------------------------------------------------------------------------------
# 6. Reconstructions


def _tile_scores(images: np.ndarray, reference: np.ndarray, metric: Metric) -> np.ndarray:
    """Per-image ``metric`` of ``images`` (clamped to [0, 1], as shown) against ``reference``:
    the registered function, the one the tables report."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float64)).clamp(0.0, 1.0)
    return metric(x, torch.from_numpy(np.asarray(reference, dtype=np.float64))).numpy()


def _to_image(array: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) in [0, 1] -> something imshow draws: (H, W) gray or (H, W, 3) colour."""
    array = np.clip(np.asarray(array, dtype=float), 0.0, 1.0)
    if array.shape[0] == 1:
        return array[0], "gray"
    return np.moveaxis(array[:3], 0, -1), None


def recon_columns(data: ReportData) -> list[tuple[str, np.ndarray]]:
    """(title, images N×C×H×W) per column: original, the task's naive reconstruction,
    baselines, one run per label."""
    reference_path = data.recons_dir / "reference.npz"
    if not reference_path.exists():
        raise PlotSkipped(f"{reference_path.name} missing in {data.recons_dir}")
    with np.load(reference_path) as reference:
        arrays = {key: reference[key] for key in reference.files}
    # "measured" (the runner's key); "naive" and "blurred": other and older spellings of it.
    naive_key = next((k for k in ("measured", "naive", "blurred") if k in arrays), None)
    if "original" not in arrays or naive_key is None:
        raise PlotSkipped("recons/reference.npz lacks the 'original' or 'measured' array")
    original = arrays["original"]
    columns = [("original", original), (data.naive_name, arrays[naive_key])]
    stored = {
        k.removeprefix("baseline_"): v for k, v in arrays.items() if k.startswith("baseline_")
    }
    # Baselines with nothing fitted (a fixed lambda, e.g. the direct inverse: what the problem
    # looks like unregularised) each get a column; of the fitted ones, the best in the primary
    # metric. A baseline no longer registered here counts as fitted.
    for name in [n for n in stored if n in BASELINES and BASELINES.get(n).fixed_lam is not None]:
        columns.append((name.replace("_", " "), stored.pop(name)))
    if stored:
        metric = data.primary_metric
        column = f"final_test_{metric.name}"
        scores = finite_rows(data.baselines, column).groupby("baseline_name")[column].mean()

        def score(name: str) -> float:
            value = (
                float(scores[name])
                if name in scores
                else float(_tile_scores(stored[name], original, metric).mean())
            )
            return metric.oriented(value)

        best = max(stored, key=score)
        columns.append((f"best baseline:\n{best}", stored[best]))
    missing = []
    shown = 0
    for label in data.labels:
        runs = data.learned_ok[data.learned_ok["label"] == label].sort_values("seed")
        files = [data.recons_dir / f"{run_id}.npz" for run_id in runs["run_id"]]
        files = [f for f in files if f.exists()]
        if not files:
            if len(runs):
                missing.append(label)
            continue
        if shown == RECON_MAX_STRATEGIES:
            data.notes.append(
                f"reconstruction grid shows the first {RECON_MAX_STRATEGIES} strategy labels only"
            )
            break
        with np.load(files[0]) as npz:
            x = npz["x"] if "x" in npz.files else None
        if x is None or x.shape != original.shape:
            data.notes.append(f"{files[0].name}: no array 'x' of shape {original.shape}; not shown")
            continue
        seed = runs[runs["run_id"] == files[0].stem]["seed"].iloc[0]
        seed_text = f" (seed {int(seed)})" if pd.notna(seed) else ""
        columns.append((f"{label}{seed_text}", x))
        shown += 1
    if missing:
        data.notes.append("no reconstruction file (recons/<run_id>.npz) for: " + ", ".join(missing))
    return columns


def plot_reconstructions(data: ReportData) -> Figure:
    """Grid of the same test images: original, naive reconstruction, baselines and each strategy
    (the primary metric below each tile).

    Drawn as one montage image in a single axes: a grid of dozens of axes costs seconds to lay out.
    """
    columns = recon_columns(data)
    original = columns[0][1]
    n_images = min(RECON_MAX_IMAGES, original.shape[0])
    if n_images == 0:
        raise PlotSkipped("recons/reference.npz holds no images")
    height, width = original.shape[2:]
    gap = max(2, width // 16)  # white gutter between tiles
    band = max(6, int(0.25 * height))  # room under each tile for its score
    metric = data.primary_metric
    canvas = np.ones((n_images * (height + band), len(columns) * (width + gap) - gap, 3))
    fig_width = 1.45 * len(columns) + 0.3
    fig_height = (fig_width - 0.3) * canvas.shape[0] / canvas.shape[1] + 0.9  # + titles
    fig = Figure(figsize=(fig_width, fig_height), layout="constrained")
    ax = fig.subplots()
    centers = []
    for col, (_, images) in enumerate(columns):
        x0 = col * (width + gap)
        centers.append(x0 + width / 2)
        scores = _tile_scores(images[:n_images], original[:n_images], metric)
        for row in range(n_images):
            y0 = row * (height + band)
            image, _ = _to_image(images[row])
            canvas[y0 : y0 + height, x0 : x0 + width] = (
                image[..., None] if image.ndim == 2 else image
            )
            if col > 0:
                ax.text(
                    x0 + width / 2, y0 + height + band / 2,
                    metric.format(scores[row], unit=True),
                    ha="center", va="center", fontsize="x-small",
                )  # fmt: skip
    ax.imshow(canvas, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(centers, [title for title, _ in columns], fontsize="x-small")
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(
        f"Reconstructions of the same test images ({metric.label} vs original)", fontsize="small"
    )
    return fig


# ---------------------------------------------------------------------------------------------
# 7. Quality-cost Pareto plot


def pareto_table(data: ReportData) -> pd.DataFrame:
    """Per label: mean final value of the primary metric (``quality``), median step time, memory
    (bytes) and whether it is on the front."""
    medians = step_phase_medians(data)["step_time_s"]
    runs = data.learned_ok
    memory_col, memory_name = memory_column(runs)
    metric = data.primary_metric
    column = f"final_test_{metric.name}"
    table = pd.DataFrame(
        {
            "quality": finite_rows(runs, column).groupby("label")[column].mean(),
            "step_time": medians,
            "memory": finite_rows(runs, memory_col).groupby("label")[memory_col].mean(),
        }
    ).reindex(data.labels)
    table = table.dropna(subset=["quality", "step_time"])
    table.attrs["memory_name"] = memory_name
    # A label is on the front if no other label is at least as fast and strictly better.
    better = metric.oriented(table["quality"])
    best_so_far = -math.inf
    on_front = {}
    for label in (
        table.assign(better=better)
        .sort_values(["step_time", "better"], ascending=[True, False])
        .index
    ):
        on_front[label] = better[label] > best_so_far
        best_so_far = max(best_so_far, better[label])
    table["pareto"] = pd.Series(on_front)
    return table


def plot_pareto(data: ReportData) -> Figure:
    """Final primary metric vs median time per step; marker area = memory; the Pareto front
    dashed."""
    table = pareto_table(data)
    metric = data.primary_metric
    if table.empty:
        raise PlotSkipped(f"no ok learned run with both a final {metric.label} and a step time")
    fig, axes = _figure(width=6.5, height=4.2)
    ax = axes[0, 0]
    memory = table["memory"]
    if memory.notna().any() and memory.max() > 0:
        sizes = 60 + 540 * (memory.fillna(memory.min()) / memory.max())
    else:
        sizes = pd.Series(120.0, index=table.index)
    for label, row in table.iterrows():
        ax.scatter(
            row["step_time"], row["quality"], s=sizes[label], color=data.palette[label],
            edgecolor="black", linewidth=0.6, alpha=0.85, zorder=3,
        )  # fmt: skip
        offset = 2 + math.sqrt(sizes[label]) / 2  # clear of the marker, whatever its size
        ax.annotate(
            label, (row["step_time"], row["quality"]), xytext=(offset, offset),
            textcoords="offset points", fontsize="x-small",
        )  # fmt: skip
    front = table[table["pareto"]].sort_values("step_time")
    ax.plot(
        front["step_time"], front["quality"], linestyle="--", color="gray", drawstyle="steps-post",
        zorder=2,
    )  # fmt: skip
    handles = _baseline_lines(data, ax, f"final_test_{metric.name}")
    times = table["step_time"]
    if times.min() > 0 and times.max() / times.min() > 10:
        ax.set_xscale("log")
    ax.margins(0.15)
    ax.set(
        xlabel="median time per training step (s)", ylabel=f"final test {metric.axis_label}",
        title=f"Quality vs cost ({'up' if metric.higher_is_better else 'down'} and left is better)",
    )  # fmt: skip
    handles.append(Line2D([], [], linestyle="--", color="gray", label="Pareto front"))
    memory_name = table.attrs["memory_name"]
    if memory.notna().any() and memory.max() > 0:
        for value in sorted({memory.min(), memory.max()}):
            size = 60 + 540 * value / memory.max()
            handles.append(
                Line2D([], [], marker="o", linestyle="", color="lightgray", markeredgecolor="black",
                       markersize=math.sqrt(size), label=f"{memory_name} {value / MIB:.3g} MiB")
            )  # fmt: skip
    else:
        handles.append(Line2D([], [], linestyle="", label="marker size: memory not measured"))
    _legend(fig, handles)
    return fig


# ---------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class PlotSpec:
    name: str
    title: str
    draw: Callable[[ReportData], Figure]
    caption: str


def plot_specs(data: ReportData) -> list[PlotSpec]:
    """The report's figures, in order (scaling figures only for knobs the runs vary)."""
    specs = [
        PlotSpec("loss_vs_epoch", "Training loss", plot_loss,
                 "Training loss per epoch, mean over seeds of the ok runs, band ±1 sd."),
        PlotSpec("quality_vs_epoch", "Test quality vs epoch", plot_quality_vs_epoch,
                 "Test quality in each registered metric at the end of each epoch (mean ± sd over "
                 "seeds); gray lines: classical baselines (those worse than the naive "
                 f"reconstruction only named in the legend), dotted: the {data.naive_name}, red: "
                 f"the target {data.primary_metric.label}."),
        PlotSpec("quality_vs_time", "Test quality vs training time", plot_quality_vs_time,
                 "Test quality in each registered metric at every evaluation against cumulative "
                 "training-step time (mean over seeds): the first curve to cross the red target "
                 "line reaches that quality first."),
        PlotSpec("step_time", "Time per training step", plot_step_time,
                 "Medians over all steps of the ok runs of each phase (certification of the "
                 "model's weights, the same work for every strategy; forward solve; backward; "
                 "optimizer), stacked; the black tick is the median whole step."),
        PlotSpec("memory", "Memory per strategy", plot_memory,
                 "The main figure: the exact peak of live tensor bytes during one training step "
                 "(device-independent); then peak GPU memory over training steps (where measured), "
                 "bytes the autograd graph saved for backward, and, secondary, the process's peak "
                 "RSS over training steps (includes the Python/torch baseline); bars are means "
                 "over seeds, dots single runs."),
    ]  # fmt: skip
    for variable in scaling_variables(data):
        specs.append(
            PlotSpec(
                f"scaling_{variable.name}",
                f"Memory and time vs {variable.axis}",
                lambda d, v=variable: plot_scaling(d, v),
                f"Memory and median step time as {variable.axis} varies (other scaling knobs "
                "held at each strategy's most common value); dashed flat lines: strategies "
                "whose runs do not vary it.",
            )
        )
    specs += [
        PlotSpec("grad_cosine", "Gradient fidelity", plot_grad_cosine,
                 "Cosine similarity of each strategy's parameter gradient with the exact implicit "
                 "gradient, at the first and the last evaluation (mean ± sd over seeds); runs "
                 "whose reference did not converge there are left out (n/a). Right, where "
                 "measured: each run's relative adjoint error at the last evaluation against a "
                 "float64 reference (●) and the certified bound there (|); a bound in the shaded "
                 "region (> 1) is vacuous."),
        PlotSpec("reconstructions", "Reconstructions", plot_reconstructions,
                 "The same test images for every method, last epoch of one run per strategy label "
                 f"(lowest seed); {data.primary_metric.label} of each tile against the original "
                 "below it."),
        PlotSpec("pareto", "Quality-cost trade-off", plot_pareto,
                 f"Final test {data.primary_metric.label} (mean over seeds) against median time "
                 "per step; marker area "
                 "grows with memory; dashed: the Pareto front (no other label is both faster and "
                 "better)."),
    ]  # fmt: skip
    return specs


def _figure_bytes(fig: Figure, fmt: str) -> bytes:
    buffer = io.BytesIO()
    # No timestamps in the files: identical data gives identical figures.
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    fig.savefig(buffer, format=fmt, dpi=110, metadata=metadata)
    return buffer.getvalue()


def render_plots(data: ReportData, out_dir: Path) -> list[PlotResult]:
    """Draw every figure into ``out_dir`` as ``<name>.png`` and ``<name>.svg`` (atomic writes).

    A figure whose data is absent is skipped with its reason; an unexpected error in one figure is
    reported the same way rather than losing the whole report.
    """
    out_dir = Path(out_dir)
    results = []
    with matplotlib.rc_context(_STYLE):
        for spec in plot_specs(data):
            result = PlotResult(spec.name, spec.title, spec.caption)
            try:
                fig = spec.draw(data)
                png, svg = out_dir / f"{spec.name}.png", out_dir / f"{spec.name}.svg"
                atomic_write_bytes(png, _figure_bytes(fig, "png"))
                # The PNG draw fixed the layout; skip recomputing it for the SVG (a large share
                # of the drawing time).
                fig.set_layout_engine("none")
                atomic_write_bytes(svg, _figure_bytes(fig, "svg"))
                result.png, result.svg = png, svg
            except PlotSkipped as skipped:
                result.skipped = str(skipped)
            except Exception as error:  # noqa: BLE001 - one broken figure must not lose the report
                result.skipped = f"error while drawing: {type(error).__name__}: {error}"
            results.append(result)
    return results
