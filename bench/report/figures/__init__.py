"""Figures of the comparison report: seaborn on matplotlib's Agg canvas.

Figures are built with :class:`matplotlib.figure.Figure` directly (no ``pyplot``), so no global
figure state leaks, nothing needs closing, and the interactive backend is never touched. Every plot
function takes a :class:`~bench.report.model.ReportData` and returns a figure, or raises
:class:`PlotSkipped` with a reason the report shows instead of the figure.

By figure family: :mod:`~bench.report.figures.curves` (loss and quality over training),
:mod:`~bench.report.figures.cost` (time per step, memory, scaling, the Pareto front),
:mod:`~bench.report.figures.fidelity` (gradient fidelity),
:mod:`~bench.report.figures.reconstructions` (the reconstruction grid); what they share is
:mod:`~bench.report.figures.style`; :mod:`~bench.report.figures.render` lists the figures in
order and writes them.
"""

from bench.report.figures.cost import (
    MEMORY_METRICS,
    Pareto,
    pareto_table,
    plot_memory,
    plot_pareto,
    plot_scaling,
    plot_step_time,
)
from bench.report.figures.curves import (
    mean_curves,
    plot_loss,
    plot_quality_vs_epoch,
    plot_quality_vs_time,
)
from bench.report.figures.fidelity import plot_grad_cosine
from bench.report.figures.reconstructions import plot_reconstructions, recon_columns
from bench.report.figures.render import PlotSpec, plot_specs, render_plots
from bench.report.figures.style import PlotSkipped

__all__ = [
    "MEMORY_METRICS",
    "Pareto",
    "PlotSkipped",
    "PlotSpec",
    "mean_curves",
    "pareto_table",
    "plot_grad_cosine",
    "plot_loss",
    "plot_memory",
    "plot_pareto",
    "plot_quality_vs_epoch",
    "plot_quality_vs_time",
    "plot_reconstructions",
    "plot_scaling",
    "plot_specs",
    "plot_step_time",
    "recon_columns",
    "render_plots",
]
