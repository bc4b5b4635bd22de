"""What the numbers say: the verdict that opens the report (:func:`findings`), and per setting
a list of observations made by small observer functions (:data:`OBSERVERS`).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from bench.metrics import Metric
from bench.report.fmt import (
    fmt_bytes,
    fmt_difference,
    fmt_estimate,
    fmt_interval,
    fmt_seconds,
    fmt_value,
    status_counts,
)
from bench.report.model import (
    ReportData,
    memory_column,
    scaling_rows,
    scaling_variables,
)
from bench.report.stats import (
    ComparisonKind,
    Summary,
    baseline_means,
    best_of,
    validity,
)

NONCONTRACTIVE_MEANING = {
    "jfb": "JFB's descent guarantee needs ||dT/dx|| < 1, so its update is not guaranteed to be a "
    "descent direction",
    "cg": "the implicit-function gradient assumes ||dT/dx|| < 1 (I - dT/dx invertible), so its "
    "gradients are not the exact gradient",
    "torchdeq-ift": "the implicit-function gradient assumes ||dT/dx|| < 1 (I - dT/dx invertible), "
    "so its gradients are not the exact gradient",
    "neumann": "the Neumann series assumes ||dT/dx|| < 1, so it does not converge to the implicit "
    "gradient and its gradients are not the exact gradient",
    "phantom": "the phantom gradient approximates the implicit gradient, which assumes "
    "||dT/dx|| < 1, so its gradients approximate nothing well-defined",
    "unrolled": "unrolled iterations of a non-contractive layer need not approach a fixed point, "
    "so the model is not a well-defined equilibrium model",
}
NONCONTRACTIVE_DEFAULT = (
    "every strategy assumes a contraction (a unique fixed point), so its numbers are for a layer "
    "that is not one"
)
# What unconverged solves of each side mean for the numbers.
UNCONVERGED_MEANING = {
    "forward": "An unconverged forward solve means the loss is not evaluated at the fixed point, "
    "so these numbers are for an approximate equilibrium.",
    "backward": "Its gradients are then not the implicit gradient to the stated tolerance.",
}
# Below this fraction of converged forward solves, or with mean iterations this close to
# max_iter, the solver is reported as stopped by its iteration cap rather than its tolerance.
CAP_CONVERGED_FRACTION = 0.05
CAP_ITERATION_FRACTION = 0.95

# ---------------------------------------------------------------------------------------------
# Observers: each takes (data, summary, target) of one setting and returns sentences


def observe_best_quality(data: ReportData, summary: Summary, target) -> list[str]:
    """Per metric (the primary first): the best final value, against the best baseline and the
    naive reconstruction; then the paired differences and learned vs baseline."""
    ok = summary.finished
    found = []
    for metric in data.metrics():
        values = ok[f"final_test_{metric.name}_mean"].dropna()
        baselines = baseline_means(data, metric)
        value = data.naive_metrics.get(metric.name)
        naive = f"{data.naive_name}: {metric.format(value, unit=True)}" if value is not None else ""
        if len(values):
            best = best_of(values, metric)
            text = (
                f"Best final test {metric.label}: {best} with "
                f"{metric.format(values[best], unit=True)} (mean over {ok.loc[best, 'n_ok']} "
                "seed(s))"
            )
            if len(baselines):
                name = best_of(baselines, metric)
                difference = metric.format(values[best] - baselines[name], signed=True, unit=True)
                text += (
                    f"; best classical baseline {name}: "
                    f"{metric.format(baselines[name], unit=True)} ({difference})"
                )
            found.append(text + (f"; {naive}" if naive else "") + ".")
        elif len(baselines) and metric.name == data.primary:  # no learned run finished yet
            name = best_of(baselines, metric)
            text = (
                f"Best classical baseline: {name} with {metric.format(baselines[name], unit=True)}"
            )
            return [text + (f" ({naive})" if naive else "") + "; no learned run finished ok."]
    return found + _statistics_observations(data, summary) if found else []


def observe_time_to_target(data: ReportData, summary: Summary, target) -> list[str]:
    """Who reaches the target (in the primary metric) first, who only in some seeds, who never."""
    if target is None:
        return []
    goal = data.primary_metric.format(target, unit=True)
    found = []
    ok = summary.finished
    everyone = ok[(ok["target_runs"] > 0) & (ok["target_reached"] == ok["target_runs"])]
    ranking = everyone["target_time"].sort_values()
    partly = ok[(ok["target_reached"] > 0) & (ok["target_reached"] < ok["target_runs"])]
    never = ok[(ok["target_runs"] > 0) & (ok["target_reached"] == 0)]
    if len(ranking):
        first = ranking.index[0]
        text = f"{first} reached {goal} first ({ranking.iloc[0]:.3g} s"
        text += ", mean over seeds)" if everyone.loc[first, "target_runs"] > 1 else ")"
        if len(ranking) > 1:
            text += "; then " + ", ".join(f"{lab} ({t:.3g} s)" for lab, t in ranking[1:].items())
        found.append(text + ".")
    for label, row in partly.iterrows():
        found.append(
            f"{label} reached {goal} in only {row['target_reached']} of "
            f"{row['target_runs']} seeds ({row['target_time']:.3g} s for those)."
        )
    if len(never):
        found.append(f"Never reached {goal}: {', '.join(never.index)}.")
    return found


def observe_step_cost(data: ReportData, summary: Summary, target) -> list[str]:
    """The cheapest training step, and how much slower the most expensive one is."""
    times = summary.finished["step_time"].dropna()
    if len(times) < 2:
        return []
    fastest, slowest = times.idxmin(), times.idxmax()
    return [
        f"Cheapest training step: {fastest} ({times[fastest]:.3g} s median); {slowest} is "
        f"{times[slowest] / times[fastest]:.1f}× slower per step ({times[slowest]:.3g} s)."
    ]


def observe_equal_time(data: ReportData, summary: Summary, target) -> list[str]:
    ok = summary.finished
    return _equal_time_observations(ok, summary.budget, data.primary_metric)


def observe_validity(data: ReportData, summary: Summary, target) -> list[str]:
    return _validity_observations(data)


def observe_timing(data: ReportData, summary: Summary, target) -> list[str]:
    """Runs whose step times were disturbed (issue 11 §2): their times are not comparable."""
    flags = validity(data)
    bad = flags[flags["timing_unreliable"]]
    if len(bad):
        return [
            f"⚠ Unreliable timing in {len(bad)} of {len(flags)} run(s): "
            + "; ".join(
                f"`{run_id}` ({row['label']}: {row['timing_note'] or 'no reason recorded'})"
                for run_id, row in bad.iterrows()
            )
            + ". Their step times, training times and time to target are not comparable with "
            "the others'."
        ]
    if len(flags) and not flags["timing_recorded"].any():
        return [
            "Timing reliability was not recorded (results older than the `timing_reliable` "
            "column): step times may include interference from other processes."
        ]
    return []


def observe_memory(data: ReportData, summary: Summary, target) -> list[str]:
    return _memory_observations(summary.finished)


def observe_convergence(data: ReportData, summary: Summary, target) -> list[str]:
    return _convergence_observations(summary.finished) + _own_forward_observations(data)


def _own_forward_observations(data: ReportData) -> list[str]:
    """Strategies whose forward solve was not the suite's (shine runs its own Broyden)."""
    if "shine_forward_differs" not in data.steps:
        return []
    fractions = data.steps.groupby("label")["shine_forward_differs"].mean().dropna()
    solver = data.runs["solver"].dropna().unique() if "solver" in data.runs else []
    suite = f" ({', '.join(map(str, solver))})" if len(solver) else ""
    return [
        f"{label} ran its own Broyden forward solve, not the suite's solver{suite}, in "
        f"{fraction:.0%} of steps: its forward iterations and residuals are not the suite "
        "solver's."
        for label, fraction in fractions.items()
        if fraction > 0
    ]


def observe_gradient_fidelity(data: ReportData, summary: Summary, target) -> list[str]:
    """The gradient's cosine to the exact implicit gradient, and any that fell during training."""
    ok = summary.finished
    cosine = ok["grad_cosine_last"].dropna()
    if not len(cosine):
        return []
    low, high = cosine.idxmin(), cosine.idxmax()
    text = (
        "Gradient cosine to the exact implicit gradient at the last evaluation: "
        f"{high} {cosine[high]:.3f}"
    )
    if len(cosine) > 1:
        text += f" (highest), {low} {cosine[low]:.3f} (lowest)"
    found = [text + "."]
    drift = (ok["grad_cosine_first"] - ok["grad_cosine_last"]).dropna()
    for label in drift[drift > 0.1].index:
        found.append(
            f"{label}'s gradient cosine fell from {ok.loc[label, 'grad_cosine_first']:.3f} "
            f"to {cosine[label]:.3f} during training."
        )
    return found


def observe_failures(data: ReportData, summary: Summary, target) -> list[str]:
    bad = data.runs[data.runs["status"] != "ok"]
    if not len(bad):
        return []
    return [
        f"{len(bad)} run(s) did not finish ok ({status_counts(bad['status'])}): "
        + "; ".join(
            f"{r['run_id']} ({r['status']}: {fmt_value(r['status_reason'])})"
            for _, r in bad.head(5).iterrows()
        )
        + ("; …" if len(bad) > 5 else "")
        + " — see Partial results."
    ]


# The observations of a setting, in this order (most important first). Adding one is one
# function and one entry, like the figures' plot specs.
OBSERVERS: tuple[Callable[[ReportData, Summary, float | None], list[str]], ...] = (
    observe_best_quality,
    observe_time_to_target,
    observe_step_cost,
    observe_equal_time,
    observe_validity,
    observe_timing,
    observe_memory,
    observe_convergence,
    observe_gradient_fidelity,
    observe_failures,
)


def observations(data: ReportData, summary: Summary, target: float | None) -> list[str]:
    """Short findings computed from the numbers of one setting, most important first."""
    return [text for observer in OBSERVERS for text in observer(data, summary, target)]


def _statistics_observations(data: ReportData, summary: Summary) -> list[str]:
    """Per metric, the paired differences to jfb; in the primary metric, the best learned strategy
    against the best baseline."""
    found = []
    found_comparisons = summary.comparisons
    reference = summary.reference
    paired = [c for c in found_comparisons if c.kind is ComparisonKind.VS_REFERENCE]
    for metric in data.metrics():
        unit = f" {metric.unit}" if metric.unit else ""
        shown = [c for c in paired if metric.name in c.deltas]
        if shown:
            found.append(
                f"Final test {metric.label} minus {reference}'s, paired by seed (mean, 95% CI): "
                + "; ".join(
                    f"{c.minuend} {fmt_difference(c.deltas[metric.name], metric.decimals, unit)}"
                    for c in shown
                )
                + "."
            )
    metric = data.primary_metric
    for c in found_comparisons:
        delta = c.deltas.get(metric.name)
        if c.kind is not ComparisonKind.BEST_VS_BASELINE or delta is None:
            continue
        text = f"{c.name[0].upper()}{c.name[1:]}: {metric.format(delta.mean, True, True)}"
        if delta.has_interval:
            text += f", 95% CI {fmt_interval(delta, metric.decimals)} over {delta.n} seeds"
            text += "" if delta.significant else " — no significant difference"
            text += (
                " (the baseline is deterministic: the interval is the learned strategy's, shifted)"
            )
        else:
            text += " from one seed: no confidence interval available"
        found.append(text + ".")
    return found


def _equal_time_observations(ok: pd.DataFrame, budget: float | None, metric: Metric) -> list[str]:
    if budget is None:
        return []
    column = f"budget_{metric.name}"
    values = {label: estimate for label, estimate in ok[column].items() if estimate.n > 0}
    if not values:
        return [f"At the equal training-time budget of {fmt_seconds(budget)} no strategy had an "
                "evaluation yet."]  # fmt: skip
    best = max(values, key=lambda label: metric.oriented(values[label].mean))
    late = [label for label, e in ok[column].items() if e.n == 0]
    unit = f" {metric.unit}" if metric.unit else ""
    return [
        f"At an equal training-time budget of {fmt_seconds(budget)} (the smallest median "
        f"training time of any strategy), test {metric.label}: "
        + ", ".join(f"{label} {fmt_estimate(e, metric.decimals)}{unit}"
                    for label, e in values.items())
        + f"; best: {best}"
        + (f"; no evaluation by then: {', '.join(late)}" if late else "")
        + "."
    ]  # fmt: skip


def _runs_text(flags: pd.DataFrame, column: str | None = None, pattern: str = "") -> str:
    names = []
    for run_id, row in flags.iterrows():
        names.append(f"`{run_id}`" + (f" ({pattern.format(row[column])})" if column else ""))
    return ", ".join(names)


def _validity_observations(data: ReportData) -> list[str]:
    """Runs whose numbers rest on a broken assumption, named, with what that means."""
    found = []
    flags = validity(data)
    for label in data.labels:
        runs = flags[flags["label"] == label]
        if runs.empty:
            continue
        n, strategy = len(runs), runs["strategy"].iloc[0]
        bad = runs[runs["noncontractive"]]
        if len(bad):
            meaning = NONCONTRACTIVE_MEANING.get(strategy, NONCONTRACTIVE_DEFAULT)
            found.append(
                f"⚠ {label}: the layer was not a contraction (||dT/dx|| >= 1) at some evaluation "
                f"in {len(bad)} of {n} run(s): {_runs_text(bad, 'lipschitz', 'max {:.3f}')}. "
                f"{meaning[0].upper()}{meaning[1:]}."
            )
        for side, meaning in UNCONVERGED_MEANING.items():
            bad = runs[runs[f"{side}_unconverged"]]
            if len(bad):
                found.append(
                    f"⚠ {label}: {side} solves reached the tolerance in fewer than 95% of steps "
                    f"in {len(bad)} of {n} run(s): {_runs_text(bad, f'{side}_frac', '{:.0%}')}. "
                    + meaning
                )
        bad = runs[runs["reference_unconverged"] > 0]
        if len(bad):
            found.append(
                f"⚠ {label}: the gradient-fidelity reference did not converge at "
                f"{int(bad['reference_unconverged'].sum())} evaluation(s) of {len(bad)} run(s): "
                f"{_runs_text(bad, 'reference_unconverged', '{} unconverged')}. Those cosines "
                "are n/a (a cosine against an unconverged reference measures nothing)."
            )
    lipschitz = flags["lipschitz"].dropna()
    if len(lipschitz) and len(lipschitz) == len(flags) and not flags["noncontractive"].any():
        found.append(
            "Every run's layer was a contraction at every measured evaluation "
            f"(largest ||dT/dx|| {lipschitz.max():.3f})."
        )
    return found


def _memory_observations(ok: pd.DataFrame) -> list[str]:
    found = []
    for column, noun in (("peak_step_bytes", "the peak tensor memory of a training step"),
                         ("saved_bytes", "the bytes saved for backward"),
                         ("peak_gpu_memory_bytes", "the peak GPU memory")):  # fmt: skip
        values = ok[column].dropna()
        values = values[values > 0]
        if len(values) < 2:
            continue
        jfb = values[ok.loc[values.index, "strategy"] == "jfb"]
        reference = jfb.idxmin() if len(jfb) else values.idxmin()
        ratios = (values / values[reference]).drop(reference).sort_values(ascending=False)
        big = ratios[ratios >= 1.5]
        small = ratios[ratios <= 1 / 1.5]
        verb = "saves" if column == "saved_bytes" else "needs"
        object_ = "the bytes" if column == "saved_bytes" else noun
        detail = " for backward" if column == "saved_bytes" else ""
        for label, ratio in big.head(4).items():
            found.append(
                f"{label} {verb} {ratio:.1f}× {object_} of {reference} "
                f"({fmt_bytes(values[label])} vs {fmt_bytes(values[reference])}{detail})."
            )
        for label, ratio in small.sort_values().head(4).items():
            found.append(
                f"{label} {verb} {1 / ratio:.1f}× less than {reference} in "
                f"{noun.removeprefix('the ')} ({fmt_bytes(values[label])} vs "
                f"{fmt_bytes(values[reference])}{detail})."
            )
        if len(ratios) and not len(big) and not len(small):
            found.append(f"All strategies need within 1.5× {noun} of {reference}.")
    return found


def _convergence_observations(ok: pd.DataFrame) -> list[str]:
    found = []
    fractions = ok["forward_converged_frac"].dropna()
    for label, fraction in fractions.items():
        if fraction >= 1.0:
            continue
        iters, cap = ok.loc[label, "mean_forward_iters"], ok.loc[label, "solver_max_iter"]
        text = f"Forward solve converged in {fraction:.0%} of steps for {label}"
        at_cap = fraction <= CAP_CONVERGED_FRACTION or (
            pd.notna(iters) and pd.notna(cap) and iters >= CAP_ITERATION_FRACTION * cap
        )
        if at_cap:
            text += ": the solver hit its iteration cap"
            if pd.notna(cap):
                text += f" (max_iter={fmt_value(cap)}"
                text += f", mean {iters:.1f} iterations)" if pd.notna(iters) else ")"
            text += ", so its fixed point is not reached to tolerance"
        found.append(text + ".")
    if len(fractions) and (fractions >= 1.0).all():
        found.append(
            "Every forward solve converged to tolerance (strategies that record convergence: "
            + ", ".join(fractions.index)
            + ")."
        )
    return found


def scaling_observations(data: ReportData) -> list[str]:
    """How memory grows with each scaling knob the runs vary, per strategy (across settings)."""
    found = []
    for variable in scaling_variables(data):
        rows = scaling_rows(data, variable)
        column, memory_name = memory_column(rows)
        name = variable.name
        for strategy, group in rows.groupby("strategy"):
            means = group.dropna(subset=[column]).groupby(variable.column)[column].mean()
            if len(means) >= 2 and means.iloc[0] > 0:
                lo, hi = means.index.min(), means.index.max()
                found.append(
                    f"{strategy}: {memory_name}"
                    f" ×{means[hi] / means[lo]:.2f} from {name}={fmt_value(lo)} to "
                    f"{name}={fmt_value(hi)} ({fmt_bytes(means[lo])} → {fmt_bytes(means[hi])})."
                )
    return found


# ---------------------------------------------------------------------------------------------
# The verdict that opens the report


def _names(run_ids, limit: int = 3) -> str:
    run_ids = list(run_ids)
    shown = ", ".join(f"`{r}`" for r in run_ids[:limit])
    return shown + (f" and {len(run_ids) - limit} more" if len(run_ids) > limit else "")


def setting_findings(data: ReportData, summary: Summary) -> list[str]:
    """The verdict on one setting: best at equal training time (with its interval), fastest per
    step, least memory, and the best learned strategy against the best baseline."""
    found = []
    ok = summary.finished
    metric = data.primary_metric
    unit = f" {metric.unit}" if metric.unit else ""
    budget = summary.budget
    at_budget = {
        label: e for label, e in ok[f"budget_{metric.name}"].items() if e.n > 0 and e.mean == e.mean
    }
    if budget is not None and at_budget:
        ranked = sorted(at_budget, key=lambda label: -metric.oriented(at_budget[label].mean))
        best = ranked[0]
        text = (
            f"**Best at equal training time** ({fmt_seconds(budget)} of training): **{best}**, "
            f"{metric.label} {fmt_estimate(at_budget[best], metric.decimals)}{unit} (mean ± 95% CI "
            f"over {at_budget[best].n} seed(s))"
        )
        if len(ranked) > 1:
            runner_up = ranked[1]
            text += (
                f"; next {runner_up} {fmt_estimate(at_budget[runner_up], metric.decimals)}{unit}"
            )
        found.append(text + ".")
    elif len(ok):
        found.append(
            "**Best at equal training time**: not available (no evaluation recorded its "
            "training time)."
        )
    times = ok["step_time"].dropna()
    if len(times):
        fastest = times.idxmin()
        text = f"**Fastest per step**: **{fastest}**, {fmt_seconds(times[fastest])} median step"
        if len(times) > 1:
            slowest = times.idxmax()
            text += (
                f" ({slowest} {times[slowest] / times[fastest]:.1f}× slower, "
                f"{fmt_seconds(times[slowest])})"
            )
        unreliable = ok.loc[fastest, "n_timing_unreliable"]
        if unreliable:
            text += f" — ⚠ timing unreliable in {unreliable} of its {ok.loc[fastest, 'n_ok']} runs"
        found.append(text + ".")
    column, memory_name = memory_column(data.learned_ok)
    memory = ok[column].dropna() if column in ok.columns else pd.Series(dtype=float)
    memory = memory[memory > 0]
    if len(memory):
        least = memory.idxmin()
        text = f"**Least memory**: **{least}**, {fmt_bytes(memory[least])} {memory_name}"
        if len(memory) > 1:
            most = memory.idxmax()
            text += f" (most: {most}, {fmt_bytes(memory[most])})"
        found.append(text + ".")
    return found + [
        f"**Best learned vs best baseline**: {c.minuend} − {c.subtrahend} = "
        f"{fmt_difference(c.deltas[metric.name], metric.decimals, unit)} in final test "
        f"{metric.label}."
        for c in summary.comparisons
        if c.kind is ComparisonKind.BEST_VS_BASELINE and metric.name in c.deltas
    ]


def assumption_findings(data: ReportData) -> list[str]:
    """Runs whose numbers rest on a failed assumption, named: a non-contractive layer,
    unconverged forward or backward solves, an unconverged gradient-fidelity reference, an
    unreliable timing. Or that none failed (and what was not recorded)."""
    flags = validity(data)
    if flags.empty:
        return []
    problems = []
    for column, what in (
        ("noncontractive", "layer not a contraction (||dT/dx|| ≥ 1)"),
        ("forward_unconverged", "forward solves converged in < 95% of steps"),
        ("backward_unconverged", "backward solves converged in < 95% of steps"),
    ):
        bad = flags.index[flags[column].fillna(False).astype(bool)]
        if len(bad):
            problems.append(f"{what}: {_names(bad)}")
    bad = flags.index[flags["reference_unconverged"] > 0]
    if len(bad):
        problems.append(f"gradient-fidelity reference unconverged: {_names(bad)}")
    bad = flags[flags["timing_unreliable"]]
    if len(bad):
        notes = sorted({note for note in bad["timing_note"] if note})
        problems.append(
            f"unreliable timing: {_names(bad.index)}"
            + (f" ({'; '.join(notes[:2])})" if notes else "")
        )
    if problems:
        return [
            f"⚠ **Failed assumptions** in {len(flags)} ok run(s): "
            + "; ".join(problems)
            + " (details under Observations)."
        ]
    checked, unrecorded = [], []
    for recorded, what in (
        (flags["measured"].any(), "contraction and convergence"),
        (flags["timing_recorded"].any(), "timing reliability"),
    ):
        (checked if recorded else unrecorded).append(what)
    text = "**Assumptions**: "
    if checked:
        text += f"none failed ({' and '.join(checked)} checked in every ok run that records them)"
    if unrecorded:
        text += "; " if checked else ""
        text += f"not recorded in these results: {', '.join(unrecorded)}"
    return [text + "."]
