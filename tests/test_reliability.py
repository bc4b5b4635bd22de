"""Reliability under hostile but fair use (issue 9): nothing lost under --force, full disks,
corrupt parts or concurrent sweeps; every bad setting is one clear error before training.

Most tests replace ``execution.train`` with a fake that returns well-formed tables instantly, so
they exercise the bookkeeping (plan, claims, parts, merge) without training; the concurrency,
plugin and signal tests run the real CLI in subprocesses on a tiny suite.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from helpers import MINI, run_config
from PIL import Image

from bench import execution, results, sweep, task_data
from bench.cli import main
from bench.config import RunConfig, suite_from_dict, with_overrides
from bench.data import load_dataset
from strategies import parse_spec

ROOT = Path(__file__).resolve().parents[1]

TINY = MINI


def tiny_suite(tmp_path: Path, text: str = TINY, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def load(path: Path):
    from bench.config import load_suite

    return load_suite(str(path))


def fake_tables(run: RunConfig, psnr: float = 20.0) -> dict:
    """Well-formed tables for ``run`` (every schema column), as train() would return."""
    text = {c: "x" for c in results.TEXT_COLUMNS}
    row = {c: 1.0 for c in results.RUN_COLUMNS} | text
    row |= {
        "run_id": run.run_id,
        "suite": run.suite,
        "strategy": run.strategy.split(":")[0],
        "strategy_label": run.strategy,
        "seed": run.seed,
        "status": "ok",
        "status_reason": "",
        "config_hash": run.config_hash,
        "final_test_psnr": psnr,
    }
    keys = {"run_id": run.run_id, "strategy": row["strategy"], "seed": run.seed}
    epochs = {c: 1.0 for c in results.EPOCH_COLUMNS} | keys
    steps = {c: 1.0 for c in results.STEP_COLUMNS} | keys
    return {
        "runs": pd.DataFrame([row]),
        "epochs": pd.DataFrame([epochs]),
        "steps": pd.DataFrame([steps]),
        "recon": None,
    }


class FakeTrain:
    """Stands in for execution.train: counts calls; ``fail_on`` maps call number -> exception."""

    def __init__(self, fail_on: dict | None = None, psnr: float = 20.0):
        self.calls: list[str] = []
        self.fail_on = fail_on or {}
        self.psnr = psnr

    def __call__(self, run, device, progress=False):
        self.calls.append(run.run_id)
        if len(self.calls) in self.fail_on:
            raise self.fail_on[len(self.calls)]
        return fake_tables(run, psnr=self.psnr + len(self.calls))


@pytest.fixture
def fake_train(monkeypatch):
    fake = FakeTrain()
    monkeypatch.setattr(execution, "train", fake)
    return fake


def part_ids(out: Path) -> set[str]:
    return {p.parent.name for p in (out / "parts").glob("*/runs.csv")}


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def python(script: str, *args, cwd: Path, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---- 1. --force replaces a run only when its new result is written ---------------------------


@pytest.mark.slow
def test_forced_rerun_interrupted_keeps_every_old_result(tmp_path, fake_train, monkeypatch):
    suite = load(tiny_suite(tmp_path))
    out = tmp_path / "out"
    assert sweep.run_suite(suite, out, progress=False)["ok"] == 3
    old = {p.parent.name: p.read_bytes() for p in (out / "parts").glob("*/runs.csv")}
    assert len(old) == 3

    interrupted = FakeTrain(fail_on={2: KeyboardInterrupt()}, psnr=50.0)
    monkeypatch.setattr(execution, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_suite(suite, out, force=True, progress=False)
    assert len(interrupted.calls) == 2  # the first run was redone, the second interrupted
    redone, cut, untouched = (
        interrupted.calls[0],
        interrupted.calls[1],
        set(old) - set(interrupted.calls),
    )
    now = {p.parent.name: p.read_bytes() for p in (out / "parts").glob("*/runs.csv")}
    assert set(now) == set(old)  # no part was deleted
    assert now[redone] != old[redone]  # replaced by its new result
    assert now[cut] == old[cut] and all(now[i] == old[i] for i in untouched)
    assert set(results.load(out)["runs"].run_id) == set(old)  # nor any merged row


# ---- 3. file-system errors: checked before training, one clear line ---------------------------


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_out_pointing_at_a_file_is_a_usage_error_before_training(tmp_path, fake_train, capsys):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    code = main(["run", str(tiny_suite(tmp_path)), "--out", str(target), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and str(target) in line and "not writable" in line
    assert fake_train.calls == []


def test_full_disk_is_found_before_training(tmp_path, fake_train, monkeypatch, capsys):
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(results, "atomic_write_bytes", full)
    code = main(["run", str(tiny_suite(tmp_path)), "--out", str(tmp_path / "o"), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "No space left on device" in line
    assert fake_train.calls == []  # nothing trained only to be lost


def test_write_error_mid_sweep_is_one_line(tmp_path, fake_train, monkeypatch, capsys):
    def full(out, run_id, tables):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "parts" / run_id))

    monkeypatch.setattr(results, "write_run", full)
    code = main(["run", str(tiny_suite(tmp_path)), "--out", str(tmp_path / "o"), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 1 and "No space left on device" in line and "parts" in line


def test_run_ids_are_bounded_in_length():
    label = "plugin:" + ":".join(f"parameter_{i}=value_{i}" for i in range(20))
    a = run_config(label, 0)
    b = run_config(label[:-1] + "X", 0)
    assert len(label) > 300
    assert len(a.run_id) <= 120 and len(b.run_id) <= 120
    assert a.run_id != b.run_id  # the hashed tail still tells them apart
    assert a.run_id.startswith("plugin_parameter_0_value_0") and a.run_id.endswith(a.config_hash)
    short = run_config("neumann:k=3", 0)
    assert short.run_id == f"neumann_k_3-s0-{short.config_hash}"  # short ids are unchanged


# ---- 4. broken parts are named, set aside and redone ------------------------------------------


@pytest.mark.slow
def test_broken_parts_are_set_aside_and_redone(tmp_path, fake_train, capsys):
    suite = load(tiny_suite(tmp_path))
    out = tmp_path / "out"
    sweep.run_suite(suite, out, progress=False)
    empty, cut, good = sorted(part_ids(out))
    (out / "parts" / empty / "runs.csv").write_bytes(b"")
    text = (out / "parts" / cut / "runs.csv").read_text()
    header, row = text.splitlines()[:2]
    cells = row.split(",")
    status_at = header.split(",").index("status")
    (out / "parts" / cut / "runs.csv").write_text(
        header + "\n" + ",".join(cells[: status_at + 1]) + "\n"
    )  # cut off right after the status field
    (out / "parts" / "notes").mkdir()
    (out / "parts" / "notes" / "runs.csv").write_text("a,b\n1,2\n")  # not a part at all
    (out / "parts" / "unrelated.csv").write_text("x\n1\n")  # ignored
    fake_train.calls.clear()
    capsys.readouterr()

    counts = sweep.run_suite(suite, out, progress=False)
    err = capsys.readouterr().err
    assert sorted(fake_train.calls) == sorted([empty, cut])  # the good one is not redone
    assert counts["skipped"] == 1 and counts["ok"] == 2
    for name in (empty, cut, "notes"):
        assert f"broken part parts/{name}" in err, err
    broken = sorted(p.name for p in (out / "parts" / ".broken").iterdir())
    assert len(broken) == 3 and any(b.startswith(cut) for b in broken)
    runs = results.load(out)["runs"]
    assert sorted(runs.run_id) == sorted([empty, cut, good])
    assert runs.final_test_psnr.notna().all()


def test_merge_skips_nothing_valid_and_reads_parts_with_only_runs_csv(tmp_path):
    run = run_config("jfb", 0)
    tables = fake_tables(run)
    results.write_run(tmp_path, run.run_id, {"runs": tables["runs"]})
    for name in ("epochs", "steps"):
        (tmp_path / "parts" / run.run_id / f"{name}.csv").unlink()  # a failed run's state
    merged = results.merge(tmp_path)
    assert list(merged["runs"].run_id) == [run.run_id] and len(merged["epochs"]) == 0


# ---- 7. ranges and choices of every setting, before training ----------------------------------


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("train", "batch_size", 0),
        ("train", "batch_size", -4),
        ("train", "lr", -1e-3),
        ("train", "lr", math.inf),
        ("train", "lr", math.nan),
        ("train", "epochs", 0),
        ("train", "dtype", "float16"),
        ("train", "eval_every", -1),
        ("train", "lr_schedule", "step"),
        ("train", "n_recon", -1),
        # absurd sizes, and integers beyond int64 (issue 20, item 9): upper bounds
        ("train", "epochs", 10**9),
        ("train", "batch_size", 10**7),
        ("train", "eval_every", 2**64),
        ("train", "n_recon", 10**6),
        ("solver", "max_iter", 10**9),
        ("solver", "m", 10**4),
        ("model", "width", 99999999999999999999),
        ("model", "depth", 10**6),
        ("data", "image_size", 10**6),
        ("data", "n_images", 2**63),
        ("data", "patch_size", 10**6),
        ("data", "channels", 2),
        ("problem", "kernel_size", 2**70 + 1),
        ("problem", "mask_seed", 2**63),
        ("solver", "name", "newton"),
        ("solver", "tol", 0.0),
        ("solver", "tol", math.inf),
        ("solver", "max_iter", 0),
        ("solver", "m", 0),
        ("solver", "lam", -1.0),
        ("model", "eta", 0.7),
        ("model", "eta", 0.0),
        ("model", "alpha", 1.5),
        ("model", "lipschitz", 1.0),
        ("model", "width", 0),
        ("model", "depth", 0),
        ("model", "form", "resnet"),
        ("model", "lipschitz_control", "none"),
        ("data", "test_fraction", 1.0),
        ("data", "image_size", -1),
        ("data", "n_images", -1),
        ("data", "channels", -1),
        ("data", "patch_size", 0),
        ("problem", "kernel_size", 4),
        ("problem", "kernel_size", 0),
        ("problem", "sigma", 0.0),
        ("problem", "noise_std", -0.1),
    ],
)
def test_out_of_range_settings_are_rejected_when_loaded(section, key, value):
    with pytest.raises(ValueError) as err:
        suite_from_dict({section: {key: value}}, "bad", "bad.toml")
    assert (
        f"[{section}]" in str(err.value) and key in str(err.value) and "bad.toml" in str(err.value)
    )
    with pytest.raises(ValueError, match=key):  # the same rule for a [sweep] value
        suite_from_dict({"sweep": {f"{section}.{key}": [value]}}, "bad", "bad.toml")


def test_every_integer_setting_declares_an_upper_bound():
    from bench.config import SECTIONS, setting

    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            rule = f.metadata.get("range")
            if type(f.default) is int:
                assert rule.le is not None or rule.lt is not None or rule.choices, f.name
                assert str(rule.le or rule.lt or "") in rule.describe()  # the message shows it
    with pytest.raises(TypeError, match="upper bound"):
        setting(3, ge=1)
    with pytest.raises(ValueError, match=r"<= 1000"):  # a strategy's sizes too
        parse_spec("neumann:k=99999999999999999999")


def test_an_int_strategy_parameter_without_its_own_bound_fits_in_64_bits():
    from strategies import Param

    assert Param(3, ge=1).check(2**63 - 1) == 2**63 - 1
    with pytest.raises(ValueError, match="out of range"):
        Param(3, ge=1).check(2**63)


def test_maxmin_with_an_odd_width_is_refused_when_loaded_alone_or_swept():
    with pytest.raises(ValueError, match=r"bad\.toml \[model\]: width must be even.*got 3"):
        suite_from_dict({"model": {"activation": "maxmin", "width": 3}}, "bad", "bad.toml")
    # each swept value is valid alone; one combination is not
    sweep = {"model.activation": ["relu", "maxmin"], "model.width": [3, 4]}
    with pytest.raises(ValueError, match=r"bad\.toml: \[sweep\] point .*'maxmin'.*width = 3"):
        suite_from_dict({"sweep": sweep}, "bad", "bad.toml")
    assert suite_from_dict({"model": {"activation": "maxmin", "width": 3, "depth": 1}}, "ok", "x")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "model.width=99999999999999999999"], "width must be >= 1 and <= 4096"),
        (["--set", "model.activation=maxmin", "--set", "model.depth=2", "--set", "model.width=3"],
         "width must be even"),
        (["--set", "solver.max_iter=1000000000"], "max_iter must be >= 1 and <= 100000"),
        (["--strategies", "neumann:k=99999999999999999999"], "k: .*<= 1000"),
        (["--seeds", "99999999999"], "seeds must be an int in \\[1, 10000\\]"),
        (["--set", "seeds=[99999999999999999999]"], "seeds must be"),
        (["--set", "problem.task=inpaint", "--set", "problem.mask_keep_fraction=1e-9"],
         "keeps 0 of the 625 pixels of a 25x25 image.*>= 0.0016"),
    ],
)  # fmt: skip
def test_a_setting_no_run_can_use_is_exit_2_before_training(
    tmp_path, fake_train, capsys, args, words
):
    code = main(["run", str(tiny_suite(tmp_path)), "--out", str(tmp_path / "o"), "--quiet", *args])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and re.search(words, line), line
    assert fake_train.calls == [] and not (tmp_path / "o").exists()


def test_in_range_settings_are_accepted():
    suite = suite_from_dict(
        {
            "model": {"eta": 0.49, "alpha": 1.0, "lipschitz": 0.99, "form": "grad"},
            "train": {"dtype": "float64", "lr_schedule": "onecycle", "eval_every": 3},
            "problem": {"kernel_size": 1, "noise_std": 0.0},
            "solver": {"name": "anderson", "lam": 0.0, "m": 1},
        },
        "ok",
        "ok.toml",
    )
    assert suite.model.form == "grad" and (suite.solver.lam, suite.solver.m) == (0.0, 1)


def test_bad_range_from_command_line_and_suite_file_is_exit_2(tmp_path, fake_train, capsys):
    with pytest.raises(ValueError, match="--lr.*lr"):
        with_overrides(suite_from_dict({}, "s", "s.toml"), lr=math.inf)
    bad = tiny_suite(tmp_path, TINY.replace("batch_size = 4", "batch_size = 0"))
    code = main(["run", str(bad), "--out", str(tmp_path / "o"), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "batch_size" in line and fake_train.calls == []


# ---- 8. concurrent sweeps share the work and lose no row --------------------------------------

DRIVER = """
import sys, time
from pathlib import Path
from bench import results

log, out = Path(sys.argv[3]), Path(sys.argv[2])
write_run = results.write_run

def logged(folder, run_id, tables):  # one line per part written: a run trained here
    with log.open("a") as fh:
        fh.write(run_id + "\\n")
    return write_run(folder, run_id, tables)

results.write_run = logged
if sys.argv[4] == "slow":  # a slow shared file system: the merge takes a while to write
    write_csv = results.atomic_write_csv

    def slow(path, frame):
        if Path(path).parent == out:
            time.sleep(0.5)
        return write_csv(path, frame)

    results.atomic_write_csv = slow
from bench.cli import main
sys.exit(main(["run", sys.argv[1], "--out", str(out), "--quiet"]))
"""


@pytest.mark.slow
def test_two_concurrent_sweeps_share_the_runs_and_lose_no_row(tmp_path):
    suite = tiny_suite(tmp_path, TINY.replace("seeds = 3", "seeds = 4"))
    out = tmp_path / "out"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, suite, out, tmp_path / f"log{i}", speed],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, speed in enumerate(("slow", "fast"))
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
    written = []
    for i in range(2):
        log = tmp_path / f"log{i}"
        written += log.read_text().split() if log.exists() else []
    runs = results.load(out)["runs"]
    assert len(runs) == 4 and runs.run_id.is_unique and (runs.status == "ok").all()
    assert sorted(written) == sorted(runs.run_id)  # every run trained exactly once


def test_a_claimed_run_is_left_to_its_owner(tmp_path, fake_train):
    suite = load(tiny_suite(tmp_path))
    out = tmp_path / "out"
    run = suite.runs()[0]
    with results.claim(out, run.run_id) as mine:
        assert mine
        with results.claim(out, run.run_id) as again:
            assert not again  # exclusive, even within one process
        assert execution.execute(run, out).status == "elsewhere"
    assert fake_train.calls == [] and not part_ids(out)
    assert execution.execute(run, out).status == "ok" and fake_train.calls == [run.run_id]


# ---- 5. a run's identity covers the data actually loaded --------------------------------------


def _write_images(folder: Path, start: int, count: int) -> None:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")


def test_changed_folder_images_make_a_new_run(tmp_path, fake_train):
    images = tmp_path / "images"
    _write_images(images, 0, 2)
    text = TINY.replace('dataset = "faces"\nn_images = 6', f'dataset = "folder"\nroot = "{images}"')
    suite = load(tiny_suite(tmp_path, text.replace("seeds = 3", "seeds = 1") + "\n"))
    suite = with_overrides(suite)
    out = tmp_path / "out"
    sweep.run_suite(suite, out, progress=False)
    task_data.load_task_data.cache_clear()  # what a new process sees
    assert sweep.plan(suite, out)[0] == []  # unchanged folder: complete
    _write_images(images, 2, 12)
    task_data.load_task_data.cache_clear()
    todo, counts = sweep.plan(suite, out)
    assert len(todo) == 1 and counts["skipped"] == 0  # other images: another run


# ---- 6. the strategy registry -----------------------------------------------------------------

REGISTRY_DRIVER = """
import sys
import strategies
strategies.__path__.append(sys.argv[1])  # as if the files were dropped into strategies/
from bench.cli import main
suite, out = sys.argv[2], sys.argv[3]
for args in (["strategies"], ["run", suite, "--strategies", "boom", "--out", out],
             ["run", suite, "--strategies", "jfb", "--out", suite]):
    print("=====", file=sys.stderr, flush=True)
    print("=====", "exit", main(args), flush=True)
"""


@pytest.mark.slow
def test_a_copy_of_a_strategy_file_does_not_silently_replace_it(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "cg_copy.py").write_text((ROOT / "strategies" / "cg.py").read_text())
    script = """
    import sys
    import strategies
    strategies.__path__.append(sys.argv[1])
    try:
        cls = strategies.strategy_class("cg")
        print("resolved", cls.__module__)
    except ValueError as err:
        print("refused", err)
    print("jfb" in strategies.list_strategies())
    """
    proc = python(script, plugins, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "refused" in proc.stdout and "cg_copy.py" in proc.stdout, proc.stdout
    assert str(ROOT / "strategies" / "cg.py") in proc.stdout
    assert proc.stdout.strip().endswith("True")  # the other strategies still load


@pytest.mark.slow
def test_a_broken_strategy_file_is_reported_and_the_others_still_run(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "boom.py").write_text("raise RuntimeError('boom at import')\n")
    suite = tiny_suite(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", REGISTRY_DRIVER, plugins, suite, tmp_path / "out"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    outs = proc.stdout.split("=====")
    errs = proc.stderr.split("=====")
    assert len(outs) == 4 and len(errs) == 4, proc.stdout + proc.stderr
    listing = outs[0] + outs[1]
    assert "exit 0" in outs[1] and "jfb" in listing and "cg" in listing
    assert "BROKEN" in listing and "boom.py: RuntimeError: boom at import" in listing
    assert "boom.py" in errs[0] + errs[1]  # and a warning
    # a suite using it: refused, one line naming the file
    assert "exit 2" in outs[2]
    assert len(errs[2].strip().splitlines()) == 1 and "boom.py" in errs[2], errs[2]
    # a suite not using it gets past the strategies (here, to the bad --out), nothing trained
    assert "exit 2" in outs[3] and "boom" not in errs[3] and "not writable" in errs[3], errs[3]


# ---- 13, 14. duplicates and the suite name ----------------------------------------------------


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"seeds": [0, 0]}, ["seeds", "0", "more than once"]),
        ({"sweep": {"solver.max_iter": [10, 10]}}, ["solver.max_iter", "10", "more than once"]),
        ({"sweep": {"train.lr": [0.1, 0.1]}}, ["train.lr", "more than once"]),
        ({"name": "../../escaped"}, ["../../escaped", "name"]),
        ({"name": "/tmp/abs"}, ["/tmp/abs"]),
        ({"name": ".hidden"}, [".hidden"]),
        ({"name": "a b"}, ["a b"]),
    ],
)
def test_duplicates_and_unsafe_names_are_rejected(raw, words):
    with pytest.raises(ValueError) as err:
        suite_from_dict(raw, "fine", "fine.toml")
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_strategy_parameter_given_twice_is_rejected():
    with pytest.raises(ValueError, match="'k' is given twice"):
        parse_spec("neumann:k=3:k=4")
    assert suite_from_dict({"name": "ok-name_1.2"}, "x", "x.toml").name == "ok-name_1.2"


# ---- 12. bounded cost parameters; a merge that survives a broken Parquet writer ---------------


@pytest.mark.parametrize(
    "spec",
    [
        "neumann:k=1000000000",
        "unrolled:k=100000",
        "phantom:k=100000",
        "cg:max_iter=1000000",
        "torchdeq-ift:max_iter=1000000",
    ],
)
def test_cost_parameters_have_upper_bounds(spec):
    with pytest.raises(ValueError, match="out of range"):
        parse_spec(spec)


def test_parquet_failure_never_loses_the_csv_tables(tmp_path, monkeypatch, capsys):
    run = run_config("jfb", 0)
    results.write_run(tmp_path, run.run_id, fake_tables(run))

    def no_memory(*args, **kwargs):
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(results, "_has_pyarrow", lambda: True)
    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_memory)
    merged = results.merge(tmp_path)
    for name in results.TABLES:
        assert len(pd.read_csv(tmp_path / f"{name}.csv")) == 1, name
    assert len(merged["steps"]) == 1
    err = capsys.readouterr().err
    assert "MemoryError" in err and "Parquet" in err


# ---- 9. the reference reconstructions are rebuilt when missing --------------------------------


def test_missing_reference_reconstructions_are_rebuilt(tmp_path):
    text = TINY.replace('strategies = ["jfb"]', 'strategies = ["jfb"]\nbaselines = ["tikhonov"]')
    suite = load(tiny_suite(tmp_path, text))
    out = tmp_path / "out"
    sweep.run_baselines(suite, out)
    reference = out / "recons" / "reference.npz"
    first = dict(np.load(reference))
    reference.unlink()  # e.g. a failed write
    sweep.run_baselines(suite, out)
    again = dict(np.load(reference))
    assert set(again) == set(first) and "baseline_tikhonov" in again
    np.testing.assert_array_equal(again["original"], first["original"])


# ---- 15. small ones: stale error.log and temporaries, SIGTERM ---------------------------------


def test_an_old_error_log_goes_when_the_run_succeeds(tmp_path, monkeypatch):
    suite = load(tiny_suite(tmp_path, TINY.replace("seeds = 3", "seeds = 1")))
    out = tmp_path / "out"
    monkeypatch.setattr(execution, "train", FakeTrain(fail_on={1: RuntimeError("boom")}))
    assert sweep.run_suite(suite, out, progress=False)["failed"] == 1
    (run_id,) = part_ids(out)
    log = out / "parts" / run_id / "error.log"
    assert "boom" in log.read_text()
    monkeypatch.setattr(execution, "train", FakeTrain())
    assert sweep.run_suite(suite, out, progress=False)["ok"] == 1
    assert not log.exists()


def test_stale_temporaries_are_cleaned_but_live_ones_kept(tmp_path, fake_train):
    suite = load(tiny_suite(tmp_path))
    out = tmp_path / "out"
    stale = out / "parts" / "x" / ".runs.csv.123.tmp"
    live = out / ".runs.csv.456.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_text("half")
    live.write_text("being written")
    old = psutil.Process().create_time() - 60  # before this process started
    os.utime(stale, (old, old))
    sweep.plan(suite, out)
    assert not stale.exists() and live.exists()


@pytest.mark.slow
def test_sigterm_says_finished_runs_are_saved_and_exits_143(tmp_path):
    script = """
    import os, signal, sys
    from bench import execution

    def killed(run, device, progress=False):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, mid-run
        raise AssertionError("SIGTERM did not stop the run")

    execution.train = killed
    from bench.cli import main
    sys.exit(main(["run", sys.argv[1], "--out", sys.argv[2], "--quiet"]))
    """
    proc = python(script, tiny_suite(tmp_path), tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 143, proc.stderr
    line = _one_line(proc.stderr)
    assert "SIGTERM" in line and "finished runs are saved" in line


# ---- 11. folder data set edge cases -----------------------------------------------------------


def test_float_tiff_in_unit_range_loads_as_is_and_others_are_refused(tmp_path):
    folder = tmp_path / "float"
    folder.mkdir()
    values = np.linspace(0.1, 0.9, 64, dtype=np.float32).reshape(8, 8)
    for i in range(2):
        Image.fromarray(values).save(folder / f"{i}.tif")
    data = load_dataset("folder", root=folder, image_size=8, channels=1)
    np.testing.assert_allclose(data.train[0, 0].numpy(), values, atol=1e-6)  # not black
    Image.fromarray(values * 255).save(folder / "2.tif")
    with pytest.raises(ValueError, match=r"2\.tif.*floating-point.*\[25\.5, 229\.5\]"):
        load_dataset("folder", root=folder, image_size=8, channels=1)


def test_decompression_bomb_is_one_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "bomb"
    _write_images(folder, 0, 2)
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(folder / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16 x 16 > 2 x 100: a "bomb"
    with pytest.raises(ValueError) as err:
        load_dataset("folder", root=folder, image_size=8, channels=1)
    message = str(err.value)
    assert "huge.png" in message and "decompression bomb" in message
    assert len(message.splitlines()) == 1


# ---- issue 20, item 13: an output encoding that cannot show a path ----------------------------


def test_a_path_the_output_encoding_cannot_show_does_not_fail_the_command(
    tmp_path, fake_train, monkeypatch
):
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")  # as PYTHONIOENCODING=ascii
    monkeypatch.setattr(sys, "stdout", stdout)
    out = tmp_path / "résultats"
    code = main(["run", str(tiny_suite(tmp_path)), "--out", str(out), "--quiet"])
    stdout.flush()
    printed = stdout.buffer.getvalue().decode("ascii")
    assert code == 0 and "3 ok" in printed and "r?sultats" in printed, printed
    assert len(results.load(out)["runs"]) == 3
    assert stdout.errors == "strict"  # the stream is handed back as it was
