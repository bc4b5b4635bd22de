"""Faults around the edges (issue 20): results folders holding symbolic links, running out of
memory, metrics over whole sets in bounded memory."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import MINI

from bench.cli import main


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _suite(tmp_path: Path, text: str = MINI) -> Path:
    path = tmp_path / "mini.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("inner", ["recons", "parts"])
def test_a_results_folder_with_a_linked_inner_folder_is_refused_before_training(
    tmp_path, capsys, inner
):
    out, elsewhere = tmp_path / "res", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / inner).symlink_to(elsewhere, target_is_directory=True)
    code = main(["run", str(_suite(tmp_path)), "--out", str(out), "--seeds", "1", "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2, line
    assert "symbolic link" in line and str(out / inner) in line
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    assert (out / inner).is_symlink()  # and the link left as it was
