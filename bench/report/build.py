"""Assemble the report of one results folder as a document (see :mod:`bench.report.document`)
and write ``report.md``, ``report.html`` and the figures.

Order, as a reader wants it: the findings (the verdict), the figures, the summary tables of each
setting (quality, cost, memory, convergence; the paired comparisons), the observations, what is
partial or missing, every run, and the setup (folded away in HTML).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench.metrics import METRICS, PRIMARY_METRIC, Metric
from bench.report import document as doc
from bench.report import figures
from bench.report.fmt import fmt_seconds
from bench.report.load import Setting, prepare, split_settings
from bench.report.model import Note, NoteKind, PlotResult, ReportData, finite_rows
from bench.report.observe import (
    assumption_findings,
    observations,
    scaling_observations,
    setting_findings,
)
from bench.report.stats import Summary, choose_target, summarize
from bench.report.tables import (
    comparisons_table,
    convergence_table,
    cost_table,
    fidelity_table,
    memory_table,
    more_metrics_tables,
    problem_runs_table,
    quality_table,
    runs_table,
    setup_table,
    unreliable_timings,
)
from bench.results import atomic_write_bytes


def tables_note(metric: Metric) -> str:
    """How the quality table's numbers were computed, naming the primary metric."""
    what = metric.label
    return (
        "Quality in every registered metric: mean ± half-width of the 95% confidence interval "
        "(Student t, n - 1 degrees of freedom) over the seeds of each label's ok runs; one seed "
        f"gives no interval. The primary metric is {what} ({metric.name}; "
        f"{'higher' if metric.higher_is_better else 'lower'} is better; choose another with "
        f"`implicit-bench report --metric`). Δ {what} vs jfb: the mean paired difference over the "
        "seeds both have, with its 95% interval; an interval containing 0 is reported as no "
        f"significant difference. {what} at the budget: each run's last evaluation at or before "
        "the equal training-time budget. Time to target: training time (the sum of step times) at "
        f"the first evaluation whose test {what} reaches the target (mean over the seeds that "
        "reach it). Validity flags: runs whose layer was not a contraction, whose forward or "
        "backward solves converged in fewer than 95% of steps, whose gradient-fidelity reference "
        "did not converge, or that skipped steps (see Observations)."
    )


COST_NOTE = (
    "Median step: median per-step time after the warm-up steps (reported apart as warm-up step); "
    "train time: the sum of training-step times; J products / step: Jacobian-vector products "
    "(J u and Jᵀ u) per training step, the device-independent cost unit; timing: whether the run "
    "recorded its step times as reliable (not disturbed by other processes)."
)
MEMORY_NOTE = (
    "Peak step memory: the exact peak of live tensor bytes during a training step (the main "
    "memory figure); peak RSS: the process over training steps (secondary)."
)
# The notes that make a results folder "older": the findings say so.
OLDER_SCHEMA = (NoteKind.RENAMED_COLUMNS, NoteKind.NEWER_COLUMNS)
SETTINGS_NOTE = (
    "The runs form {n} settings (configurations that differ in more than seed and strategy). Each "
    "has its own tables: seeds are pooled within a setting only, never across settings."
)


@dataclass
class SettingSection:
    """One setting's summary, computed once for the findings, the tables and the observations."""

    setting: Setting
    summary: Summary
    target: float | None
    target_rule: str

    @property
    def data(self) -> ReportData:
        return self.setting.data

    @property
    def title(self) -> str | None:
        return self.setting.title

    @property
    def budget(self) -> float | None:
        return self.summary.budget


def _section(setting: Setting, target: float | None) -> SettingSection:
    target, rule = choose_target(setting.data, target)
    return SettingSection(setting, summarize(setting.data, target), target, rule)


def _findings(sections: list[SettingSection], data: ReportData, older: list[str]) -> list:
    items = []
    for section in sections:
        prefix = f"*{section.title}* — " if section.title is not None else ""
        items += [prefix + text for text in setting_findings(section.data, section.summary)]
    items += assumption_findings(data)
    if older:
        items.append(
            "**Older results folder**: written before the current schema; "
            + "; ".join(older)
            + " (see Partial results)."
        )
    if not items:
        items = ["No learned run finished ok: nothing to compare (see Partial results)."]
    return [doc.Heading("Findings"), doc.Bullets(items, "findings")]


def _tables(section: SettingSection, several: bool) -> list:
    blocks: list = []
    if several:
        blocks.append(doc.Heading(f"Setting: {section.title}", 3))
    metric = section.data.primary_metric
    target = metric.format(section.target, unit=True) if section.target is not None else "none"
    blocks.append(doc.Paragraph(f"Target {metric.label}: **{target}** — {section.target_rule}."))
    if section.budget is not None:
        blocks.append(
            doc.Paragraph(
                f"Equal-time budget: **{fmt_seconds(section.budget)}** of training — the smallest "
                "over strategies of the median over seeds of their final training time."
            )
        )
    data, summary = section.data, section.summary
    blocks += [doc.Paragraph("Quality:"), quality_table(data, summary, section.target)]
    for table in more_metrics_tables(data, summary.frame):
        blocks += [doc.Paragraph("Quality, further metrics:"), table]
    found = comparisons_table(summary.comparisons)
    if found is not None:
        blocks += [doc.Paragraph("Paired comparisons:"), found]
    if data.labels:
        blocks += [doc.Paragraph("Cost:"), cost_table(summary.frame)]
        unreliable = unreliable_timings(data)
        if unreliable:
            blocks.append(
                doc.Paragraph("⚠ Unreliable timings: " + "; ".join(unreliable) + ".", "note")
            )
        blocks += [doc.Paragraph("Memory:"), memory_table(summary.frame)]
        blocks += [doc.Paragraph("Convergence:"), convergence_table(summary.frame)]
        blocks += [
            doc.Paragraph(
                "Gradient fidelity: cosine to the exact implicit gradient, and the adjoint's "
                "relative error measured against a float64 reference next to its certified "
                "bound (1 + γ)/(1 − γ) ‖r‖/‖g‖ (γ the certified ‖∂T/∂x‖ bound, r the adjoint's "
                "residual); a bound above 1 is shown as vacuous:"
            ),
            fidelity_table(summary.frame),
        ]
    return blocks


def _remove_stale_figures(out_dir: Path, results: list[PlotResult]) -> None:
    """Delete figure files of an earlier build that this build did not draw (e.g. now skipped)."""
    drawn = {r.name for r in results if not r.skipped}
    known = {r.name for r in results} | {p.stem for p in out_dir.glob("scaling_*.png")}
    for name in known - drawn:
        for suffix in (".png", ".svg"):
            (out_dir / f"{name}{suffix}").unlink(missing_ok=True)


def build_report(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    metric: str | None = None,
    target: float | None = None,
) -> Path:
    """Write the comparison report of a results folder and return the path of ``report.html``.

    Writes ``report.md``, a self-contained ``report.html`` (figures embedded as data URIs) and
    every figure as ``<name>.png`` and ``<name>.svg`` into ``out_dir`` (default
    ``reports/<name of results_dir>/``, relative to the working directory), each file atomically.
    ``metric`` names the primary metric (default :data:`bench.metrics.PRIMARY_METRIC`): the one
    the findings rank by, the paired differences lead with and the target is set in; every
    registered metric with values still gets its columns. ``target`` (in that metric's unit)
    overrides the default target of the "time to target" column (see
    :func:`bench.report.stats.choose_target`). Partial results (diverged or failed runs, missing
    tables or reconstructions, tables of an older schema) are reported, not fatal. Raises
    ValueError when ``results_dir`` has no readable ``runs.csv``, a table is not this tool's, or
    ``metric`` is not registered or has no value in any run.
    """
    results_dir = Path(results_dir)
    primary = METRICS.get(PRIMARY_METRIC if metric is None else metric)  # ValueError: unknown
    if target is not None and not (
        isinstance(target, (int, float)) and not isinstance(target, bool) and math.isfinite(target)
    ):
        raise ValueError(f"target must be a finite number, got {target!r}")
    data, notes = prepare(results_dir)
    data = replace(data, primary=primary.name)
    if metric is not None and finite_rows(data.runs, f"final_test_{metric}").empty:
        recorded = [m.name for m in data.metrics() if m.name != metric]
        raise ValueError(
            f"metric {metric!r} has no final value in any run of {results_dir}; recorded: "
            f"{', '.join(recorded) or 'none'}"
        )
    out_dir = Path(out_dir) if out_dir is not None else Path("reports") / results_dir.resolve().name
    out_dir.mkdir(parents=True, exist_ok=True)

    settings = split_settings(data)
    sections = [_section(setting, target) for setting in settings]
    several = len(settings) > 1
    # Figures pool seeds only: with several settings they show the first one (the scaling
    # figures compare settings, so they use every setting's runs).
    shown = settings[0]
    drawn = figures.render_plots(replace(shown.data, target=sections[0].target), out_dir)
    if several:
        for figure in drawn:
            if not figure.name.startswith("scaling_"):
                figure.caption += f" Setting shown: {shown.title} (first of {len(settings)})."
    _remove_stale_figures(out_dir, drawn)
    missing = [note.text for note in notes]
    missing += [note for figure in drawn for note in figure.notes]  # e.g. runs without recons
    missing += [f"figure '{p.title}' skipped: {p.skipped}" for p in drawn if p.skipped]
    missing = list(dict.fromkeys(missing))  # de-duplicated, order kept
    older = [note for note in notes if note.kind in OLDER_SCHEMA]

    suite = data.runs["suite"].dropna().unique()
    title = f"implicit-bench report: {', '.join(map(str, suite)) or results_dir.name}"
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    blocks: list = [
        doc.Paragraph(f"Results: `{results_dir}` · generated {generated}", "note"),
        *_findings(sections, data, _older_summary(older)),
        doc.Heading("Figures"),
    ]
    if several:
        blocks.append(
            doc.Paragraph(
                f"Figures other than the scaling figures show the first setting only "
                f"(**{shown.title}**) of {len(settings)}; the tables cover every setting."
            )
        )
    blocks += [doc.Figure(plot) for plot in drawn]
    blocks += [doc.Heading("Summary tables"), doc.Paragraph(tables_note(primary), "note")]
    blocks += [doc.Paragraph(COST_NOTE, "note"), doc.Paragraph(MEMORY_NOTE, "note")]
    if several:
        blocks.append(doc.Paragraph(SETTINGS_NOTE.format(n=len(settings))))
    for section in sections:
        blocks += _tables(section, several)
    blocks.append(doc.Heading("Observations"))
    for section in sections:
        if several:
            blocks.append(doc.Heading(f"Setting: {section.title}", 3))
        found = observations(section.data, section.summary, section.target)
        blocks.append(doc.Bullets(found or ["(no data to observe)"]))
    across = scaling_observations(data)
    if across:
        if several:
            blocks.append(doc.Heading("Across settings", 3))
        blocks.append(doc.Bullets(across))
    blocks += [doc.Heading("Partial results"), *_partial(data, missing)]
    runs = runs_table(data, settings)
    blocks.append(doc.Details(f"All runs ({len(runs.rows)})", [runs]))
    setup = setup_table(data, settings)
    setup.css_class = "kv"
    blocks.append(doc.Details("Setup", [setup]))

    atomic_write_bytes(out_dir / "report.md", doc.to_markdown(title, blocks).encode())
    html_path = out_dir / "report.html"
    atomic_write_bytes(html_path, doc.to_html(title, blocks).encode())
    return html_path


def _older_summary(older: list[Note]) -> list[str]:
    """The older-schema notes, shortened for the findings: which columns were renamed, and
    whether the timing flags exist."""
    out = []
    if any(note.kind is NoteKind.RENAMED_COLUMNS for note in older):
        out.append("columns renamed since were read under their current names")
    newer = [note for note in older if note.kind is NoteKind.NEWER_COLUMNS]
    if any("timing_reliable" in note.columns for note in newer):
        out.append("it predates the timing-reliability record")
    elif newer:
        out.append("some newer measurements are absent")
    return out


def _partial(data: ReportData, missing: list[str]) -> list:
    blocks: list = []
    problems = problem_runs_table(data)
    if problems is not None:
        blocks += [doc.Paragraph("Runs that did not finish ok:"), problems]
    if missing:
        blocks += [doc.Paragraph("Missing pieces:"), doc.Bullets(missing)]
    if problems is None and not missing:
        blocks.append(doc.Paragraph("Every run finished ok and every table and file is present."))
    return blocks
