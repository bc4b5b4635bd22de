"""Results are never lost (issue 20): a perfect score (PSNR = +inf) is a value, not a broken
part; merging after each run reads only the new part; a folder written by an older commit
resumes with nothing set aside or dropped."""

from __future__ import annotations

import math

import pytest
from test_reliability import FakeTrain, load, tiny_suite
from test_report_settings import Folder, _build, no_figures  # noqa: F401 (a fixture)

from bench import results, runner

# ---- a perfect reconstruction (PSNR = +inf) is kept -------------------------------------------


def test_an_infinite_psnr_is_a_result_not_a_broken_part(tmp_path, monkeypatch, capsys):
    perfect = FakeTrain(psnr=math.inf)
    monkeypatch.setattr(runner, "train", perfect)
    suite = load(tiny_suite(tmp_path))
    out = tmp_path / "out"
    assert runner.run_suite(suite, out, progress=False)["ok"] == 3
    perfect.calls.clear()
    capsys.readouterr()

    counts = runner.run_suite(suite, out, progress=False)
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
        mixed.learned("jfb", seed, psnr, 8.0)
    mixed.learned("cg", 0, math.inf, 8.0)
    markdown = _build(mixed.write(tmp_path / "mixed"), tmp_path / "b")
    # midway between the naive 20 dB and the best finite learned mean (31 dB)
    assert "Target PSNR: **25.50 dB**" in markdown
