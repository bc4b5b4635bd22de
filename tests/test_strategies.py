"""Conformance tests: every registered strategy (built-in, docs example, or a new file) runs them.

Reference: f(z) = tanh(W z + U x + b) with ||W||_2 = 0.5, small enough for dense Jacobians; the
exact implicit gradient is computed with torch.linalg.solve, independently of the strategies.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import dense_layer as dense
import pytest
import torch

from bench.solver import FixedPointSolver
from strategies import (
    Strategy,
    final_output,
    get_strategy,
    list_strategies,
    parse_spec,
    strategy_class,
    weighted_loss,
)
from strategies.gmres import gmres

ROOT = Path(__file__).resolve().parents[1]


def test_cg_matches_exact_implicit_gradient():
    layer, x = dense.TanhLayer(), dense._inputs()
    exact, _ = dense.reference_gradients(layer, x)
    grad, _, info = dense.strategy_gradient(get_strategy("cg", tol=1e-12, max_iter=200), layer, x)
    assert dense.rel_err(grad, exact) <= 1e-6
    assert info["backward_residual"] <= 1e-12 and info["backward_iters"] >= 1


def test_cg_reports_when_it_stops_short():
    layer, x = dense.TanhLayer(), dense._inputs()
    _, _, info = dense.strategy_gradient(get_strategy("cg", tol=1e-12, max_iter=1), layer, x)
    assert info["backward_iters"] == 1 and info["backward_converged"] == 0.0
    assert info["backward_residual"] > 1e-12


def test_neumann_error_falls_with_k():
    layer, x = dense.TanhLayer(), dense._inputs()
    exact, _ = dense.reference_gradients(layer, x)
    errors = [
        dense.rel_err(dense.strategy_gradient(get_strategy("neumann", k=k), layer, x)[0], exact)
        for k in (0, 2, 5, 10, 20, 60)
    ]
    assert all(a > b for a, b in zip(errors[:-1], errors[1:], strict=True)), errors
    assert errors[-1] <= 1e-6


def test_jfb_is_the_one_step_gradient_and_a_descent_direction():
    layer, x = dense.TanhLayer(), dense._inputs()
    exact, jfb_ref = dense.reference_gradients(layer, x)
    grad, _, _ = dense.strategy_gradient(get_strategy("jfb"), layer, x)
    assert dense.rel_err(grad, jfb_ref) <= 1e-10
    assert torch.dot(grad, exact) > 0


def test_unrolled_equals_autograd_through_an_explicit_loop():
    layer, x = dense.TanhLayer(), dense._inputs()
    grad, z, info = dense.strategy_gradient(get_strategy("unrolled", k=7), layer, x)
    layer.zero_grad()
    f, zz = layer.layer(x), torch.zeros(x.shape[0], dense.N, dtype=x.dtype)
    for _ in range(7):
        zz = f(zz)
    dense.loss_fn(zz).backward()
    expected = torch.cat([p.grad.flatten() for p in layer.parameters()])
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(z, zz)
    assert info["forward_iters"] == 7


# ---- every registered strategy ----------------------------------------------------------------


@pytest.mark.parametrize("name", list_strategies())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 6])
def test_every_strategy_contract(name, dtype, batch):
    layer, x = dense.TanhLayer(dtype), dense._inputs(batch, dtype)
    strategy = get_strategy(name)
    assert isinstance(strategy, Strategy) and strategy.name == name
    grad, z, info = dense.strategy_gradient(
        strategy, layer, x, FixedPointSolver("anderson", tol=1e-5)
    )
    assert z.shape == (batch, dense.N) and z.dtype == dtype and z.requires_grad
    for p in layer.parameters():
        assert p.grad is not None and p.grad.shape == p.shape and p.grad.dtype == dtype
    assert torch.isfinite(grad).all() and grad.norm() > 0
    assert isinstance(info, dict) and info
    assert all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in info.items())


@pytest.mark.parametrize("name", list_strategies())
def test_every_strategy_works_on_images_and_on_unbatched_vectors(name):
    strategy = get_strategy(name)
    w = torch.nn.Parameter(torch.tensor(0.4, dtype=torch.float64))
    d = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    out, _ = strategy(lambda z: w * torch.sin(z) + d, torch.zeros_like(d), dense.accurate_solver())
    weighted_loss(out, torch.sum).backward()
    assert final_output(out).shape == d.shape and torch.isfinite(w.grad)
    v = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
    c = torch.rand(7, dtype=torch.float64)
    out, _ = strategy(
        lambda z: v * torch.cos(z) + c, torch.zeros(7, dtype=torch.float64), dense.accurate_solver()
    )
    weighted_loss(out, torch.sum).backward()
    assert final_output(out).shape == (7,) and torch.isfinite(v.grad)


def tight(cls) -> dict:
    """Parameters for a tight solve of an exact strategy: tol 1e-12, and room to reach it."""
    params = {"tol": 1e-12} if "tol" in cls.parameters else {}
    if "max_iter" in cls.parameters:
        params["max_iter"] = int(min(1000, cls.parameters["max_iter"].le or 1000))
    return params


@pytest.mark.parametrize("name", list_strategies())
def test_every_strategy_close_to_the_exact_gradient_when_it_should_be(name):
    """A strategy declared exact matches the dense-Jacobian implicit gradient to 1e-6 (relative)
    at a tight tolerance; any other strategy gives a descent direction on this layer."""
    cls = strategy_class(name)
    layer, x = dense.TanhLayer(), dense._inputs()
    exact, _ = dense.reference_gradients(layer, x)
    grad, _, _ = dense.strategy_gradient(cls(**tight(cls)) if cls.exact else cls(), layer, x)
    if cls.exact:
        assert dense.rel_err(grad, exact) <= 1e-6
    else:
        assert torch.dot(grad, exact) > 0


# ---- gmres ------------------------------------------------------------------------------------


def test_gmres_matches_the_exact_gradient_and_fills_info():
    layer, x = dense.TanhLayer(), dense._inputs()
    exact, _ = dense.reference_gradients(layer, x)
    grad, _, info = dense.strategy_gradient(get_strategy("gmres", tol=1e-12), layer, x)
    assert dense.rel_err(grad, exact) <= 1e-6
    assert info["backward_converged"] == 1.0 and info["backward_residual"] <= 1e-12
    assert 1 <= info["backward_iters"] <= dense.N  # GMRES is exact after N products on R^N


@pytest.mark.parametrize("restart", [60, 7])
def test_gmres_solves_each_sample_of_a_nonsymmetric_system(restart):
    """Per-sample solutions of (I - A_b) v = g_b against torch.linalg.solve, with and without
    restarts; a zero right-hand side gives v = 0 while the others are solved."""
    g = torch.Generator().manual_seed(3)
    n, batch = 40, 4
    A = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    A = 0.9 * A / torch.linalg.matrix_norm(A, 2)[:, None, None]
    rhs = torch.randn(batch, n, generator=g, dtype=torch.float64)
    rhs[1] = 0
    v, products, residual = gmres(
        lambda u: u - torch.einsum("bij,bj->bi", A, u), rhs, 1e-10, 1000, restart
    )
    expected = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - A, rhs)
    torch.testing.assert_close(v, expected, rtol=0, atol=1e-8)
    assert torch.equal(v[1], torch.zeros(n, dtype=torch.float64))
    assert residual <= 1e-10 and 1 <= products < 1000


def test_gmres_zero_gradient_gives_zero_without_products():
    calls = []
    v, products, residual = gmres(lambda u: calls.append(u) or u, torch.zeros(3, 5), 1e-6, 50, 10)
    assert torch.equal(v, torch.zeros(3, 5)) and products == 0 and residual == 0 and not calls


def test_gmres_reports_when_max_iter_stops_it_short():
    layer, x = dense.TanhLayer(), dense._inputs()
    _, _, info = dense.strategy_gradient(get_strategy("gmres", tol=1e-12, max_iter=1), layer, x)
    assert info["backward_iters"] == 1 and info["backward_converged"] == 0.0
    assert info["backward_residual"] > 1e-12


@pytest.mark.parametrize("name", list_strategies())
def test_saved_bytes_do_not_grow_with_solver_iterations(name):
    strategy = get_strategy(name)
    few, many = dense.saved_bytes_of(strategy, 10), dense.saved_bytes_of(strategy, 100)
    assert few == many and few > 0


def test_unrolled_saved_bytes_grow_with_k():
    sizes = [dense.saved_bytes_of(get_strategy("unrolled", k=k), 10) for k in (1, 2, 4, 8)]
    assert sizes[0] < sizes[1] < sizes[2] < sizes[3]
    per_layer = sizes[1] - sizes[0]
    assert sizes[3] - sizes[2] == pytest.approx(4 * per_layer, rel=0.05)


def test_jfb_saves_what_one_layer_application_saves():
    jfb = dense.saved_bytes_of(get_strategy("jfb"), 10)
    one_layer = dense.saved_bytes_of(get_strategy("unrolled", k=1), 10)
    assert jfb <= one_layer  # unrolled's first layer also saves x0-derived tensors


# ---- the contract's errors, discovery and plug-ins --------------------------------------------


@pytest.mark.parametrize(
    "name, params, words",
    [
        ("nope", {}, ["nope", "jfb", "cg", "neumann", "unrolled"]),
        ("neumann", {"k": -1}, ["neumann", "k", "-1", ">= 0"]),
        ("cg", {"tol": 0}, ["cg", "tol", "> 0", "max_iter"]),
        ("cg", {"tol": float("nan")}, ["cg", "tol"]),
        ("cg", {"max_iter": 2.5}, ["cg", "max_iter", "int"]),
        ("unrolled", {"depth": 3}, ["unrolled", "depth", "accepted", "k"]),
        ("jfb", {"k": 1}, ["jfb", "k", "no parameters"]),
    ],
)
def test_bad_names_and_parameters_raise_clear_value_errors(name, params, words):
    with pytest.raises(ValueError) as err:
        get_strategy(name, **params)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_spec_parsing():
    s = parse_spec("cg:tol=1e-8:max_iter=7")
    assert (s.name, s.tol, s.max_iter) == ("cg", 1e-8, 7)
    assert parse_spec(s.label).params == s.params
    for bad in ("neumann:k=ten", "neumann:k", "neumann:q=1", "zzz:k=1"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_readme_examples_are_registered():
    from strategies import strategy_class

    assert "damped" in list_strategies()
    assert strategy_class("adjoint-iteration").exact  # docs/strategies.md's exact example


def _run_python(code, pythonpath):
    env = {"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=pythonpath,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.slow
def test_a_new_file_in_the_strategies_folder_is_discovered(tmp_path):
    import shutil

    shutil.copytree(ROOT / "strategies", tmp_path / "strategies")
    shutil.copytree(ROOT / "bench", tmp_path / "bench")
    (tmp_path / "strategies" / "halfstep.py").write_text(
        textwrap.dedent(
            """
            from strategies import Strategy, register

            @register
            class HalfStep(Strategy):
                name = "halfstep"

                def __call__(self, f, z0, solver):
                    return f(z0), {}
            """
        )
    )
    out = _run_python("import strategies; print(strategies.list_strategies())", tmp_path)
    assert "'halfstep'" in out and "'jfb'" in out


@pytest.mark.slow
def test_a_strategy_file_that_forgets_register_is_reported(tmp_path):
    import shutil

    shutil.copytree(ROOT / "strategies", tmp_path / "strategies")
    (tmp_path / "strategies" / "forgot.py").write_text(
        "from strategies import Strategy\n"
        "class Forgot(Strategy):\n"
        "    name = 'forgot'\n"
        "    def __call__(self, f, z0, solver):\n"
        "        return f(z0), {}\n"
    )
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    code = "import strategies; print(strategies.list_strategies(), strategies.unregistered_strategies())"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "'forgot'" not in proc.stdout.split("]")[0]  # not registered ...
    assert "forgot.py" in proc.stdout and "Forgot" in proc.stdout  # ... but reported
    assert "does not register it: add @register" in proc.stderr


@pytest.mark.slow
def test_installed_packages_add_strategies_through_entry_points(tmp_path):
    (tmp_path / "myplugin.py").write_text(
        "from strategies import Strategy, register\n"
        "class Plugged(Strategy):\n"
        "    name = 'plugged'\n"
        "    def __call__(self, f, z0, solver):\n"
        "        return f(z0), {}\n"
    )
    dist = tmp_path / "myplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[implicit_bench.strategies]\nplugged = myplugin:Plugged\n"
    )
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import strategies; print(strategies.list_strategies())"
    assert "'plugged'" in _run_python(code, tmp_path)
