"""The report's data model: one results folder's tables, cleaned, plus the derived quantities that
both the figures (:mod:`bench.report.figures`) and the tables use (labels, colours, per-label
medians, scaling variables).

Nothing here draws or formats; :mod:`bench.report.figures` imports this module, never the other
way round.
"""

from __future__ import annotations

import colorsys
import json
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns

from bench.metrics import METRICS, PRIMARY_METRIC, Metric

BASELINE_PREFIX = "baseline:"
# Known strategies first (in the order the project introduces them), others alphabetically.
STRATEGY_ORDER = ("jfb", "cg", "neumann", "unrolled", "phantom", "torchdeq-ift", "gmres")
# Harness knobs a sweep may vary, with their axis names; strategies add their own cost
# parameters (``Strategy.cost_params``) as ``p_<name>``.
HARNESS_SCALING = {
    "solver_max_iter": "forward solver max_iter",
    "image_size": "image size (pixels per side)",
}
# What the naive reconstruction of a task that is not registered here is called.
NAIVE_DEFAULT = "naive reconstruction"


class NoteKind(Enum):
    """What a loading note is about, for the decisions taken on it (the text is for reading)."""

    MISSING = "missing"  # a piece absent, unreadable or partial
    RENAMED_COLUMNS = "renamed columns"  # a table of an older schema, read under current names
    NEWER_COLUMNS = "newer columns"  # a table written before some columns existed (``columns``)
    RECONSTRUCTIONS = "reconstructions"  # what the reconstruction grid needs is absent


@dataclass(frozen=True)
class Note:
    """One thing the report says is missing or partial: ``text`` to show, ``kind`` to decide on,
    and, for :attr:`NoteKind.NEWER_COLUMNS`, the ``columns`` the folder predates."""

    text: str
    kind: NoteKind = NoteKind.MISSING
    columns: tuple[str, ...] = ()


@dataclass
class PlotResult:
    """One figure of the report: written to ``png``/``svg``, or skipped with ``skipped``;
    ``notes``: what it could not show (runs without a reconstruction file, say)."""

    name: str
    title: str
    caption: str = ""
    png: Path | None = None
    svg: Path | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)  # what a drawn figure could not show


@dataclass
class ReportData:
    """The tables of one results folder, cleaned for plotting and summarising.

    ``runs`` holds every row of runs.csv with a display ``label`` (the strategy's short label:
    its name plus the parameters that differ from their defaults) and ``is_baseline``;
    ``learned_ok`` the learned runs with status ok; ``baselines`` the ok rows of classical
    baselines with ``baseline_name``; ``epochs`` / ``steps`` the rows of ok learned runs with
    ``label`` joined in. Times are in the current schema's names (``train_time_s``: the sum of
    training-step times). epochs.csv holds one row per evaluation: with ``[train] eval_every``
    several per epoch (see :meth:`end_of_epoch`). ``scaling_runs``: the ok learned runs of every
    setting, for the scaling figures (which compare settings); None means ``learned_ok``.
    ``palette`` maps every label to its colour (shades of its strategy's colour, see
    :func:`label_palette`); ``strategy_colors`` maps strategy names to theirs.
    """

    runs: pd.DataFrame
    learned_ok: pd.DataFrame
    baselines: pd.DataFrame
    epochs: pd.DataFrame
    steps: pd.DataFrame
    labels: list[str]  # learned strategy labels, display order
    palette: dict[str, tuple]
    recons_dir: Path
    strategy_colors: dict[str, tuple] = field(default_factory=dict)
    # every registered metric of the naive reconstruction (e.g. the blurred input): name -> value
    naive_metrics: dict[str, float] = field(default_factory=dict)
    naive_name: str = NAIVE_DEFAULT
    # the metric the report ranks by and sets its target in (bench.metrics.PRIMARY_METRIC unless
    # the user names another), and that target
    primary: str = PRIMARY_METRIC
    target: float | None = None
    scaling_runs: pd.DataFrame | None = None

    @property
    def primary_metric(self) -> Metric:
        return METRICS.get(self.primary)

    def metrics(self) -> list[Metric]:
        """The primary metric, then the other registered metrics with a final value in some run
        (a metric registered after these runs were made has no column and is left out)."""
        found = [
            metric
            for name, metric in METRICS.items()
            if name == self.primary or not finite_rows(self.runs, f"final_test_{name}").empty
        ]
        return sorted(found, key=lambda metric: metric.name != self.primary)

    def plotted_labels(self, frame: pd.DataFrame) -> list[str]:
        """The labels present in ``frame``, in display order."""
        present = set(frame["label"])
        return [label for label in self.labels if label in present]

    def end_of_epoch(self) -> pd.DataFrame:
        """The end-of-epoch evaluation of each run and epoch (for figures against the epoch).

        Rows flagged ``epoch_end == 1``; for a run that does not record the flag (older results),
        the last row of each epoch.
        """
        epochs = self.epochs
        if epochs.empty:
            return epochs
        if "epoch_end" in epochs.columns:
            flag = pd.to_numeric(epochs["epoch_end"], errors="coerce")
        else:
            flag = pd.Series(np.nan, index=epochs.index)
        flagged = flag.notna().groupby(epochs["run_id"]).transform("any")
        last = ~epochs.duplicated(["run_id", "epoch"], keep="last")
        return epochs[np.where(flagged, flag == 1, last)]

    def scaling_source(self) -> pd.DataFrame:
        """The runs the scaling figures compare: every setting's ok learned runs."""
        return self.learned_ok if self.scaling_runs is None else self.scaling_runs


def natural_key(text: str) -> list:
    """Sort key that orders ``k=5`` before ``k=10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def finite_rows(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows of ``frame`` whose ``column`` is a finite number (none if the column is absent)."""
    if column not in frame.columns:
        return frame.iloc[0:0]
    values = pd.to_numeric(frame[column], errors="coerce")
    return frame[np.isfinite(values.to_numpy(dtype=float))]


def naive_name(task) -> str:
    """What the task's naive reconstruction is called: the registered task's ``naive_label``
    (bench/tasks; e.g. "blurred input"); results without a task column are deblurring."""
    from bench.tasks import TASKS

    if task is None or (isinstance(task, float) and math.isnan(task)):
        task = "blur"
    return TASKS.get(str(task)).naive_label if str(task) in TASKS else NAIVE_DEFAULT


# ---------------------------------------------------------------------------------------------
# Labels and colours


def _strategy_class(name: str):
    """The registered strategy class, or None (a plugin that is not installed here)."""
    import strategies

    try:
        return strategies.strategy_class(name)
    except ValueError:
        return None


def short_label(strategy: str, params: dict) -> str | None:
    """``Strategy.short_label`` of a recorded run: its name plus the parameters that differ from
    the registry's defaults; None when the strategy is not registered here.

    Not ``get_strategy(...).short_label``: a recorded value may be one the current class rejects
    (a range tightened since), and the label must still name it. Same format as the property.
    """
    cls = _strategy_class(strategy)
    if cls is None:
        return None
    declared = [k for k in cls.parameters if k in params]
    unknown = sorted(k for k in params if k not in cls.parameters)
    changed = [
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in ((k, params[k]) for k in declared + unknown)
        if k not in cls.parameters or v != cls.parameters[k].default
    ]
    return ":".join([strategy, *changed])


def display_labels(runs: pd.DataFrame, notes: list[Note]) -> pd.Series:
    """Per row of runs.csv, the label figures and tables show (see :func:`short_label`).

    Baselines keep their recorded label. A learned run whose strategy is not registered here, or
    whose ``params`` is not a JSON object, keeps its recorded ``strategy_label`` (said in
    ``notes``).
    """
    recorded = runs["strategy_label"].where(runs["strategy_label"].notna(), runs["strategy"])
    labels = recorded.astype(str).copy()
    unknown, unreadable = set(), set()
    for index, row in runs.iterrows():
        if row["strategy"].startswith(BASELINE_PREFIX):
            continue
        try:
            params = json.loads(row["params"]) if isinstance(row["params"], str) else {}
        except json.JSONDecodeError:
            params = None
        if not isinstance(params, dict):
            unreadable.add(str(row["run_id"]))
            continue
        label = short_label(row["strategy"], params)
        if label is None:
            unknown.add(row["strategy"])
            continue
        labels[index] = label
    if unknown:
        notes.append(
            Note(
                f"strategies not registered here ({', '.join(sorted(unknown))}): labelled by "
                "their recorded `strategy_label` (every parameter)"
            )
        )
    if unreadable:
        notes.append(
            Note(
                f"runs whose `params` is not a JSON object ({', '.join(sorted(unreadable)[:5])}):"
                " labelled by their recorded `strategy_label`"
            )
        )
    return labels


def strategy_order(names) -> list[str]:
    """Strategy names in display order: the project's own first, the others alphabetically."""
    names = set(names)
    known = [s for s in STRATEGY_ORDER if s in names]
    return known + sorted(names - set(known), key=natural_key)


def strategy_palette(names) -> dict[str, tuple]:
    """One fixed colour per strategy name, the same in every figure and every report.

    The colour depends on the strategy alone (its place in :data:`STRATEGY_ORDER`, then in the
    sorted registry), not on which strategies a folder holds, so jfb is the same blue in the
    quick and the scaling reports.
    """
    import strategies

    every = strategy_order([*STRATEGY_ORDER, *strategies.list_strategies(), *names])
    colors = sns.color_palette("tab10", 10)
    if len(every) > 10:
        colors += sns.color_palette("husl", len(every) - 10)
    return {name: tuple(colors[i]) for i, name in enumerate(every) if name in set(names)}


def _shade(color: tuple, amount: float) -> tuple:
    """``color`` made darker (amount < 0) or lighter (> 0) at the same hue."""
    if amount == 0:
        return tuple(color[:3])
    h, lightness, s = colorsys.rgb_to_hls(*color[:3])
    lightness = lightness + amount * (1 - lightness if amount > 0 else lightness)
    return colorsys.hls_to_rgb(h, min(max(lightness, 0.0), 1.0), s)


def label_palette(labels: list[str], strategy_of: dict[str, str]) -> dict[str, tuple]:
    """Per label, its strategy's colour; several labels of one strategy (``unrolled:k=5`` and
    ``unrolled:k=20``) get shades of it, darkest first, in display order."""
    colors = strategy_palette(set(strategy_of.values()))
    out = {}
    for strategy in strategy_order(set(strategy_of.values())):
        own = [label for label in labels if strategy_of[label] == strategy]
        for i, label in enumerate(own):
            amount = 0.0 if len(own) == 1 else -0.35 + 0.8 * i / (len(own) - 1)
            out[label] = _shade(colors[strategy], amount)
    return out


# ---------------------------------------------------------------------------------------------
# Derived per-label quantities shared by figures and tables


PHASES = (
    # the model's Lipschitz control (certificate): the same work for every strategy
    ("certify_time_s", "median_certify_time_s", "certification"),
    ("forward_time_s", "median_forward_time_s", "forward solve"),
    ("backward_time_s", "median_backward_time_s", "backward"),
    ("optimizer_time_s", "median_optimizer_time_s", "optimizer"),
)


def step_phase_medians(data: ReportData) -> pd.DataFrame:
    """Per label: median certification / forward / backward / optimizer / whole-step time (s).

    From steps.csv (median over all steps of the label's ok runs) where present, else the mean over
    seeds of the per-run medians in runs.csv.
    """
    out = pd.DataFrame(index=pd.Index(data.labels, name="label"))
    steps = data.steps
    pairs = [(s, r) for s, r, _ in PHASES] + [("step_time_s", "median_step_time_s")]
    for step_col, run_col in pairs:
        from_steps = finite_rows(steps, step_col).groupby("label")[step_col].median()
        from_runs = finite_rows(data.learned_ok, run_col).groupby("label")[run_col].mean()
        out[step_col] = from_steps.reindex(out.index).fillna(from_runs.reindex(out.index))
    return out


# Preference order of the memory figure used where only one fits (Pareto markers, scaling,
# findings): the exact peak of live tensor bytes first (device-independent).
MEMORY_PREFERENCE = (
    ("peak_step_bytes", "peak step memory"),
    ("peak_gpu_memory_bytes", "peak GPU memory"),
    ("saved_bytes", "saved bytes"),
)


def memory_column(runs: pd.DataFrame) -> tuple[str, str]:
    """The preferred memory column measured in ``runs`` and its name (saved bytes when none)."""
    for column, name in MEMORY_PREFERENCE:
        if not finite_rows(runs, column).empty:
            return column, name
    return MEMORY_PREFERENCE[-1]


def evaluation_index(epochs: pd.DataFrame) -> pd.Series:
    """Which evaluation of its run each epochs.csv row is: the global step where recorded (several
    evaluations per epoch with ``eval_every``), else the epoch. Seeds of one label share them."""
    step = pd.to_numeric(epochs["step"], errors="coerce") if "step" in epochs else None
    epoch = pd.to_numeric(epochs["epoch"], errors="coerce")
    if step is None or step.isna().all():
        return epoch
    return step.where(step.notna(), epoch)


# ---------------------------------------------------------------------------------------------
# Scaling variables: the strategies' declared cost parameters and the harness's knobs


@dataclass(frozen=True)
class ScalingVariable:
    """A knob the runs vary: a runs.csv column and how an axis names it."""

    column: str
    name: str  # short: "k", "solver_max_iter"
    axis: str  # the axis label
    declared_by: tuple[str, ...] = ()  # strategies declaring it as a cost parameter


def cost_parameters(names) -> dict[str, list[tuple[str, str]]]:
    """Per declared cost parameter: [(strategy, the parameter's doc)] of the strategies in
    ``names`` that declare it (``Strategy.cost_params``)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for strategy in strategy_order(names):
        cls = _strategy_class(strategy)
        for param in getattr(cls, "cost_params", ()):
            found.setdefault(param, []).append((strategy, cls.parameters[param].doc))
    return found


def scaling_candidates(runs: pd.DataFrame) -> list[ScalingVariable]:
    """Every knob a scaling figure could vary: each declared cost parameter of the strategies in
    ``runs``, then the harness's (forward solver max_iter, image size)."""
    learned = runs[~runs["strategy"].astype(str).str.startswith(BASELINE_PREFIX)]
    out = []
    for param, declared in cost_parameters(learned["strategy"].unique()).items():
        docs = "; ".join(f"{s}: {doc}" if doc else s for s, doc in declared)
        out.append(
            ScalingVariable(f"p_{param}", param, f"{param} ({docs})", tuple(s for s, _ in declared))
        )
    out += [ScalingVariable(c, c, axis) for c, axis in HARNESS_SCALING.items()]
    return out


def scaling_variables(data: ReportData) -> list[ScalingVariable]:
    """The scaling knobs that take two or more values within one strategy's ok runs."""
    runs = data.scaling_source()
    found = []
    for variable in scaling_candidates(runs):
        if variable.column not in runs.columns or runs.empty:
            continue
        values = pd.to_numeric(runs[variable.column], errors="coerce")
        if (values.groupby(runs["strategy"]).nunique() >= 2).any():
            found.append(variable)
    return found


def scaling_rows(data: ReportData, variable: ScalingVariable) -> pd.DataFrame:
    """Ok learned runs (of every setting), each strategy held at its most common value of the other
    scaling knobs; ``variable``'s column as numbers."""
    runs = data.scaling_source()
    others = [
        v.column
        for v in scaling_candidates(runs)
        if v.column != variable.column and v.column in runs.columns
    ]
    kept = []
    for _, group in runs.groupby("strategy"):
        for other in others:
            mode = group[other].mode(dropna=False)
            if len(mode):
                value = mode.iloc[0]
                same = group[other].isna() if pd.isna(value) else group[other] == value
                group = group[same]
        kept.append(group)
    rows = pd.concat(kept) if kept else runs.iloc[0:0]
    return rows.assign(**{variable.column: pd.to_numeric(rows[variable.column], errors="coerce")})
