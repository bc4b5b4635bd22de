"""Figures against training progress: the training loss, and test quality vs epoch and vs
cumulative training time."""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from bench.metrics import METRICS
from bench.report.figures.style import (
    PlotSkipped,
    add_legend,
    baseline_lines,
    epoch_axis,
    new_figure,
    strategy_handles,
)
from bench.report.model import ReportData, evaluation_index, finite_rows

# ---------------------------------------------------------------------------------------------
# 1. Training loss


def plot_loss(data: ReportData) -> Figure:
    """Training loss vs epoch, mean over seeds with a ±1 sd band, one line per strategy label."""
    epochs = finite_rows(data.end_of_epoch(), "train_loss")
    if epochs.empty:
        raise PlotSkipped("epochs.csv has no finite train_loss for an ok learned run")
    labels = data.plotted_labels(epochs)
    fig, axes = new_figure()
    ax = axes[0, 0]
    sns.lineplot(
        data=epochs, x="epoch", y="train_loss", hue="label", hue_order=labels,
        palette=data.palette, errorbar="sd", marker="o", markersize=4, legend=False, ax=ax,
    )  # fmt: skip
    losses = epochs["train_loss"].astype(float)
    if (losses > 0).all() and losses.max() / losses.min() > 30:
        ax.set_yscale("log")  # early epochs would otherwise flatten the interesting part
    epoch_axis(ax, epochs["epoch"])
    ax.set(xlabel="epoch", ylabel="training loss", title="Training loss (mean over seeds ± 1 sd)")
    add_legend(fig, strategy_handles(data, labels))
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
    fig, axes = new_figure(1, len(metrics), width=4.6)
    handles = strategy_handles(data, labels)
    for ax, (metric, name) in zip(axes[0], metrics.items(), strict=True):
        rows = finite_rows(epochs, metric)
        if not rows.empty:
            sns.lineplot(
                data=rows, x="epoch", y=metric, hue="label", hue_order=data.plotted_labels(rows),
                palette=data.palette, errorbar="sd", marker="o", markersize=4, legend=False, ax=ax,
            )  # fmt: skip
        extra = baseline_lines(data, ax, metric.replace("test_", "final_test_"), True)
        if metric == next(iter(metrics)):  # the reference lines' legend, once
            handles += extra
        epoch_axis(ax, epochs["epoch"])
        ax.set(xlabel="epoch", ylabel=f"test {name}", title=f"Test {name} vs epoch")
    add_legend(fig, handles)
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


def mean_curves(epochs: pd.DataFrame, metric: str) -> pd.DataFrame:
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
    curves = {m: mean_curves(data.epochs, m) for m in metrics}
    if all(c.empty for c in curves.values()):
        raise PlotSkipped("epochs.csv has no test metric with train_time_s for an ok learned run")
    labels = data.plotted_labels(pd.concat(list(curves.values())))
    fig, axes = new_figure(1, len(metrics), width=4.6)
    handles = strategy_handles(data, labels)
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
        extra = baseline_lines(data, ax, metric.replace("test_", "final_test_"), True)
        if metric == next(iter(metrics)):  # the reference lines' legend, once
            handles += extra
        times = curve["time"]
        if len(times) and times.min() > 0 and times.max() / times.min() > 50:
            ax.set_xscale("log")  # strategies can differ by orders of magnitude in cost
        ax.set(
            xlabel="training time: sum of step times (s)", ylabel=f"test {name}",
            title=f"Test {name} vs time (mean over seeds)",
        )  # fmt: skip
    add_legend(fig, handles)
    return fig
