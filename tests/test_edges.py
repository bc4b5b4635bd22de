"""Faults around the edges (issue 20): results folders holding symbolic links, running out of
memory, metrics over whole sets in bounded memory."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import MINI

from bench.cli import main


@pytest.fixture(autouse=True)
def fresh_data_cache():
    """Each test loads its data afresh and leaves none cached: a later test registering a metric
    needs the naive reconstruction scored again."""
    from bench import task_data

    task_data.load_task_data.cache_clear()
    yield
    task_data.load_task_data.cache_clear()


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


# What torch says when the CPU allocator fails (copied from torch 2.x), and on CUDA.
CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 10737418240 bytes. Error code 12 (Cannot allocate memory)"
)
CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 10.00 GiB. GPU 0 has a total capacity of 79.19 GiB "
    "of which 3.12 GiB is free.\nOf the allocated memory 70.00 GiB is allocated by PyTorch"
)


def test_a_run_out_of_memory_fails_with_one_line_and_the_sweep_goes_on(
    tmp_path, monkeypatch, capsys
):
    """Seed 1's training step runs out of memory: that run is failed with a one-line reason
    naming the step and the settings to lower; seeds 0 and 2 complete."""
    import pandas as pd

    from bench import execution, training

    real_train, real_step = execution.train, training.train_step
    seed = {}

    def train(run, device, progress=False):
        seed["now"] = run.seed
        return real_train(run, device, progress)

    def train_step(*args, **kwargs):
        if seed["now"] == 1:
            raise RuntimeError(CPU_OOM)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(execution, "train", train)
    monkeypatch.setattr(training, "train_step", train_step)
    out = tmp_path / "res"
    code = main(["run", str(_suite(tmp_path)), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.out + captured.err
    runs = pd.read_csv(out / "runs.csv").set_index("seed")
    assert runs.loc[[0, 2], "status"].tolist() == ["ok", "ok"]
    assert runs.loc[1, "status"] == "failed"
    reason = runs.loc[1, "status_reason"]
    assert reason == (
        "out of memory in a training step (batch of 4 images of 1×25×25) (could not allocate "
        "10.0 GiB); lower train.batch_size, model.width or the image size (data.patch_size or "
        "data.image_size)"
    )
    failed_lines = [line for line in captured.out.splitlines() if ": failed" in line]
    assert len(failed_lines) == 1 and reason in failed_lines[0]


def test_out_of_memory_in_the_data_check_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import torch

    from bench import task_data

    def scores(x, y):
        raise torch.OutOfMemoryError(CUDA_OOM)

    monkeypatch.setattr(task_data, "mean_metrics", scores)
    out = tmp_path / "res"
    code = main(["run", str(_suite(tmp_path)), "--out", str(out), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2
    assert line == (
        "implicit-bench: error: out of memory loading data set 'faces' and scoring its test set "
        "(could not allocate 10.00 GiB); lower data.n_images or the image size "
        "(data.patch_size or data.image_size)"
    )
    assert not out.exists()  # nothing written before the check


def test_out_of_memory_elsewhere_is_one_line(tmp_path, monkeypatch, capsys):
    from bench import sweep

    def plan(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(sweep, "plan", plan)
    code = main(["run", str(_suite(tmp_path)), "--out", str(tmp_path / "res"), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 1 and line == "implicit-bench: error: out of memory (an allocation failed)"


def test_baselines_out_of_memory_are_a_warning_and_the_runs_go_on(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from bench import sweep

    def fit(*args, **kwargs):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(sweep, "_fit_baselines", fit)
    out = tmp_path / "res"
    suite = _suite(tmp_path, 'baselines = ["tikhonov"]\n' + MINI)
    code = main(["run", str(suite), "--out", str(out), "--seeds", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err
    warning = [line for line in err.splitlines() if "out of memory" in line]
    assert warning == [
        "implicit-bench: warning: out of memory fitting the classical baselines on 5 training "
        "images (could not allocate 10.0 GiB); lower data.n_images or the image size "
        "(data.patch_size or data.image_size); these baselines are left out (a rerun retries "
        "them)"
    ]
    assert pd.read_csv(out / "runs.csv")["status"].tolist() == ["ok"]


def test_a_run_that_cannot_fit_is_warned_about_before_training(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from bench import out_of_memory

    monkeypatch.setattr(out_of_memory, "available_bytes", lambda device: 2**10)
    out = tmp_path / "res"
    code = main(["run", str(_suite(tmp_path)), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "need at least" in line]
    assert code == 0 and len(warnings) == 1, err  # one per setting: the 3 seeds share one
    assert warnings[0].startswith("implicit-bench: warning: jfb-s")
    assert "of host memory each, more than the 1.0 KiB available" in warnings[0]
    assert "lower train.batch_size" in warnings[0]
    runs = pd.read_csv(out / "runs.csv")
    assert runs["status"].tolist() == ["ok"] * 3  # a warning, not a refusal: the estimate is rough
    # the estimate is a lower bound: at least the data set the runs hold, in float64
    need = out_of_memory.minimum_run_bytes(
        n_train=5, n_test=1, image_shape=(1, 25, 25), batch_size=4, width=2, depth=1,
        dtype_bytes=4, on_gpu=False,
    )  # fmt: skip
    assert need["host"] >= (5 + 2 * 1) * 25 * 25 * 8 and need["gpu"] == 0
    monkeypatch.setattr(out_of_memory, "available_bytes", lambda device: 2**40)
    main(["run", str(_suite(tmp_path)), "--out", str(tmp_path / "other"), "--quiet"])
    assert "need at least" not in capsys.readouterr().err
