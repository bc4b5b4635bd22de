"""The third task, ``superres`` (bench/tasks/superres.py), as a newcomer's task plug-in would be
used (issue 18 §1): its operator and naive reconstruction, its image-size rule found when a
suite is loaded, baselines on measurements smaller than the images, task discovery (a file in
bench/tasks/, an entry point), and a real sweep over its factor whose report keeps the two
factors apart, each with its own baselines and naive row."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import MINI, markdown_tables

from bench.baselines import fit_all, fit_baseline
from bench.cli import main
from bench.config import ProblemConfig, load_suite, suite_from_dict
from bench.data import load_dataset
from bench.metrics import psnr
from bench.report import figures as plots
from bench.tasks import TASKS, SuperResTask, Task, make_task, register_task

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


def _faces(n: int = 12, size: int = 24) -> torch.Tensor:
    return load_dataset("faces", image_size=size, n_images=n).train.double()


def test_superres_pools_blocks_and_its_naive_reconstruction_is_the_upsampled_input():
    task = make_task(ProblemConfig(task="superres", factor=4, noise_std=0.0))
    x = torch.rand(2, 3, 8, 12, dtype=F64, generator=torch.Generator().manual_seed(0))
    d = task.A(x)
    assert d.shape == (2, 3, 2, 3)
    torch.testing.assert_close(d[0, 1, 1, 2], x[0, 1, 4:8, 8:12].mean(), rtol=0, atol=1e-15)
    up = F.interpolate(d, scale_factor=4, mode="nearest")  # torch's own nearest neighbour
    torch.testing.assert_close(task.naive(d), up.clamp(0, 1), rtol=0, atol=1e-15)
    assert task.naive_label == "upsampled input" and task.norm_bound == 0.25


def test_the_upsampled_input_is_the_pseudo_inverse_far_better_than_a_clamped_adjoint():
    """A A^T = I / f^2, so f^2 A^T is A's pseudo-inverse; A^T d alone (the old default naive
    reconstruction) is the image divided by f^2: ~9 dB on faces instead of ~25."""
    task = SuperResTask(2)
    d = torch.rand(3, 1, 5, 7, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(task.A(task.A_adjoint(d)), d / 4, rtol=0, atol=1e-15)
    x = _faces()
    d = task.simulate(x, torch.Generator().manual_seed(0))
    assert psnr(task.naive(d), x).mean() > psnr(task.A_adjoint(d).clamp(0, 1), x).mean() + 10


def test_an_image_size_the_factor_does_not_divide_is_refused_when_the_suite_loads():
    with pytest.raises(ValueError, match=r"bad.toml: \[problem\] task 'superres' cannot take the "
                                         r"25x25 images of data set 'faces'.*multiples of 2"):  # fmt: skip
        suite_from_dict({"problem": {"task": "superres"}}, "bad", "bad.toml")
    # every point of a sweep: 24 takes factor 2 and 4, not 5
    sweep = {"problem": {"task": "superres"}, "data": {"image_size": 24}}
    suite_from_dict({**sweep, "sweep": {"problem.factor": [2, 4]}}, "ok", "ok.toml")
    with pytest.raises(ValueError, match="multiples of 5"):
        suite_from_dict({**sweep, "sweep": {"problem.factor": [2, 5]}}, "bad", "bad.toml")


def test_the_cli_refuses_such_a_suite_with_exit_2_before_loading_any_data(
    tmp_path, monkeypatch, capsys
):
    from bench import task_data

    def no_data(*args, **kwargs):
        raise AssertionError("the data were loaded")

    monkeypatch.setattr(task_data, "load_task_data", no_data)
    suite = tmp_path / "tiny.toml"
    suite.write_text(MINI)
    code = main(["run", str(suite), "--out", str(tmp_path / "o"), "--set", "problem.task=superres"])
    assert code == 2 and "cannot take the 25x25 images" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_baselines_fit_on_measurements_smaller_than_the_images():
    task = SuperResTask(2)
    x = _faces()
    d = task.simulate(x, torch.Generator().manual_seed(0))
    assert d.shape[-2:] == (12, 12)
    naive = psnr(task.naive(d), x).mean()
    fitted = {b.name: b for b in fit_all(task, x, d, lams=[1e-3, 1e-2, 1e-1])}
    for name, baseline in fitted.items():
        assert baseline.reconstruct(task, d).shape == x.shape, name
    # the smoothness prior beats copying each measurement over its block
    assert psnr(fitted["gd_tikhonov"].reconstruct(task, d), x).mean() > naive + 1
    with pytest.raises(ValueError, match=r"task measures images of shape \(1, 24, 24\) as "
                                         r"\(1, 12, 12\)"):  # fmt: skip
        fit_baseline("tikhonov", task, x, x)


def test_a_task_setting_missing_from_problem_config_is_a_clear_error():
    """A task registered after bench.config was imported cannot add [problem] keys: naming the
    setting and what to do, never a bare KeyError."""

    class Late(SuperResTask):
        settings = {"late_knob": SuperResTask.settings["factor"]}

    register_task("late")(Late)
    try:
        with pytest.raises(ValueError, match=r"task 'late' declares setting\(s\) late_knob that "
                                             r"\[problem\] does not have"):  # fmt: skip
            ProblemConfig(task="late")
    finally:
        TASKS.unregister("late")


def test_a_task_must_name_and_implement_its_naive_reconstruction():
    class Nameless(SuperResTask):
        naive_label = ""

    with pytest.raises(TypeError, match="must declare naive_label"):
        register_task("nameless")(Nameless)

    class Clash(SuperResTask):
        settings = {"factor": SuperResTask.settings["factor"].__class__(3, ge=1, le=9)}

    with pytest.raises(TypeError, match="which task 'superres' declares as int"):
        register_task("clash")(Clash)
    assert "nameless" not in TASKS and "clash" not in TASKS
    assert getattr(Task.naive, "__isabstractmethod__", False)


@pytest.mark.slow  # a fresh interpreter: discovery happens at import
def test_a_task_file_in_the_folder_and_an_installed_plugin_are_found_with_their_settings(
    tmp_path,
):
    """As for strategies: a file dropped into bench/tasks/ and an entry point of the group
    implicit_bench.tasks each add a task, whose new [problem] key a suite can then set."""
    import shutil

    shutil.copytree(ROOT / "bench", tmp_path / "bench")
    shutil.copytree(ROOT / "strategies", tmp_path / "strategies")
    plugin = textwrap.dedent(
        """
        import torch
        from strategies import Param
        from bench.tasks import Task, register_task

        class Scale(Task):
            naive_label = "scaled input"
            settings = {{"{key}": Param(2.0, gt=0, le=10)}}

            def __init__(self, value=2.0, noise_std=0.01):
                super().__init__(noise_std)
                self.{key} = value

            @classmethod
            def from_config(cls, config):
                return cls(config.{key}, config.noise_std)

            def A(self, x):
                return x / self.{key}

            A_adjoint = A

            @property
            def norm_bound(self):
                return 1 / self.{key}

            def naive(self, d):
                return (d * self.{key}).clamp(0, 1)
        """
    )
    (tmp_path / "bench" / "tasks" / "scale.py").write_text(
        plugin.format(key="gain") + '\nregister_task("scale")(Scale)\n'
    )
    (tmp_path / "myplugin.py").write_text(plugin.format(key="plugin_gain"))
    dist = tmp_path / "myplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[implicit_bench.tasks]\nplugged = myplugin:Scale\n")
    code = (
        "from bench.config import suite_from_dict\n"
        "from bench.tasks import TASKS, broken_tasks, make_task, setting_columns\n"
        "s = suite_from_dict({'problem': {'task': 'scale', 'gain': 4.0}}, 'x', 'x.toml')\n"
        "p = suite_from_dict({'problem': {'task': 'plugged', 'plugin_gain': 3.0}}, 'y', 'y.toml')\n"
        "print(list(TASKS), broken_tasks(), setting_columns())\n"
        "print(make_task(s.problem).setting_columns(), make_task(p.problem).setting_columns())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    names, columns = proc.stdout.splitlines()
    assert "'scale'" in names and "'plugged'" in names and "{}" in names, names
    assert "'gain'" in names and "'plugin_gain'" in names  # the report's setting columns
    assert columns == "{'gain': 4.0} {'plugin_gain': 3.0}"


@pytest.fixture(scope="module")
def factor_sweep(tmp_path_factory) -> Path:
    """A real tiny run: one jfb run and two baselines per factor, 2 and 4, in one folder (the
    suite helpers.MINI on superres, with 24-pixel images)."""
    from bench.sweep import run_suite

    raw = tomllib.loads(MINI)
    raw.update(seeds=1, baselines=["tikhonov", "gd_tikhonov"], problem={"task": "superres"})
    raw["data"].update(image_size=24, n_images=10)
    raw["solver"]["max_iter"] = 20
    raw["sweep"] = {"problem.factor": [2, 4]}
    out = tmp_path_factory.mktemp("superres") / "results"
    assert run_suite(suite_from_dict(raw, "sweep", "sweep.toml"), out, progress=False)["ok"] == 2
    return out


def test_a_sweep_over_the_factor_reports_each_factor_with_its_own_baselines_and_naive_row(
    factor_sweep, tmp_path, monkeypatch
):
    import pandas as pd

    from bench.report import build_report

    runs = pd.read_csv(factor_sweep / "runs.csv")
    assert sorted(runs["superres_factor"].unique()) == [2, 4]
    expected = {}  # factor -> the numbers its section must show, read from runs.csv
    for factor, group in runs.groupby("superres_factor"):
        base = group[group["strategy"].str.startswith("baseline:")]
        expected[factor] = {
            "baselines": {
                f"baseline: {s.split(':')[1]}": f"{v:.2f}"
                for s, v in zip(base["strategy"], base["final_test_psnr"], strict=True)
            },
            "naive": f"{group['naive_test_psnr'].iloc[0]:.2f}",
        }
    assert expected[2]["naive"] != expected[4]["naive"]
    monkeypatch.setattr(plots, "plot_specs", lambda data: [])  # text only: figures cost seconds
    markdown = (build_report(factor_sweep, tmp_path / "report").parent / "report.md").read_text()
    sections = re.split(r"^### Setting: ", markdown, flags=re.M)
    titles = [s.splitlines()[0] for s in sections[1:]]
    assert titles[:2] == ["superres_factor = 2", "superres_factor = 4"], titles
    for factor, section in zip((2, 4), sections[1:3], strict=True):
        rows = {row[0]: row for table in markdown_tables(section) for row in table}
        for label, value in expected[factor]["baselines"].items():
            assert rows[label][2] == value, (factor, label, rows[label])
        assert rows["upsampled input"][2] == expected[factor]["naive"]
    setup = {row[0]: row[1] for table in markdown_tables(markdown) for row in table}
    assert setup["superres factor"] == "2, 4 (varies)"
    assert "upsampled input" in markdown and "blurred" not in markdown.lower()


def test_the_figure_captions_name_the_tasks_own_naive_reconstruction(factor_sweep):
    from bench.report import prepare

    data, _ = prepare(factor_sweep)
    captions = " ".join(spec.caption for spec in plots.plot_specs(data))
    assert "dotted: the upsampled input" in captions and "blurred" not in captions


def test_the_built_in_suite_is_small_and_its_images_take_the_factor():
    suite = load_suite("superres")
    problem = suite.problem
    assert (problem.task, problem.factor, suite.data.image_size) == ("superres", 2, 24)
    assert suite.baselines and suite.train.device == "auto"
