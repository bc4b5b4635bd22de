"""What the strategies from the literature compute (issue 19, section 1): damped Neumann, fixed-point
correction, SHINE, and the Jacobian regulariser [train] jac_reg.

The conformance suite (test_strategies.py) already runs every registered strategy; this checks
their gradients against independent references on the dense layer.
"""

import math
import tomllib

import dense_layer as dense
import pytest
import torch
from helpers import MINI

from bench.config import TrainConfig, suite_from_dict
from bench.solver import FixedPointSolver, jacobian_frobenius_sq
from bench.training import train
from strategies import WeightedOutputs, get_strategy
from strategies.shine import broyden


@pytest.fixture(scope="module")
def problem():
    layer, x = dense.TanhLayer(), dense._inputs()
    exact, jfb = dense.reference_gradients(layer, x)
    return layer, x, exact, jfb


def params_grad(layer):
    return torch.cat([p.grad.flatten() for p in layer.parameters()])


# ---- damped Neumann ---------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.3, 0.5, 1.0])
def test_one_phantom_step_is_tau_times_jfb(problem, tau):
    """z <- (1 - tau) z + tau f(z) once from z*: its gradient is tau g^T df/dtheta."""
    layer, x, _, jfb_ref = problem
    phantom, _, _ = dense.strategy_gradient(get_strategy("phantom", k=1, tau=tau), layer, x)
    damped, _, _ = dense.strategy_gradient(get_strategy("damped-neumann", k=0, tau=tau), layer, x)
    assert dense.rel_err(phantom, tau * jfb_ref) <= 1e-10
    assert dense.rel_err(damped, tau * jfb_ref) <= 1e-10


@pytest.mark.parametrize("k, tau", [(1, 0.5), (4, 0.3), (7, 0.8)])
def test_damped_neumann_is_the_phantom_gradient_as_a_series(problem, k, tau):
    """phantom:k=k+1 backprops through k+1 damped steps from an accurate z*, where every step's
    Jacobian is J at z*: the series tau sum_{i<=k} ((1 - tau) I + tau J^T)^i g."""
    layer, x, _, _ = problem
    phantom, _, _ = dense.strategy_gradient(get_strategy("phantom", k=k + 1, tau=tau), layer, x)
    series, _, info = dense.strategy_gradient(
        get_strategy("damped-neumann", k=k, tau=tau), layer, x
    )
    assert dense.rel_err(series, phantom) <= 1e-10
    assert info["backward_iters"] == k


def test_undamped_neumann_is_neumann_and_the_series_converges_to_the_exact_gradient(problem):
    layer, x, exact, _ = problem
    plain, _, _ = dense.strategy_gradient(get_strategy("neumann", k=6), layer, x)
    undamped, _, _ = dense.strategy_gradient(get_strategy("damped-neumann", k=6, tau=1.0), layer, x)
    assert dense.rel_err(undamped, plain) <= 1e-12
    errors = [
        dense.rel_err(
            dense.strategy_gradient(get_strategy("damped-neumann", k=k, tau=0.5), layer, x)[0],
            exact,
        )
        for k in (0, 5, 20, 80)
    ]
    assert all(a > b for a, b in zip(errors[:-1], errors[1:], strict=True)), errors
    assert errors[-1] <= 1e-6


# ---- fixed-point correction -------------------------------------------------------------------


def nine_steps(f, z0):
    """A forward solver whose trajectory is known: 9 plain iterations from z0."""
    z = z0
    with torch.no_grad():
        for _ in range(9):
            z = f(z)
    return z, {"forward_iters": 9.0, "forward_residual": 0.0, "forward_converged": 1.0}


def test_correction_weights_the_phantom_losses_of_trajectory_states():
    """f is evaluated at z0..z8 and z9 is returned: with 3 states the sampled ones are z3, z6 and
    z9, each through one undamped phantom step (loss at f(z_i)), weighted 0.64, 0.8, 1."""
    layer, x = dense.TanhLayer(), dense._inputs()
    strategy = get_strategy("correction", n_states=3, gamma=0.8, k=1, tau=1.0)
    f = layer.layer(x)
    out, info = strategy(f, torch.zeros(x.shape[0], dense.N, dtype=x.dtype), nine_steps)
    assert isinstance(out, WeightedOutputs) and out.weights == pytest.approx((0.64, 0.8, 1.0))
    assert info["correction_states"] == 3
    layer.zero_grad()
    sum(w * dense.loss_fn(z) for w, z in zip(out.weights, out.outputs, strict=True)).backward()
    got = params_grad(layer)

    layer.zero_grad()
    states, z = [], torch.zeros(x.shape[0], dense.N, dtype=x.dtype)
    with torch.no_grad():
        for i in range(1, 10):
            z = f(z)
            if i in (3, 6, 9):
                states.append(z)
    expected_loss = sum(
        w * dense.loss_fn(f(s)) for w, s in zip((0.64, 0.8, 1.0), states, strict=True)
    )
    expected_loss.backward()
    torch.testing.assert_close(got, params_grad(layer), rtol=1e-12, atol=0)
    torch.testing.assert_close(out.final, f(states[-1]), rtol=1e-14, atol=0)


def test_correction_with_one_state_is_the_phantom_gradient(problem):
    layer, x, _, _ = problem
    one, z1, _ = dense.strategy_gradient(
        get_strategy("correction", n_states=1, k=3, tau=0.5), layer, x
    )
    phantom, z2, _ = dense.strategy_gradient(get_strategy("phantom", k=3, tau=0.5), layer, x)
    assert torch.equal(one, phantom) and torch.equal(z1, z2)


# ---- SHINE ------------------------------------------------------------------------------------


def test_shine_forward_is_torchdeqs_broyden_when_the_factors_fit():
    layer, x = dense.TanhLayer(), dense._inputs(6)
    f, z0 = layer.layer(x), torch.zeros(6, dense.N, dtype=x.dtype)
    reference = FixedPointSolver("broyden", max_iter=40, tol=1e-11)
    z_ref, info_ref = reference(f, z0)
    z, _, _, stats = broyden(f, z0, max_iter=40, tol=1e-11, stop_mode="rel", memory=40)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-13)
    assert stats["forward_iters"] == info_ref["forward_iters"]
    assert stats["forward_converged"] == info_ref["forward_converged"] == 1.0


def test_shine_says_when_its_forward_is_not_the_suites():
    layer, x = dense.TanhLayer(), dense._inputs()
    shine = get_strategy("shine")
    suites = {
        "broyden": FixedPointSolver("broyden", max_iter=40, tol=1e-8),
        "anderson": FixedPointSolver("anderson", max_iter=40, tol=1e-8),
        "a plain callable": nine_steps,
    }
    differs = {name: dense.strategy_gradient(shine, layer, x, s)[2] for name, s in suites.items()}
    assert differs["broyden"]["shine_forward_differs"] == 0.0
    assert differs["anderson"]["shine_forward_differs"] == 1.0
    assert differs["a plain callable"]["shine_forward_differs"] == 1.0
    # more updates than factors kept: not torchdeq's Broyden (which keeps all) either
    few = get_strategy("shine", memory=1)
    _, _, info = dense.strategy_gradient(few, layer, x, suites["broyden"])
    assert info["shine_forward_differs"] == 1.0


def scalar_states(a):
    """z_b = a_b z_b + c_b, one scalar per sample: Broyden's inverse estimate is exact after one
    update, so SHINE's v_b = g_b / (1 - a_b) exactly."""
    c = torch.nn.Parameter(torch.tensor([[1.0], [2.0]], dtype=torch.float64))
    a = torch.tensor([[a[0]], [a[1]]], dtype=torch.float64)
    return c, lambda z: a * z + c


def test_shine_backward_is_minus_the_transposed_inverse_estimate_applied_to_g():
    """v_b = -B_b^T g_b with B_b = -I + U_b V_b^T the forward's dense inverse estimate of
    (df/dz - I) for sample b, and the gradient v_b^T df/dtheta (dense references)."""
    from dense_layer import dense_param_jacobian

    layer, x = dense.TanhLayer(), dense._inputs()
    f, z0 = layer.layer(x), torch.zeros(x.shape[0], dense.N, dtype=x.dtype)
    solver = FixedPointSolver("broyden", max_iter=3, tol=1e-12)  # a rough estimate: B^T != B
    grad, _, info = dense.strategy_gradient(get_strategy("shine", fallback=False), layer, x, solver)
    z_star, us, vts, _ = broyden(f, z0, max_iter=3, tol=1e-12, stop_mode="rel", memory=30)
    g = torch.autograd.functional.jacobian(dense.loss_fn, f(z_star))
    expected = 0.0
    for b in range(x.shape[0]):
        B = -torch.eye(dense.N, dtype=x.dtype) + us[b] @ vts[b]
        assert (B - B.T).abs().max() > 1e-3  # so that a missing transpose shows
        expected = expected + (-B.T @ g[b]) @ dense_param_jacobian(layer, x[b], z_star[b])
    assert dense.rel_err(grad, expected) <= 1e-10


@pytest.mark.parametrize("fallback", [True, False])
def test_shine_falls_back_to_jfb_per_sample_where_the_estimate_is_too_large(fallback):
    """Sample 0: v = g / 0.9, under 1.8 ||g||; sample 1: v = g / 0.05 = 20 g, over it, so with
    ``fallback`` it gets v = g (the jfb gradient) while sample 0 keeps its estimate."""
    c, f = scalar_states((0.1, 0.95))
    solver = FixedPointSolver("broyden", max_iter=20, tol=1e-12)
    out, info = get_strategy("shine", fallback=fallback)(
        f, torch.zeros(2, 1, dtype=torch.float64), solver
    )
    g = torch.tensor([[3.0], [-1.0]], dtype=torch.float64)
    (out * g).sum().backward()
    expected = torch.tensor([[3.0 / 0.9], [-1.0 if fallback else -1.0 / 0.05]], dtype=torch.float64)
    torch.testing.assert_close(c.grad, expected, rtol=1e-9, atol=0)
    assert info["shine_fallback_frac"] == (0.5 if fallback else 0.0)
    assert info["backward_iters"] == 0


def test_shine_is_a_descent_direction_and_refinement_approaches_the_exact_gradient(problem):
    layer, x, exact, _ = problem
    solver = FixedPointSolver("broyden", max_iter=50, tol=1e-10)
    errors = []
    for refine in (0, 2, 10):
        grad, _, info = dense.strategy_gradient(
            get_strategy("shine", refine=refine), layer, x, solver
        )
        errors.append(dense.rel_err(grad, exact))
        assert torch.dot(grad, exact) > 0
        assert info["backward_iters"] == (refine + 1 if refine else 0)
    assert errors[0] > errors[1] > errors[2] and errors[2] <= 1e-6, errors
    assert info["backward_residual"] <= 1e-6


def test_shine_saves_its_factors_for_backward():
    """2 x batch x state x memory float32 numbers more per extra factor (batch 2, 16 x 16)."""
    small = dense.saved_bytes_of(get_strategy("shine", memory=10), 10)
    large = dense.saved_bytes_of(get_strategy("shine", memory=30), 10)
    assert large - small == 2 * 2 * 256 * 20 * 4


# ---- Jacobian regularisation ------------------------------------------------------------------


@pytest.mark.slow
def test_jac_reg_estimate_matches_the_dense_frobenius_norm():
    layer, x = dense.TanhLayer(), dense._inputs()
    f = layer.layer(x)
    z, _ = dense.accurate_solver()(f, torch.zeros(x.shape[0], dense.N, dtype=x.dtype))
    exact = (
        sum(
            torch.autograd.functional.jacobian(layer.layer(x[b : b + 1]), z[b : b + 1])
            .reshape(dense.N, dense.N)
            .square()
            .sum()
            for b in range(x.shape[0])
        )
        / z.numel()
    )
    torch.manual_seed(0)
    estimate = jacobian_frobenius_sq(f, z, probes=4000)
    # Hutchinson with Gaussian probes: relative std sqrt(2 / probes) ~ 2 % here at most
    assert estimate.item() == pytest.approx(exact.item(), rel=0.08)
    estimate.backward()  # differentiable in the parameters: it can be trained on
    assert layer.W.grad is not None and layer.W.grad.norm() > 0


@pytest.mark.parametrize(
    "key, value", [("jac_reg", -0.1), ("jac_reg", math.inf), ("jac_reg_every", 0)]
)
def test_jac_reg_settings_are_checked(key, value):
    with pytest.raises(ValueError, match=key):
        TrainConfig(**{key: value})
    with pytest.raises(ValueError, match=key):
        suite_from_dict({"train": {key: value}}, "bad", "bad.toml")


@pytest.mark.slow
def test_training_with_jac_reg_records_the_estimate_on_every_nth_step():
    raw = tomllib.loads(MINI)
    raw["strategies"] = ["correction", "shine"]
    raw["seeds"] = 1
    raw["train"].update(jac_reg=0.5, jac_reg_every=2, epochs=2, grad_fidelity=True)
    suite = suite_from_dict(raw, "jacreg", "jacreg.toml")
    for run in suite.runs():
        tables = train(run, torch.device("cpu"))
        steps = tables["steps"]
        assert len(steps) == 4  # 6 images: 4 train, batch 4, 2 epochs
        measured = steps.jac_frobenius_sq.notna().tolist()
        assert measured == [True, False, True, False], steps.jac_frobenius_sq.tolist()
        assert (steps.jac_frobenius_sq.dropna() > 0).all()
        assert steps.loss.map(math.isfinite).all()
        assert tables["epochs"].grad_reference_converged.eq(1.0).all()
        assert (tables["runs"].jac_reg == 0.5).all() and (tables["runs"].jac_reg_every == 2).all()
        assert tables["epochs"].grad_cosine.gt(0).all()  # the weighted loss's gradient, measured


def test_the_training_loss_of_weighted_outputs_is_their_weighted_sum():
    """train_step's ``loss`` for correction: sum_i gamma^(n-i) mse(z_i, x), the final output
    the reconstruction; the jac_reg estimate at that reconstruction is recorded beside it."""
    from bench.measure import StepClock
    from bench.model import ReconstructionDEQ
    from bench.tasks import GaussianBlur
    from bench.training_step import train_step
    from strategies import weighted_loss

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = ReconstructionDEQ(GaussianBlur(5, 1.0), channels=1, width=4, depth=2).double()
    x = torch.rand(2, 1, 12, 12, generator=g, dtype=torch.float64)
    d = model.task.simulate(x, g)
    solver = FixedPointSolver("fixed_point_iter", max_iter=12, tol=1e-30)
    strategy = get_strategy("correction", n_states=3, gamma=0.5)
    out, _ = model(d, strategy, solver)
    mse = [torch.nn.functional.mse_loss(z, x).item() for z in out.outputs]
    assert len(set(mse)) == 3  # the states differ, so the weights matter
    expected = weighted_loss(out, lambda z: torch.nn.functional.mse_loss(z, x)).item()
    assert expected == pytest.approx(0.25 * mse[0] + 0.5 * mse[1] + mse[2], rel=1e-12)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    row, xhat = train_step(model, strategy, solver, optimizer, x, d, StepClock("cpu"), jac_reg=1.0)
    assert row["loss"] == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(xhat, out.final, rtol=1e-12, atol=0)
    assert row["jac_frobenius_sq"] > 0


@pytest.mark.slow
def test_report_of_a_jac_reg_sweep_titles_its_settings_and_says_shines_forward_is_its_own(
    tmp_path,
):
    """A sweep over [train] jac_reg makes one setting per weight, titled by it; shine's own
    Broyden forward (the suite solves with fixed_point_iter) is named in the observations."""
    from bench.report import build_report
    from bench.sweep import run_suite

    raw = tomllib.loads(MINI)
    raw.update(strategies=["jfb", "shine"], seeds=1, sweep={"train.jac_reg": [0.0, 0.5]})
    out = tmp_path / "out"
    counts = run_suite(suite_from_dict(raw, "jacreg", "jacreg.toml"), out, progress=False)
    assert counts.get("ok") == 4, counts
    build_report(out, tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "jac_reg = 0" in markdown and "jac_reg = 0.5" in markdown
    assert (
        "shine ran its own Broyden forward solve, not the suite's solver (fixed_point_iter), "
        "in 100% of steps" in markdown
    )
    assert "jfb ran its own" not in markdown
