"""`implicit-bench compare A B`: folders built from one real tiny run, edited copies of it, and
bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import MINI_RUN, markdown_tables
from scipy import stats

from bench.cli import main
from bench.report.compare import COUNTED, WELCH_STEPS, _cost_change
from bench.report.stats import welch_difference
from bench.summary import run_summary

SLOWED = "unrolled:k=2"  # the label whose step times the edited copy multiplies
assert f'"{SLOWED}"' in MINI_RUN  # the shared run's suite


@pytest.fixture
def tiny(mini_run) -> Path:
    """One real run of the smallest suite: jfb and unrolled:k=2, two seeds each (shared)."""
    return mini_run


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(folder / f"{name}.csv") for name in ("runs", "epochs", "steps")}


def _write(folder: Path, tables: dict[str, pd.DataFrame]) -> None:
    for name, frame in tables.items():
        frame.to_csv(folder / f"{name}.csv", index=False)


def _slow_down(folder: Path, label: str, factor: float) -> None:
    """Multiply every step-phase time of ``label``'s runs by ``factor`` in steps.csv, the training
    time in epochs.csv, and recompute runs.csv's time columns from them with the runner's own
    summary (bench.summary.run_summary), so the three tables stay consistent."""
    tables = _tables(folder)
    runs, epochs, steps = tables["runs"], tables["epochs"], tables["steps"]
    ids = set(runs.loc[runs["strategy_label"] == label, "run_id"])
    assert ids, f"no runs of {label}"
    in_steps = steps["run_id"].isin(ids)
    for column in ("forward_time_s", "backward_time_s", "optimizer_time_s", "step_time_s"):
        steps.loc[in_steps, column] *= factor
    epochs.loc[epochs["run_id"].isin(ids), "train_time_s"] *= factor
    for index in runs.index[runs["run_id"].isin(ids)]:
        run_id = runs.at[index, "run_id"]
        summary = run_summary(steps[steps["run_id"] == run_id], epochs[epochs["run_id"] == run_id])
        for column, value in summary.items():
            if column.endswith("time_s"):
                runs.at[index, column] = value
    _write(folder, tables)


def _compare(capsys, *args) -> tuple[int, str, str]:
    code = main(["compare", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _row(markdown: str, header: str, label: str) -> dict[str, str]:
    """The row of ``label`` in the table whose header has ``header``, as {column: cell}."""
    for table in markdown_tables(markdown):
        if header in table[0]:
            for row in table[1:]:
                if row[0] == label:
                    return dict(zip(table[0], row, strict=True))
    raise AssertionError(f"no row {label!r} under a header {header!r}")


@pytest.mark.slow
def test_a_folder_against_itself_reports_no_change_and_exits_0(tiny, capsys, tmp_path):
    output = tmp_path / "out" / "compare.md"
    code, out, err = _compare(capsys, tiny, tiny, "--output", output)
    assert code == 0, out + err
    assert "No strategy label is significantly slower" in out
    for label in ("jfb", SLOWED):
        time = _row(out, "median step A", label)
        assert time["B / A [95 % CI]"] == "1.00× [1.00, 1.00]: no significant difference"
        assert time["compared by"] == "paired by seed"
        assert time["seeds A / B"] == "2 / 2"
        assert time["timings A"] == time["timings B"] != "—"
        assert _row(out, "Jacobian products / step A → B", label)["B / A [95 % CI]"].endswith(
            "no significant difference"
        )
        quality = _row(out, "PSNR (dB)", label)
        assert quality["PSNR (dB)"].startswith("no significant difference (+0.00 dB")
    assert output.read_text() == out  # the same Markdown, written to the file


@pytest.mark.slow
def test_a_strategy_with_1_5x_step_times_is_named_and_exits_1(tiny, capsys, tmp_path):
    slower = _copy(tiny, tmp_path / "slower")
    _slow_down(slower, SLOWED, 1.5)
    code, out, err = _compare(capsys, tiny, slower)
    assert code == 1, out + err
    verdict = out.split("## Step time")[0]
    assert f"- {SLOWED}: slower, step time 1.50× [1.50, 1.50]" in verdict
    assert "- jfb" not in verdict
    assert _row(out, "median step A", SLOWED)["B / A [95 % CI]"].endswith(": slower")
    assert _row(out, "median step A", "jfb")["B / A [95 % CI]"].endswith(
        "no significant difference"
    )
    # the other way round it is faster, which is no regression
    code, out, _ = _compare(capsys, slower, tiny)
    assert code == 0
    assert _row(out, "median step A", SLOWED)["B / A [95 % CI]"] == "0.67× [0.67, 0.67]: faster"
    # a threshold above the change lets it pass
    code, out, _ = _compare(capsys, tiny, slower, "--threshold", "60")
    assert code == 0
    assert _row(out, "median step A", SLOWED)["B / A [95 % CI]"].endswith("within threshold")


def _set_timing(folder: Path, reliable: bool, note: str = "") -> None:
    tables = _tables(folder)
    tables["runs"]["timing_reliable"] = reliable
    tables["runs"]["timing_note"] = note
    _write(folder, tables)


@pytest.mark.slow
def test_a_slowdown_on_unreliable_timings_says_so(tiny, capsys, tmp_path):
    reliable = _copy(tiny, tmp_path / "reliable")
    _set_timing(reliable, True)
    busy = _copy(tiny, tmp_path / "busy")
    _slow_down(busy, SLOWED, 1.5)
    _set_timing(busy, False, "load average 9.00 > 2 cores + 1")
    code, out, err = _compare(capsys, reliable, busy)
    assert code == 1, out + err
    assert f"- {SLOWED}: slower, step time 1.50× [1.50, 1.50] (timings unreliable on B)" in out
    row = _row(out, "median step A", SLOWED)
    assert (row["timings A"], row["timings B"]) == ("reliable (2 of 2)", "2 of 2 unreliable")
    assert f"- B: {SLOWED}: timings of 2 run(s) unreliable (load average 9.00 > 2 cores + 1)" in out


@pytest.mark.slow
def test_heavier_memory_and_a_worse_metric_are_regressions(tiny, capsys, tmp_path):
    changed = _copy(tiny, tmp_path / "changed")
    tables = _tables(changed)
    runs = tables["runs"]
    jfb = runs["strategy_label"] == "jfb"
    runs.loc[jfb, "peak_step_bytes"] *= 1.25
    slowed = runs["strategy_label"] == SLOWED
    runs.loc[slowed, "final_test_psnr"] -= [0.6, 0.62]  # per seed: a real spread, both below
    _write(changed, tables)
    code, out, err = _compare(capsys, tiny, changed)
    assert code == 1, out + err
    verdict = out.split("## Step time")[0]
    assert "- jfb: heavier, peak step memory 1.25× [1.25, 1.25]" in verdict
    assert f"- {SLOWED}: worse PSNR, -0.61 dB [" in verdict
    # the paired interval of the two per-seed differences, computed independently
    low, high = stats.t.interval(0.95, 1, loc=-0.61, scale=stats.sem([-0.6, -0.62]))
    assert f"[{low:+.2f}, {high:+.2f}]" in verdict


@pytest.mark.slow
def test_different_seeds_are_compared_by_welch(tiny, capsys, tmp_path):
    """B ran other seeds: no pairing; the intervals are Welch's."""
    other = _copy(tiny, tmp_path / "other")
    tables = _tables(other)
    for frame in tables.values():
        frame["seed"] = frame["seed"] + 10
    _write(other, tables)
    code, out, err = _compare(capsys, tiny, other)
    assert code == 0, out + err
    assert _row(out, "median step A", "jfb")["compared by"] == "Welch's t over seeds"
    assert _row(out, "PSNR (dB)", "jfb")["compared by"] == "Welch's t over seeds"


@pytest.mark.slow
def test_a_folder_of_another_setting_is_compared_and_the_difference_said(tiny, capsys, tmp_path):
    other = _copy(tiny, tmp_path / "other")
    tables = _tables(other)
    runs = tables["runs"]
    lr = runs["lr"].iloc[0]
    runs["lr"] = 2 * lr
    runs["setting_hash"] = "another"
    _write(other, tables)
    code, out, err = _compare(capsys, tiny, other)
    assert code == 0, out + err
    assert f"- the folders ran different settings: lr {lr:g} → {2 * lr:g}" in out
    assert _row(out, "median step A", "jfb")["compared by"] == "paired by seed"


def test_one_seed_judges_time_by_its_steps_and_memory_by_the_ratio():
    """With a single seed on a side there are no per-seed intervals: the timed steps are the
    samples for step time (Welch's t on their logs), and memory, an exact count, is judged by its
    ratio alone."""
    a_steps = pd.Series([1.0, 1.1, 0.9, 1.05, 0.95])
    slow = _cost_change(pd.Series({0: 1.0}), pd.Series({0: 1.5}), False, WELCH_STEPS,
                        (a_steps, 1.5 * a_steps))  # fmt: skip
    assert slow.basis == WELCH_STEPS and slow.verdict(0.1) == "higher"
    logs = np.log(a_steps.to_numpy())
    expected = stats.ttest_ind(logs + np.log(1.5), logs, equal_var=False).confidence_interval()
    assert slow.interval == pytest.approx((np.exp(expected.low), np.exp(expected.high)))
    same = _cost_change(pd.Series({0: 1.0}), pd.Series({0: 1.0}), False, WELCH_STEPS,
                        (a_steps, a_steps.iloc[::-1]))  # fmt: skip
    assert same.verdict(0.1) == "no significant difference"
    heavier = _cost_change(pd.Series({0: 100.0}), pd.Series({0: 120.0}), False, COUNTED)
    assert heavier.basis == COUNTED and heavier.verdict(0.1) == "higher"
    assert heavier.verdict(0.25) == "within threshold"
    lone = _cost_change(pd.Series({0: 1.0}), pd.Series({0: 2.0}), False, WELCH_STEPS, None)
    assert lone.verdict(0.1) == "no interval"


def test_welch_difference_matches_scipys_welch_interval():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 0.3, 5), rng.normal(0.4, 0.9, 8)
    estimate = welch_difference(a, b)
    expected = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert estimate.mean == pytest.approx(a.mean() - b.mean())
    assert (estimate.low, estimate.high) == pytest.approx((expected.low, expected.high))
    assert not welch_difference([1.0], b).has_interval
    assert welch_difference([], b).n == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tiny, tmp: (tmp / "absent", tiny), "no results at"),
        (lambda tiny, tmp: (tiny, Path("/dev/null/not-here")), "no results at"),
        (lambda tiny, tmp: (tiny, _only(tiny, tmp / "failed", status="failed")), "no finished"),
        (lambda tiny, tmp: (_only(tiny, tmp / "a", "jfb"), _only(tiny, tmp / "b", SLOWED)),
         "share no strategy label"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(tiny, capsys, tmp_path, make, message):
    a, b = make(tiny, tmp_path)
    code, out, err = _compare(capsys, a, b)
    assert code == 2, out + err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err


@pytest.mark.slow
def test_a_negative_threshold_or_unwritable_output_exits_2(tiny, capsys, tmp_path):
    code, _, err = _compare(capsys, tiny, tiny, "--threshold", "-5")
    assert code == 2 and "threshold" in err and len(err.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = _compare(capsys, tiny, tiny, "--output", blocker / "x.md")
    assert code == 2 and "cannot write" in err and len(err.strip().splitlines()) == 1


def _only(folder: Path, to: Path, label: str | None = None, status: str | None = None) -> Path:
    """A copy of ``folder`` keeping only ``label``'s runs, or with every run given ``status``."""
    to = _copy(folder, to)
    tables = _tables(to)
    runs = tables["runs"]
    if status is not None:
        runs["status"] = status
    if label is not None:
        keep = set(runs.loc[runs["strategy_label"] == label, "run_id"])
        tables = {name: frame[frame["run_id"].isin(keep)] for name, frame in tables.items()}
    _write(to, tables)
    return to
