"""What every figure shares: the style, the figure factory, reference lines and legends.

Figures are built with :class:`matplotlib.figure.Figure` directly (no ``pyplot``), so no global
figure state leaks, nothing needs closing, and the interactive backend is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from bench.metrics import METRICS
from bench.report.model import ReportData, finite_rows

MIB = 2.0**20
# Styling is applied through rc_context, so building a report does not change global rcParams.
STYLE = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.85),
    "svg.hashsalt": "implicit-bench",  # stable SVG ids between builds
}
BASELINE_STYLES = ["--", "-.", ":", (0, (5, 1, 1, 1, 1, 1))]


class PlotSkipped(Exception):
    """A figure cannot be drawn from the data at hand; ``str(exc)`` says why."""


@dataclass(frozen=True)
class Drawn:
    """A figure with ``notes`` on what it could not show (e.g. runs without a reconstruction
    file); a plot function that has none returns the bare :class:`Figure`."""

    figure: Figure
    notes: tuple[str, ...] = ()


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 6.0, height: float = 3.8):
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def strategy_handles(data: ReportData, labels: list[str], marker: str | None = "o") -> list:
    return [
        Line2D([], [], color=data.palette[label], marker=marker, label=label) for label in labels
    ]


def baseline_lines(data: ReportData, ax, metric: str, with_target: bool = False) -> list:
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


def epoch_axis(ax, epochs: pd.Series) -> None:
    """Integer epoch ticks (a locator alone shows 0.95 ... 1.05 when there is one epoch)."""
    values = sorted(pd.to_numeric(epochs, errors="coerce").dropna().unique())
    if 0 < len(values) <= 12:
        ax.set_xticks(values, [f"{v:g}" for v in values])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def seconds_label(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms"


def add_legend(fig: Figure, handles: list) -> None:
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
