"""Certified error bars on every gradient (issue 19 §2): the bound on the relative error of each
strategy's adjoint holds against dense-Jacobian references, fresh and after training, and the
formula is the Banach lemma's, attained where it should be."""

import math

import pytest
import torch
from dense_layer import N, TanhLayer, _inputs, accurate_solver, dense_param_jacobian, loss_fn

from bench.bounds import AdjointProbe, relative_bound, relative_error, relative_residual
from bench.diagnostics import ADJOINT_REFERENCE_TOL, gradient_cosine
from bench.measure import StepClock
from bench.model import ReconstructionDEQ
from bench.solver import FixedPointSolver
from bench.tasks import GaussianBlur
from bench.training_step import train_step
from strategies import final_output, get_strategy, list_strategies, weighted_loss

F64 = torch.float64
GAMMA_TANH = 0.5  # ||W||_2 = 0.5 and tanh' <= 1: ||df/dz|| <= 0.5 everywhere
WITH_ADJOINT = [n for n in list_strategies() if get_strategy(n).has_adjoint]


def probed_run(strategy, f, z0, solver, loss):
    """Run ``strategy`` with the harness's probe; (v, g, x) it reads, and the output."""
    probe = AdjointProbe()
    out, _ = strategy(probe.layer(f, z0), z0, solver)
    probe.watch(final_output(out))
    weighted_loss(out, loss).backward()
    return probe.read(), out


def dense_adjoint(f, x, g):
    """v* per sample: (I - J)^T v* = g with J = df/dx at x, by a dense solve; and the J's."""
    shape, B = x.shape, x.shape[0]
    flat_x, flat_g = x.reshape(B, -1), g.reshape(B, -1)
    n = flat_x.shape[1]
    v, jacobians = [], []
    for b in range(B):

        def f_b(z, b=b):
            full = flat_x.clone()
            full[b] = z
            return f(full.view(shape)).reshape(B, -1)[b]

        J = torch.autograd.functional.jacobian(f_b, flat_x[b].detach())
        jacobians.append(J)
        v.append(torch.linalg.solve((torch.eye(n, dtype=x.dtype) - J).T, flat_g[b]))
    return torch.stack(v).view(shape), jacobians


# ---- the formula -------------------------------------------------------------------------------


def test_the_relative_bound_is_attained_where_the_lemma_is_tight():
    """J = diag(-gamma, gamma), g along the first axis, the error along the second: v* = g / (1 +
    gamma) is as short as it can be and the error as long, so the measured relative error equals
    (1 + gamma) / (1 - gamma) ||r|| / ||g||: a looser or a tighter formula fails here."""
    gamma, rho = 0.7, 1e-3
    J = torch.diag(torch.tensor([-gamma, gamma], dtype=F64))
    f = lambda z: z @ J.T + 1.0  # noqa: E731
    g = torch.tensor([[1.0, 0.0]], dtype=F64)
    x = torch.zeros(1, 2, dtype=F64)
    v_star = torch.linalg.solve((torch.eye(2, dtype=F64) - J).T, g[0])[None]
    v = v_star + torch.tensor([[0.0, rho]], dtype=F64)
    residual = float(relative_residual(f, x, g, v))
    assert residual == pytest.approx(rho * (1 - gamma), rel=1e-12)
    measured = float(relative_error(v, v_star))
    assert relative_bound(residual, gamma) == pytest.approx(measured, rel=1e-12)


def test_the_residual_is_the_dense_one_and_the_bound_holds_for_any_v():
    layer, x = TanhLayer(), _inputs()
    f = layer.layer(x)
    z = torch.randn(x.shape[0], N, dtype=F64, generator=torch.Generator().manual_seed(3))
    g = torch.randn(z.shape, dtype=F64, generator=torch.Generator().manual_seed(4))
    v_star, jacobians = dense_adjoint(f, z, g)
    for scale in (1e-6, 1e-2, 1.0):
        v = v_star + scale * torch.randn(z.shape, dtype=F64, generator=torch.Generator())
        dense_r = torch.stack([g[b] - v[b] + jacobians[b].T @ v[b] for b in range(len(z))])
        expected = dense_r.norm(dim=1) / g.norm(dim=1)
        torch.testing.assert_close(relative_residual(f, z, g, v), expected, rtol=1e-10, atol=0)
        bound = relative_bound(float(expected.max()), GAMMA_TANH)
        assert float(relative_error(v, v_star).max()) <= bound


def test_no_certificate_no_bound():
    assert math.isnan(relative_bound(0.1, math.nan))
    assert math.isnan(relative_bound(0.1, 1.0))  # gamma = 1 proves nothing
    assert relative_bound(0.0, 0.5) == 0.0


# ---- every strategy, on the dense layer --------------------------------------------------------


@pytest.mark.parametrize("name", WITH_ADJOINT)
def test_every_strategy_bound_holds_against_the_dense_adjoint(name):
    layer, x = TanhLayer(), _inputs()
    f = layer.layer(x)
    z0 = torch.zeros(x.shape[0], N, dtype=F64)
    read, _ = probed_run(get_strategy(name), f, z0, accurate_solver(), loss_fn)
    v, g, xhat = read
    v_star, _ = dense_adjoint(f, xhat, g)
    measured = float(relative_error(v, v_star).max())
    bound = relative_bound(float(relative_residual(f, xhat, g, v).max()), GAMMA_TANH)
    assert measured <= bound, (name, measured, bound)


@pytest.mark.parametrize(
    "name, params", [("jfb", {}), ("neumann", {"k": 3}), ("gmres", {}), ("cg", {}), ("shine", {})]
)
def test_the_probe_reads_the_adjoint_the_gradient_was_made_of(name, params):
    """The v read is the strategy's: its parameter gradient is sum_b v_b^T df/dtheta at the
    fixed point (dense parameter Jacobians); jfb's v is g itself."""
    layer, x = TanhLayer(), _inputs()
    z0 = torch.zeros(x.shape[0], N, dtype=F64)
    layer.zero_grad()
    (v, g, xhat), _ = probed_run(get_strategy(name, **params), layer.layer(x), z0,
                                 accurate_solver(), loss_fn)  # fmt: skip
    grad = torch.cat([p.grad.flatten() for p in layer.parameters()])
    implied = sum(v[b] @ dense_param_jacobian(layer, x[b], xhat[b]) for b in range(len(x)))
    torch.testing.assert_close(grad, implied, rtol=1e-9, atol=1e-12)
    if name == "jfb":
        torch.testing.assert_close(v, g, rtol=0, atol=0)


def test_unrolled_has_no_adjoint_and_no_bound():
    model, x, d = _model()
    row = _step(model, get_strategy("unrolled", k=3), x, d)
    assert math.isnan(row["adjoint_error_bound"]) and math.isnan(row["adjoint_residual"])
    assert math.isnan(row["adjoint_bound_time_s"])  # nothing computed, nothing timed


def test_the_adjoint_residuals_product_is_timed_apart_from_the_step():
    model, x, d = _model()
    row = _step(model, get_strategy("neumann", k=2), x, d)
    assert row["adjoint_residual"] > 0 and row["adjoint_bound_time_s"] > 0
    phases = ("certify_time_s", "forward_time_s", "backward_time_s", "optimizer_time_s")
    assert row["step_time_s"] == pytest.approx(sum(row[p] for p in phases), rel=1e-12)


# ---- the reconstruction model, fresh and after training ---------------------------------------


def _model(control="operator", seed=0):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ReconstructionDEQ(
        GaussianBlur(5, 1.0), channels=1, width=4, depth=2, lipschitz_control=control
    ).double()
    x = torch.rand(2, 1, 10, 10, generator=gen, dtype=F64)
    return model, x, model.task.simulate(x, gen)


def _solver():
    return FixedPointSolver("broyden", max_iter=200, tol=1e-11)


def _step(model, strategy, x, d, lr=0.0):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    row, _ = train_step(model, strategy, _solver(), optimizer, x, d, StepClock("cpu"))
    return row


@pytest.fixture(scope="module")
def trained():
    """The model after a few steps at a high learning rate (Adam, lr 0.05)."""
    model, x, d = _model(seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(6):
        train_step(model, get_strategy("jfb"), _solver(), optimizer, x, d, StepClock("cpu"))
    return model, x, d


@pytest.mark.parametrize("state", ["fresh", "trained"])
@pytest.mark.parametrize("name", WITH_ADJOINT)
def test_steps_and_evaluations_record_a_bound_that_holds(name, state, trained):
    """The steps.csv bound (train_step) and the epochs.csv pair (gradient_cosine) on one batch:
    the bound is >= the error against a dense solve at the same point, and the measured error
    the evaluation records is that dense error."""
    model, x, d = _model() if state == "fresh" else trained
    model.eval()
    f = model.make_layer(d)
    read, _ = probed_run(get_strategy(name), f, model.initial_iterate(d), _solver(),
                         lambda z: torch.nn.functional.mse_loss(z, x))  # fmt: skip
    model.train()
    v, g, xhat = read
    v_star, _ = dense_adjoint(f, xhat, g)
    measured = float(relative_error(v, v_star).max())
    gamma = model.contraction_bound()
    assert 0 < gamma < 1
    bound = relative_bound(float(relative_residual(f, xhat, g, v).max()), gamma)
    assert measured <= bound, (name, state, measured, bound)

    evaluation = gradient_cosine(model, get_strategy(name), _solver(), x, d)
    # the evaluation's reference is GMRES to 1e-10: within (1 + gamma) / (1 - gamma) 1e-10 of v*
    reference_error = (1 + gamma) / (1 - gamma) * ADJOINT_REFERENCE_TOL
    assert evaluation["adjoint_error"] == pytest.approx(measured, rel=1e-6, abs=reference_error)
    assert evaluation["adjoint_error"] <= evaluation["adjoint_error_bound"]
    assert evaluation["adjoint_error_bound"] == pytest.approx(bound, rel=1e-6, abs=1e-14)

    row = _step(model, get_strategy(name), x, d)  # lr 0: the model is unchanged
    assert row["adjoint_error_bound"] >= measured
    assert row["adjoint_error_bound"] == pytest.approx(bound, rel=1e-6, abs=1e-14)


def test_the_kernel_control_has_no_certificate_hence_no_bound_but_a_measured_error():
    model, x, d = _model(control="kernel")
    row = _step(model, get_strategy("neumann", k=2), x, d)
    assert math.isnan(row["adjoint_error_bound"]) and row["adjoint_residual"] > 0
    evaluation = gradient_cosine(model, get_strategy("neumann", k=2), _solver(), x, d)
    assert math.isnan(evaluation["adjoint_error_bound"]) and evaluation["adjoint_error"] > 0


def test_the_bound_costs_the_step_nothing_it_counts():
    """Products, gradients and the loss are those of a step without the bound."""
    for name in ("jfb", "neumann", "gmres"):
        rows, grads = [], []
        for bound in (True, False):
            model, x, d = _model()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
            row, _ = train_step(model, get_strategy(name), _solver(), optimizer, x, d,
                                StepClock("cpu"), bound=bound)  # fmt: skip
            rows.append(row)
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert rows[0]["jacobian_products"] == rows[1]["jacobian_products"]
        assert rows[0]["loss"] == rows[1]["loss"]
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
        assert math.isnan(rows[1]["adjoint_error_bound"])


def test_has_adjoint_is_declared_as_a_bool():
    from strategies import Strategy, register

    class Odd(Strategy):
        name = "odd-adjoint"
        has_adjoint = "no"

    with pytest.raises(TypeError, match="has_adjoint must be True or False"):
        register(Odd)
    assert get_strategy("jfb").has_adjoint and not get_strategy("unrolled").has_adjoint
