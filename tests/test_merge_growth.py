"""Merges grow linearly (issue 18 §3): a merge after a finished run appends that run's rows to the
merged CSVs instead of rewriting them, and what it writes is counted here (never timed); the
tables are rewritten whole only when they cannot be trusted or a column or a part changed, and
always equal a fresh full merge."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_config
from test_reliability import FakeTrain, fake_tables, load, tiny_suite

from bench import execution, merge_journal, results, sweep

STEPS = 5  # training-step rows per synthetic run: steps.csv is the table that grows fastest


def _tables(run_id: str, psnr: float = 20.0, **extra) -> dict[str, pd.DataFrame]:
    """A valid run's tables under ``run_id``, with ``extra`` runs.csv columns."""
    tables = fake_tables(run_config("jfb", 0), psnr=psnr)
    steps = pd.concat([tables["steps"]] * STEPS, ignore_index=True)
    tables["steps"] = steps.assign(step=range(STEPS))
    tables["runs"] = tables["runs"].assign(**extra)
    return {name: tables[name].assign(run_id=run_id) for name in results.TABLES}


def _synthetic_folder(out: Path, n: int) -> None:
    """``n`` valid parts, copies of one written part under other ids (written plainly: fast)."""
    results.write_run(out, "template", _tables("template"))
    # no epochs.csv (a part may lack it): reading 1,000 parts is what costs here
    template = {n: (out / "parts" / "template" / f"{n}.csv").read_text() for n in ("runs", "steps")}
    for i in range(n):
        folder = out / "parts" / f"synthetic-{i:04d}"
        folder.mkdir()
        for name, text in template.items():
            (folder / f"{name}.csv").write_text(text.replace("template", folder.name))
    shutil.rmtree(out / "parts" / "template")


@pytest.fixture
def writes(monkeypatch):
    """(file name, bytes, how) of every write into a results folder: 'whole' for an atomic
    rewrite, 'append' for bytes appended; a part's files are named ``part:<name>``."""
    monkeypatch.setattr(results, "_PART_CACHE", {})
    monkeypatch.setattr(results, "_MERGED", {})
    monkeypatch.setattr(merge_journal, "_READ", {})
    seen: list[tuple[str, int, str]] = []
    whole, append = results.atomic_write_bytes, merge_journal.append_bytes

    def counting_whole(path, data):
        seen.append((_name(path), len(data), "whole"))
        whole(path, data)

    def counting_append(path, data):
        seen.append((_name(path), len(data), "append"))
        append(path, data)

    monkeypatch.setattr(results, "atomic_write_bytes", counting_whole)
    monkeypatch.setattr(merge_journal, "append_bytes", counting_append)
    return seen


def _name(path) -> str:
    path = Path(path)
    return f"part:{path.name}" if path.parent.parent.name == "parts" else path.name


def _fresh_merge(out: Path, tmp: Path) -> dict[str, pd.DataFrame]:
    """What a full merge of ``out``'s parts in a fresh folder (and process cache) gives."""
    fresh = tmp / "fresh"
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(out / "parts", fresh / "parts")
    saved = dict(results._PART_CACHE), dict(results._MERGED)
    results._PART_CACHE.clear(), results._MERGED.clear()
    try:
        results.merge(fresh)
    finally:
        results._PART_CACHE.update(saved[0]), results._MERGED.update(saved[1])
    return {name: results.read_table(fresh / f"{name}.csv") for name in results.TABLES}


def _assert_equals_fresh_merge(out: Path, tmp: Path) -> None:
    """The merged CSVs, read back, hold the rows and columns of a fresh full merge (appended rows
    follow in the order their runs finished, so rows are compared in run id order)."""
    expected = _fresh_merge(out, tmp)
    for name in results.TABLES:
        got = results.read_table(out / f"{name}.csv")
        assert set(got.columns) == set(expected[name].columns), name
        got = got[list(expected[name].columns)].sort_values("run_id", kind="stable")
        pd.testing.assert_frame_equal(
            got.reset_index(drop=True), expected[name].reset_index(drop=True), obj=name
        )


def _is_table(name: str) -> bool:
    return name in {f"{t}.{ext}" for t in results.TABLES for ext in ("csv", "parquet")}


# 1,000 parts cost ~10 s of CPU to read once (the command's first merge), hence the slow tier
@pytest.mark.parametrize("n", [100, pytest.param(1000, marks=pytest.mark.slow)])
def test_a_merge_after_a_run_writes_only_that_runs_rows(tmp_path, writes, n):
    out = tmp_path / "out"
    _synthetic_folder(out, n)
    results.merge_new(out)  # the first merge of a command: no journal yet, a whole rewrite
    assert {name for name, _, how in writes if how == "whole"} >= {"runs.csv", "steps.csv"}
    assert len(pd.read_csv(out / "steps.csv")) == n * STEPS
    for k in range(3):  # three more runs finish, each followed by a merge
        run_id = f"new-{k}"
        results.write_run(out, run_id, _tables(run_id))
        part = sum((out / "parts" / run_id / f"{n}.csv").stat().st_size for n in results.TABLES)
        sizes = {n: (out / f"{n}.csv").stat().st_size for n in results.TABLES}
        writes.clear()
        results.merge_new(out)
        assert not [w for w in writes if w[2] == "whole"]  # no table rewritten
        appended = {name: size for name, size, _ in writes}
        for name in results.TABLES:  # each table grew by exactly what was appended
            grown = (out / f"{name}.csv").stat().st_size - sizes[name]
            assert grown == appended[f"{name}.csv"] > 0, name
        assert sum(appended.values()) < part + 2000  # the new rows and one journal line
        steps = pd.read_csv(out / "steps.csv")
        assert len(steps) == (n + 1 + k) * STEPS and (steps.run_id == run_id).sum() == STEPS
    writes.clear()
    results.merge_new(out)  # nothing new: nothing written
    assert writes == []


def test_a_sweep_appends_after_each_run_and_rewrites_once_at_its_end(tmp_path, monkeypatch):
    monkeypatch.setattr(execution, "train", FakeTrain())
    calls = []
    for name in ("merge", "merge_new"):
        real = getattr(results, name)
        monkeypatch.setattr(
            results, name, lambda out, real=real, name=name: (calls.append(name), real(out))[1]
        )
    out = tmp_path / "out"
    assert sweep.run_suite(load(tiny_suite(tmp_path)), out, progress=False)["ok"] == 3
    assert calls.count("merge_new") == 3 and calls[-1] == "merge"
    assert list(results.load(out)["runs"].run_id) == sorted(results.load(out)["runs"].run_id)
    assert (out / merge_journal.JOURNAL).exists()


def _merged_with(out: Path, run_ids: list[str]) -> None:
    for run_id in run_ids:
        results.write_run(out, run_id, _tables(run_id))
        results.merge_new(out)


@pytest.mark.parametrize("cut", ["half a line, no journal line", "raised in the runs append"])
def test_a_kill_during_an_append_is_repaired_by_the_next_merge(tmp_path, writes, monkeypatch, cut):
    out = tmp_path / "out"
    _merged_with(out, ["a", "b"])
    results.write_run(out, "c", _tables("c"))
    if cut.startswith("half"):  # the rows of c begun, the process killed before the commit
        line = (out / "steps.csv").read_text().splitlines()[-1].replace(",b,", ",c,")
        with open(out / "steps.csv", "a") as fh:
            fh.write(line[: len(line) // 2])
    else:
        real = merge_journal.append_bytes

        def killed_in_runs(path, data):
            if Path(path).name == "runs.csv":
                real(path, data[: len(data) // 2])
                raise KeyboardInterrupt  # stands in for SIGKILL: nothing after it runs
            real(path, data)

        monkeypatch.setattr(merge_journal, "append_bytes", killed_in_runs)
        with pytest.raises(KeyboardInterrupt):
            results.merge_new(out)
        monkeypatch.setattr(merge_journal, "append_bytes", real)
    writes.clear()
    results.merge_new(out)
    assert {name for name, _, how in writes if how == "whole"} >= {"runs.csv", "steps.csv"}
    _assert_equals_fresh_merge(out, tmp_path)
    assert sorted(results.load(out)["runs"].run_id) == ["a", "b", "c"]
    writes.clear()
    _merged_with(out, ["d"])  # appending again afterwards
    assert not [w for w in writes if w[2] == "whole" and _is_table(w[0])]
    _assert_equals_fresh_merge(out, tmp_path)


def test_a_replaced_or_set_aside_part_is_reflected(tmp_path, writes):
    out = tmp_path / "out"
    _merged_with(out, ["a", "b", "c"])
    results.write_run(out, "b", _tables("b", psnr=31.0))  # `run --force` redid b
    results.merge_new(out)
    runs = results.load(out)["runs"].set_index("run_id")
    assert len(runs) == 3 and runs.loc["b", "final_test_psnr"] == 31.0
    assert len(results.load(out)["steps"].query("run_id == 'b'")) == STEPS  # not twice
    _assert_equals_fresh_merge(out, tmp_path)
    results.quarantine(out, out / "parts" / "c", "test")  # a part set aside
    results.merge_new(out)
    assert sorted(results.load(out)["runs"].run_id) == ["a", "b"]
    _assert_equals_fresh_merge(out, tmp_path)


def test_merged_tables_equal_a_fresh_merge_through_appends_a_replacement_and_a_new_column(
    tmp_path, writes
):
    out = tmp_path / "out"
    _merged_with(out, ["m", "c"])  # c sorts before m: appended out of order
    _assert_equals_fresh_merge(out, tmp_path)
    _merged_with(out, ["a", "z"])
    _assert_equals_fresh_merge(out, tmp_path)
    results.write_run(out, "c", _tables("c", psnr=25.0))  # replaced
    results.merge_new(out)
    _assert_equals_fresh_merge(out, tmp_path)
    writes.clear()
    results.write_run(out, "n", _tables("n", p_momentum=0.9))  # a column the table lacks
    results.merge_new(out)
    assert ("runs.csv", "whole") in {(name, how) for name, _, how in writes}
    runs = results.load(out)["runs"].set_index("run_id")
    assert runs.loc["n", "p_momentum"] == 0.9 and runs["p_momentum"].isna().sum() == 4
    _assert_equals_fresh_merge(out, tmp_path)
    writes.clear()
    _merged_with(out, ["b"])  # an older run without the column: appended, the cell empty
    assert not [w for w in writes if w[2] == "whole" and _is_table(w[0])]
    assert results.load(out)["runs"].set_index("run_id")["p_momentum"].isna().sum() == 5
    _assert_equals_fresh_merge(out, tmp_path)
    results.merge(out)  # the end of a sweep: sorted again, as a fresh merge
    for name in results.TABLES:
        pd.testing.assert_frame_equal(
            results.read_table(out / f"{name}.csv"), _fresh_merge(out, tmp_path)[name]
        )


def test_a_table_changed_outside_the_merge_is_rebuilt(tmp_path, writes):
    out = tmp_path / "out"
    _merged_with(out, ["a", "b"])
    (out / "epochs.csv").write_text("run_id\n")  # replaced by hand (or an older harness)
    _merged_with(out, ["c"])
    _assert_equals_fresh_merge(out, tmp_path)
    (out / merge_journal.JOURNAL).write_text('{"columns": {}')  # a journal line cut short
    _merged_with(out, ["d"])
    _assert_equals_fresh_merge(out, tmp_path)
