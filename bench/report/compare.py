"""Two results folders side by side (``implicit-bench compare A B``), as asv ``continuous`` and
pyperf ``compare_to`` do for benchmarks: A is the baseline, B the candidate (another commit,
machine or setting).

Runs are matched by setting (``setting_hash``, see :func:`bench.report.load.split_settings`) and
strategy label; when each folder holds a single setting and they differ, those two are compared
and the differing settings are said. Per strategy label and setting:

- **Step time**: each run's median step time (runs.csv ``median_step_time_s``: warm-up steps left
  out, :func:`bench.summary.run_summary`). The ratio shown is B's median over its runs divided by
  A's. B is *slower* when that ratio exceeds 1 + threshold **and** the 95 % interval of the mean
  log step-time change lies above 0. The interval is Student's t on the per-seed log ratios
  ``log(t_B(s) / t_A(s))`` when both folders ran the same seeds (two or more), else Welch's t on
  the per-seed log times of each side; with a single seed on a side, the samples are that run's
  timed steps (Welch's t on their logs: steps of one run are not independent, so this is weaker
  evidence, and the table says which basis was used). *Faster* is the mirror image.
- **Peak step memory** (``peak_step_bytes``, else the first memory column both folders record):
  the same rule; it is an exact count, not a noisy measurement, so with a single seed on a side
  the ratio alone judges it.
- **Each registered metric**: B − A of the final test value with its 95 % interval (paired by
  seed, else Welch's t); *worse* when the whole interval lies on the worse side of 0 (in the
  metric's direction). No threshold: the threshold is a ratio, a metric difference has a unit.
- **Jacobian products per step**: shown for both, not judged (a count of what the strategy does).

A regression is a label that is significantly slower or heavier beyond the threshold, or worse
in a metric; the timing-reliability flags of both sides are shown, and a time verdict resting
on unreliable timings says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.metrics import METRICS, Metric
from bench.report.document import Bullets, Heading, Paragraph, Table, to_markdown
from bench.report.fmt import DASH, fmt_bytes, fmt_difference, fmt_seconds, fmt_value
from bench.report.load import (
    Setting,
    _representative,
    prepare,
    setting_columns,
    split_settings,
)
from bench.report.model import MEMORY_PREFERENCE, NoteKind, ReportData, finite_rows
from bench.report.stats import Estimate, paired_difference, validity, welch_difference
from bench.summary import warmup_count

DEFAULT_THRESHOLD = 0.10  # a 10 % change in step time or memory is worth a look (asv's 1.1)
PAIRED = "paired by seed"
WELCH_SEEDS = "Welch's t over seeds"
WELCH_STEPS = "Welch's t over steps (one seed)"
NO_INTERVAL = "one seed: no interval"
COUNTED = "one seed: an exact count, ratio alone"


@dataclass(frozen=True)
class CostChange:
    """B against A in a cost (step time, memory): medians over each side's seeds and the 95 %
    interval of the mean change of the log values (B − A), on the ``basis`` named."""

    a: float
    b: float
    log_change: Estimate
    basis: str

    @property
    def ratio(self) -> float:
        return self.b / self.a if self.a > 0 else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """The interval of the (geometric mean) ratio B / A."""
        return math.exp(self.log_change.low), math.exp(self.log_change.high)

    def verdict(self, threshold: float) -> str:
        """ "higher" / "lower" beyond ``threshold`` and significant, "within threshold",
        "no significant difference" ("no change" for an equal count), or why there is no
        verdict."""
        if math.isnan(self.ratio):
            return "not measured"
        if self.log_change.has_interval:
            low, high = self.log_change.low, self.log_change.high
            if low <= 0 <= high:
                return "no significant difference"
            if self.ratio > 1 + threshold and low > 0:
                return "higher"
            if self.ratio < 1 / (1 + threshold) and high < 0:
                return "lower"
            return "within threshold"
        if self.basis == COUNTED:
            if self.ratio == 1:
                return "no change"
            if self.ratio > 1 + threshold:
                return "higher"
            if self.ratio < 1 / (1 + threshold):
                return "lower"
            return "within threshold"
        return "no interval"


@dataclass
class LabelComparison:
    """One strategy label of one setting, B against A."""

    setting: str | None
    label: str
    seeds_a: list[float]
    seeds_b: list[float]
    pairing: str  # how the metrics were compared: PAIRED, WELCH_SEEDS or NO_INTERVAL
    step_time: CostChange
    memory: CostChange
    memory_name: str
    jacobian_a: float
    jacobian_b: float
    metrics: dict[str, Estimate]  # B − A of each metric's final test value
    timing_a: str
    timing_b: str
    timing_unreliable: list[str]  # "A" and/or "B"
    regressions: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.label} ({self.setting})" if self.setting else self.label


@dataclass
class FolderComparison:
    """Everything ``implicit-bench compare`` says: one :class:`LabelComparison` per strategy label
    and setting both folders ran, the threshold, and notes on what could not be compared."""

    a: Path
    b: Path
    threshold: float
    rows: list[LabelComparison]
    metrics: list[Metric]
    sides: dict[str, dict[str, str]]  # "A"/"B" -> what the folder is (commit, device, runs)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[str]:
        """One line per regressed label: what got slower, heavier or worse."""
        return [f"{row.name}: {'; '.join(row.regressions)}" for row in self.rows if row.regressions]

    def to_markdown(self) -> str:
        """The comparison as GitHub-flavoured Markdown, ending in one newline."""
        return to_markdown("implicit-bench compare", _blocks(self)).rstrip("\n") + "\n"


def compare_folders(a: Path, b: Path, threshold: float = DEFAULT_THRESHOLD) -> FolderComparison:
    """Compare results folder ``b`` against ``a`` (see the module docstring for the rules).

    Raises ValueError (one line) when ``threshold`` is not a finite number >= 0, when a folder is
    missing or not this tool's, has no finished learned run, or when the two share no strategy
    label in a comparable setting.
    """
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"the threshold must be a finite fraction >= 0, got {threshold!r}")
    a, b = Path(a), Path(b)
    loaded = {}
    notes: list[str] = []
    for side, folder in (("A", a), ("B", b)):
        data, folder_notes = prepare(folder)
        if data.learned_ok.empty:
            raise ValueError(f"{folder}: no finished (ok) learned runs to compare")
        loaded[side] = data
        # the reconstruction grid is the report's, not the comparison's
        notes += [
            f"{side}: {note.text}"
            for note in folder_notes
            if note.kind is not NoteKind.RECONSTRUCTIONS
        ]
    pairs, pair_notes = _match_settings(loaded["A"], loaded["B"])
    notes += pair_notes
    for side, data in loaded.items():
        notes += [f"{side}: {line}" for line in _unreliable_timings(data)]
    metrics = [m for _, m in METRICS.items() if _has_metric(loaded, m)]
    rows = []
    for title, setting_a, setting_b in pairs:
        labels_a, labels_b = _finished_labels(setting_a.data), _finished_labels(setting_b.data)
        where = f" ({title})" if title else ""
        for side, only in (("A", labels_a - labels_b), ("B", labels_b - labels_a)):
            if only:
                notes.append(f"only in {side}{where}: {', '.join(sorted(only))}")
        for label in [lab for lab in setting_a.data.labels if lab in labels_b]:
            rows.append(
                _compare_label(title, label, setting_a.data, setting_b.data, metrics, threshold)
            )
    if not rows:
        raise ValueError(
            f"{a} and {b} share no strategy label in a comparable setting "
            f"(A: {', '.join(loaded['A'].labels)}; B: {', '.join(loaded['B'].labels)})"
        )
    sides = {side: _describe(folder, loaded[side]) for side, folder in (("A", a), ("B", b))}
    return FolderComparison(a, b, threshold, rows, metrics, sides, notes)


def _has_metric(loaded: dict[str, ReportData], metric: Metric) -> bool:
    column = f"final_test_{metric.name}"
    return all(not finite_rows(d.learned_ok, column).empty for d in loaded.values())


def _finished_labels(data: ReportData) -> set[str]:
    return set(data.learned_ok["label"])


def _learned_settings(data: ReportData) -> dict[str, Setting]:
    return {s.key: s for s in split_settings(data) if not s.data.learned_ok.empty}


def _match_settings(a: ReportData, b: ReportData):
    """(title, setting of A, setting of B) per setting both folders ran, and notes. Two folders of
    one setting each are compared even where the settings differ (that is said)."""
    settings_a, settings_b = _learned_settings(a), _learned_settings(b)
    common = [key for key in settings_a if key in settings_b]
    notes = []
    if common:
        several = len(common) > 1
        pairs = [
            (settings_a[k].title or k if several else None, settings_a[k], settings_b[k])
            for k in common
        ]
        for side, settings in (("A", settings_a), ("B", settings_b)):
            for key, setting in settings.items():
                if key not in common:
                    notes.append(f"setting only in {side}, not compared: {setting.title or key}")
        return pairs, notes
    if len(settings_a) == 1 and len(settings_b) == 1:
        (setting_a,), (setting_b,) = settings_a.values(), settings_b.values()
        notes.append("the folders ran different settings: " + _setting_change(setting_a, setting_b))
        return [(None, setting_a, setting_b)], notes
    raise ValueError(
        f"the folders share no setting (A has {len(settings_a)}, B has {len(settings_b)}): "
        "compare folders of one setting each, or of the same settings"
    )


def _setting_change(a: Setting, b: Setting) -> str:
    columns = [c for c in setting_columns() if c in a.data.runs and c in b.data.runs]
    values_a = _representative(a.data.learned_ok, columns)
    values_b = _representative(b.data.learned_ok, columns)
    changed = [f"{c} {values_a[c]} → {values_b[c]}" for c in columns if values_a[c] != values_b[c]]
    return ", ".join(changed) or "they differ in something runs.csv does not show (setting_hash)"


def _per_seed(runs: pd.DataFrame, column: str) -> pd.Series:
    """``column`` per seed (mean where a seed repeats), finite values only."""
    values = finite_rows(runs.dropna(subset=["seed"]), column)
    return values.groupby("seed")[column].mean()


def _positive_log(values: pd.Series) -> pd.Series:
    return np.log(values[values > 0])


def _timed_steps(steps: pd.DataFrame) -> pd.Series:
    """The step times of ``steps`` (one label's runs) after each run's warm-up steps: the steps
    :func:`bench.summary.run_summary` takes its medians over."""
    kept = [
        run.sort_values("step")["step_time_s"].iloc[warmup_count(len(run)) :]
        for _, run in finite_rows(steps, "step_time_s").groupby("run_id")
    ]
    return pd.concat(kept) if kept else pd.Series(dtype=float)


def _cost_change(
    a: pd.Series, b: pd.Series, paired: bool, single: str, steps: tuple | None = None
) -> CostChange:
    """B against A of per-seed costs ``a``, ``b``; ``single`` is the basis used with one seed on a
    side (:data:`WELCH_STEPS` with ``steps`` = (A's, B's step times), or :data:`COUNTED`)."""
    medians = float(a.median()) if len(a) else math.nan, float(b.median()) if len(b) else math.nan
    log_a, log_b = _positive_log(a), _positive_log(b)
    if paired:
        return CostChange(*medians, paired_difference(log_b, log_a), PAIRED)
    if min(len(log_a), len(log_b)) >= 2:
        return CostChange(*medians, welch_difference(log_b, log_a), WELCH_SEEDS)
    if single == WELCH_STEPS and steps is not None:
        step_a, step_b = (_positive_log(s) for s in steps)
        if min(len(step_a), len(step_b)) >= 2:
            return CostChange(*medians, welch_difference(step_b, step_a), WELCH_STEPS)
    basis = COUNTED if single == COUNTED else NO_INTERVAL
    return CostChange(*medians, welch_difference(log_b, log_a), basis)


def _memory_column(a: pd.DataFrame, b: pd.DataFrame) -> tuple[str, str]:
    """The preferred memory column both sides measured (peak step memory first)."""
    for column, name in MEMORY_PREFERENCE:
        if not finite_rows(a, column).empty and not finite_rows(b, column).empty:
            return column, name
    return MEMORY_PREFERENCE[0]


def _unreliable_timings(data: ReportData) -> list[str]:
    """Per label with unreliable timings: how many runs, and why (the runs' timing notes)."""
    flags = validity(data)
    lines = []
    for label, group in flags[flags["timing_unreliable"]].groupby("label", sort=False):
        reasons = list(
            dict.fromkeys(r for note in group["timing_note"] for r in note.split("; ") if r)
        )
        lines.append(
            f"{label}: timings of {len(group)} run(s) unreliable"
            + (f" ({'; '.join(reasons)})" if reasons else "")
        )
    return lines


def _timing(flags: pd.DataFrame) -> str:
    """The timing-reliability flags of one side's runs of a label, as a cell."""
    recorded = int(flags["timing_recorded"].sum())
    unreliable = int(flags["timing_unreliable"].sum())
    if recorded == 0:
        return "not recorded"
    if unreliable:
        return f"{unreliable} of {len(flags)} unreliable"
    return f"reliable ({recorded} of {len(flags)})"


def _compare_label(
    title: str | None,
    label: str,
    a: ReportData,
    b: ReportData,
    metrics: list[Metric],
    threshold: float,
) -> LabelComparison:
    runs_a = a.learned_ok[a.learned_ok["label"] == label]
    runs_b = b.learned_ok[b.learned_ok["label"] == label]
    seeds_a = sorted(runs_a["seed"].dropna().unique())
    seeds_b = sorted(runs_b["seed"].dropna().unique())
    paired = seeds_a == seeds_b and len(seeds_a) >= 2
    steps = (
        _timed_steps(a.steps[a.steps["label"] == label]),
        _timed_steps(b.steps[b.steps["label"] == label]),
    )
    step_time = _cost_change(
        _per_seed(runs_a, "median_step_time_s"),
        _per_seed(runs_b, "median_step_time_s"),
        paired,
        WELCH_STEPS,
        steps,
    )
    memory_column, memory_name = _memory_column(runs_a, runs_b)
    memory = _cost_change(
        _per_seed(runs_a, memory_column), _per_seed(runs_b, memory_column), paired, COUNTED
    )
    differences = {}
    for metric in metrics:
        column = f"final_test_{metric.name}"
        values_a, values_b = _per_seed(runs_a, column), _per_seed(runs_b, column)
        differences[metric.name] = (
            paired_difference(values_b, values_a)
            if paired
            else welch_difference(values_b, values_a)
        )
    flags_a, flags_b = (v[v["label"] == label] for v in (validity(a), validity(b)))
    unreliable = [s for s, f in (("A", flags_a), ("B", flags_b)) if f["timing_unreliable"].any()]
    row = LabelComparison(
        setting=title,
        label=label,
        seeds_a=seeds_a,
        seeds_b=seeds_b,
        pairing=PAIRED
        if paired
        else WELCH_SEEDS
        if min(len(seeds_a), len(seeds_b)) > 1
        else NO_INTERVAL,
        step_time=step_time,
        memory=memory,
        memory_name=memory_name,
        jacobian_a=float(runs_a["jacobian_products_per_step"].mean()),
        jacobian_b=float(runs_b["jacobian_products_per_step"].mean()),
        metrics=differences,
        timing_a=_timing(flags_a),
        timing_b=_timing(flags_b),
        timing_unreliable=unreliable,
    )
    row.regressions = _regressions(row, metrics, threshold)
    return row


def _regressions(row: LabelComparison, metrics: list[Metric], threshold: float) -> list[str]:
    found = []
    if row.step_time.verdict(threshold) == "higher":
        caveat = (
            f" (timings unreliable on {' and '.join(row.timing_unreliable)})"
            if row.timing_unreliable
            else ""
        )
        found.append(f"slower, step time {_ratio(row.step_time)}{caveat}")
    if row.memory.verdict(threshold) == "higher":
        found.append(f"heavier, {row.memory_name} {_ratio(row.memory)}")
    for metric in metrics:
        estimate = row.metrics[metric.name]
        if (
            estimate.has_interval
            and max(metric.oriented(estimate.low), metric.oriented(estimate.high)) < 0
        ):
            found.append(
                f"worse {metric.label}, {fmt_difference(estimate, metric.decimals, _unit(metric))}"
            )
    return found


# ---------------------------------------------------------------------------------------------
# Markdown


def _unit(metric: Metric) -> str:
    return f" {metric.unit}" if metric.unit else ""


def _ratio(change: CostChange) -> str:
    """``1.50×`` with the interval of the ratio where there is one."""
    if math.isnan(change.ratio):
        return DASH
    text = f"{change.ratio:.2f}×"
    if change.log_change.has_interval:
        low, high = change.interval
        text += f" [{low:.2f}, {high:.2f}]"
    return text


VERDICT_WORDS = {
    "step time": {"higher": "slower", "lower": "faster"},
    "memory": {"higher": "heavier", "lower": "lighter"},
}


def _ratio_cell(change: CostChange, threshold: float, kind: str) -> str:
    verdict = change.verdict(threshold)
    if verdict == "not measured":
        return DASH
    return f"{_ratio(change)}: {VERDICT_WORDS[kind].get(verdict, verdict)}"


def _seeds(row: LabelComparison) -> str:
    return f"{len(row.seeds_a)} / {len(row.seeds_b)}"


def _describe(folder: Path, data: ReportData) -> dict[str, str]:
    learned = data.learned_ok

    def values(column: str) -> str:
        found = (
            sorted({fmt_value(v) for v in learned[column].dropna()}) if column in learned else []
        )
        return ", ".join(found) or DASH

    return {
        "folder": f"`{folder}`",
        "commit": values("git_commit"),
        "device": values("device_name"),
        "ok learned runs": str(len(learned)),
    }


def _blocks(result: FolderComparison) -> list:
    t = result.threshold
    blocks: list = [
        Table(["", "A (baseline)", "B"], [[k, result.sides["A"][k], result.sides["B"][k]]
                                          for k in result.sides["A"]]),
    ]  # fmt: skip
    if result.regressions:
        blocks.append(
            Paragraph(
                f"**B is slower, heavier (by more than {_percent(t)}) or worse than A** in "
                f"{len(result.regressions)} of {len(result.rows)} strategy labels:"
            )
        )
        blocks.append(Bullets(result.regressions))
    else:
        blocks.append(
            Paragraph(
                f"No strategy label is significantly slower or heavier (by more than {_percent(t)}) or "
                f"worse in B than in A ({len(result.rows)} compared)."
            )
        )
    blocks += [
        Heading("Step time"),
        Table(
            ["strategy", "seeds A / B", "median step A", "median step B", "B / A [95 % CI]",
             "compared by", "timings A", "timings B"],
            [[row.name, _seeds(row), fmt_seconds(row.step_time.a), fmt_seconds(row.step_time.b),
              _ratio_cell(row.step_time, t, "step time"), row.step_time.basis, row.timing_a,
              row.timing_b] for row in result.rows],
        ),
        Heading("Memory and Jacobian products"),
        Table(
            ["strategy", "memory", "A", "B", "B / A [95 % CI]", "Jacobian products / step A → B"],
            [[row.name, row.memory_name, fmt_bytes(row.memory.a), fmt_bytes(row.memory.b),
              _ratio_cell(row.memory, t, "memory"),
              f"{_number(row.jacobian_a)} → {_number(row.jacobian_b)}"] for row in result.rows],
        ),
    ]  # fmt: skip
    if result.metrics:
        blocks += [
            Heading("Quality (final test values, B − A)"),
            Table(
                ["strategy", *(m.axis_label for m in result.metrics), "compared by"],
                [[row.name, *(_difference(row.metrics[m.name], m) for m in result.metrics),
                  row.pairing] for row in result.rows],
            ),
        ]  # fmt: skip
    blocks += [
        Heading("How changes are judged"),
        Paragraph(
            f"Ratios are B's median over seeds divided by A's; the interval is that of the mean "
            f"log ratio (per seed when both folders ran the same seeds, else Welch's t; one seed: "
            f"Welch's t over its timed steps for step time, the ratio alone for memory, an exact "
            f"count). **Slower** / **heavier**: ratio above {1 + t:.2f} and its interval above 1. "
            "Metrics: B − A with its 95 % interval; **worse** when the interval lies wholly on "
            "the worse side of 0. Jacobian products are shown, not judged."
        ),
    ]
    if result.notes:
        blocks += [Heading("Notes"), Bullets(result.notes)]
    return blocks


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def _number(value: float) -> str:
    return DASH if pd.isna(value) else f"{value:.3g}"


def _difference(estimate: Estimate, metric: Metric) -> str:
    if estimate.n == 0:
        return DASH
    return fmt_difference(estimate, metric.decimals, _unit(metric))
