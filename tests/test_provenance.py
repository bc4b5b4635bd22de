"""Run ids that survive added settings, stale results that are never reused silently, and
command-line overrides checked like the suite file."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tomllib

import pytest
from helpers import MINI_RUN, cli_in_process

import bench.config as config
from bench import provenance, results, sweep, task_data
from bench.cli import main
from bench.config import ModelConfig, RunConfig, load_suite, suite_from_dict, with_overrides
from bench.execution import execute
from bench.sweep import StaleResults, plan

# one of the shared run's runs (conftest.py's mini_run)
ONE_RUN = MINI_RUN.replace('["jfb", "unrolled:k=2"]', '["jfb"]').replace("seeds = 2", "seeds = 1")


def _suite(text: str = ONE_RUN):
    return suite_from_dict(tomllib.loads(text), "prov", "test")


def test_a_field_added_with_its_default_keeps_every_run_id(monkeypatch):
    run = load_suite("quick").runs()[0]
    before = (run.run_id, run.setting_hash)
    # ModelConfig as a later version might declare it: one more field, with a default
    extended = dataclasses.make_dataclass(
        "ModelConfig",
        [("dropout", float, dataclasses.field(default=0.0))],
        bases=(ModelConfig,),
        frozen=True,
    )
    monkeypatch.setitem(config.SECTIONS, "model", extended)
    later = dataclasses.replace(run, model=extended(**dataclasses.asdict(run.model)))
    assert (later.run_id, later.setting_hash) == before
    changed = dataclasses.replace(
        later, model=extended(**dataclasses.asdict(run.model), dropout=0.1)
    )
    assert changed.run_id != before[0]  # a non-default value is another experiment


def test_identity_holds_only_what_differs_from_the_defaults():
    run = RunConfig(
        "s",
        "jfb",
        0,
        config.DataConfig(),
        config.ProblemConfig(),
        ModelConfig(width=8),
        config.SolverConfig(),
        config.TrainConfig(device="cuda"),
    )
    assert run.identity() == {"strategy": "jfb", "seed": 0, "model": {"width": 8}}


def test_strategy_labels_name_only_non_default_parameters():
    suite = _suite(ONE_RUN.replace('["jfb"]', '["neumann:k=10", "cg:tol=1e-3"]'))
    assert suite.strategies == ("neumann", "cg:tol=0.001")


@pytest.fixture()
def done(tmp_path, mini_run):
    """A results folder holding one completed run of the suite: (suite, out, run)."""
    suite = _suite()
    out = shutil.copytree(mini_run, tmp_path / "out")
    (run,) = task_data.fingerprinted_runs(suite)  # as planned: with its images' fingerprint
    return suite, out, run


@pytest.mark.slow
def test_completed_run_records_its_provenance_and_is_not_stale(done):
    suite, out, run = done
    stored = json.loads((out / "parts" / run.run_id / provenance.FILE).read_text())
    assert stored["params"] == {} and stored["config"]["train"]["epochs"] == 1
    assert stored["strategy_code"] == provenance.strategy_code_hash("jfb")
    assert provenance.stale_reasons(out, run) == []
    todo, counts = plan(suite, out)
    assert todo == [] and counts["skipped"] == 1


@pytest.mark.slow
def test_changed_strategy_code_is_stale_until_told_what_to_do(done, monkeypatch):
    suite, out, run = done
    monkeypatch.setattr(provenance, "strategy_code_hash", lambda spec: "edited000000")
    with pytest.raises(StaleResults, match="--rerun-stale"):
        plan(suite, out)
    kept, _ = plan(suite, out, stale="keep")
    assert kept == []
    redo, counts = plan(suite, out, stale="rerun")
    assert [r.run_id for r in redo] == [run.run_id] and counts["skipped"] == 0
    assert execute(redo[0], out).status == "ok"  # trained again, not skipped as complete
    assert provenance.stale_reasons(out, run) == []  # its new provenance is current
    assert len(results.merge(out)["runs"].query("run_id == @run.run_id")) == 1


@pytest.mark.slow
def test_changed_default_and_missing_provenance_are_stale(done):
    suite, out, run = done
    path = out / "parts" / run.run_id / provenance.FILE
    stored = json.loads(path.read_text())
    stored["config"]["solver"]["m"] = 7  # the run was made when the default m was 7
    path.write_text(json.dumps(stored))
    assert provenance.stale_reasons(out, run) == ["default settings changed: solver.m"]
    path.unlink()
    assert "no provenance" in provenance.stale_reasons(out, run)[0]


@pytest.mark.slow
def test_cli_refuses_stale_runs_in_one_line_and_reruns_on_request(done, tmp_path):
    suite, out, run = done
    path = out / "parts" / run.run_id / provenance.FILE
    stored = json.loads(path.read_text())
    stored["strategy_code"] = "edited000000"
    path.write_text(json.dumps(stored))
    (tmp_path / "prov.toml").write_text(ONE_RUN)
    proc = cli_in_process("run", tmp_path / "prov.toml", "--out", out, "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--rerun-stale" in proc.stderr
    proc = cli_in_process("run", tmp_path / "prov.toml", "--out", out, "--quiet", "--keep-stale")
    assert proc.returncode == 0 and "0 ok" in proc.stdout and "1 already complete" in proc.stdout
    proc = cli_in_process("run", tmp_path / "prov.toml", "--out", out, "--quiet", "--rerun-stale")
    assert proc.returncode == 0 and "1 ok" in proc.stdout, proc.stdout + proc.stderr


def test_set_overrides_use_the_sweep_keys_and_the_suite_file_checks():
    suite = _suite()
    changed = with_overrides(suite, ["train.epochs=3", "solver.tol=1e-4", "model.form=grad"])
    assert (changed.train.epochs, changed.solver.tol, changed.model.form) == (3, 1e-4, "grad")
    # a named option is the same as its --set item
    assert with_overrides(suite, epochs=3).train == with_overrides(suite, ["train.epochs=3"]).train
    assert with_overrides(suite, ["seeds=3", "strategies=jfb,neumann:k=2"]).runs()[-1].seed == 2
    assert with_overrides(suite, ["train.device=cpu"]).train.device == "cpu"
    for bad, words in [
        ("train.epochs=0", "epochs must be >= 1"),
        ("train.nope=1", "unknown key"),
        ("nope=1", "unknown key"),
        ("train.lr=fast", "lr must be float"),
        ("model.form=other", "form must be one of"),
        ("epochs", "expected KEY=VALUE"),
    ]:
        with pytest.raises(ValueError, match=words):
            with_overrides(suite, [bad])


def test_an_override_of_a_swept_key_replaces_its_sweep_and_says_so(tmp_path, monkeypatch, capsys):
    path = tmp_path / "swept.toml"
    path.write_text(ONE_RUN + '[sweep]\n"train.lr" = [1e-2, 2e-2]\n"train.epochs" = [1, 2]\n')
    planned = []

    def run_suite(suite, out, executor, **_):  # what would be trained
        planned.append(sorted({(r.train.lr, r.train.epochs) for r in suite.runs()}))
        return {"ok": 0, "diverged": 0, "failed": 0, "skipped": 0}

    monkeypatch.setattr(sweep, "run_suite", run_suite)
    for args in (["--lr", "0.05"], ["--set", "train.lr=0.05"]):
        code = main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet", *args])
        err = capsys.readouterr().err
        assert code == 0 and planned.pop() == [(0.05, 1), (0.05, 2)]  # the other sweep stays
        assert " ".join(args) in err and "[sweep] over train.lr (0.01, 0.02)" in err, err
    notes = []
    suite = with_overrides(_suite(path.read_text()), ["train.epochs=3"], notes=notes)
    assert suite.sweep == (("train.lr", (1e-2, 2e-2)),) and suite.train.epochs == 3
    assert notes == [
        "--set train.epochs=3 replaces the suite's [sweep] over train.epochs (1, 2): "
        "every run uses train.epochs = 3"
    ]
