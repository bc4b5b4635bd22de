"""The harness end to end: CLI runs of a tiny suite, tables read back, resume, bad input."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from helpers import TINY, cli, cli_in_process, subprocess_env

from bench import results
from bench.cli import main
from bench.config import RunConfig, list_suites, load_suite, suite_from_dict, with_overrides


def _timings_aside(table: pd.DataFrame) -> pd.DataFrame:
    """All but the measured times (every ``*_time_s`` column: certify_time_s came later)."""
    return table.drop(columns=[c for c in table.columns if c.endswith("_time_s")])


PLUGIN = '''
import torch
from strategies import Strategy

class Explode(Strategy):
    """Diverges on purpose: its output is NaN."""
    name = "explode"
    def __call__(self, f, z0, solver):
        return f(z0) * float("nan"), {}

class Broken(Strategy):
    """Fails on purpose."""
    name = "broken"
    def __call__(self, f, z0, solver):
        raise RuntimeError("boom")
'''


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One CLI run of the tiny suite, in-process: (suite file, results folder, its answer)."""
    base = tmp_path_factory.mktemp("tiny")
    suite = base / "tiny.toml"
    suite.write_text(TINY)
    out = base / "out"
    proc = cli_in_process("run", suite, "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    return suite, out, proc


@pytest.mark.slow
def test_cli_run_writes_tidy_tables(tiny_run):
    _, out, proc = tiny_run
    assert "4 ok, 0 diverged, 0 failed" in proc.stdout
    tables = results.load(out)
    runs, epochs, steps = tables["runs"], tables["epochs"], tables["steps"]
    for name, frame in tables.items():
        assert set(results.COLUMNS[name]) <= set(frame.columns), name
        assert all(c == c.lower() and " " not in c for c in frame.columns)
    learned = runs[~runs.strategy.str.startswith("baseline:")]
    assert sorted(learned.strategy) == ["cg", "jfb", "neumann", "unrolled"]
    assert (learned.status == "ok").all()
    assert (runs.strategy == "baseline:tikhonov").sum() == 1
    # the implicit models beat the blurred input; unrolled:k=3 (three gradient steps from A^T d)
    # is a shallow network that need not in two tiny epochs, but its training loss must fall
    implicit = learned[learned.strategy != "unrolled"]
    assert (implicit.final_test_psnr > implicit.naive_test_psnr + 0.5).all(), implicit[
        ["strategy", "final_test_psnr", "naive_test_psnr"]
    ]
    unrolled_loss = epochs[epochs.strategy == "unrolled"].sort_values("epoch").train_loss
    assert unrolled_loss.iloc[-1] < unrolled_loss.iloc[0]
    # one row per run x epoch and per run x step, numbered from 1
    assert sorted(epochs.groupby("run_id").epoch.apply(list).iloc[0]) == [1, 2]
    n_steps = 2 * -(-24 // 8)  # 2 epochs of ceil(24 train images / batch 8)
    assert (steps.groupby("run_id").size() == n_steps).all()
    # measurement columns are filled where they apply
    assert (learned.saved_bytes > 0).all() and (learned.peak_rss_bytes > 0).all()
    assert (steps.forward_time_s > 0).all() and (steps.backward_time_s > 0).all()
    by = learned.set_index("strategy")
    assert by.loc["unrolled", "saved_bytes"] > by.loc["jfb", "saved_bytes"]
    assert by.loc["cg", "mean_backward_iters"] >= 1 and pd.isna(
        by.loc["jfb", "mean_backward_iters"]
    )
    # with both solves converged, cg is the exact implicit gradient
    cg_steps = steps[steps.strategy == "cg"]
    assert (cg_steps.backward_residual <= 1e-6).all() and (cg_steps.forward_converged == 1).all()
    # Jacobian products counted by the harness (see tests/test_measure.py for the derivations)
    products = steps.set_index("strategy").jacobian_products
    assert (products["jfb"] == 1).all() and (products["neumann"] == 3 + 1).all()
    assert (products["unrolled"] == 3).all()
    assert (cg_steps.jacobian_products == 2 * cg_steps.backward_iters + 2).all()
    assert by.loc["neumann", "jacobian_products_per_step"] == 4
    assert by.loc["cg", "grad_cosine_last"] > 0.99
    assert ((learned.grad_cosine_first.abs() <= 1) & (learned.lipschitz_estimate < 1)).all()
    assert epochs.grad_cosine.notna().sum() == 2 * len(learned)  # first and last epoch only
    checked = epochs[epochs.grad_cosine.notna()]
    assert (checked.grad_reference_converged == 1.0).all()  # the reference is trustworthy here
    # the CSVs and the Parquet copies agree
    # (a missing cell of a text/bool column is None in Parquet and NaN in CSV: both missing)
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "runs.parquet").fillna(np.nan),
        results.read_table(out / "runs.csv").fillna(np.nan),
    )
    # reconstructions for the report
    ref = np.load(out / "recons" / "reference.npz")
    assert ref["original"].shape == (3, 1, 25, 25) and "baseline_tikhonov" in ref
    for run_id in learned.run_id:
        assert np.load(out / "recons" / f"{run_id}.npz")["x"].shape == (3, 1, 25, 25)


@pytest.mark.slow
def test_rerun_skips_complete_runs_and_same_command_reproduces(tiny_run, tmp_path):
    suite, out, _ = tiny_run
    before = {p: p.read_bytes() for p in (out / "parts").glob("*/runs.csv")}
    again = cli_in_process("run", suite, "--out", out, "--quiet")
    assert again.returncode == 0 and "4 already complete" in again.stdout
    assert {p: p.read_bytes() for p in (out / "parts").glob("*/runs.csv")} == before
    # the same command into a fresh folder gives the same tables, timings aside
    fresh = tmp_path / "again"
    assert cli_in_process("run", suite, "--out", fresh, "--quiet").returncode == 0
    for name in ("epochs", "steps"):
        a, b = (_timings_aside(results.load(p)[name]) for p in (out, fresh))
        key = ["run_id", "epoch"] + (["step"] if name == "steps" else [])
        pd.testing.assert_frame_equal(
            a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
        )


@pytest.mark.slow
def test_interrupted_sweep_loses_only_the_run_in_progress(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY.replace("epochs = 2", "epochs = 1"))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "run", str(suite), "--out", str(out), "--quiet"],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    first = None
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p for p in (out / "parts").glob("*/runs.csv") if "baseline" not in str(p)]
        if done:
            first = done[0]
            break
        time.sleep(0.05)  # polling for a file, not waiting for timing
    assert first is not None, "no run finished"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "rerun to resume" in stderr and "Traceback" not in stderr
    finished = {p.parent.name for p in (out / "parts").glob("*/runs.csv")}
    assert not list(out.rglob("*.tmp"))  # no half-written file left behind
    first_bytes = first.read_bytes()
    rerun = cli("run", suite, "--out", out, "--quiet", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(finished) - 1} already complete" in rerun.stdout  # minus the baseline
    assert first.read_bytes() == first_bytes  # not redone
    runs = results.load(out)["runs"]
    assert runs.run_id.is_unique and len(runs) == 5 and (runs.status == "ok").all()


@pytest.mark.slow
def test_divergence_is_recorded_and_failures_set_the_exit_status(tmp_path):
    (tmp_path / "plugs.py").write_text(PLUGIN)
    dist = tmp_path / "plugs-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugs\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[implicit_bench.strategies]\nexplode = plugs:Explode\nbroken = plugs:Broken\n"
    )
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY.replace('baselines = ["tikhonov"]', "baselines = []"))
    out = tmp_path / "out"
    args = ("run", suite, "--out", out, "--quiet", "--epochs", "1")
    diverge = cli(*args, "--strategies", "explode,jfb", cwd=tmp_path, extra_path=tmp_path)
    assert diverge.returncode == 0, diverge.stderr  # divergence is a result, not a failure
    runs = results.load(out)["runs"].set_index("strategy")
    assert (
        runs.loc["explode", "status"] == "diverged"
        and "nan" in runs.loc["explode", "status_reason"]
    )
    assert runs.loc["jfb", "status"] == "ok"  # the sweep went on
    fail = cli(*args, "--strategies", "broken,jfb", cwd=tmp_path, extra_path=tmp_path)
    assert fail.returncode == 1 and "1 failed" in fail.stdout
    runs = results.load(out)["runs"].set_index("strategy")
    assert runs.loc["broken", "status"] == "failed"
    assert "RuntimeError: boom" in runs.loc["broken", "status_reason"]
    run_id = runs.loc["broken", "run_id"]
    assert "boom" in (out / "parts" / run_id / "error.log").read_text()


# ---- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_suites())
def test_builtin_suites_load_and_expand(name):
    # Not a copy of the suite files' contents: every built-in suite loads, its runs are the
    # product of its sweep grid, strategies and seeds, and they have distinct run ids.
    suite = load_suite(name)
    grid = 1
    for _, values in suite.sweep:
        grid *= len(values)
    runs = suite.runs()
    assert len(runs) == grid * len(suite.strategies) * len(suite.seeds) > 0
    assert len({r.run_id for r in runs}) == len(runs)
    for key, values in suite.sweep:  # each sweep value reaches the runs
        section, attr = key.split(".")
        assert {getattr(getattr(r, section), attr) for r in runs} == set(values)


def test_run_ids_are_stable_and_follow_the_settings():
    suite = suite_from_dict({"strategies": ["neumann:k=3"], "seeds": 2}, "s", "s.toml")
    a, b = suite.runs()
    assert a.run_id != b.run_id and a.run_id == suite.runs()[0].run_id
    assert a.run_id.startswith("neumann_k_3-s0-")
    other = suite_from_dict(
        {"strategies": ["neumann:k=3"], "seeds": 2, "model": {"width": 8}}, "s", "s.toml"
    )
    assert other.runs()[0].config_hash != a.config_hash
    moved = with_overrides(suite, device="cpu")  # where a run happens is not what it is
    assert moved.runs()[0].run_id == a.run_id
    assert isinstance(a, RunConfig)


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"model": {"widht": 3}}, ["[model]", "widht", "width"]),
        ({"model": {"width": "3"}}, ["width", "int", "str"]),
        ({"train": {"lr": True}}, ["lr", "float", "bool"]),
        ({"stratgies": ["jfb"]}, ["stratgies", "strategies"]),
        ({"strategies": ["cg:tol=0"]}, ["cg", "tol"]),
        ({"seeds": 0}, ["seeds"]),
        ({"sweep": {"solver.maxiter": [1]}}, ["solver.maxiter"]),
        ({"baselines": ["wiener2"]}, ["wiener2", "tikhonov"]),
    ],
)
def test_bad_suite_documents_name_the_problem(raw, words):
    with pytest.raises(ValueError) as err:
        suite_from_dict(raw, "bad", "bad.toml")
    assert all(w in str(err.value) for w in words) and "bad.toml" in str(err.value)


# ---- bad input through the CLI: one line, exit status 2, no traceback --------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["run", "--strategies", "jfb,nope"], ["nope", "jfb"]),
        (["run", "--strategies", "neumann:k=-1"], ["neumann", "k"]),
        (["run", "nosuchsuite"], ["nosuchsuite", "quick"]),
        (["run", "{badtoml}"], ["widht", "width"]),
        (["run", "{notoml}"], ["not valid TOML"]),
        (["run", "{latin1}"], ["latin1.toml", "not UTF-8"]),
        (["run", "--dataset", "celeba", "--data-root", "{missing}"], ["img_align_celeba"]),
        (["run", "--dataset", "imagenet"], ["imagenet", "faces"]),
        (["run", "--seeds", "0"], ["--seeds"]),
        (["run", "--epochs", "x"], ["--epochs", "invalid int"]),
        (["run", "--device", "tpu"], ["tpu"]),
        (["report", "{missing}"], ["runs.csv"]),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args, words, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("[model]\nwidht = 3\n")
    (tmp_path / "broken.toml").write_text("strategies = [\n")
    (tmp_path / "latin1.toml").write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    fill = {
        "{badtoml}": str(tmp_path / "bad.toml"),
        "{notoml}": str(tmp_path / "broken.toml"),
        "{latin1}": str(tmp_path / "latin1.toml"),
        "{missing}": str(tmp_path / "nowhere"),
    }
    args = [fill.get(a, a) for a in args] + (
        ["--out", str(tmp_path / "o")] if args[0] == "run" else []
    )
    with pytest.raises(SystemExit) if "invalid int" in words else _nothing() as exc:
        code = main(args)
    code = exc.value.code if exc else code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present here")
def test_absent_cuda_device_is_a_usage_error(tmp_path, capsys):
    assert main(["run", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_results_are_written_atomically_and_read_back(tmp_path):
    frame = pd.DataFrame(
        [{c: i for c in results.RUN_COLUMNS} | {"run_id": f"r{i}", "status": "ok"} for i in (1, 2)]
    )
    results.write_run(tmp_path, "r1", {"runs": frame.iloc[[0]]})
    results.write_run(tmp_path, "r2", {"runs": frame.iloc[[1]]})
    (tmp_path / "parts" / "r3").mkdir()  # a run killed before it wrote anything
    (tmp_path / "parts" / "r3" / ".runs.csv.123.tmp").write_text("half")
    assert results.completed_runs(tmp_path) == {"r1": "ok", "r2": "ok"}
    merged = results.merge(tmp_path)
    back = results.load(tmp_path)
    assert list(back["runs"].run_id) == ["r1", "r2"] and len(merged["epochs"]) == 0
    with pytest.raises(RuntimeError, match="lack columns"):
        results.write_run(tmp_path, "r4", {"runs": frame.drop(columns=["saved_bytes"])})
    with pytest.raises(ValueError, match="runs.csv"):
        results.load(tmp_path / "nothing")


@pytest.mark.cuda
@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA device (none here)"
)
def test_tiny_suite_on_cuda_records_gpu_memory_and_event_timings(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY.replace("epochs = 2", "epochs = 1"))
    out = tmp_path / "out"
    proc = cli("run", suite, "--out", out, "--quiet", "--device", "cuda", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = results.load(out)["runs"]
    learned = runs[~runs.strategy.str.startswith("baseline:")]
    assert (learned.device == "cuda").all() and (learned.status == "ok").all()
    assert (learned.peak_gpu_memory_bytes > 0).all()
    assert (learned.peak_gpu_device_memory_bytes >= learned.peak_gpu_memory_bytes).all()
    steps = results.load(out)["steps"]
    assert (steps.forward_time_s > 0).all() and (steps.backward_time_s > 0).all()


@pytest.mark.slow
def test_report_from_a_real_tiny_run(tiny_run, tmp_path):
    _, out, _ = tiny_run
    proc = cli_in_process("report", out, "--out", tmp_path / "report")
    assert proc.returncode == 0, proc.stderr
    report = tmp_path / "report"
    md = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    # Short labels: tol=1e-06 is cg's default, so the report names only max_iter.
    for label in ("jfb", "cg:max_iter=300", "neumann:k=3", "unrolled:k=3"):
        assert label in md and label in html
    runs = results.load(out)["runs"]
    jfb_psnr = runs.loc[runs.strategy == "jfb", "final_test_psnr"].iloc[0]
    assert f"{jfb_psnr:.2f}" in md  # the summary quotes the table's number
    for name in ("loss_vs_epoch", "quality_vs_epoch", "step_time", "memory", "grad_cosine",
                 "reconstructions", "pareto"):  # fmt: skip
        assert (report / f"{name}.png").stat().st_size > 1000
        assert (report / f"{name}.svg").exists()
    assert html.count("data:image/png;base64,") >= 7


def test_identifiers_that_look_like_numbers_stay_strings(tmp_path):
    base = {c: 1.0 for c in results.RUN_COLUMNS} | {"status": "ok"}
    hashes = {"r1": ("123456789012", "1e5abc"), "r2": ("0123abcdef99", "deadbeef0001")}
    for run_id, (config_hash, commit) in hashes.items():
        row = base | {"run_id": run_id, "config_hash": config_hash, "git_commit": commit}
        results.write_run(tmp_path, run_id, {"runs": pd.DataFrame([row])})
    merged = results.merge(tmp_path)["runs"]  # writes Parquet too: mixed types would fail here
    for frame in (
        merged,
        results.load(tmp_path)["runs"],
        pd.read_parquet(tmp_path / "runs.parquet"),
    ):
        assert list(frame.config_hash) == ["123456789012", "0123abcdef99"]
        assert list(frame.git_commit) == ["1e5abc", "deadbeef0001"]


def test_every_named_run_option_reaches_the_suite_as_its_set_shortcut(monkeypatch, capsys):
    """bench.cli passes its named options by bench.config.SHORTCUTS: each one given is applied.
    The suite is caught as with_overrides returns it, before any data is read or run started."""
    import bench.config as config

    seen = {}

    def with_overrides(*args, **kwargs):
        seen["suite"] = real(*args, **kwargs)
        raise ValueError("stopped after the overrides")

    real = config.with_overrides
    monkeypatch.setattr(config, "with_overrides", with_overrides)
    given = {"strategies": "jfb,cg", "seeds": "2", "epochs": "3", "lr": "0.5"}
    given |= {"dataset": "faces", "data_root": "elsewhere", "device": "cpu"}
    assert set(given) == set(config.SHORTCUTS)
    options = [x for key, v in given.items() for x in (f"--{key.replace('_', '-')}", v)]
    assert main(["run", "quick", *options]) == 2
    assert "stopped after the overrides" in capsys.readouterr().err
    suite = seen["suite"]
    assert (suite.strategies, suite.seeds) == (("jfb", "cg"), (0, 1))
    assert (suite.train.epochs, suite.train.lr, suite.train.device) == (3, 0.5, "cpu")
    assert (suite.data.dataset, suite.data.root) == ("faces", "elsewhere")
