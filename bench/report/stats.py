"""Statistics over seeds for one setting: the target in the primary metric, 95 % Student-t
intervals, paired differences to jfb, the best learned strategy against the best baseline, the
equal training-time budget, validity and timing flags, and the per-label summary the tables and
findings read.

Every registered metric with values gets its estimates and differences (``final_test_<m>_ci``,
``vs_reference_<m>``, ``budget_<m>``); rankings, the target and "best" use the primary metric
(``ReportData.primary``) in its own direction (:meth:`bench.metrics.Metric.oriented`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import pandas as pd
from scipy import stats

from bench.metrics import Metric
from bench.report.fmt import status_counts
from bench.report.model import ReportData, finite_rows, step_phase_medians

REFERENCE_STRATEGY = "jfb"  # paired differences are taken against it
CONFIDENCE = 0.95
# Validity thresholds: a layer is a contraction below 1; solves count as converging when at least
# this share of steps reached the tolerance.
CONTRACTION_LIMIT = 1.0
CONVERGED_SHARE = 0.95

# Target and the summary


def best_of(values: pd.Series, metric: Metric):
    """The index of the best value of ``values`` in ``metric``'s direction (NaNs ignored)."""
    return metric.oriented(values.dropna()).idxmax()


def baseline_means(data: ReportData, metric: Metric) -> pd.Series:
    """Per classical baseline, its mean final value of ``metric`` (deterministic: repeated rows,
    e.g. two suites in one folder, are averaged)."""
    column = f"final_test_{metric.name}"
    rows = finite_rows(data.baselines, column)
    return rows.groupby("baseline_name")[column].mean()


def choose_target(data: ReportData, override: float | None):
    """The target for "time to target", in the primary metric, and the rule that chose it."""
    metric = data.primary_metric
    what = metric.label
    if override is not None:
        return float(override), "given by the caller (`--target`)"
    # Finite values only: a perfect reconstruction (PSNR = +inf) is a result, but no target.
    column = f"final_test_{metric.name}"
    learned = finite_rows(data.learned_ok, column).groupby("label")[column].mean()
    best_learned = learned[best_of(learned, metric)] if len(learned) else None
    baselines = baseline_means(data, metric)
    best_base = baselines[best_of(baselines, metric)] if len(baselines) else None
    naive = data.naive_metrics.get(metric.name)
    naive = naive if naive is not None and math.isfinite(naive) else None
    if (
        best_base is not None
        and best_learned is not None
        and (metric.oriented(best_learned) >= metric.oriented(best_base))
    ):
        return float(best_base), (
            f"the best classical baseline's {what} ({best_of(baselines, metric)}), which at least "
            "one learned strategy reaches on average"
        )
    if best_learned is not None and naive is not None:
        return (naive + best_learned) / 2, (
            f"midway between the {data.naive_name}'s {what} and the best learned strategy's mean "
            f"final {what}" + (" (no learned strategy reaches the best baseline)"
                               if best_base is not None else "")
        )  # fmt: skip
    if best_base is not None:
        return float(best_base), f"the best classical baseline's {what}"
    if best_learned is not None:
        return float(best_learned), f"the best learned strategy's mean final {what}"
    if any(
        len(frame) and np.isinf(pd.to_numeric(frame[column], errors="coerce")).any()
        for frame in (data.learned_ok, data.baselines)
        if column in frame
    ):
        return None, f"no finite {what} was recorded (only perfect scores, {what} = ±inf)"
    return None, f"no {what} was recorded"


def time_to_target(data: ReportData, target: float | None) -> pd.DataFrame:
    """Per ok run: training time (sum of step times) at its first evaluation whose primary metric
    reaches ``target`` (>= it, or <= for a lower-is-better metric)."""
    metric = data.primary_metric
    column = f"test_{metric.name}"
    epochs = finite_rows(data.epochs, column)
    rows = []
    for run_id, group in epochs.groupby("run_id"):
        if target is None:
            reached = group.iloc[0:0]
        else:
            reached = group[metric.oriented(group[column]) >= metric.oriented(target)]
        seconds = float(reached["train_time_s"].iloc[0]) if len(reached) else math.nan
        rows.append({"run_id": run_id, "label": group["label"].iloc[0], "time": seconds,
                     "reached": bool(len(reached))})  # fmt: skip
    return pd.DataFrame(rows, columns=["run_id", "label", "time", "reached"])


# ---------------------------------------------------------------------------------------------
# Statistics over seeds


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its two-sided 95 % Student-t interval (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    # values of ±inf left out of the mean (e.g. PSNR = +inf of a perfect reconstruction), and
    # their own mean (+inf, -inf, or NaN when both signs occur)
    infinite: int = 0
    infinite_mean: float = math.nan

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and not math.isnan(self.low)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 if self.has_interval else math.nan

    @property
    def significant(self) -> bool | None:
        """Whether the interval excludes 0 (None: no interval)."""
        return not (self.low <= 0 <= self.high) if self.has_interval else None


def mean_ci(values, confidence: float = CONFIDENCE) -> Estimate:
    """Mean of the finite ``values`` with its Student-t interval (n - 1 degrees of freedom)."""
    values = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    infinite = values[np.isinf(values)]
    inf = {"infinite": len(infinite)}
    if len(infinite):
        inf["infinite_mean"] = float(infinite.mean()) if len(set(infinite)) == 1 else math.nan
    values = _finite(values)
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, **inf)
    mean = float(values.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1, **inf)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * stats.sem(values))
    return Estimate(mean, mean - half, mean + half, n, **inf)


def _finite(values) -> np.ndarray:
    """The finite numbers among ``values`` (text and NaN dropped), as a float array."""
    values = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    return values[np.isfinite(values)]


def welch_difference(values, reference, confidence: float = CONFIDENCE) -> Estimate:
    """Mean of ``values`` minus mean of ``reference``, two independent samples (e.g. runs with
    different seeds), with Welch's t interval (Welch-Satterthwaite degrees of freedom).

    ``n`` is the smaller sample's size: no interval unless both have two finite values. Two
    samples without spread give the difference itself as its interval (as :func:`mean_ci` does
    for values without spread), where Welch's degrees of freedom are undefined.
    """
    a, b = _finite(values), _finite(reference)
    n = min(len(a), len(b))
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    difference = float(a.mean() - b.mean())
    if n == 1:
        return Estimate(difference, math.nan, math.nan, 1)
    var_a, var_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    variance = var_a + var_b
    if variance == 0:
        return Estimate(difference, difference, difference, n)
    dof = variance**2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof) * math.sqrt(variance))
    return Estimate(difference, difference - half, difference + half, n)


def paired_difference(values: pd.Series, reference: pd.Series) -> Estimate:
    """Mean of ``values - reference`` over the seeds (index) both have, with its interval."""
    common = values.dropna().index.intersection(reference.dropna().index)
    return mean_ci(values[common] - reference[common])


def _per_seed(runs: pd.DataFrame, column: str) -> pd.Series:
    """``column`` per seed (mean where a seed repeats)."""
    return runs.dropna(subset=["seed"]).groupby("seed")[column].mean()


def reference_label(data: ReportData) -> str | None:
    """The label paired differences are taken against: ``jfb``, else the first jfb label."""
    strategies = data.learned_ok.groupby("label")["strategy"].first()
    if REFERENCE_STRATEGY in strategies.index:
        return REFERENCE_STRATEGY
    jfb = [label for label in data.labels if strategies.get(label) == REFERENCE_STRATEGY]
    return jfb[0] if jfb else None


def best_baseline(data: ReportData) -> tuple[str, dict[str, float]] | None:
    """The classical baseline best in the primary metric, with its mean of every metric; None
    when no baseline has a value."""
    means = baseline_means(data, data.primary_metric)
    if means.empty:
        return None
    name = best_of(means, data.primary_metric)
    values = {}
    for metric in data.metrics():
        other = baseline_means(data, metric)
        if name in other.index:
            values[metric.name] = float(other[name])
    return name, values


class ComparisonKind(Enum):
    """Which comparison a :class:`Comparison` is (decisions use this; its name and note are text)."""

    VS_REFERENCE = "vs reference"  # a label minus the reference (jfb), paired by seed
    BEST_VS_BASELINE = "best vs baseline"  # the best learned label minus the best baseline


@dataclass
class Comparison:
    """One paired comparison of a setting: ``minuend - subtrahend`` per seed, in each metric
    (``deltas``: metric name -> :class:`Estimate`, the primary metric first)."""

    name: str
    kind: ComparisonKind
    deltas: dict[str, Estimate] = field(default_factory=dict)
    note: str = ""
    minuend: str = ""
    subtrahend: str = ""


def comparisons(data: ReportData, summary: pd.DataFrame) -> list[Comparison]:
    """Each strategy minus ``jfb`` (paired by seed), then the strategy best in the primary metric
    minus the best classical baseline (deterministic: one value, so the interval is the learned
    one's, shifted); each in every metric with values."""
    found = []
    ok = data.learned_ok
    metrics = data.metrics()
    reference = reference_label(data)
    if reference is not None:
        base = ok[ok["label"] == reference]
        for label in summary.index:
            if label == reference or summary.loc[label, "n_ok"] == 0:
                continue
            runs = ok[ok["label"] == label]
            deltas = {
                m.name: paired_difference(
                    _per_seed(runs, f"final_test_{m.name}"), _per_seed(base, f"final_test_{m.name}")
                )
                for m in metrics
            }
            found.append(
                Comparison(
                    f"{label} − {reference}",
                    ComparisonKind.VS_REFERENCE,
                    deltas,
                    "paired by seed",
                    label,
                    reference,
                )
            )
    baseline = best_baseline(data)
    primary = f"final_test_{data.primary}_mean"
    learned = summary[primary].dropna() if len(summary) else pd.Series(dtype=float)
    if baseline is not None and len(learned):
        name, values = baseline
        best = best_of(learned, data.primary_metric)
        runs = ok[ok["label"] == best]
        deltas = {
            m.name: mean_ci(runs[f"final_test_{m.name}"] - values[m.name])
            for m in metrics
            if m.name in values
        }
        found.append(
            Comparison(
                f"best learned ({best}) − best baseline ({name})",
                ComparisonKind.BEST_VS_BASELINE, deltas,
                "baseline fixed: the learned CI, shifted", best, name,
            )
        )  # fmt: skip
    return found


def equal_time_budget(data: ReportData) -> tuple[float | None, pd.DataFrame]:
    """The common training-time budget and each ok run's test value of every metric at it.

    Budget: the smallest over labels of the median over seeds of each run's final evaluation
    time (epochs.csv ``train_time_s``, cumulative training-step time). A run's value at the budget
    is that of its last evaluation at or before it (NaN when its first evaluation came later).
    Columns: run_id, label, seed and one per metric name.
    """
    names = [m.name for m in data.metrics()]
    columns = ["run_id", "label", "seed", *names]
    evaluations = finite_rows(data.epochs, "train_time_s")
    if evaluations.empty:
        return None, pd.DataFrame(columns=columns)
    final = evaluations.groupby("run_id").agg(
        label=("label", "first"), time=("train_time_s", "max")
    )
    budget = float(final.groupby("label")["time"].median().min())
    seeds = data.learned_ok.set_index("run_id")["seed"]
    rows = []
    for run_id, group in evaluations.groupby("run_id"):
        before = group[group["train_time_s"] <= budget].sort_values("train_time_s", kind="stable")
        values = []
        for name in names:
            found = finite_rows(before, f"test_{name}")[f"test_{name}"]
            values.append(found.iloc[-1] if len(found) else math.nan)
        rows.append([run_id, group["label"].iloc[0], seeds.get(run_id, math.nan), *values])
    return budget, pd.DataFrame(rows, columns=columns)


def validity(data: ReportData) -> pd.DataFrame:
    """Per ok learned run: whether its numbers rest on a broken assumption.

    Columns: ``noncontractive`` (a measured ||dT/dx|| >= 1 at some evaluation),
    ``forward_unconverged`` / ``backward_unconverged`` (solves reached the tolerance in fewer than
    95 % of steps), ``reference_unconverged`` (gradient-fidelity evaluations whose reference did
    not converge), ``skipped`` (training steps whose update was skipped), ``measured`` (any of
    these was recorded at all), and the timing flag: ``timing_unreliable`` (the run recorded
    ``timing_reliable`` False: its step times were disturbed, e.g. by other processes), with
    ``timing_note`` saying why; ``timing_recorded`` whether the run recorded the flag at all.
    """
    ok = data.learned_ok
    out = ok[["run_id", "label", "strategy", "seed"]].copy()
    lipschitz = ok["layer_lipschitz_max"]
    forward, backward = ok["forward_converged_frac"], ok["backward_converged_frac"]
    out["lipschitz"] = lipschitz
    out["noncontractive"] = lipschitz >= CONTRACTION_LIMIT
    out["forward_frac"] = forward
    out["forward_unconverged"] = forward < CONVERGED_SHARE
    out["backward_frac"] = backward
    out["backward_unconverged"] = backward < CONVERGED_SHARE
    out["reference_unconverged"] = ok["ref_unconverged"]
    out["reference_evaluations"] = ok["ref_evaluations"]
    out["skipped"] = ok["skipped_steps"].fillna(0)
    out["measured"] = (
        lipschitz.notna() | forward.notna() | backward.notna() | (ok["ref_evaluations"] > 0)
    )
    reliable = ok["timing_reliable"]
    out["timing_recorded"] = reliable.notna()
    # `is False`, not falsy: an empty cell (not recorded) must not read as unreliable.
    out["timing_unreliable"] = reliable.map(lambda v: v is False or v is np.False_)
    out["timing_note"] = ok["timing_note"].map(lambda v: v if isinstance(v, str) else "")
    return out.set_index("run_id")


@dataclass(frozen=True)
class Summary:
    """One setting's summary (:func:`summarize`): the per-label numbers and what goes with them.

    ``frame``: one row per learned strategy label (see :func:`summarize` for its columns);
    ``primary``: the metric the target and rankings use; ``reference``: the label paired
    differences are taken against (None without a jfb run); ``comparisons``: the paired
    comparisons (:func:`comparisons`), computed once for the tables, observations and findings;
    ``budget``: the equal training-time budget in seconds (None without timed evaluations).
    """

    frame: pd.DataFrame
    primary: str
    reference: str | None
    comparisons: tuple[Comparison, ...]
    budget: float | None

    @property
    def finished(self) -> pd.DataFrame:
        """The rows of the labels with at least one ok run."""
        return self.frame[self.frame["n_ok"] > 0]


def summarize(data: ReportData, target: float | None) -> Summary:
    """Numbers per learned strategy label (index of ``Summary.frame``) of one setting, means over
    its ok runs (seeds).

    Per metric ``m`` with values: ``final_test_<m>_mean``/``_std``/``_ci`` (``*_ci`` hold
    :class:`Estimate` objects: mean and 95 % interval over seeds), ``vs_reference_<m>`` the
    paired difference to ``jfb`` and ``budget_<m>`` the value at the equal-time budget
    (``Summary.budget``, seconds). Time to ``target`` is in the primary metric
    (``Summary.primary``).
    """
    learned = data.runs[~data.runs["is_baseline"]]
    ok = data.learned_ok.groupby("label")
    summary = pd.DataFrame(index=pd.Index(data.labels, name="label"))
    summary["strategy"] = learned.groupby("label")["strategy"].first()
    summary["status"] = learned.groupby("label")["status"].apply(status_counts)
    summary["n_ok"] = ok.size().reindex(summary.index).fillna(0).astype(int)
    metrics = data.metrics()
    for column in (f"final_test_{m.name}" for m in metrics):
        summary[column + "_mean"] = ok[column].mean()
        summary[column + "_std"] = ok[column].std()  # sample sd (ddof=1); NaN for one seed
        summary[column + "_ci"] = pd.Series(
            {label: mean_ci(ok.get_group(label)[column]) if label in ok.groups else mean_ci([])
             for label in summary.index}, dtype=object,
        )  # fmt: skip
    phases = step_phase_medians(data)
    summary["step_time"] = phases["step_time_s"]
    summary["certify_time"] = phases["certify_time_s"]
    for column in (
        "train_time_s", "peak_step_bytes", "peak_gpu_memory_bytes", "saved_bytes",
        "peak_rss_bytes", "mean_forward_iters", "forward_converged_frac", "mean_backward_iters",
        "backward_converged_frac", "grad_cosine_first", "grad_cosine_last", "solver_max_iter",
        "layer_lipschitz_max", "skipped_steps", "jacobian_products_per_step",
        "warmup_step_time_s", "step_time_cv", "certify_peak_bytes",
    ):  # fmt: skip
        summary[column] = ok[column].mean()
    # the worst run, not a mean
    for column in (
        "layer_lipschitz_max", "contraction_budget_used", "adjoint_error_last",
        "adjoint_error_bound_last", "max_adjoint_error_bound",
    ):  # fmt: skip
        summary[column] = ok[column].max()
    times = time_to_target(data, target)
    per_label = times.groupby("label")
    summary["target_time"] = per_label["time"].mean()  # over the seeds that reached it
    summary["target_reached"] = per_label["reached"].sum()
    summary["target_runs"] = per_label.size()
    summary[["target_reached", "target_runs"]] = (
        summary[["target_reached", "target_runs"]].fillna(0).astype(int)
    )
    found = comparisons(data, summary)
    paired = {c.minuend: c for c in found if c.kind is ComparisonKind.VS_REFERENCE}
    budget, at_budget = equal_time_budget(data)
    for m in metrics:
        summary[f"vs_reference_{m.name}"] = pd.Series(
            {label: c.deltas[m.name] for label, c in paired.items() if label in summary.index},
            dtype=object,
        )
        summary[f"budget_{m.name}"] = pd.Series(
            {label: mean_ci(at_budget.loc[at_budget["label"] == label, m.name])
             for label in summary.index}, dtype=object,
        )  # fmt: skip
    flags = validity(data)
    by_label = flags.groupby("label")
    for column in (
        "noncontractive", "forward_unconverged", "backward_unconverged", "measured",
        "timing_unreliable", "timing_recorded",
    ):  # fmt: skip
        summary[f"n_{column}"] = by_label[column].sum().reindex(summary.index).fillna(0).astype(int)
    summary["n_reference_unconverged"] = (
        by_label["reference_unconverged"].apply(lambda s: int((s > 0).sum()))
        .reindex(summary.index).fillna(0).astype(int)
    )  # fmt: skip
    summary["n_skipped"] = (
        by_label["skipped"].apply(lambda s: int((s > 0).sum()))
        .reindex(summary.index).fillna(0).astype(int)
    )  # fmt: skip
    summary["grad_first_na"] = _cosine_na(data, "grad_cosine_first")
    summary["grad_last_na"] = _cosine_na(data, "grad_cosine_last")
    return Summary(summary, data.primary, reference_label(data), tuple(found), budget)


def _cosine_na(data: ReportData, column: str) -> pd.Series:
    """Per label: ok runs whose cosine is n/a because the reference did not converge."""
    ok = data.learned_ok
    return (
        (ok[column].isna() & (ok["ref_unconverged"] > 0))
        .groupby(ok["label"]).sum().reindex(data.labels).fillna(0).astype(int)
    )  # fmt: skip
