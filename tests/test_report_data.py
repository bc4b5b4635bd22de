"""The report's data as it flows from loading to the document: notes with kinds, the typed summary
and comparisons, figures that leave the loaded data as it was, parts without side channels."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
from test_report_settings import Folder

from bench import results
from bench.report import figures, prepare
from bench.report.compare import compare_folders
from bench.report.model import NoteKind
from bench.report.stats import ComparisonKind, Summary, choose_target, summarize


def _folder(tmp_path, **write):
    folder = Folder()
    for seed in (0, 1):
        folder.learned("jfb", seed, 25.0 + seed, 8.0)
        folder.learned("cg", seed, 26.0 + seed, 9.0)
    folder.baseline("tikhonov", 24.0)
    return folder.write(tmp_path / "res", **write)


def test_notes_carry_the_kind_the_report_decides_on(tmp_path):
    # a folder without the timing flag and without recons/: both said, each with its kind
    _, notes = prepare(_folder(tmp_path, drop=("timing_reliable",)))
    newer = [note for note in notes if note.kind is NoteKind.NEWER_COLUMNS]
    assert any("timing_reliable" in note.columns for note in newer)
    assert [n.text for n in notes if n.kind is NoteKind.RECONSTRUCTIONS] == [
        "`recons/` is missing: no reconstruction grid"
    ]
    assert all(note.kind is not NoteKind.RENAMED_COLUMNS for note in notes)
    # an older schema's column name: read under the new one, a RENAMED_COLUMNS note
    runs = pd.read_csv(tmp_path / "res" / "runs.csv").rename(
        columns={"train_time_s": "total_wall_time_s"}
    )
    runs.to_csv(tmp_path / "res" / "runs.csv", index=False)
    _, notes = prepare(tmp_path / "res")
    renamed = [note for note in notes if note.kind is NoteKind.RENAMED_COLUMNS]
    assert len(renamed) == 1 and "`total_wall_time_s` as `train_time_s`" in renamed[0].text


def test_compare_leaves_out_the_reconstruction_notes_only(tmp_path):
    a = _folder(tmp_path / "a", drop=("timing_reliable",))
    b = _folder(tmp_path / "b", drop=("timing_reliable",))
    notes = compare_folders(a, b).notes
    assert not any("recons/" in note for note in notes)
    assert any(note.startswith("A: `runs.csv` was written before the columns") for note in notes)


def test_the_summary_is_a_typed_record_and_comparisons_have_kinds(tmp_path):
    data, _ = prepare(_folder(tmp_path))
    target, _ = choose_target(data, None)
    summary = summarize(data, target)
    assert isinstance(summary, Summary) and summary.frame.attrs == {}
    assert summary.reference == "jfb" and summary.primary == "psnr"
    assert summary.budget == 8.0  # the smaller median final training time
    assert [(c.kind, c.minuend, c.subtrahend) for c in summary.comparisons] == [
        (ComparisonKind.VS_REFERENCE, "cg", "jfb"),
        (ComparisonKind.BEST_VS_BASELINE, "cg", "tikhonov"),
    ]
    assert list(summary.finished.index) == ["jfb", "cg"]
    pareto = figures.pareto_table(data)
    assert pareto.memory_name == "peak step memory" and pareto.table.attrs == {}
    # the same step time: only the better one is on the front
    assert pareto.table["pareto"].to_dict() == {"jfb": False, "cg": True}


def test_the_reconstruction_figure_returns_its_notes_and_leaves_the_data_alone(
    tmp_path, monkeypatch
):
    folder = _folder(tmp_path)
    recons = folder / "recons"
    recons.mkdir()
    images = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    np.savez(recons / "reference.npz", original=images, measured=images * 0.9)
    data, _ = prepare(folder)
    cg = data.learned_ok.loc[data.learned_ok["label"] == "cg", "run_id"].iloc[0]
    np.savez(recons / f"{cg}.npz", x=images)
    before = copy.deepcopy(data)
    drawn = figures.plot_reconstructions(data)
    assert drawn.notes == ("no reconstruction file (recons/<run_id>.npz) for: jfb",)
    assert not hasattr(data, "notes")
    for name in ("runs", "learned_ok", "baselines", "epochs", "steps"):
        pd.testing.assert_frame_equal(getattr(data, name), getattr(before, name))
    every = figures.plot_specs
    monkeypatch.setattr(
        figures, "plot_specs", lambda d: [s for s in every(d) if s.name == "reconstructions"]
    )
    results_ = figures.render_plots(data, tmp_path / "out")
    assert [r.name for r in results_] == ["reconstructions"]
    grid = next(r for r in results_ if r.name == "reconstructions")
    assert grid.skipped is None and grid.notes == list(drawn.notes)


def test_parts_keep_their_missing_columns_beside_the_tables_not_in_attrs(tmp_path, capsys):
    folder = Folder()
    run_id = folder.learned("jfb", 0, 25.0, 8.0)
    part = tmp_path / "parts" / run_id
    Folder.write(folder, part, drop=("timing_reliable",))
    tables = results.scan_parts(tmp_path)[run_id]
    assert all(frame.attrs == {} for frame in tables.values())
    assert "lack the column(s) timing_reliable" in capsys.readouterr().out
