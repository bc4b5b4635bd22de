"""`implicit-bench list [KIND]`: every registered plug-in of each kind, from the registries."""

from __future__ import annotations

import pytest

from bench.baselines import BASELINES
from bench.cli import main
from bench.data import DATASETS
from bench.metrics import METRICS, register_metric
from bench.solver import SOLVERS, register_solver
from bench.tasks import TASKS
from strategies import list_strategies


def _listing(capsys, *kind: str) -> dict[str, str]:
    """name -> its whole line, from ``implicit-bench list KIND``."""
    assert main(["list", *kind]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("  ") for line in lines), lines  # no heading for one kind
    return {line.split()[0]: line for line in lines}


def test_list_solvers_names_every_registered_solver_with_its_options(capsys):
    listed = _listing(capsys, "solvers")
    assert tuple(listed) == SOLVERS.names()
    for name, line in listed.items():
        options = SOLVERS.get(name).options
        assert f"options: {', '.join(options)}" in line if options else "options: none" in line
    assert "m, lam" in listed["anderson"]


def test_a_solver_registered_in_process_is_listed_with_its_docstring(capsys):
    @register_solver("test-listed", options=("lam",))
    def solve(f, z0, **kwargs):
        """Halley's comet method, for testing.

        Not this paragraph."""

    try:
        line = _listing(capsys, "solvers")["test-listed"]
    finally:
        SOLVERS.unregister("test-listed")
    assert "options: lam" in line and line.endswith("Halley's comet method, for testing.")
    assert "test-listed" not in _listing(capsys, "solvers")


def test_list_metrics_shows_label_and_direction(capsys):
    @register_metric("test-mae", "MAE", higher_is_better=False, unit="grey levels")
    def mae(x, y):
        """Mean absolute error per image."""
        return (x - y).abs().flatten(1).mean(1).double()

    try:
        listed = _listing(capsys, "metrics")
    finally:
        METRICS.unregister("test-mae")
    assert "MAE (grey levels), lower is better" in listed["test-mae"]
    assert listed["test-mae"].endswith("Mean absolute error per image.")
    psnr = METRICS.get("psnr")
    assert f"{psnr.label} ({psnr.unit}), higher is better" in listed["psnr"]
    assert "PSNR (dB)" in listed["psnr"]
    assert set(listed) == set(METRICS.names()) | {"test-mae"}


def test_list_baselines_says_whether_lambda_is_fitted(capsys):
    listed = _listing(capsys, "baselines")
    assert tuple(listed) == BASELINES.names()
    for name, line in listed.items():
        fixed = BASELINES.get(name).fixed_lam
        if fixed is None:
            assert "lambda fitted" in line, line
        else:
            assert f"fixed lambda {fixed:g}" in line and "fitted" not in line, line
    assert "fixed lambda 1e-06" in listed["direct_inverse"]


def test_list_without_a_kind_shows_every_kind_under_a_heading(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    sections, current = {}, None
    for line in out.splitlines():
        if line and not line.startswith(" "):
            current = sections.setdefault(line.rstrip(":"), [])
        elif line:
            current.append(line.split()[0])
    assert sections == {
        "tasks": list(TASKS.names()),
        "metrics": list(METRICS.names()),
        "datasets": list(DATASETS.names()),
        "solvers": list(SOLVERS.names()),
        "baselines": list(BASELINES.names()),
        "strategies": list(list_strategies()),
    }


@pytest.mark.parametrize("kind", ["tasks", "datasets", "strategies"])
def test_every_listed_entry_has_a_description(kind, capsys):
    for name, line in _listing(capsys, kind).items():
        assert len(line.split(maxsplit=1)) == 2 and len(line.split()) > 3, (name, line)


def test_list_of_an_unknown_kind_is_one_line_and_exit_status_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["list", "nonsense"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "nonsense" in err and "solvers" in err


@pytest.mark.slow
def test_help_and_usage_errors_import_no_registry_and_no_torch():
    """`--help` and argparse's usage errors answer at once: the registries (torch, torchvision,
    torchmetrics: seconds to import) load only for a command that needs them."""
    import subprocess
    import sys

    from helpers import ROOT, subprocess_env

    probe = (
        "import sys\n"
        "from bench.cli import main\n"
        "for argv in (['--help'], ['report', '--help'], ['run', '--help'], ['compare', '--help'],\n"
        "             ['list', 'x']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'torchvision', 'torchmetrics') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=subprocess_env(), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert "HEAVY []" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    # the default the help states is the one the report uses
    from bench.metrics import PRIMARY_METRIC

    assert f"(default {PRIMARY_METRIC}, bench.metrics.PRIMARY_METRIC;" in " ".join(
        done.stdout.split()
    )
