"""Forward solvers as registered plug-ins: a solver declares the ``[solver]`` settings it takes,
and the runner passes exactly those."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import run_config

import bench.training as training
from bench.config import RunConfig, SolverConfig
from bench.registry import Registry
from bench.solver import SOLVERS, register_solver, solver_from_config, solver_options
from strategies import Param

CPU = torch.device("cpu")
# SolverConfig's fields every solver gets (max_iter, tol) or that pick it (name)
OPTION_FIELDS = {f.name for f in dataclasses.fields(SolverConfig)} - {"name", "max_iter", "tol"}


@pytest.fixture
def recording_solver():
    """A solver registered for one test, declaring the option ``m``; it records its keywords."""
    calls: list[dict] = []

    @register_solver("test-recording", options=("m",))
    def solve(f, z0, max_iter, tol, stop_mode, **kwargs):
        calls.append({"max_iter": max_iter, "tol": tol, **kwargs})
        z = f(z0)
        zeros = torch.zeros(len(z0))
        return z, [], {"nstep": zeros + 1, f"{stop_mode}_lowest": zeros}

    yield calls
    SOLVERS.unregister("test-recording")


def _run(solver: SolverConfig) -> RunConfig:
    return run_config(
        "jfb",
        0,
        suite="solver",
        data=dict(dataset="faces", image_size=12, n_images=10),
        model=dict(width=2, depth=1),
        solver=solver,
        train=dict(epochs=1, batch_size=4, grad_fidelity=False),
    )


def test_a_registered_solver_receives_its_declared_option_and_no_other(recording_solver):
    config = SolverConfig(name="test-recording", max_iter=7, tol=0.25, m=3)  # lam at its default
    solver = solver_from_config(config)
    z0 = torch.zeros(2, 1, 4, 4)
    z, info = solver(lambda z: 0.5 * z + 1.0, z0)
    assert recording_solver == [{"max_iter": 7, "tol": 0.25, "m": 3}]  # lam is not declared
    assert torch.equal(z, torch.ones_like(z0)) and info["forward_iters"] == 1.0
    # the runner builds the run's solver the same way
    setup = training._Setup.build(_run(config), CPU)
    assert setup.solver.name == "test-recording" and setup.solver.kwargs == {"m": 3}


@pytest.mark.parametrize(
    "config, kwargs",
    [
        (SolverConfig(name="anderson", m=3, lam=0.5), {"m": 3, "lam": 0.5}),
        (SolverConfig(name="anderson"), {"m": 5, "lam": 1e-4}),  # SolverConfig's defaults
        # m and lam are set (at their defaults: other values are an error, tested below)
        (SolverConfig(name="broyden"), {}),
        (SolverConfig(name="fixed_point_iter"), {}),
    ],
)
def test_the_runner_passes_anderson_its_m_and_lam_and_the_others_nothing(config, kwargs):
    solver = training._Setup.build(_run(config), CPU).solver
    assert (solver.name, solver.max_iter, solver.tol) == (config.name, 50, 1e-3)
    assert solver.kwargs == kwargs


def test_every_registered_solver_declares_only_solver_config_fields():
    assert SOLVERS.get("anderson").options == ("m", "lam")
    for name, entry in SOLVERS.items():
        assert set(entry.options) <= OPTION_FIELDS, name


@pytest.mark.parametrize(
    "options, offending",
    [(("m", "beta"), "'beta'"), (("tol",), "'tol'"), (("name",), "'name'"), ("m", "'m'")],
)
def test_declaring_an_option_that_is_not_a_solver_setting_is_a_value_error(options, offending):
    with pytest.raises(ValueError, match=offending):
        register_solver("test-bad", options=options)(lambda *a, **k: None)
    assert "test-bad" not in SOLVERS


def test_public_register_solver_without_options_still_works():
    @register_solver("test-plain")
    def solve(f, z0, **kwargs):
        return f(z0), [], {}

    try:
        assert SOLVERS.get("test-plain").options == ()
        assert SOLVERS.get("test-plain").solve is solve
        # m and lam at their defaults are set but not passed
        assert solver_from_config(SolverConfig(name="test-plain")).kwargs == {}
    finally:
        SOLVERS.unregister("test-plain")
    assert "test-plain" not in SOLVERS


def test_unregister_removes_an_entry_and_names_the_accepted_ones_for_an_unknown_one():
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    reg.register("b")(2)
    reg.unregister("a")
    assert reg.names() == ("b",)
    with pytest.raises(ValueError, match=r"unknown thing 'a'; accepted: b"):
        reg.unregister("a")


def test_an_option_the_chosen_solver_does_not_take_is_an_error_not_ignored(
    recording_solver, tmp_path
):
    from helpers import MINI, cli_in_process

    from bench.config import suite_from_dict

    with pytest.raises(ValueError, match=r"solver.m = 3 has no effect on solver 'broyden'"):
        SolverConfig(name="broyden", m=3)
    with pytest.raises(
        ValueError, match=r"solver.lam = 0.5 .* 'test-recording' \(its options: m\)"
    ):
        SolverConfig(name="test-recording", lam=0.5)
    # declared options, and undeclared ones left at their defaults, are accepted
    assert SolverConfig(name="test-recording", m=7).m == 7
    assert SolverConfig(name="broyden", m=5, lam=1e-4).name == "broyden"
    with pytest.raises(ValueError, match="solver.m"):
        suite_from_dict({"solver": {"name": "fixed_point_iter", "m": 2}}, "s", "s.toml")
    suite = tmp_path / "s.toml"
    suite.write_text(MINI)
    done = cli_in_process("run", suite, "--out", tmp_path / "o", "--set", "solver.m=9")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "solver.m = 9 has no effect on solver 'fixed_point_iter'" in done.stderr


def test_a_solver_declares_its_options_as_params_which_make_the_solver_section():
    # anderson's declarations are SolverConfig's fields, with their defaults and ranges
    assert tuple(solver_options()) == ("m", "lam") == tuple(sorted(OPTION_FIELDS, reverse=True))
    for f in dataclasses.fields(SolverConfig):
        if f.name in OPTION_FIELDS:
            param = solver_options()[f.name]
            assert (f.default, f.type) == (param.default, param.type)
    with pytest.raises(ValueError, match=r"m must be >= 1 and <= 100, got 101"):
        SolverConfig(m=101)

    @register_solver("test-declaring", options={"m": Param(5, ge=1, le=100), "beta": Param(0.5)})
    def solve(f, z0, **kwargs):
        return f(z0), [], {}

    try:
        assert SOLVERS.get("test-declaring").options == ("m", "beta")
        assert solver_options()["beta"] == Param(0.5)
        # registered after bench.config was imported: SolverConfig has no field beta to give it
        with pytest.raises(
            ValueError,
            match=r"option 'beta', which \[solver\] does not have: .* after bench.config",
        ):
            SolverConfig(name="test-declaring")
    finally:
        SOLVERS.unregister("test-declaring")
    assert "beta" not in solver_options()  # an unregistered solver's options go with it


@pytest.mark.parametrize(
    "options, message",
    [
        ({"m": Param(7, ge=1, le=100)}, r"option 'm' \(int >= 1 <= 100, default 7\)"),
        ({"m": Param(5.0)}, r"option 'm'"),  # another type
        ({"tol": Param(1e-3, gt=0)}, r"'tol' cannot be"),
        ({"not a name": Param(1.0)}, r"'not a name' cannot be"),
        ({"beta": 0.5}, r"'beta' must be declared as Param"),
    ],
)
def test_an_option_declared_against_another_solver_or_the_common_settings_is_refused(
    options, message
):
    with pytest.raises(ValueError, match=message):
        register_solver("test-bad", options=options)(lambda *a, **k: None)
    assert "test-bad" not in SOLVERS


def test_bench_solver_imports_nothing_of_bench_config():
    """Data flows top-down: bench.config reads the solver registry, never the other way."""
    import ast
    from pathlib import Path

    import bench.solver

    tree = ast.parse(Path(bench.solver.__file__).read_text(encoding="utf-8"))
    imported = [
        (node.level, node.module or "")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    ] + [(0, a.name) for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert not [m for level, m in imported if m.split(".")[-1] == "config" or "config." in m]
