"""Figures of what a strategy costs: time per step, memory, their growth with a scaling knob,
and quality against cost (the Pareto front)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bench.report.figures.style import (
    MIB,
    PlotSkipped,
    add_legend,
    baseline_lines,
    new_figure,
    seconds_label,
)
from bench.report.model import (
    PHASES,
    ReportData,
    ScalingVariable,
    finite_rows,
    memory_column,
    scaling_rows,
    step_phase_medians,
)

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
    fig, axes = new_figure(width=7.0, height=max(2.2, 0.45 * len(labels) + 1.2))
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
            " " + seconds_label(shown), (np.nanmax([stacked, whole]), y), va="center",
            fontsize="x-small",
        )  # fmt: skip
    ax.invert_yaxis()  # first label on top, like the summary table
    ax.margins(x=0.15)
    ax.set(xlabel="seconds per training step", title="Time per training step (medians)")
    add_legend(fig, handles)
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
    fig, axes = new_figure(1, len(metrics), width=4.0, height=max(2.6, 0.4 * len(labels) + 1.5))
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
    fig, axes = new_figure(1, len(panels), width=4.6)
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
    add_legend(fig, handles)
    return fig


# ---------------------------------------------------------------------------------------------
# 7. Quality-cost Pareto plot


@dataclass(frozen=True)
class Pareto:
    """The Pareto figure's numbers: ``table`` per label (``quality``, ``step_time``, ``memory``,
    ``pareto``) and ``memory_name``, what its ``memory`` column measures (e.g. peak step memory)."""

    table: pd.DataFrame
    memory_name: str


def pareto_table(data: ReportData) -> Pareto:
    """Per label: mean final value of the primary metric (``quality``), median step time, memory
    (bytes, the measure :func:`~bench.report.model.memory_column` prefers) and whether it is on
    the front."""
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
    return Pareto(table.assign(pareto=pd.Series(on_front)), memory_name)


def plot_pareto(data: ReportData) -> Figure:
    """Final primary metric vs median time per step; marker area = memory; the Pareto front
    dashed."""
    pareto = pareto_table(data)
    table = pareto.table
    metric = data.primary_metric
    if table.empty:
        raise PlotSkipped(f"no ok learned run with both a final {metric.label} and a step time")
    fig, axes = new_figure(width=6.5, height=4.2)
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
    handles = baseline_lines(data, ax, f"final_test_{metric.name}")
    times = table["step_time"]
    if times.min() > 0 and times.max() / times.min() > 10:
        ax.set_xscale("log")
    ax.margins(0.15)
    ax.set(
        xlabel="median time per training step (s)", ylabel=f"final test {metric.axis_label}",
        title=f"Quality vs cost ({'up' if metric.higher_is_better else 'down'} and left is better)",
    )  # fmt: skip
    handles.append(Line2D([], [], linestyle="--", color="gray", label="Pareto front"))
    memory_name = pareto.memory_name
    if memory.notna().any() and memory.max() > 0:
        for value in sorted({memory.min(), memory.max()}):
            size = 60 + 540 * value / memory.max()
            handles.append(
                Line2D([], [], marker="o", linestyle="", color="lightgray", markeredgecolor="black",
                       markersize=math.sqrt(size), label=f"{memory_name} {value / MIB:.3g} MiB")
            )  # fmt: skip
    else:
        handles.append(Line2D([], [], linestyle="", label="marker size: memory not measured"))
    add_legend(fig, handles)
    return fig
