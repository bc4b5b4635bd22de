"""The gradient-fidelity figure: cosine to the exact implicit gradient, and the adjoint's
measured error beside its certified bound."""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from bench.report.figures.style import PlotSkipped, new_figure
from bench.report.model import ReportData, finite_rows

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
    fig, axes = new_figure(ncols=panels, width=6.5, height=max(2.4, 0.5 * len(order) + 1.3))
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
