"""The comparison report of one results folder: ``report.md``, ``report.html`` and the figures.

:func:`build_report` reads the tidy tables written by the runner (see :mod:`bench.results`),
checks that they are this tool's tables (a foreign table is a ValueError naming the file), splits
the runs into settings (runs whose configuration differs only by seed and strategy; see
:func:`setting_keys`) and summarises every strategy label of each setting separately: final quality
over seeds with 95 % Student-t confidence intervals, the paired difference to ``jfb``, the best
learned strategy against the best classical baseline, PSNR at a common training-time budget, cost,
memory (the exact peak of live tensor bytes in a training step first), convergence, gradient
fidelity, time to a target PSNR, and flags for runs whose numbers rest on a broken assumption (a
layer that is not a contraction, unconverged forward or backward solves, an unconverged
gradient-fidelity reference). It draws the figures of :mod:`bench.plots` as PNG and SVG, derives
short observations from the numbers, and lists what is missing or did not finish instead of
failing on partial results.

Seeds are the only thing ever pooled: two runs of one strategy with different settings (a sweep
over ``noise_std``, two suites written into one folder, the ``scaling`` suite) are reported in
separate per-setting tables. Figures other than the scaling figures show the first setting only
when there are several (said in their captions).

The default target PSNR (for "time to reach a quality") is, per setting, the best classical
baseline's PSNR when at least one learned strategy reaches it on average, else the midpoint between
the blurred input's PSNR and the best learned strategy's mean final PSNR; ``target_psnr=`` overrides
it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench import plots
from bench.plots import PlotResult, ReportData, natural_key
from bench.results import COLUMNS, TEXT_COLUMNS, atomic_write_bytes

# runs.csv columns that hold text; every other known column is coerced to numbers.
TEXT_RUN_COLUMNS = {
    "run_id", "suite", "strategy", "strategy_label", "params", "status", "status_reason",
    "dataset", "solver", "device", "device_name", "torch_version", "torchdeq_version",
    "git_commit", "config_hash", "setting_hash", "model_form", "lipschitz_control", "lr_schedule",
}  # fmt: skip
# Columns of the newer schema (bench/results.py may or may not declare them yet): read when
# present; an older table lacking them is reported as "not measured", never an error.
NEW_COLUMNS = {
    "runs": (
        "setting_hash", "model_form", "lipschitz_control", "lr_schedule", "model_lipschitz",
        "certified_lipschitz_bound", "max_layer_lipschitz",
        "backward_converged_frac", "skipped_steps", "peak_step_bytes", "eval_time_s",
        "diagnostics_time_s", "run_wall_time_s",
    ),
    "epochs": (
        "step", "epoch_end", "layer_lipschitz", "layer_lipschitz_converged",
        "grad_reference_converged", "grad_reference_forward_residual",
        "grad_reference_backward_residual",
    ),
    "steps": ("backward_converged", "skipped"),
}  # fmt: skip
# A table without these columns is not one of this tool's tables (schema check on loading).
REQUIRED_COLUMNS = {
    "runs": ("run_id", "strategy", "status"),
    "epochs": ("run_id", "epoch"),
    "steps": ("run_id", "step"),
}
# ... nor one holding fewer than this share of its declared columns.
MIN_KNOWN_COLUMN_SHARE = 0.5
TABLE_TEXT_COLUMNS = {
    "runs": TEXT_RUN_COLUMNS | set(TEXT_COLUMNS),
    "epochs": {"run_id", "strategy"},
    "steps": {"run_id", "strategy"},
}
# What makes two runs "the same configuration" in results folders written before runs.csv had
# `setting_hash` (seed, strategy, suite name and device excluded, as in the hash).
SETTING_COLUMNS = (
    "dataset", "image_size", "channels", "n_train", "batch_size", "epochs", "lr",
    "blur_kernel_size", "blur_sigma", "noise_std", "solver", "solver_max_iter", "solver_tol",
    "model_width", "model_depth", "model_form", "lipschitz_control", "lr_schedule",
    "model_lipschitz",
)  # fmt: skip
# Classical baselines depend on the data and the blur only: they belong to every setting that
# shares these (e.g. all points of a sweep over the solver's max_iter).
DATA_COLUMNS = (
    "dataset", "image_size", "channels", "n_train", "n_test", "blur_kernel_size", "blur_sigma",
    "noise_std",
)  # fmt: skip
BASELINE_PREFIX = "baseline:"
REFERENCE_STRATEGY = "jfb"  # paired differences are taken against it
CONFIDENCE = 0.95
# Validity thresholds: a layer is a contraction below 1; solves count as converging when at least
# this share of steps reached the tolerance.
CONTRACTION_LIMIT = 1.0
CONVERGED_SHARE = 0.95
# Known strategies first (in the order the project introduces them), others alphabetically.
STRATEGY_ORDER = ("jfb", "cg", "neumann", "unrolled")
# What a non-contractive layer means for each strategy's numbers.
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
SETUP_FIELDS = (
    ("suite", "suite"), ("dataset", "data set"), ("image_size", "image size (pixels)"),
    ("channels", "channels"), ("n_train", "training images"), ("n_test", "test images"),
    ("batch_size", "batch size"), ("epochs", "epochs"), ("lr", "learning rate"),
    ("lr_schedule", "learning-rate schedule"),
    ("blur_kernel_size", "blur kernel size"), ("blur_sigma", "blur sigma"),
    ("noise_std", "noise std"), ("model_width", "model width"), ("model_depth", "model depth"),
    ("model_form", "model form"), ("lipschitz_control", "Lipschitz control"),
    ("model_lipschitz", "model Lipschitz target"),
    ("certified_lipschitz_bound", "certified ||dT/dx|| bound"),
    ("solver", "forward solver"), ("solver_max_iter", "solver max_iter"),
    ("solver_tol", "solver tol"), ("device", "device"), ("device_name", "device name"),
    ("torch_version", "torch"), ("torchdeq_version", "torchdeq"), ("git_commit", "git commit"),
    ("config_hash", "config hash"),
)  # fmt: skip
# Below this fraction of converged forward solves, or with mean iterations this close to
# max_iter, the solver is reported as stopped by its iteration cap rather than its tolerance.
CAP_CONVERGED_FRACTION = 0.05
CAP_ITERATION_FRACTION = 0.95
DASH = "—"


# ---------------------------------------------------------------------------------------------
# Loading, schema checks and cleaning


def _declared_columns(name: str) -> list[str]:
    return list(dict.fromkeys([*COLUMNS[name], *NEW_COLUMNS[name]]))


def _preview(names, limit: int = 6) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def check_schema(frame: pd.DataFrame, name: str, path: Path) -> None:
    """Raise ValueError, one line naming ``path``, unless ``frame`` is this tool's ``name`` table.

    The table must have its identifier columns (:data:`REQUIRED_COLUMNS`), at least half of the
    columns :mod:`bench.results` declares for it, and numbers (or nothing) in every declared
    numeric column it has. An older table lacking some newer columns passes.
    """
    what = f"{path} is not an implicit-bench {name} table"
    missing = [c for c in REQUIRED_COLUMNS[name] if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what}: it lacks the required column(s) {', '.join(missing)} "
            f"(its columns: {_preview(frame.columns) or 'none'})"
        )
    declared = list(COLUMNS[name])
    present = [c for c in declared if c in frame.columns]
    if len(present) < MIN_KNOWN_COLUMN_SHARE * len(declared):
        raise ValueError(
            f"{what}: it has only {len(present)} of the {len(declared)} expected columns "
            f"(missing: {_preview([c for c in declared if c not in frame.columns])})"
        )
    for column in _declared_columns(name):
        if column in TABLE_TEXT_COLUMNS[name] or column not in frame.columns:
            continue
        raw = frame[column]
        converted = pd.to_numeric(raw, errors="coerce")
        bad = raw[converted.isna() & raw.notna() & (raw.astype(str).str.strip() != "")]
        if len(bad):
            raise ValueError(
                f"{what}: column {column!r} holds a non-number ({str(bad.iloc[0])[:40]!r} on line "
                f"{bad.index[0] + 2})"
            )


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _read_table(results_dir: Path, name: str, notes: list[str]) -> pd.DataFrame:
    """One table as a DataFrame with at least its declared columns (empty when absent).

    Raises ValueError when runs.csv is missing or unreadable, or when any table is present but is
    not this tool's (see :func:`check_schema`).
    """
    path = results_dir / f"{name}.csv"
    columns = _declared_columns(name)
    if not path.exists():
        if name == "runs":
            raise ValueError(
                f"no results at {str(results_dir)!r}: expected {path} (run a suite first, "
                "e.g. `implicit-bench run quick`)"
            )
        notes.append(f"`{name}.csv` is missing")
        return pd.DataFrame(columns=columns)
    # Not results.read_table: the report also reads the newer text columns (setting_hash, ...)
    # as text, whether or not bench.results declares them yet.
    text = {*TEXT_COLUMNS, *TABLE_TEXT_COLUMNS[name]}
    try:
        frame = pd.read_csv(path, dtype=dict.fromkeys(text, str))
    except (ValueError, OSError) as error:  # pandas' parse errors are ValueErrors
        if name == "runs":
            raise ValueError(f"cannot read {path}: {_one_line(error)}") from error
        notes.append(f"`{name}.csv` cannot be read ({_one_line(error)}); treated as empty")
        return pd.DataFrame(columns=columns)
    check_schema(frame, name, path)
    # The newer columns are named apart (whether or not bench.results declares them by now): an
    # older table lacking them is expected, a table lacking older ones is damaged.
    absent = [c for c in COLUMNS[name] if c not in frame.columns and c not in NEW_COLUMNS[name]]
    if absent:
        notes.append(f"`{name}.csv` lacks columns {', '.join(absent)} (treated as not measured)")
    newer = [c for c in NEW_COLUMNS[name] if c not in frame.columns]
    if newer:
        notes.append(
            f"`{name}.csv` was written before the columns {', '.join(newer)} existed: those "
            "measurements are not reported"
        )
    return frame.assign(**{c: np.nan for c in absent + newer})


def _numeric(frame: pd.DataFrame, text_columns: set[str]) -> pd.DataFrame:
    frame = frame.copy()
    for column in frame.columns:
        if column in text_columns:
            continue
        converted = pd.to_numeric(frame[column], errors="coerce")
        # p_<param> columns may legitimately hold text (e.g. a solver name): keep those as text.
        if column.startswith("p_") and converted.isna().sum() > frame[column].isna().sum():
            continue
        frame[column] = converted
    return frame


def _strategy_sort_key(label: str, strategy: str) -> tuple:
    rank = STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)
    return (rank, natural_key(strategy), natural_key(label))


def _fill_from(runs: pd.DataFrame, column: str, per_run: pd.Series) -> None:
    """Fill NaN cells of ``runs[column]`` from a run_id-indexed series (in place)."""
    runs[column] = runs[column].fillna(runs["run_id"].map(per_run))


def _complete_from_tables(runs: pd.DataFrame, epochs: pd.DataFrame, steps: pd.DataFrame) -> None:
    """Derive summary columns a runs row lacks from its epochs / steps rows (in place)."""
    if len(epochs):
        last = epochs.groupby("run_id").last()  # last non-NaN value per column (rows in order)
        for run_col, epoch_col in (
            ("final_train_loss", "train_loss"), ("final_test_psnr", "test_psnr"),
            ("final_test_ssim", "test_ssim"), ("total_wall_time_s", "wall_time_s"),
            ("blurred_test_psnr", "blurred_test_psnr"), ("blurred_test_ssim", "blurred_test_ssim"),
        ):  # fmt: skip
            _fill_from(runs, run_col, last[epoch_col])
        cosines = epochs.dropna(subset=["grad_cosine"]).groupby("run_id")["grad_cosine"]
        _fill_from(runs, "grad_cosine_first", cosines.first())
        _fill_from(runs, "grad_cosine_last", cosines.last()[cosines.count() >= 2])
    if len(steps):
        by_run = steps.groupby("run_id")
        for run_col, step_col in (
            ("median_step_time_s", "step_time_s"), ("median_forward_time_s", "forward_time_s"),
            ("median_backward_time_s", "backward_time_s"),
            ("median_optimizer_time_s", "optimizer_time_s"),
        ):  # fmt: skip
            _fill_from(runs, run_col, by_run[step_col].median())
        _fill_from(runs, "mean_forward_iters", by_run["forward_iters"].mean())
        _fill_from(runs, "forward_converged_frac", by_run["forward_converged"].mean())
        _fill_from(runs, "mean_backward_iters", by_run["backward_iters"].mean())
        _fill_from(runs, "backward_converged_frac", by_run["backward_converged"].mean())


def _drop_unconverged_cosines(epochs: pd.DataFrame) -> None:
    """A cosine against a reference that did not converge is no measurement: NaN it (in place)."""
    unconverged = epochs["grad_reference_converged"] == 0
    epochs.loc[unconverged, "grad_cosine"] = np.nan


def _validity_columns(runs: pd.DataFrame, epochs: pd.DataFrame) -> None:
    """Per run: the largest measured ||dT/dx|| and the gradient-reference counts (in place).

    ``layer_lipschitz_max`` is the max of runs.csv ``max_layer_lipschitz`` and
    ``lipschitz_estimate`` and of the run's epochs.csv ``layer_lipschitz``; ``ref_evaluations`` /
    ``ref_unconverged`` count the gradient-fidelity evaluations and those whose reference did not
    converge. The first / last cosine of a run whose first / last reference did not converge
    becomes NaN: it is never shown as a number.
    """
    lipschitz = runs[["max_layer_lipschitz", "lipschitz_estimate"]].max(axis=1)
    per_run = epochs.groupby("run_id")["layer_lipschitz"].max()
    runs["layer_lipschitz_max"] = pd.concat([lipschitz, runs["run_id"].map(per_run)], axis=1).max(
        axis=1
    )
    evaluated = epochs[epochs["grad_reference_converged"].notna()]
    by_run = evaluated.groupby("run_id")["grad_reference_converged"]
    runs["ref_evaluations"] = runs["run_id"].map(by_run.size()).fillna(0).astype(int)
    unconverged = by_run.apply(lambda s: int((s == 0).sum()))
    runs["ref_unconverged"] = runs["run_id"].map(unconverged).fillna(0).astype(int)
    for column, which in (
        ("grad_cosine_first", by_run.first()),
        ("grad_cosine_last", by_run.last()),
    ):
        bad = runs["run_id"].isin(which.index[which == 0])
        runs.loc[bad, column] = np.nan


def _sort_evaluations(epochs: pd.DataFrame) -> pd.DataFrame:
    """Evaluations in training order: by run, epoch and step (several per epoch with eval_every)."""
    keys = ["run_id", "epoch"] + (["step"] if epochs["step"].notna().any() else [])
    return epochs.sort_values(keys, kind="stable")


def prepare(results_dir: Path) -> tuple[ReportData, list[str]]:
    """Load a results folder into a :class:`ReportData`, plus notes on what is missing.

    Raises ValueError when runs.csv is missing or unreadable or a table is not this tool's.
    """
    notes: list[str] = []
    runs = _numeric(_read_table(results_dir, "runs", notes), TEXT_RUN_COLUMNS)
    epochs = _numeric(_read_table(results_dir, "epochs", notes), {"run_id", "strategy"})
    steps = _numeric(_read_table(results_dir, "steps", notes), {"run_id", "strategy"})

    runs["run_id"] = runs["run_id"].astype(str)
    if runs["run_id"].duplicated().any():
        duplicated = sorted(set(runs.loc[runs["run_id"].duplicated(), "run_id"]))
        notes.append(f"runs.csv repeats run ids {', '.join(duplicated)}; the last row is used")
        runs = runs.drop_duplicates("run_id", keep="last")
    runs["strategy"] = runs["strategy"].fillna("unknown").astype(str)
    runs["label"] = runs["strategy_label"].where(runs["strategy_label"].notna(), runs["strategy"])
    runs["label"] = runs["label"].astype(str)
    runs["status"] = runs["status"].fillna("unknown").astype(str).str.strip().str.lower()
    runs["is_baseline"] = runs["strategy"].str.startswith(BASELINE_PREFIX)
    runs["baseline_name"] = (
        runs["strategy"].str.removeprefix(BASELINE_PREFIX).where(runs["is_baseline"])
    )

    for name, frame in (("epochs", epochs), ("steps", steps)):
        frame["run_id"] = frame["run_id"].astype(str)
        unknown = sorted(set(frame["run_id"]) - set(runs["run_id"]))
        if unknown:
            notes.append(
                f"`{name}.csv` has rows of {len(unknown)} run(s) absent from runs.csv "
                f"({', '.join(unknown[:5])}{', …' if len(unknown) > 5 else ''}); ignored"
            )
    epochs = _sort_evaluations(epochs)
    _drop_unconverged_cosines(epochs)
    learned = runs[~runs["is_baseline"]].copy()
    _complete_from_tables(learned, epochs, steps)
    _validity_columns(learned, epochs)
    runs = runs.reindex(columns=list(dict.fromkeys([*runs.columns, *learned.columns])))
    runs.loc[learned.index, learned.columns] = learned
    runs["setting"] = setting_keys(runs, notes)
    learned["setting"] = runs.loc[learned.index, "setting"]
    learned_ok = learned[learned["status"] == "ok"].copy()
    ok_ids = set(learned_ok["run_id"])
    join = runs[["run_id", "label"]]
    epochs = epochs[epochs["run_id"].isin(ok_ids)].drop(columns=["label"], errors="ignore")
    epochs = _sort_evaluations(epochs.merge(join, on="run_id"))
    steps = steps[steps["run_id"].isin(ok_ids)].drop(columns=["label"], errors="ignore")
    steps = steps.merge(join, on="run_id")

    first_strategy = learned.groupby("label")["strategy"].first()
    labels = sorted(
        first_strategy.index, key=lambda lab: _strategy_sort_key(lab, first_strategy[lab])
    )
    blurred_psnr = _mean_or_none(runs["blurred_test_psnr"], epochs["blurred_test_psnr"])
    blurred_ssim = _mean_or_none(runs["blurred_test_ssim"], epochs["blurred_test_ssim"])
    data = ReportData(
        runs=runs, learned_ok=learned_ok,
        baselines=runs[runs["is_baseline"] & (runs["status"] == "ok")].copy(),
        epochs=epochs, steps=steps, labels=labels, palette=plots.make_palette(labels),
        recons_dir=results_dir / "recons", blurred_psnr=blurred_psnr, blurred_ssim=blurred_ssim,
    )  # fmt: skip
    notes += _coverage_notes(results_dir, data, ok_step_rows=len(steps))
    return data, notes


def _mean_or_none(*candidates: pd.Series) -> float | None:
    for series in candidates:
        values = pd.to_numeric(series, errors="coerce").dropna()
        if len(values):
            return float(values.mean())
    return None


def _coverage_notes(results_dir: Path, data: ReportData, ok_step_rows: int) -> list[str]:
    """Pieces missing for runs that did finish: epochs, steps, reconstructions, seeds."""
    notes = []
    ok = data.learned_ok
    no_epochs = sorted(set(ok["run_id"]) - set(data.epochs["run_id"]))
    if no_epochs and (results_dir / "epochs.csv").exists():
        notes.append(f"no epochs.csv rows for ok run(s): {', '.join(no_epochs)}")
    counts = data.epochs.groupby("run_id")["epoch"].nunique()
    planned = ok.set_index("run_id")["epochs"]
    short = [
        f"{run_id} ({counts[run_id]} of {int(planned[run_id])})"
        for run_id in counts.index
        if pd.notna(planned.get(run_id)) and counts[run_id] < planned[run_id]
    ]
    if short:
        notes.append("ok runs with fewer recorded epochs than planned: " + ", ".join(short))
    if (results_dir / "steps.csv").exists():
        if ok_step_rows == 0 and len(ok):
            notes.append("`steps.csv` has no rows of ok runs: per-step figures use runs.csv")
        else:
            no_steps = sorted(set(ok["run_id"]) - set(data.steps["run_id"]))
            if no_steps:
                notes.append(f"no steps.csv rows for ok run(s): {', '.join(no_steps)}")
    else:
        notes.append(
            "per-step timings, iterations and convergence come from runs.csv only "
            "(steps.csv missing)"
        )
    if not data.recons_dir.exists():
        notes.append("`recons/` is missing: no reconstruction grid")
    elif not (data.recons_dir / "reference.npz").exists():
        notes.append("`recons/reference.npz` is missing: no reconstruction grid")
    learned = data.runs[~data.runs["is_baseline"]].dropna(subset=["seed"])
    for _, within in learned.groupby("setting", sort=False):  # seeds are compared per setting
        seeds = within.groupby("label")["seed"].apply(set)
        every_seed = set().union(*seeds) if len(seeds) else set()
        for label, present in seeds.items():
            absent = sorted(every_seed - present)
            if absent:
                notes.append(
                    f"{label} has no run for seed(s) {', '.join(_fmt_value(s) for s in absent)} "
                    "(present for other labels of its setting)"
                )
    return notes


# ---------------------------------------------------------------------------------------------
# Settings: seeds are pooled within one configuration only


def _described(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The ``columns`` of ``runs`` as display strings (DASH where not recorded)."""
    return pd.DataFrame({c: runs[c].map(_fmt_value) for c in columns}, index=runs.index)


def _agrees(row: tuple, other: tuple) -> bool:
    """Equal wherever both are recorded (a failed run records no data size, for one)."""
    return all(a == b or DASH in (a, b) for a, b in zip(row, other, strict=True))


def setting_keys(runs: pd.DataFrame, notes: list[str]) -> pd.Series:
    """Per learned run, the key of its setting (NaN for baselines; see :func:`split_settings`).

    Runs share a setting when their configuration differs only by seed and strategy: the same
    ``setting_hash``, or, in results written before that column existed, the same
    :data:`SETTING_COLUMNS`. A run that did not record every setting column (a failed run has no
    data sizes) joins the setting it agrees with on those it did record.
    """
    keys = pd.Series(np.nan, index=runs.index, dtype=object)
    learned = runs[~runs["is_baseline"]]
    hashes = learned["setting_hash"].map(
        lambda v: v.strip() if isinstance(v, str) and v.strip() else np.nan
    )
    keys[hashes.dropna().index] = "setting_hash " + hashes.dropna().astype(str)
    rest = learned[hashes.isna()]
    if rest.empty:
        return keys
    columns = [c for c in SETTING_COLUMNS if c in runs.columns and runs[c].notna().any()]
    notes.append(
        f"{len(rest)} run(s) have no `setting_hash` (results written before it existed): "
        "settings are told apart by the columns " + ", ".join(columns)
    )
    described = _described(rest, columns)
    rows = {
        i: tuple(row)
        for i, row in zip(described.index, described.itertuples(index=False), strict=True)
    }
    complete = sorted({row for row in rows.values() if DASH not in row}, key=natural_key)
    for index, row in rows.items():
        if DASH in row:
            row = next((full for full in complete if _agrees(row, full)), row)
        keys[index] = "columns " + json.dumps(dict(zip(columns, row, strict=True)))
    return keys


@dataclass
class Setting:
    """One configuration's runs (``data``: a :class:`ReportData` restricted to it)."""

    key: str
    title: str | None  # what tells it apart from the other settings; None when it is the only one
    data: ReportData


def _representative(runs: pd.DataFrame, columns: list[str]) -> dict[str, str]:
    """Per column, the most common recorded value of ``runs`` as text (DASH when none)."""
    described = _described(runs, columns)
    out = {}
    for column in columns:
        values = described[column][described[column] != DASH]
        out[column] = values.mode().iloc[0] if len(values) else DASH
    return out


def _value_key(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def split_settings(data: ReportData) -> list[Setting]:
    """The settings of a results folder, each with its learned runs and its classical baselines.

    A baseline belongs to every setting whose data and blur (:data:`DATA_COLUMNS`) it shares;
    baselines that match no learned setting form settings of their own. Settings are ordered by
    the values that tell them apart, and titled with them (e.g. ``noise_std = 0.2``).
    """
    runs = data.runs
    learned = runs[~runs["is_baseline"]]
    baselines = runs[runs["is_baseline"]]
    data_columns = [c for c in DATA_COLUMNS if c in runs.columns]
    members: dict[str, list[str]] = {}
    for key, group in learned.groupby("setting", sort=False):
        members[key] = list(group["run_id"])
    signatures = {
        key: tuple(_representative(runs[runs["run_id"].isin(ids)], data_columns).values())
        for key, ids in members.items()
    }
    orphans: dict[str, list[str]] = {}
    base_described = _described(baselines, data_columns)
    for row, run_id in zip(
        base_described.itertuples(index=False), baselines["run_id"], strict=True
    ):
        row = tuple(row)
        matched = [key for key, sig in signatures.items() if _agrees(row, sig)]
        for key in matched:
            members[key].append(run_id)
        if not matched:
            orphans.setdefault("baselines " + json.dumps(row), []).append(run_id)
    members.update(orphans)
    if not members:
        return [Setting("all", None, data)]
    columns = [c for c in (*SETTING_COLUMNS, "n_test") if c in runs.columns]
    described = {
        key: _representative(runs[runs["run_id"].isin(ids)], columns)
        for key, ids in members.items()
    }
    differing = [c for c in columns if len({d[c] for d in described.values()}) > 1]

    def title(key: str) -> str:
        if differing:
            return ", ".join(f"{c} = {described[key][c]}" for c in differing)
        return key  # the settings differ in something the tables do not show: name the hash

    order = sorted(members, key=lambda k: [_value_key(described[k][c]) for c in differing] + [k])
    settings = []
    for key in order:
        ids = set(members[key])
        settings.append(Setting(key, title(key) if len(members) > 1 else None, _subset(data, ids)))
    return settings


def _subset(data: ReportData, run_ids: set[str]) -> ReportData:
    """``data`` restricted to the runs ``run_ids`` (the palette and notes stay shared)."""
    runs = data.runs[data.runs["run_id"].isin(run_ids)]
    epochs = data.epochs[data.epochs["run_id"].isin(run_ids)]
    present = set(runs.loc[~runs["is_baseline"], "label"])
    return replace(
        data,
        runs=runs,
        learned_ok=data.learned_ok[data.learned_ok["run_id"].isin(run_ids)],
        baselines=data.baselines[data.baselines["run_id"].isin(run_ids)],
        epochs=epochs,
        steps=data.steps[data.steps["run_id"].isin(run_ids)],
        labels=[label for label in data.labels if label in present],
        blurred_psnr=_mean_or_none(runs["blurred_test_psnr"], epochs["blurred_test_psnr"]),
        blurred_ssim=_mean_or_none(runs["blurred_test_ssim"], epochs["blurred_test_ssim"]),
        scaling_runs=data.learned_ok,  # the scaling figures compare across settings
    )


# ---------------------------------------------------------------------------------------------
# Target PSNR and the summary


def choose_target(data: ReportData, psnr_by_label: pd.Series, override: float | None):
    """The target PSNR for "time to target", and the rule that chose it (a sentence)."""
    if override is not None:
        return float(override), "given by the caller (`target_psnr`)"
    best_learned = psnr_by_label.max() if psnr_by_label.notna().any() else None
    baseline_psnr = plots.finite_rows(data.baselines, "final_test_psnr")
    baseline_psnr = baseline_psnr.groupby("baseline_name")["final_test_psnr"].mean()
    if len(baseline_psnr) and best_learned is not None and best_learned >= baseline_psnr.max():
        name = baseline_psnr.idxmax()
        return float(baseline_psnr.max()), (
            f"the best classical baseline's PSNR ({name}), which at least one learned strategy "
            "reaches on average"
        )
    if best_learned is not None and data.blurred_psnr is not None:
        return (data.blurred_psnr + best_learned) / 2, (
            "midway between the blurred input's PSNR and the best learned strategy's mean final "
            "PSNR"
            + (" (no learned strategy reaches the best baseline)" if len(baseline_psnr) else "")
        )
    if len(baseline_psnr):
        return float(baseline_psnr.max()), "the best classical baseline's PSNR"
    if best_learned is not None:
        return float(best_learned), "the best learned strategy's mean final PSNR"
    return None, "no PSNR was recorded"


def time_to_target(data: ReportData, target: float | None) -> pd.DataFrame:
    """Per ok run: training wall-clock seconds at its first evaluation with test PSNR >= target."""
    epochs = plots.finite_rows(data.epochs, "test_psnr")
    rows = []
    for run_id, group in epochs.groupby("run_id"):
        reached = group[group["test_psnr"] >= target] if target is not None else group.iloc[0:0]
        seconds = float(reached["wall_time_s"].iloc[0]) if len(reached) else math.nan
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
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(values.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * stats.sem(values))
    return Estimate(mean, mean - half, mean + half, n)


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


def best_baseline(data: ReportData) -> tuple[str, float, float] | None:
    """(name, PSNR, SSIM) of the classical baseline with the highest final PSNR, or None."""
    rows = plots.finite_rows(data.baselines, "final_test_psnr")
    if rows.empty:
        return None
    means = rows.groupby("baseline_name")[["final_test_psnr", "final_test_ssim"]].mean()
    name = means["final_test_psnr"].idxmax()
    return (
        name,
        float(means.loc[name, "final_test_psnr"]),
        float(means.loc[name, "final_test_ssim"]),
    )


@dataclass
class Comparison:
    """One paired comparison of a setting: ``minuend - subtrahend`` per seed."""

    name: str
    psnr: Estimate
    ssim: Estimate
    note: str = ""


def comparisons(data: ReportData, summary: pd.DataFrame) -> list[Comparison]:
    """Each strategy minus ``jfb`` (paired by seed), then the best learned strategy minus the best
    classical baseline (deterministic: one value, so the interval is the learned one's, shifted)."""
    found = []
    ok = data.learned_ok
    reference = reference_label(data)
    if reference is not None:
        base = ok[ok["label"] == reference]
        for label in summary.index:
            if label == reference or summary.loc[label, "n_ok"] == 0:
                continue
            runs = ok[ok["label"] == label]
            found.append(
                Comparison(
                    f"{label} − {reference}",
                    paired_difference(
                        _per_seed(runs, "final_test_psnr"), _per_seed(base, "final_test_psnr")
                    ),
                    paired_difference(
                        _per_seed(runs, "final_test_ssim"), _per_seed(base, "final_test_ssim")
                    ),
                    "paired by seed",
                )
            )
    baseline = best_baseline(data)
    psnr = summary["final_test_psnr_mean"].dropna() if len(summary) else pd.Series(dtype=float)
    if baseline is not None and len(psnr):
        name, base_psnr, base_ssim = baseline
        best = psnr.idxmax()
        runs = ok[ok["label"] == best]
        found.append(
            Comparison(
                f"best learned ({best}) − best baseline ({name})",
                mean_ci(runs["final_test_psnr"] - base_psnr),
                mean_ci(runs["final_test_ssim"] - base_ssim),
                "baseline deterministic: the learned strategy's interval, shifted",
            )
        )
    return found


def equal_time_budget(data: ReportData) -> tuple[float | None, pd.DataFrame]:
    """The common training-time budget and each ok run's test PSNR/SSIM at it.

    Budget: the smallest over labels of the median over seeds of each run's final evaluation
    time (epochs.csv ``wall_time_s``, cumulative training-step time). A run's value at the budget
    is that of its last evaluation at or before it (NaN when its first evaluation came later).
    """
    columns = ["run_id", "label", "seed", "psnr", "ssim"]
    evaluations = plots.finite_rows(data.epochs, "wall_time_s")
    if evaluations.empty:
        return None, pd.DataFrame(columns=columns)
    final = evaluations.groupby("run_id").agg(label=("label", "first"), time=("wall_time_s", "max"))
    budget = float(final.groupby("label")["time"].median().min())
    seeds = data.learned_ok.set_index("run_id")["seed"]
    rows = []
    for run_id, group in evaluations.groupby("run_id"):
        before = group[group["wall_time_s"] <= budget].sort_values("wall_time_s", kind="stable")
        psnr = plots.finite_rows(before, "test_psnr")["test_psnr"]
        ssim = plots.finite_rows(before, "test_ssim")["test_ssim"]
        rows.append([run_id, group["label"].iloc[0], seeds.get(run_id, math.nan),
                     psnr.iloc[-1] if len(psnr) else math.nan,
                     ssim.iloc[-1] if len(ssim) else math.nan])  # fmt: skip
    return budget, pd.DataFrame(rows, columns=columns)


def validity(data: ReportData) -> pd.DataFrame:
    """Per ok learned run: whether its numbers rest on a broken assumption.

    Columns: ``noncontractive`` (a measured ||dT/dx|| >= 1 at some evaluation),
    ``forward_unconverged`` / ``backward_unconverged`` (solves reached the tolerance in fewer than
    95 % of steps), ``reference_unconverged`` (gradient-fidelity evaluations whose reference did
    not converge), and ``measured`` (any of these was recorded at all).
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
    out["measured"] = (
        lipschitz.notna() | forward.notna() | backward.notna() | (ok["ref_evaluations"] > 0)
    )
    return out.set_index("run_id")


def summarize(data: ReportData, target: float | None) -> pd.DataFrame:
    """Numbers per learned strategy label (index) of one setting, means over its ok runs (seeds).

    ``*_ci`` columns hold :class:`Estimate` objects (mean and 95 % interval over seeds);
    ``vs_reference_psnr`` the paired difference to ``jfb``; ``budget_psnr`` the PSNR at the
    equal-time budget (``summary.attrs["budget"]``, seconds).
    """
    learned = data.runs[~data.runs["is_baseline"]]
    ok = data.learned_ok.groupby("label")
    summary = pd.DataFrame(index=pd.Index(data.labels, name="label"))
    summary["strategy"] = learned.groupby("label")["strategy"].first()
    summary["status"] = learned.groupby("label")["status"].apply(_status_counts)
    summary["n_ok"] = ok.size().reindex(summary.index).fillna(0).astype(int)
    for column in ("final_test_psnr", "final_test_ssim"):
        summary[column + "_mean"] = ok[column].mean()
        summary[column + "_std"] = ok[column].std()  # sample sd (ddof=1); NaN for one seed
        summary[column + "_ci"] = pd.Series(
            {label: mean_ci(ok.get_group(label)[column]) if label in ok.groups else mean_ci([])
             for label in summary.index}, dtype=object,
        )  # fmt: skip
    summary["step_time"] = plots.step_phase_medians(data)["step_time_s"]
    for column in (
        "total_wall_time_s", "peak_step_bytes", "peak_gpu_memory_bytes", "saved_bytes",
        "peak_rss_bytes", "mean_forward_iters", "forward_converged_frac", "mean_backward_iters",
        "backward_converged_frac", "grad_cosine_first", "grad_cosine_last", "solver_max_iter",
        "layer_lipschitz_max", "skipped_steps",
    ):  # fmt: skip
        summary[column] = ok[column].mean()
    summary["layer_lipschitz_max"] = ok["layer_lipschitz_max"].max()  # the worst run, not a mean
    times = time_to_target(data, target)
    per_label = times.groupby("label")
    summary["target_time"] = per_label["time"].mean()  # over the seeds that reached it
    summary["target_reached"] = per_label["reached"].sum()
    summary["target_runs"] = per_label.size()
    summary[["target_reached", "target_runs"]] = (
        summary[["target_reached", "target_runs"]].fillna(0).astype(int)
    )
    reference = reference_label(data)
    summary.attrs["reference"] = reference
    differences = {c.name.split(" − ")[0]: c for c in comparisons(data, summary)}
    summary["vs_reference_psnr"] = pd.Series(
        {label: differences[label].psnr for label in summary.index if label in differences},
        dtype=object,
    )
    budget, at_budget = equal_time_budget(data)
    summary.attrs["budget"] = budget
    summary["budget_psnr"] = pd.Series(
        {label: mean_ci(at_budget.loc[at_budget["label"] == label, "psnr"])
         for label in summary.index}, dtype=object,
    )  # fmt: skip
    flags = validity(data)
    by_label = flags.groupby("label")
    for column in ("noncontractive", "forward_unconverged", "backward_unconverged", "measured"):
        summary[f"n_{column}"] = by_label[column].sum().reindex(summary.index).fillna(0).astype(int)
    summary["n_reference_unconverged"] = (
        by_label["reference_unconverged"].apply(lambda s: int((s > 0).sum()))
        .reindex(summary.index).fillna(0).astype(int)
    )  # fmt: skip
    summary["grad_first_na"] = _cosine_na(data, "grad_cosine_first")
    summary["grad_last_na"] = _cosine_na(data, "grad_cosine_last")
    return summary


def _cosine_na(data: ReportData, column: str) -> pd.Series:
    """Per label: ok runs whose cosine is n/a because the reference did not converge."""
    ok = data.learned_ok
    return (
        (ok[column].isna() & (ok["ref_unconverged"] > 0))
        .groupby(ok["label"]).sum().reindex(data.labels).fillna(0).astype(int)
    )  # fmt: skip


def _status_counts(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    order = ["ok", "diverged", "failed"] + sorted(set(counts.index) - {"ok", "diverged", "failed"})
    return ", ".join(f"{counts[s]} {s}" for s in order if s in counts)


# ---------------------------------------------------------------------------------------------
# Formatting


def _fmt_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


def _fmt_mean_sd(mean: float, sd: float, digits: int) -> str:
    if pd.isna(mean):
        return DASH
    return f"{mean:.{digits}f}" if pd.isna(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _fmt_seconds(value: float) -> str:
    if pd.isna(value):
        return DASH
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"


def _fmt_bytes(value: float) -> str:
    if pd.isna(value):
        return DASH
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _fmt_number(value: float, pattern: str = "{:.3g}") -> str:
    return DASH if pd.isna(value) else pattern.format(value)


@dataclass
class Table:
    """A table of already formatted cells, rendered as Markdown or HTML."""

    headers: list[str]
    rows: list[list[str]]

    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown (no ``tabulate`` dependency); pipes in cells escaped."""

        def cell(text: str) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        cells = [[cell(h) for h in self.headers]] + [[cell(c) for c in row] for row in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]
        lines = [
            "| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"
        ]
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in cells[1:]:
            lines.append(
                "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
            )
        return "\n".join(lines)

    def to_html(self, css_class: str = "") -> str:
        """An escaped HTML table."""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.headers)
        body = "\n".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in self.rows
        )
        return (
            f'<div class="scroll"><table class="{css_class}">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody>\n</table></div>"
        )


def setup_table(data: ReportData, settings: list[Setting] | None = None) -> Table:
    """The experimental setup, one row per field; several values are listed (the sweep varies it)."""
    runs = data.runs
    learned = runs[~runs["is_baseline"]]
    rows = []
    for column, name in SETUP_FIELDS:
        source = learned if learned[column].notna().any() else runs
        values = source[column].dropna().unique()
        if not len(values):
            continue
        values = sorted(values, key=lambda v: natural_key(_fmt_value(v)))
        text = ", ".join(_fmt_value(v) for v in values)
        rows.append([name, text + (" (varies)" if len(values) > 1 else "")])
    seeds = sorted(learned["seed"].dropna().unique())
    rows.append(["seeds", ", ".join(_fmt_value(s) for s in seeds) or DASH])
    parameters = [c for c in runs.columns if c.startswith("p_")]
    for column in parameters:
        values = sorted(learned[column].dropna().unique(), key=lambda v: natural_key(_fmt_value(v)))
        if len(values):
            rows.append([f"strategy parameter {column[2:]}", ", ".join(map(_fmt_value, values))])
    if settings and len(settings) > 1:
        rows.append(["settings", f"{len(settings)}: " + "; ".join(s.title for s in settings)])
    rows.append(["runs", f"{len(learned)} learned ({_status_counts(learned['status']) or 'none'}), "
                         f"{int(runs['is_baseline'].sum())} baseline"])  # fmt: skip
    return Table(["setting", "value"], rows)


def _fmt_estimate(estimate: Estimate, digits: int) -> str:
    """``mean ± half-width`` of the 95 % interval; one seed: no interval, said so."""
    if estimate.n == 0:
        return DASH
    if not estimate.has_interval:
        return f"{estimate.mean:.{digits}f} (1 seed: no CI)"
    return f"{estimate.mean:.{digits}f} ± {estimate.half_width:.{digits}f}"


def _fmt_interval(estimate: Estimate, digits: int) -> str:
    return f"[{estimate.low:+.{digits}f}, {estimate.high:+.{digits}f}]"


def _fmt_difference(estimate: Estimate | None, digits: int, unit: str = "") -> str:
    """A difference with its interval and verdict: significant, or "no significant difference"."""
    if estimate is None or (isinstance(estimate, float) and math.isnan(estimate)):
        return DASH
    if estimate.n == 0:
        return "no common seeds"
    value = f"{estimate.mean:+.{digits}f}{unit}"
    if not estimate.has_interval:
        return f"{value} (1 seed: CI not available)"
    interval = _fmt_interval(estimate, digits)
    if estimate.significant:
        return f"{value} {interval}"
    return f"no significant difference ({value} {interval})"


def _verdict(estimate: Estimate) -> str:
    if estimate.n == 0:
        return "no common seeds"
    if not estimate.has_interval:
        return "CI not available (1 seed)"
    return "significant" if estimate.significant else "no significant difference"


def _fmt_budget(estimate: Estimate, n_ok: int) -> str:
    if n_ok and estimate.n == 0:
        return "no evaluation by then"
    return _fmt_estimate(estimate, 2)


def _flags_cell(row: pd.Series) -> str:
    """Short validity flags of one label's ok runs (the observations explain them)."""
    n = row["n_ok"]
    parts = [
        f"{text} {row[column]}/{n}"
        for column, text in (
            ("n_noncontractive", "not contractive"),
            ("n_forward_unconverged", "fwd conv. < 95%"),
            ("n_backward_unconverged", "bwd conv. < 95%"),
            ("n_reference_unconverged", "grad ref. unconverged"),
        )
        if row[column] > 0
    ]
    if parts:
        return "⚠ " + "; ".join(parts)
    return "none" if row["n_measured"] > 0 else DASH


def _fmt_cosine(value: float, unavailable: int, runs: int) -> str:
    """A mean cosine; runs whose reference did not converge are n/a, never a number."""
    if unavailable and unavailable >= runs:
        return "n/a (reference unconverged)"
    text = _fmt_number(value, "{:.3f}")
    return f"{text} ({unavailable}/{runs} n/a)" if unavailable else text


# Columns dropped from the summary table when no row has a value (e.g. GPU memory on a CPU).
OPTIONAL_SUMMARY_COLUMNS = (
    "Δ PSNR vs jfb (95% CI)", "peak step memory", "peak GPU mem", "bwd converged",
    "max ‖∂T/∂x‖", "skipped steps", "validity flags",
)  # fmt: skip


def summary_table(data: ReportData, summary: pd.DataFrame, target: float | None) -> Table:
    """Per strategy label and per baseline: quality with 95 % intervals, the paired difference to
    jfb, PSNR at the equal-time budget, cost, memory, convergence, gradient fidelity, flags."""
    target_header = f"time to {target:.2f} dB" if target is not None else "time to target"
    budget = summary.attrs.get("budget")
    budget_header = f"PSNR at {_fmt_seconds(budget)}" if budget is not None else "PSNR at budget"
    reference = summary.attrs.get("reference")
    headers = [
        "strategy label", "runs", "PSNR (dB)", "SSIM", "Δ PSNR vs jfb (95% CI)", budget_header,
        target_header, "median step", "total time", "peak step memory", "peak GPU mem",
        "saved for backward", "peak RSS (train steps)", "fwd iters", "bwd iters", "fwd converged",
        "bwd converged", "max ‖∂T/∂x‖", "skipped steps", "grad cos first", "grad cos last",
        "validity flags",
    ]  # fmt: skip
    rows = []
    for label, row in summary.iterrows():
        if row["target_runs"] == 0:
            reach = DASH
        elif row["target_reached"] == 0:
            reach = "not reached"
        else:
            reach = _fmt_seconds(row["target_time"])
            if row["target_reached"] < row["target_runs"]:
                reach += f" ({row['target_reached']}/{row['target_runs']} seeds)"
        difference = (
            "reference" if label == reference
            else _fmt_difference(row["vs_reference_psnr"], 2)
        )  # fmt: skip
        n = row["n_ok"]
        rows.append(
            [
                label, row["status"],
                _fmt_estimate(row["final_test_psnr_ci"], 2),
                _fmt_estimate(row["final_test_ssim_ci"], 4),
                difference if n else DASH, _fmt_budget(row["budget_psnr"], n), reach,
                _fmt_seconds(row["step_time"]), _fmt_seconds(row["total_wall_time_s"]),
                _fmt_bytes(row["peak_step_bytes"]), _fmt_bytes(row["peak_gpu_memory_bytes"]),
                _fmt_bytes(row["saved_bytes"]), _fmt_bytes(row["peak_rss_bytes"]),
                _fmt_number(row["mean_forward_iters"], "{:.1f}"),
                _fmt_number(row["mean_backward_iters"], "{:.1f}"),
                _fmt_number(row["forward_converged_frac"], "{:.0%}"),
                _fmt_number(row["backward_converged_frac"], "{:.0%}"),
                _fmt_number(row["layer_lipschitz_max"], "{:.3f}"),
                _fmt_number(row["skipped_steps"], "{:.3g}"),
                _fmt_cosine(row["grad_cosine_first"], row["grad_first_na"], n),
                _fmt_cosine(row["grad_cosine_last"], row["grad_last_na"], n),
                _flags_cell(row) if n else DASH,
            ]
        )  # fmt: skip
    baselines = data.runs[data.runs["is_baseline"]]
    for name, group in sorted(baselines.groupby("baseline_name"), key=lambda item: item[0]):
        ok = group[group["status"] == "ok"]
        psnr, ssim = ok["final_test_psnr"], ok["final_test_ssim"]
        # Deterministic: one value (repeated rows, e.g. two suites in one folder, are averaged).
        rows.append(
            [f"baseline: {name}", _status_counts(group["status"]),
             _fmt_number(psnr.mean(), "{:.2f}"), _fmt_number(ssim.mean(), "{:.4f}")]
            + [DASH] * (len(headers) - 4)
        )  # fmt: skip
    if data.blurred_psnr is not None:
        rows.append(
            ["blurred input", DASH, f"{data.blurred_psnr:.2f}",
             _fmt_number(data.blurred_ssim, "{:.4f}")] + [DASH] * (len(headers) - 4)
        )  # fmt: skip
    empty = [
        i for i, header in enumerate(headers)
        if header in OPTIONAL_SUMMARY_COLUMNS and all(r[i] == DASH for r in rows)
    ]  # fmt: skip
    if data.learned_ok["peak_gpu_memory_bytes"].isna().all():  # CPU runs: drop an empty column
        empty.append(headers.index("peak GPU mem"))
    if budget is None:
        empty.append(headers.index(budget_header))
    keep = [i for i in range(len(headers)) if i not in set(empty)]
    return Table([headers[i] for i in keep], [[r[i] for i in keep] for r in rows])


def comparisons_table(found: list[Comparison]) -> Table | None:
    """The paired differences of one setting with their 95 % intervals and verdicts."""
    if not found:
        return None
    rows = [
        [c.name, str(c.psnr.n), _fmt_difference(c.psnr, 2), _verdict(c.psnr),
         _fmt_difference(c.ssim, 4), _verdict(c.ssim), c.note]
        for c in found
    ]  # fmt: skip
    return Table(
        ["comparison", "seeds", "Δ PSNR (dB) [95% CI]", "PSNR", "Δ SSIM [95% CI]", "SSIM", "how"],
        rows,
    )


def problem_runs_table(data: ReportData) -> Table | None:
    """Runs whose status is not ok, with their reasons (None when every run is ok)."""
    bad = data.runs[data.runs["status"] != "ok"].sort_values(["label", "seed"])
    if bad.empty:
        return None
    rows = [
        [r["run_id"], r["label"], _fmt_value(r["seed"]), r["status"],
         _fmt_value(r["status_reason"]) if pd.notna(r["status_reason"]) else "(no reason recorded)"]
        for _, r in bad.iterrows()
    ]  # fmt: skip
    return Table(["run", "strategy label", "seed", "status", "reason"], rows)


def runs_table(data: ReportData, settings: list[Setting] | None = None) -> Table:
    """Every run, one row each (appendix), with its setting when there are several."""
    titles: dict[str, str] = {}
    for setting in settings or []:
        if setting.title is not None:
            for run_id in setting.data.runs["run_id"]:
                titles.setdefault(run_id, setting.title)
    records = sorted(
        (r for _, r in data.runs.iterrows()),
        key=lambda r: (
            r["is_baseline"],
            natural_key(r["label"]),
            natural_key(_fmt_value(r["seed"])),
        ),
    )
    rows = [
        [r["run_id"], r["label"], _fmt_value(r["seed"]), r["status"],
         _fmt_number(r["final_test_psnr"], "{:.2f}"), _fmt_number(r["final_test_ssim"], "{:.4f}"),
         _fmt_seconds(r["total_wall_time_s"]), _fmt_seconds(r["median_step_time_s"])]
        + ([titles.get(r["run_id"], DASH)] if titles else [])
        for r in records
    ]  # fmt: skip
    return Table(
        [
            "run",
            "strategy label",
            "seed",
            "status",
            "PSNR (dB)",
            "SSIM",
            "total time",
            "median step",
        ]
        + (["setting"] if titles else []),
        rows,
    )


# ---------------------------------------------------------------------------------------------
# Observations


def observations(data: ReportData, summary: pd.DataFrame, target: float | None) -> list[str]:
    """Short findings computed from the numbers, most important first."""
    found: list[str] = []
    ok = summary[summary["n_ok"] > 0]
    psnr = ok["final_test_psnr_mean"].dropna()
    baseline_psnr = plots.finite_rows(data.baselines, "final_test_psnr")
    baseline_psnr = baseline_psnr.groupby("baseline_name")["final_test_psnr"].mean()
    if len(psnr):
        best = psnr.idxmax()
        text = (
            f"Best final test PSNR: {best} with {psnr[best]:.2f} dB "
            f"(mean over {ok.loc[best, 'n_ok']} seed(s))"
        )
        if len(baseline_psnr):
            name = baseline_psnr.idxmax()
            text += (
                f"; best classical baseline {name}: {baseline_psnr.max():.2f} dB "
                f"({psnr[best] - baseline_psnr.max():+.2f} dB)"
            )
        if data.blurred_psnr is not None:
            text += f"; blurred input: {data.blurred_psnr:.2f} dB"
        found.append(text + ".")
        found += _statistics_observations(data, summary)
    elif len(baseline_psnr):  # classical baselines only (e.g. no learned run finished yet)
        text = (
            f"Best classical baseline: {baseline_psnr.idxmax()} with {baseline_psnr.max():.2f} dB"
        )
        if data.blurred_psnr is not None:
            text += f" (blurred input: {data.blurred_psnr:.2f} dB)"
        found.append(text + "; no learned run finished ok.")

    if target is not None:
        everyone = ok[(ok["target_runs"] > 0) & (ok["target_reached"] == ok["target_runs"])]
        ranking = everyone["target_time"].sort_values()
        partly = ok[(ok["target_reached"] > 0) & (ok["target_reached"] < ok["target_runs"])]
        never = ok[(ok["target_runs"] > 0) & (ok["target_reached"] == 0)]
        if len(ranking):
            first = ranking.index[0]
            text = f"{first} reached {target:.2f} dB first ({ranking.iloc[0]:.3g} s"
            text += ", mean over seeds)" if everyone.loc[first, "target_runs"] > 1 else ")"
            if len(ranking) > 1:
                text += "; then " + ", ".join(
                    f"{lab} ({t:.3g} s)" for lab, t in ranking[1:].items()
                )
            found.append(text + ".")
        for label, row in partly.iterrows():
            found.append(
                f"{label} reached {target:.2f} dB in only {row['target_reached']} of "
                f"{row['target_runs']} seeds ({row['target_time']:.3g} s for those)."
            )
        if len(never):
            found.append(f"Never reached {target:.2f} dB: {', '.join(never.index)}.")

    times = ok["step_time"].dropna()
    if len(times) > 1:
        fastest, slowest = times.idxmin(), times.idxmax()
        found.append(
            f"Cheapest training step: {fastest} ({times[fastest]:.3g} s median); {slowest} is "
            f"{times[slowest] / times[fastest]:.1f}× slower per step ({times[slowest]:.3g} s)."
        )

    found += _equal_time_observations(ok, summary.attrs.get("budget"))
    found += _validity_observations(data)
    found += _memory_observations(ok)
    found += _convergence_observations(ok)

    cosine = ok["grad_cosine_last"].dropna()
    if len(cosine):
        low, high = cosine.idxmin(), cosine.idxmax()
        text = (
            "Gradient cosine to the exact implicit gradient at the last evaluation: "
            f"{high} {cosine[high]:.3f}"
        )
        if len(cosine) > 1:
            text += f" (highest), {low} {cosine[low]:.3f} (lowest)"
        found.append(text + ".")
        drift = (ok["grad_cosine_first"] - ok["grad_cosine_last"]).dropna()
        for label in drift[drift > 0.1].index:
            found.append(
                f"{label}'s gradient cosine fell from {ok.loc[label, 'grad_cosine_first']:.3f} "
                f"to {cosine[label]:.3f} during training."
            )

    bad = data.runs[data.runs["status"] != "ok"]
    if len(bad):
        found.append(
            f"{len(bad)} run(s) did not finish ok ({_status_counts(bad['status'])}): "
            + "; ".join(
                f"{r['run_id']} ({r['status']}: {_fmt_value(r['status_reason'])})"
                for _, r in bad.head(5).iterrows()
            )
            + ("; …" if len(bad) > 5 else "")
            + " — see Partial results."
        )
    return found


def _statistics_observations(data: ReportData, summary: pd.DataFrame) -> list[str]:
    """The paired differences to jfb and the best learned strategy against the best baseline."""
    found = []
    found_comparisons = comparisons(data, summary)
    reference = summary.attrs.get("reference")
    paired = [c for c in found_comparisons if c.note == "paired by seed"]
    if paired:
        found.append(
            f"Final test PSNR minus {reference}'s, paired by seed (mean, 95% CI): "
            + "; ".join(
                f"{c.name.split(' − ')[0]} {_fmt_difference(c.psnr, 2, ' dB')}" for c in paired
            )
            + "."
        )
    versus = [c for c in found_comparisons if c.name.startswith("best learned")]
    for c in versus:
        text = f"{c.name[0].upper()}{c.name[1:]}: "
        if c.psnr.has_interval:
            text += (
                f"{c.psnr.mean:+.2f} dB, 95% CI {_fmt_interval(c.psnr, 2)} over {c.psnr.n} seeds"
            )
            text += (
                "" if c.psnr.significant
                else " — no significant difference"
            )  # fmt: skip
            text += (
                " (the baseline is deterministic: the interval is the learned strategy's, shifted)"
            )
        else:
            text += f"{c.psnr.mean:+.2f} dB from one seed: no confidence interval available"
        found.append(text + ".")
    return found


def _equal_time_observations(ok: pd.DataFrame, budget: float | None) -> list[str]:
    if budget is None:
        return []
    values = {label: estimate for label, estimate in ok["budget_psnr"].items() if estimate.n > 0}
    if not values:
        return [f"At the equal training-time budget of {_fmt_seconds(budget)} no strategy had an "
                "evaluation yet."]  # fmt: skip
    best = max(values, key=lambda label: values[label].mean)
    late = [label for label, e in ok["budget_psnr"].items() if e.n == 0]
    return [
        f"At an equal training-time budget of {_fmt_seconds(budget)} (the smallest median "
        "training time of any strategy), test PSNR: "
        + ", ".join(f"{label} {_fmt_estimate(e, 2)} dB" for label, e in values.items())
        + f"; best: {best}"
        + (f"; no evaluation by then: {', '.join(late)}" if late else "")
        + "."
    ]


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
        bad = runs[runs["forward_unconverged"]]
        if len(bad):
            found.append(
                f"⚠ {label}: forward solves reached the tolerance in fewer than 95% of steps in "
                f"{len(bad)} of {n} run(s): {_runs_text(bad, 'forward_frac', '{:.0%}')}. An "
                "unconverged forward solve means the loss is not evaluated at the fixed point, "
                "so these numbers are for an approximate equilibrium."
            )
        bad = runs[runs["backward_unconverged"]]
        if len(bad):
            found.append(
                f"⚠ {label}: backward solves reached the tolerance in fewer than 95% of steps in "
                f"{len(bad)} of {n} run(s): {_runs_text(bad, 'backward_frac', '{:.0%}')}. Its "
                "gradients are then not the implicit gradient to the stated tolerance."
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
                f"({_fmt_bytes(values[label])} vs {_fmt_bytes(values[reference])}{detail})."
            )
        for label, ratio in small.sort_values().head(4).items():
            found.append(
                f"{label} {verb} {1 / ratio:.1f}× less than {reference} in "
                f"{noun.removeprefix('the ')} ({_fmt_bytes(values[label])} vs "
                f"{_fmt_bytes(values[reference])}{detail})."
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
                text += f" (max_iter={_fmt_value(cap)}"
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


def _scaling_observations(data: ReportData) -> list[str]:
    found = []
    for variable in plots.scaling_variables(data):
        rows = plots.scaling_rows(data, variable)
        rows = rows.assign(**{variable: pd.to_numeric(rows[variable], errors="coerce")})
        column, memory_name = plots.memory_column(rows)
        name = variable.removeprefix("p_")
        for strategy, group in rows.groupby("strategy"):
            means = group.dropna(subset=[column]).groupby(variable)[column].mean()
            if len(means) >= 2 and means.iloc[0] > 0:
                lo, hi = means.index.min(), means.index.max()
                found.append(
                    f"{strategy}: {memory_name}"
                    f" ×{means[hi] / means[lo]:.2f} from {name}={_fmt_value(lo)} to "
                    f"{name}={_fmt_value(hi)} ({_fmt_bytes(means[lo])} → {_fmt_bytes(means[hi])})."
                )
    return found


# ---------------------------------------------------------------------------------------------
# Documents


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3 { color: #123; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #eef2f6; }
td:first-child, th:first-child { text-align: left; }
table.kv td, table.kv th { text-align: left; }
td { white-space: nowrap; }
.scroll { overflow-x: auto; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
.skipped { color: #8a4b00; }
.note { color: #555; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


@dataclass
class SettingSection:
    """One setting's part of the summary and observations."""

    title: str | None  # None when the folder holds one setting
    summary: Table
    comparisons: Table | None
    target: float | None
    target_rule: str
    budget: float | None
    observations: list[str]


@dataclass
class ReportParts:
    """Everything both documents show, computed once."""

    title: str
    results_dir: Path
    generated: str
    setup: Table
    sections: list[SettingSection]
    observations: list[str]  # about every setting together (e.g. the scaling sweep)
    figures_note: str | None
    plots: list[PlotResult]
    problem_runs: Table | None
    missing: list[str]
    runs: Table


SUMMARY_NOTE = (
    "PSNR and SSIM: mean ± half-width of the 95% confidence interval (Student t, n - 1 degrees of "
    "freedom) over the seeds of each label's ok runs; one seed gives no interval. Δ PSNR vs jfb: "
    "the mean paired difference over the seeds both have, with its 95% interval; an interval "
    "containing 0 is reported as no significant difference. PSNR at the budget: each run's last "
    "evaluation at or before the equal training-time budget. Median step: median per-step time; "
    "time to target: training time at the first evaluation whose test PSNR reaches the target "
    "(mean over the seeds that reach it). Peak step memory: the exact peak of live tensor bytes "
    "during a training step (the main memory figure); peak RSS: the process over training steps "
    "(secondary). Validity flags: runs whose layer was not a contraction, whose forward or "
    "backward solves converged in fewer than 95% of steps, or whose gradient-fidelity reference "
    "did not converge (see Observations)."
)
SETTINGS_NOTE = (
    "The runs form {n} settings (configurations that differ in more than seed and strategy). Each "
    "has its own table: seeds are pooled within a setting only, never across settings."
)


def _section_intro(section: SettingSection) -> list[str]:
    """Plain-text lines above a setting's table: the target and the equal-time budget."""
    target = f"{section.target:.2f} dB" if section.target is not None else "none"
    lines = [f"Target PSNR: **{target}** — {section.target_rule}."]
    if section.budget is not None:
        lines.append(
            f"Equal-time budget: **{_fmt_seconds(section.budget)}** of training — the smallest "
            "over strategies of the median over seeds of their final training time."
        )
    return lines


def _markdown(parts: ReportParts) -> str:
    lines = [f"# {parts.title}", ""]
    lines += [f"Results: `{parts.results_dir}` · generated {parts.generated}", ""]
    lines += ["## Setup", "", parts.setup.to_markdown(), ""]
    lines += ["## Summary", "", SUMMARY_NOTE, ""]
    if len(parts.sections) > 1:
        lines += [SETTINGS_NOTE.format(n=len(parts.sections)), ""]
    for section in parts.sections:
        if section.title is not None:
            lines += [f"### Setting: {section.title}", ""]
        for text in _section_intro(section):
            lines += [text, ""]
        lines += [section.summary.to_markdown(), ""]
        if section.comparisons is not None:
            lines += ["Paired comparisons:", "", section.comparisons.to_markdown(), ""]
    lines += ["## Observations", ""]
    for section in parts.sections:
        if section.title is not None:
            lines += [f"### Setting: {section.title}", ""]
        lines += [f"- {text}" for text in section.observations] or ["- (no data to observe)"]
        lines += [""]
    if parts.observations:
        if len(parts.sections) > 1:
            lines += ["### Across settings", ""]
        lines += [f"- {text}" for text in parts.observations] + [""]
    lines += ["## Figures", ""]
    if parts.figures_note:
        lines += [parts.figures_note, ""]
    for plot in parts.plots:
        lines += [f"### {plot.title}", ""]
        if plot.skipped:
            lines += [f"*Skipped: {plot.skipped}.*", ""]
        else:
            lines += [f"![{plot.title}]({plot.png.name})", ""]
            lines += [f"{plot.caption} ([SVG]({plot.svg.name}))", ""]
    lines += ["## Partial results", ""]
    lines += _partial_markdown(parts)
    lines += ["## All runs", "", parts.runs.to_markdown(), ""]
    return "\n".join(lines)


def _partial_markdown(parts: ReportParts) -> list[str]:
    lines = []
    if parts.problem_runs is not None:
        lines += ["Runs that did not finish ok:", "", parts.problem_runs.to_markdown(), ""]
    if parts.missing:
        lines += ["Missing pieces:", ""] + [f"- {note}" for note in parts.missing] + [""]
    if parts.problem_runs is None and not parts.missing:
        lines += ["Every run finished ok and every table and file is present.", ""]
    return lines


def _inline_markdown_to_html(text: str) -> str:
    """Escape text, then render the only markup the report's prose uses: `code` and **bold**."""
    pieces = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
    pieces = text.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(pieces))


def _html(parts: ReportParts) -> str:
    esc = html.escape
    body = [f"<h1>{esc(parts.title)}</h1>"]
    body.append(
        f'<p class="note">Results: <code>{esc(str(parts.results_dir))}</code> · generated '
        f"{esc(parts.generated)}</p>"
    )
    body += ["<h2>Setup</h2>", parts.setup.to_html("kv")]
    body += ["<h2>Summary</h2>", f'<p class="note">{esc(SUMMARY_NOTE)}</p>']
    if len(parts.sections) > 1:
        body.append(f"<p>{esc(SETTINGS_NOTE.format(n=len(parts.sections)))}</p>")
    for section in parts.sections:
        if section.title is not None:
            body.append(f"<h3>Setting: {esc(section.title)}</h3>")
        body += [f"<p>{_inline_markdown_to_html(t)}</p>" for t in _section_intro(section)]
        body.append(section.summary.to_html("summary"))
        if section.comparisons is not None:
            body += ["<p>Paired comparisons:</p>", section.comparisons.to_html()]
    body.append("<h2>Observations</h2>")
    for section in parts.sections:
        if section.title is not None:
            body.append(f"<h3>Setting: {esc(section.title)}</h3>")
        items = "".join(f"<li>{_inline_markdown_to_html(t)}</li>" for t in section.observations)
        body.append(f"<ul>{items or '<li>(no data to observe)</li>'}</ul>")
    if parts.observations:
        if len(parts.sections) > 1:
            body.append("<h3>Across settings</h3>")
        items = "".join(f"<li>{_inline_markdown_to_html(t)}</li>" for t in parts.observations)
        body.append(f"<ul>{items}</ul>")
    body.append("<h2>Figures</h2>")
    if parts.figures_note:
        body.append(f"<p>{_inline_markdown_to_html(parts.figures_note)}</p>")
    for plot in parts.plots:
        body.append(f'<h3 id="{esc(plot.name)}">{esc(plot.title)}</h3>')
        if plot.skipped:
            body.append(f'<p class="skipped">Skipped: {esc(plot.skipped)}.</p>')
            continue
        data_uri = "data:image/png;base64," + base64.b64encode(plot.png.read_bytes()).decode()
        body.append(
            f'<figure><img src="{data_uri}" alt="{esc(plot.title)}">'
            f"<figcaption>{esc(plot.caption)} "
            f'(<a href="{esc(plot.svg.name)}">SVG</a>, <a href="{esc(plot.png.name)}">PNG</a>)'
            "</figcaption></figure>"
        )
    body.append("<h2>Partial results</h2>")
    if parts.problem_runs is not None:
        body += ["<p>Runs that did not finish ok:</p>", parts.problem_runs.to_html()]
    if parts.missing:
        items = "".join(f"<li>{_inline_markdown_to_html(n)}</li>" for n in parts.missing)
        body.append(f"<p>Missing pieces:</p><ul>{items}</ul>")
    if parts.problem_runs is None and not parts.missing:
        body.append("<p>Every run finished ok and every table and file is present.</p>")
    body.append("<h2>All runs</h2>")
    body.append(f"<details><summary>{len(parts.runs.rows)} runs</summary>")
    body += [parts.runs.to_html(), "</details>"]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(parts.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _remove_stale_figures(out_dir: Path, results: list[PlotResult]) -> None:
    """Delete figure files of an earlier build that this build did not draw (e.g. now skipped)."""
    drawn = {r.name for r in results if not r.skipped}
    known = {r.name for r in results} | {
        "scaling_k",
        "scaling_solver_max_iter",
        "scaling_image_size",
    }
    for name in known - drawn:
        for suffix in (".png", ".svg"):
            (out_dir / f"{name}{suffix}").unlink(missing_ok=True)


def _section(setting: Setting, target_psnr: float | None) -> SettingSection:
    data = setting.data
    psnr_by_label = data.learned_ok.groupby("label")["final_test_psnr"].mean()
    target, target_rule = choose_target(data, psnr_by_label, target_psnr)
    summary = summarize(data, target)
    return SettingSection(
        title=setting.title,
        summary=summary_table(data, summary, target),
        comparisons=comparisons_table(comparisons(data, summary)),
        target=target,
        target_rule=target_rule,
        budget=summary.attrs.get("budget"),
        observations=observations(data, summary, target),
    )


def build_report(
    results_dir: str | Path, out_dir: str | Path | None = None, *, target_psnr: float | None = None
) -> Path:
    """Write the comparison report of a results folder and return the path of ``report.html``.

    Writes ``report.md``, a self-contained ``report.html`` (figures embedded as data URIs) and
    every figure as ``<name>.png`` and ``<name>.svg`` into ``out_dir`` (default
    ``reports/<name of results_dir>/``, relative to the working directory), each file atomically.
    ``target_psnr`` (dB) overrides the default target of the "time to target" column (see the
    module docstring). Partial results (diverged or failed runs, missing tables or
    reconstructions, tables written before newer columns existed) are reported, not fatal. Raises
    ValueError when ``results_dir`` has no readable ``runs.csv`` or a table is not this tool's.
    """
    results_dir = Path(results_dir)
    if target_psnr is not None and not (
        isinstance(target_psnr, (int, float)) and math.isfinite(target_psnr)
    ):
        raise ValueError(f"target_psnr must be a finite number of dB, got {target_psnr!r}")
    data, missing = prepare(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path("reports") / results_dir.resolve().name
    out_dir.mkdir(parents=True, exist_ok=True)

    settings = split_settings(data)
    sections = [_section(setting, target_psnr) for setting in settings]
    # Figures pool seeds only: with several settings they show the first one (the scaling
    # figures compare settings, so they use every setting's runs).
    shown = settings[0]
    shown.data.target_psnr = sections[0].target
    figures_note = None
    if len(settings) > 1:
        figures_note = (
            f"Figures other than the scaling figures show the first setting only "
            f"(**{shown.title}**) of {len(settings)}; the tables above cover every setting."
        )
    figures = plots.render_plots(shown.data, out_dir)
    if len(settings) > 1:
        for figure in figures:
            if not figure.name.startswith("scaling_"):
                figure.caption += f" Setting shown: {shown.title} (first of {len(settings)})."
    _remove_stale_figures(out_dir, figures)
    missing += data.notes  # notes the figures found (e.g. reconstructions of some runs missing)
    missing += [f"figure '{p.title}' skipped: {p.skipped}" for p in figures if p.skipped]

    suite = data.runs["suite"].dropna().unique()
    parts = ReportParts(
        title=f"implicit-bench report: {', '.join(map(str, suite)) or results_dir.name}",
        results_dir=results_dir,
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        setup=setup_table(data, settings),
        sections=sections,
        observations=_scaling_observations(data),
        figures_note=figures_note,
        plots=figures,
        problem_runs=problem_runs_table(data),
        missing=list(dict.fromkeys(missing)),  # de-duplicated, order kept
        runs=runs_table(data, settings),
    )
    atomic_write_bytes(out_dir / "report.md", _markdown(parts).encode())
    html_path = out_dir / "report.html"
    atomic_write_bytes(html_path, _html(parts).encode())
    return html_path
