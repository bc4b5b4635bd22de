"""Loading a results folder: read the tables, map an older schema's column names, check that each
table is this tool's, complete summary columns from the per-evaluation and per-step tables, and
split the runs into settings.

Older folders stay readable: columns renamed since (:data:`RENAMED`) are read under their new
names, and columns a folder predates become NaN ("not measured"); both are said in the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench import schema
from bench.metrics import METRICS
from bench.report.fmt import DASH, fmt_value
from bench.report.model import (
    BASELINE_PREFIX,
    Note,
    NoteKind,
    ReportData,
    display_labels,
    label_palette,
    naive_name,
    natural_key,
    strategy_order,
    strategy_palette,
)
from bench.schema import COLUMNS, TEXT_COLUMNS
from bench.summary import run_summary
from bench.tasks import setting_columns as task_setting_columns

# The schema, declared once in bench.schema (the merge reads parts through it too): renamed
# columns and columns added since the first harness (absent in older tables: "not measured").
RENAMED = schema.RENAMED
NEW_COLUMNS = schema.ADDED_COLUMNS
BOOL_RUN_COLUMNS = set(schema.BOOL_COLUMNS["runs"])
# runs.csv columns that hold text; every other known column is coerced to numbers.
TEXT_RUN_COLUMNS = set(schema.TABLE_TEXT_COLUMNS["runs"])
# A table without these columns is not one of this tool's tables (schema check on loading).
REQUIRED_COLUMNS = {
    "runs": ("run_id", "strategy", "status"),
    "epochs": ("run_id", "epoch"),
    "steps": ("run_id", "step"),
}
# ... nor one holding fewer than this share of its declared columns.
MIN_KNOWN_COLUMN_SHARE = 0.5
TABLE_TEXT_COLUMNS = {
    name: set(columns) | set(schema.BOOL_COLUMNS[name])
    for name, columns in schema.TABLE_TEXT_COLUMNS.items()
}
# What makes two runs "the same configuration" in results folders written before runs.csv had
# `setting_hash` (seed, strategy, suite name and device excluded, as in the hash); the tasks'
# own settings (blur_sigma, superres_factor, ...) come from the task registry: setting_columns().
BASE_SETTING_COLUMNS = (
    "task", "dataset", "image_size", "channels", "n_train", "batch_size", "epochs", "lr",
    "noise_std", "solver", "solver_max_iter", "solver_tol",
    "model_width", "model_depth", "model_form", "lipschitz_control", "lr_schedule",
    "model_lipschitz", "model_activation", "jac_reg", "jac_reg_every",
)  # fmt: skip
# Classical baselines depend on the data and the task (its settings too) only: they belong to
# every setting that shares these (e.g. all points of a sweep over the solver's max_iter).
BASE_DATA_COLUMNS = ("task", "dataset", "image_size", "channels", "n_train", "n_test", "noise_std")


def setting_columns() -> tuple[str, ...]:
    """The columns that tell configurations apart: :data:`BASE_SETTING_COLUMNS` and every
    registered task's setting columns (bench.tasks.setting_columns), never a list of them here."""
    return _with_task_columns(BASE_SETTING_COLUMNS)


def data_columns() -> tuple[str, ...]:
    """The columns a classical baseline's result depends on: the data, the noise and every
    registered task's settings."""
    return _with_task_columns(BASE_DATA_COLUMNS)


def _with_task_columns(base: tuple[str, ...]) -> tuple[str, ...]:
    """``base`` with the task setting columns before ``noise_std`` (where blur's always were:
    the order of a setting's title)."""
    i = base.index("noise_std")
    return (*base[:i], *task_setting_columns(), *base[i:])


def declared_columns(name: str) -> list[str]:
    """The columns of table ``name`` in the current schema: bench.results' (under their current
    names) and the newer ones (:data:`NEW_COLUMNS`)."""
    current = [RENAMED[name].get(c, c) for c in COLUMNS[name]]
    return list(dict.fromkeys([*current, *NEW_COLUMNS[name]]))


def _preview(names, limit: int = 6) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _parse_bool(value):
    """True / False from a CSV cell ("True", "false", "1", 0.0 ...); NaN when empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "1.0"):
        return True
    if text in ("false", "0", "0.0"):
        return False
    if text in ("", "nan", "none"):
        return np.nan
    raise ValueError(text)


def check_schema(frame: pd.DataFrame, name: str, path: Path) -> None:
    """Raise ValueError, one line naming ``path``, unless ``frame`` is this tool's ``name`` table.

    ``frame`` has its columns under their current names (:func:`bench.schema.conform`). The table
    must have its identifier columns (:data:`REQUIRED_COLUMNS`), at least half of the columns
    :mod:`bench.results` declares for it, numbers (or nothing) in every declared numeric column
    it has, and True / False in its boolean ones. An older table lacking newer columns passes.
    """
    what = f"{path} is not an implicit-bench {name} table"
    missing = [c for c in REQUIRED_COLUMNS[name] if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what}: it lacks the required column(s) {', '.join(missing)} "
            f"(its columns: {_preview(frame.columns) or 'none'})"
        )
    declared = [RENAMED[name].get(c, c) for c in COLUMNS[name]]
    present = [c for c in declared if c in frame.columns]
    if len(present) < MIN_KNOWN_COLUMN_SHARE * len(declared):
        raise ValueError(
            f"{what}: it has only {len(present)} of the {len(declared)} expected columns "
            f"(missing: {_preview([c for c in declared if c not in frame.columns])})"
        )
    for column in declared_columns(name):
        if column not in frame.columns:
            continue
        raw = frame[column]
        if name == "runs" and column in BOOL_RUN_COLUMNS:
            for line, value in raw.items():
                try:
                    _parse_bool(value)
                except ValueError:
                    raise ValueError(
                        f"{what}: column {column!r} holds {str(value)[:40]!r} on line {line + 2}, "
                        "not True or False"
                    ) from None
            continue
        if column in TABLE_TEXT_COLUMNS[name]:
            continue
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


def read_table(results_dir: Path, name: str, notes: list[Note]) -> pd.DataFrame:
    """One table as a DataFrame with every column of the current schema (NaN where absent).

    Raises ValueError when runs.csv is missing or unreadable, or when any table is present but is
    not this tool's (see :func:`check_schema`). Renamed and absent columns are said in ``notes``.
    """
    path = results_dir / f"{name}.csv"
    columns = declared_columns(name)
    if not path.exists():
        if name == "runs":
            raise ValueError(
                f"no results at {str(results_dir)!r}: expected {path} (run a suite first, "
                "e.g. `implicit-bench run quick`)"
            )
        notes.append(Note(f"`{name}.csv` is missing"))
        return pd.DataFrame(columns=columns)
    # Not results.read_table: the report also reads the newer text columns (setting_hash, ...)
    # as text, whether or not bench.results declares them yet.
    text = {*TEXT_COLUMNS, *TABLE_TEXT_COLUMNS[name]}
    try:
        frame = pd.read_csv(path, dtype=dict.fromkeys(text, str))
    except (ValueError, OSError) as error:  # pandas' parse errors are ValueErrors
        if name == "runs":
            raise ValueError(f"cannot read {path}: {_one_line(error)}") from error
        notes.append(Note(f"`{name}.csv` cannot be read ({_one_line(error)}); treated as empty"))
        return pd.DataFrame(columns=columns)
    frame, conformed = schema.conform(frame, name)
    renames = conformed.renamed
    check_schema(frame.drop(columns=list(conformed.implied)), name, path)  # as written
    if renames:
        read_as = ", ".join(f"`{old}` as `{new}`" for old, new in renames.items())
        text = f"`{name}.csv` is from an older schema: read {read_as}"
        notes.append(Note(text, NoteKind.RENAMED_COLUMNS))
    # The newer columns are named apart: an older table lacking them is expected, a table
    # lacking older ones is damaged.
    current = [RENAMED[name].get(c, c) for c in COLUMNS[name]]
    absent = [c for c in current if c not in frame.columns and c not in NEW_COLUMNS[name]]
    if absent:
        notes.append(
            Note(f"`{name}.csv` lacks columns {', '.join(absent)} (treated as not measured)")
        )
    newer = [c for c in NEW_COLUMNS[name] if c not in frame.columns]
    if newer:
        text = (
            f"`{name}.csv` was written before the columns {', '.join(newer)} existed: those "
            "measurements are not reported"
        )
        notes.append(Note(text, NoteKind.NEWER_COLUMNS, tuple(newer)))
    frame = frame.assign(**{c: np.nan for c in absent + newer})
    if name == "runs":
        for column in BOOL_RUN_COLUMNS:
            frame[column] = frame[column].map(_parse_bool).astype(object)
    return frame


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


def _strategy_sort_key(label: str, strategy: str, order: list[str]) -> tuple:
    return (order.index(strategy), natural_key(label))


def _complete_from_tables(runs: pd.DataFrame, epochs: pd.DataFrame, steps: pd.DataFrame) -> None:
    """Fill the summary cells a runs row lacks (older or partial folders) from its epochs / steps
    rows, with the runner's own summary function: one definition of every summary column."""
    by_epochs = dict(tuple(epochs.groupby("run_id"))) if len(epochs) else {}
    by_steps = dict(tuple(steps.groupby("run_id"))) if len(steps) else {}
    empty_epochs, empty_steps = epochs.iloc[:0], steps.iloc[:0]
    for index, run_id in runs["run_id"].items():
        if run_id not in by_epochs and run_id not in by_steps:
            continue
        run_epochs = by_epochs.get(run_id, empty_epochs)
        summary = run_summary(by_steps.get(run_id, empty_steps), run_epochs)
        if len(run_epochs):  # the naive reconstruction's metrics are recorded per evaluation
            last = run_epochs.iloc[-1]
            summary.update({c: last[c] for c in run_epochs if c.startswith("naive_test_")})
        for column, value in summary.items():
            if column not in runs:
                runs[column] = np.nan
            if pd.isna(runs.at[index, column]) and not _is_missing(value):
                runs.at[index, column] = value


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _drop_unconverged_cosines(epochs: pd.DataFrame) -> pd.DataFrame:
    """A cosine against a reference that did not converge is no measurement: NaN in the copy."""
    unconverged = epochs["grad_reference_converged"] == 0
    return epochs.assign(grad_cosine=epochs["grad_cosine"].mask(unconverged))


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


def prepare(results_dir: Path) -> tuple[ReportData, list[Note]]:
    """Load a results folder into a :class:`ReportData`, plus notes on what is missing (each
    with its :class:`~bench.report.model.NoteKind`).

    Raises ValueError when runs.csv is missing or unreadable or a table is not this tool's.
    """
    notes: list[Note] = []
    runs = _numeric(read_table(results_dir, "runs", notes), TEXT_RUN_COLUMNS | BOOL_RUN_COLUMNS)
    epochs = _numeric(read_table(results_dir, "epochs", notes), {"run_id", "strategy"})
    steps = _numeric(read_table(results_dir, "steps", notes), {"run_id", "strategy"})

    runs["run_id"] = runs["run_id"].astype(str)
    if runs["run_id"].duplicated().any():
        duplicated = sorted(set(runs.loc[runs["run_id"].duplicated(), "run_id"]))
        notes.append(
            Note(f"runs.csv repeats run ids {', '.join(duplicated)}; the last row is used")
        )
        runs = runs.drop_duplicates("run_id", keep="last")
    runs["strategy"] = runs["strategy"].fillna("unknown").astype(str)
    runs["label"] = display_labels(runs, notes)
    runs["status"] = runs["status"].fillna("unknown").astype(str).str.strip().str.lower()
    runs["is_baseline"] = runs["strategy"].str.startswith(BASELINE_PREFIX)
    runs["baseline_name"] = (
        runs["strategy"].str.removeprefix(BASELINE_PREFIX).where(runs["is_baseline"])
    )

    for name, frame in (("epochs", epochs), ("steps", steps)):
        frame["run_id"] = frame["run_id"].astype(str)
        unknown = sorted(set(frame["run_id"]) - set(runs["run_id"]))
        if unknown:
            shown = ", ".join(unknown[:5]) + (", …" if len(unknown) > 5 else "")
            notes.append(
                Note(
                    f"`{name}.csv` has rows of {len(unknown)} run(s) absent from runs.csv "
                    f"({shown}); ignored"
                )
            )
    epochs = _drop_unconverged_cosines(_sort_evaluations(epochs))
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
    order = strategy_order(first_strategy.unique())
    labels = sorted(
        first_strategy.index, key=lambda lab: _strategy_sort_key(lab, first_strategy[lab], order)
    )
    tasks = runs["task"].dropna().unique()
    data = ReportData(
        runs=runs, learned_ok=learned_ok,
        baselines=runs[runs["is_baseline"] & (runs["status"] == "ok")].copy(),
        epochs=epochs, steps=steps, labels=labels,
        palette=label_palette(labels, first_strategy.to_dict()),
        strategy_colors=strategy_palette(first_strategy.unique()),
        recons_dir=results_dir / "recons",
        naive_metrics=_naive_metrics(runs, epochs),
        naive_name=naive_name(tasks[0] if len(tasks) == 1 else None),
    )  # fmt: skip
    notes += _coverage_notes(results_dir, data, ok_step_rows=len(steps))
    return data, notes


def _naive_metrics(runs: pd.DataFrame, epochs: pd.DataFrame) -> dict[str, float]:
    """Each registered metric's mean value for the naive reconstruction, where recorded."""
    values = {}
    for name in METRICS:
        column = f"naive_test_{name}"
        found = [frame[column] for frame in (runs, epochs) if column in frame]
        value = _mean_or_none(*found)
        if value is not None:
            values[name] = value
    return values


def _mean_or_none(*candidates: pd.Series) -> float | None:
    for series in candidates:
        values = pd.to_numeric(series, errors="coerce").dropna()
        if len(values):
            return float(values.mean())
    return None


def _coverage_notes(results_dir: Path, data: ReportData, ok_step_rows: int) -> list[Note]:
    """Pieces missing for runs that did finish: epochs, steps, reconstructions, seeds."""
    notes = []
    ok = data.learned_ok
    no_epochs = sorted(set(ok["run_id"]) - set(data.epochs["run_id"]))
    if no_epochs and (results_dir / "epochs.csv").exists():
        notes.append(Note(f"no epochs.csv rows for ok run(s): {', '.join(no_epochs)}"))
    # A finished run always evaluates after its last step, i.e. in its last epoch; with
    # ``eval_every`` it need not evaluate in every epoch, so the test is the last epoch reached.
    last = data.epochs.groupby("run_id")["epoch"].max()
    planned = ok.set_index("run_id")["epochs"]
    short = [
        f"{run_id} (last evaluation in epoch {int(last[run_id])} of {int(planned[run_id])})"
        for run_id in last.index
        if pd.notna(planned.get(run_id)) and last[run_id] < planned[run_id]
    ]
    if short:
        text = "ok runs whose evaluations stop before their last epoch: " + ", ".join(short)
        notes.append(Note(text))
    if (results_dir / "steps.csv").exists():
        if ok_step_rows == 0 and len(ok):
            notes.append(Note("`steps.csv` has no rows of ok runs: per-step figures use runs.csv"))
        else:
            no_steps = sorted(set(ok["run_id"]) - set(data.steps["run_id"]))
            if no_steps:
                notes.append(Note(f"no steps.csv rows for ok run(s): {', '.join(no_steps)}"))
    else:
        notes.append(
            Note(
                "per-step timings, iterations and convergence come from runs.csv only "
                "(steps.csv missing)"
            )
        )
    recons = NoteKind.RECONSTRUCTIONS
    if not data.recons_dir.exists():
        notes.append(Note("`recons/` is missing: no reconstruction grid", recons))
    elif not (data.recons_dir / "reference.npz").exists():
        notes.append(Note("`recons/reference.npz` is missing: no reconstruction grid", recons))
    learned = data.runs[~data.runs["is_baseline"]].dropna(subset=["seed"])
    for _, within in learned.groupby("setting", sort=False):  # seeds are compared per setting
        seeds = within.groupby("label")["seed"].apply(set)
        every_seed = set().union(*seeds) if len(seeds) else set()
        for label, present in seeds.items():
            absent = sorted(every_seed - present)
            if absent:
                seeds_text = ", ".join(fmt_value(s) for s in absent)
                notes.append(
                    Note(
                        f"{label} has no run for seed(s) {seeds_text} "
                        "(present for other labels of its setting)"
                    )
                )
    return notes


# ---------------------------------------------------------------------------------------------
# Settings: seeds are pooled within one configuration only


def _described(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The ``columns`` of ``runs`` as display strings (DASH where not recorded)."""
    return pd.DataFrame({c: runs[c].map(fmt_value) for c in columns}, index=runs.index)


def _agrees(row: tuple, other: tuple) -> bool:
    """Equal wherever both are recorded (a failed run records no data size, for one)."""
    return all(a == b or DASH in (a, b) for a, b in zip(row, other, strict=True))


def setting_keys(runs: pd.DataFrame, notes: list[Note]) -> pd.Series:
    """Per learned run, the key of its setting (NaN for baselines; see :func:`split_settings`).

    Runs share a setting when their configuration differs only by seed and strategy: the same
    ``setting_hash``, or, in results written before that column existed, the same
    :func:`setting_columns`. A run that did not record every setting column (a failed run has no
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
    columns = [c for c in setting_columns() if c in runs.columns and runs[c].notna().any()]
    text = (
        f"{len(rest)} run(s) have no `setting_hash` (results written before it existed): "
        "settings are told apart by the columns " + ", ".join(columns)
    )
    notes.append(Note(text, NoteKind.NEWER_COLUMNS, ("setting_hash",)))
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

    A baseline belongs to every setting whose data and task (:func:`data_columns`) it shares;
    baselines that match no learned setting form settings of their own. Settings are ordered by
    the values that tell them apart, and titled with them (e.g. ``noise_std = 0.2``).
    """
    runs = data.runs
    learned = runs[~runs["is_baseline"]]
    baselines = runs[runs["is_baseline"]]
    shared = [c for c in data_columns() if c in runs.columns]
    members: dict[str, list[str]] = {}
    for key, group in learned.groupby("setting", sort=False):
        members[key] = list(group["run_id"])
    signatures = {
        key: tuple(_representative(runs[runs["run_id"].isin(ids)], shared).values())
        for key, ids in members.items()
    }
    orphans: dict[str, list[str]] = {}
    base_described = _described(baselines, shared)
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
    columns = [c for c in (*setting_columns(), "n_test") if c in runs.columns]
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
    """``data`` restricted to the runs ``run_ids`` (the palette stays shared)."""
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
        naive_metrics=_naive_metrics(runs, epochs),
        scaling_runs=data.learned_ok,  # the scaling figures compare across settings
    )
