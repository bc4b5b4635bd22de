"""Results are never lost (issue 20): a perfect score (PSNR = +inf) is a value, not a broken
part; merging after each run reads only the new part; a folder written by an older commit
resumes with nothing set aside or dropped."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_config
from test_reliability import FakeTrain, fake_tables, load, part_ids, tiny_suite
from test_report_settings import Folder, _build, _cells, _compared, no_figures  # noqa: F401 (a fixture)

from bench import execution, results, sweep
from bench.cli import main
from bench.report import build_report, prepare

# ---- a perfect reconstruction (PSNR = +inf) is kept -------------------------------------------


def test_an_infinite_psnr_is_a_result_not_a_broken_part(tmp_path, monkeypatch, capsys):
    perfect = FakeTrain(psnr=math.inf)
    monkeypatch.setattr(execution, "train", perfect)
    suite = load(tiny_suite(tmp_path))
    out = tmp_path / "out"
    assert sweep.run_suite(suite, out, progress=False)["ok"] == 3
    perfect.calls.clear()
    capsys.readouterr()

    counts = sweep.run_suite(suite, out, progress=False)
    assert "broken part" not in capsys.readouterr().err
    assert perfect.calls == [] and counts["skipped"] == 3  # nothing trained again
    assert not (out / "parts" / results.BROKEN_DIR).exists()
    runs = results.load(out)["runs"]
    assert len(runs) == 3 and (runs["final_test_psnr"] == math.inf).all()


@pytest.mark.usefixtures("no_figures")
def test_the_target_uses_finite_values_and_says_when_there_are_none(tmp_path):
    perfect = Folder()
    for seed in range(2):
        perfect.learned("jfb", seed, math.inf, 8.0)
    perfect.baseline("tv", math.inf)
    markdown = _build(perfect.write(tmp_path / "perfect"), tmp_path / "a")
    assert "Target PSNR: **none** — no finite PSNR was recorded" in markdown
    assert "inf dB" not in markdown.split("Target PSNR")[1].splitlines()[0]

    mixed = Folder()
    for seed, psnr in enumerate((30.0, 32.0)):
        mixed.learned("jfb", seed, psnr, 8.0, ssim=0.9)
        mixed.learned("cg", seed, math.inf, 8.0, ssim=0.9)
    mixed.learned("neumann", 0, 31.0, 8.0, ssim=0.9)
    mixed.learned("neumann", 1, math.inf, 8.0, ssim=0.9)
    markdown = _build(mixed.write(tmp_path / "mixed"), tmp_path / "b")
    # midway between the naive 20 dB and the best finite learned mean (31 dB)
    assert "Target PSNR: **25.50 dB**" in markdown
    # the quality cells and differences say where the values were infinite, never blank
    assert "+inf in 2 seeds" in _cells(markdown, "cg", "PSNR (dB)")
    assert "31.00 (1 seed: no CI); +inf in 1 seed not in the mean" in _cells(
        markdown, "neumann", "PSNR (dB)"
    )
    assert _compared(markdown, "cg − jfb", "PSNR (dB)", "verdict") == [
        "no finite difference: +inf in 2 seeds"
    ]


# ---- a folder written by an older commit resumes ---------------------------------------------

OLDER = Path(__file__).parent / "fixtures" / "older_folders"


class SettingFakeTrain(FakeTrain):
    """FakeTrain whose rows carry the run's setting_hash, as train() writes it."""

    def __call__(self, run, device, progress=False):
        tables = super().__call__(run, device, progress)
        tables["runs"]["setting_hash"] = run.setting_hash
        return tables


def _older_folder(tmp_path: Path, commit: str) -> Path:
    out = tmp_path / commit
    shutil.copytree(OLDER / commit, out)
    return out


def _rows(out: Path) -> dict[str, dict]:
    return {row["run_id"]: row for row in results.load(out)["runs"].to_dict("records")}


@pytest.mark.parametrize("commit", ["12fb0d5", "db97b47"])
def test_a_folder_of_an_older_commit_resumes_without_losing_or_redoing_anything(
    tmp_path, commit, monkeypatch, capsys
):
    out = _older_folder(tmp_path, commit)
    before = pd.read_csv(out / "runs.csv", dtype=str).set_index("run_id")
    fake = SettingFakeTrain()
    monkeypatch.setattr(execution, "train", fake)
    suite = load(OLDER / "tiny.toml")

    counts = sweep.run_suite(suite, out, progress=False)
    printed = capsys.readouterr()
    assert "broken part" not in printed.err
    assert not (out / "parts" / results.BROKEN_DIR).exists()
    assert fake.calls == [] and counts["skipped"] == 1  # the same settings: not retrained
    assert set(part_ids(out)) == set(before.index)
    rows = _rows(out)
    assert set(rows) == set(before.index)  # runs.csv keeps every older row ...
    for run_id, row in rows.items():  # ... with its results and its commit
        assert row["git_commit"] == before.loc[run_id, "git_commit"]
        assert row["final_test_psnr"] == pytest.approx(float(before.loc[run_id, "final_test_psnr"]))
        assert row["model_activation"] == "relu"  # implied: the only activation then
        assert pd.isna(row.get("jacobian_products_per_step"))  # not measured then
    assert printed.out.count("written by an older harness and lack the column(s)") == 1
    assert "jacobian_products_per_step" in printed.out

    # a strategy added to the suite is trained; the older run is pooled with it in one setting
    wider = load(OLDER / "tiny.toml")
    wider = dataclasses.replace(wider, strategies=(*wider.strategies, "neumann:k=2"))
    counts = sweep.run_suite(wider, out, progress=False)
    assert len(fake.calls) == 1 and fake.calls[0].startswith("neumann") and counts["ok"] == 1
    assert set(before.index) < set(_rows(out))
    data, _ = prepare(out)
    learned = data.runs[~data.runs["is_baseline"]]
    assert len(learned) == 2 and learned["setting"].nunique() == 1  # one setting, not two


@pytest.mark.slow  # 2 x ~2.2 s: whole CLI runs; test_a_report_reads_a_resumed_older_folder stays fast
@pytest.mark.parametrize("commit", ["12fb0d5", "db97b47"])
def test_the_cli_resumes_an_older_folder_and_reports_it(tmp_path, commit, capsys):
    """The real commands, nothing faked: nothing is left to train, so nothing trains."""
    out = _older_folder(tmp_path, commit)
    before = set(pd.read_csv(out / "runs.csv", dtype=str)["run_id"])
    assert main(["run", str(OLDER / "tiny.toml"), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "broken part" not in printed.err and "1 already complete" in printed.out
    assert f"written by older harness commits ({commit}" in printed.out
    assert set(pd.read_csv(out / "runs.csv", dtype=str)["run_id"]) == before
    assert set(part_ids(out)) == before
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.html").exists()


def test_a_report_reads_a_resumed_older_folder(tmp_path, monkeypatch):
    out = _older_folder(tmp_path, "db97b47")
    monkeypatch.setattr(execution, "train", FakeTrain())
    sweep.run_suite(load(OLDER / "tiny.toml"), out, progress=False)
    markdown = (build_report(out, tmp_path / "report").parent / "report.md").read_text()
    assert "jfb" in markdown and "Older results folder" in markdown


def test_an_older_run_whose_settings_differ_is_redone_and_its_row_kept(tmp_path, monkeypatch):
    out = _older_folder(tmp_path, "12fb0d5")
    fake = FakeTrain()
    monkeypatch.setattr(execution, "train", fake)
    suite = load(OLDER / "tiny.toml")
    other = dataclasses.replace(suite, train=dataclasses.replace(suite.train, lr=1e-2))
    sweep.run_suite(other, out, progress=False)
    assert len(fake.calls) == 1
    rows = _rows(out)
    assert rows["jfb-s0-76c6c8492b7f"]["git_commit"] == "12fb0d5b7f85"  # kept, with its commit
    assert fake.calls[0] in rows


# ---- merging after each run reads only the new part -------------------------------------------


def _synthetic_folder(out: Path, n: int) -> list[str]:
    """``n`` valid parts (copies of one fake run's runs.csv under other ids), written plainly."""
    run = run_config("jfb", 0)
    results.write_run(out, run.run_id, fake_tables(run))
    template = {"runs": (out / "parts" / run.run_id / "runs.csv").read_text()}
    ids = [f"synthetic-{i:04d}" for i in range(n)]
    for run_id in ids:
        folder = out / "parts" / run_id
        folder.mkdir()
        for name, text in template.items():
            (folder / f"{name}.csv").write_text(text.replace(run.run_id, run_id))
    shutil.rmtree(out / "parts" / run.run_id)
    return ids


@pytest.fixture
def part_reads(monkeypatch):
    """The part folders read from disk (a fresh process: nothing read before)."""
    monkeypatch.setattr(results, "_PART_CACHE", {})
    monkeypatch.setattr(results, "_MERGED", {})
    reads: list[str] = []
    real = results._load_part

    def counting(part):
        reads.append(part.name)
        return real(part)

    monkeypatch.setattr(results, "_load_part", counting)
    return reads


@pytest.mark.slow  # ~9 s; the fast tier keeps test_a_resume_reads_every_part_once and the 100-part
# write count of tests/test_merge_growth.py
def test_a_merge_after_a_run_reads_only_that_runs_part_at_1000_parts(tmp_path, part_reads):
    out = tmp_path / "out"
    ids = _synthetic_folder(out, 1000)
    merged = results.merge(out)  # the command's one full scan
    assert sorted(part_reads) == ids and len(merged["runs"]) == 1000
    for k in range(3):  # three more runs finish, each followed by a merge
        part_reads.clear()
        run = run_config("jfb", k + 1)
        results.write_run(out, run.run_id, fake_tables(run))
        merged = results.merge(out)
        assert part_reads == [run.run_id]  # not the 1000 others
        assert len(merged["runs"]) == 1001 + k and run.run_id in set(merged["runs"]["run_id"])
    assert list(merged["runs"]["run_id"]) == sorted(merged["runs"]["run_id"])
    part_reads.clear()
    assert len(results.completed_runs(out)) == 1003 and part_reads == []


def test_a_resume_reads_every_part_once(tmp_path, monkeypatch, part_reads):
    out = tmp_path / "out"
    ids = _synthetic_folder(out, 200)
    monkeypatch.setattr(execution, "train", FakeTrain())
    counts = sweep.run_suite(load(tiny_suite(tmp_path)), out, progress=False)
    trained = [i for i in part_reads if i not in ids]
    assert counts["ok"] == 3 and sorted(set(trained)) == sorted(trained)  # new parts once each
    assert sorted(i for i in part_reads if i in ids) == ids  # one full scan per command


@pytest.mark.slow  # ~2.5 s each: a whole CLI run and report
@pytest.mark.parametrize(
    "commit, table, unmeasured",
    [("f41d85f", "runs", "certify_peak_bytes"), ("b850b74", "steps", "adjoint_bound_time_s")],
)
def test_a_folder_of_the_previous_commit_resumes_and_reports_with_every_row(
    tmp_path, capsys, commit, table, unmeasured
):
    """f41d85f, the commit before the certification phase, the adjoint bounds, jac_reg and the
    task-declared settings; b850b74, the commit before the merge journal and the adjoint bound's
    time column: their runs have today's ids (nothing retrained), their parts are kept whole,
    and a column they could not write stays empty for their rows."""
    out = _older_folder(tmp_path, commit)
    before = pd.read_csv(out / "runs.csv", dtype=str).set_index("run_id")
    steps_before = len(pd.read_csv(out / "steps.csv"))
    assert main(["run", str(OLDER / "tiny.toml"), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "broken part" not in printed.err and "1 already complete" in printed.out
    assert not (out / "parts" / results.BROKEN_DIR).exists()
    after = pd.read_csv(out / "runs.csv", dtype=str).set_index("run_id")
    assert set(after.index) == set(before.index)
    assert set(before.columns) <= set(after.columns)  # nothing dropped
    assert len(pd.read_csv(out / "steps.csv")) == steps_before
    for run_id in before.index:
        assert after.loc[run_id, "final_test_psnr"] == before.loc[run_id, "final_test_psnr"]
    merged = pd.read_csv(out / f"{table}.csv")
    assert unmeasured not in merged or merged[unmeasured].isna().all()  # not measured then
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.html").exists()
