"""Figures of the comparison report: seaborn on matplotlib's Agg canvas.

Figures are built with :class:`matplotlib.figure.Figure` directly (no ``pyplot``), so no global
figure state leaks, nothing needs closing, and the interactive backend is never touched. Every plot
function takes a :class:`~bench.report.model.ReportData` and returns a figure, or raises
:class:`PlotSkipped` with a reason the report shows instead of the figure.

By figure family: :mod:`~bench.report.figures.curves` (loss and quality over training),
:mod:`~bench.report.figures.cost` (time per step, memory, scaling, the Pareto front),
:mod:`~bench.report.figures.fidelity` (gradient fidelity),
:mod:`~bench.report.figures.reconstructions` (the reconstruction grid); what they share is
:mod:`~bench.report.figures.style`. Here: the figures in order (:func:`plot_specs`) and their
rendering to PNG and SVG files (:func:`render_plots`).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

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
from bench.report.figures.reconstructions import ReconColumns, plot_reconstructions, recon_columns
from bench.report.figures.style import STYLE, Drawn, PlotSkipped
from bench.report.model import PlotResult, ReportData, scaling_variables
from bench.results import atomic_write_bytes

__all__ = [
    "MEMORY_METRICS",
    "Drawn",
    "Pareto",
    "PlotSkipped",
    "PlotSpec",
    "ReconColumns",
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


@dataclass(frozen=True)
class PlotSpec:
    name: str
    title: str
    draw: Callable[[ReportData], Figure | Drawn]
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
    reported the same way rather than losing the whole report. What a drawn figure could not show
    is in its result's ``notes``.
    """
    out_dir = Path(out_dir)
    results = []
    with matplotlib.rc_context(STYLE):
        for spec in plot_specs(data):
            result = PlotResult(spec.name, spec.title, spec.caption)
            try:
                drawn = spec.draw(data)
                if isinstance(drawn, Drawn):
                    fig, result.notes = drawn.figure, list(drawn.notes)
                else:
                    fig = drawn
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
