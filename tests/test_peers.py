"""The torchdeq-based peers, ``torchdeq-ift`` and ``phantom``, against the dense references.

The conformance suite in test_strategies.py already runs both (contract, shapes, dtypes, saved
memory); this checks what their gradients are. Reference layer and exact gradient are shared.
"""

import dense_layer as dense
import pytest
import torch

from strategies import get_strategy, parse_spec

B_SOLVERS = ("fixed_point_iter", "anderson", "broyden")


@pytest.fixture(scope="module")
def problem():
    layer, x = dense.TanhLayer(), dense._inputs()
    exact, jfb = dense.reference_gradients(layer, x)
    return layer, x, exact, jfb


# ---- torchdeq-ift -----------------------------------------------------------------------------


@pytest.mark.parametrize("b_solver", B_SOLVERS)
def test_torchdeq_ift_matches_exact_implicit_gradient(problem, b_solver):
    layer, x, exact, _ = problem
    strategy = get_strategy("torchdeq-ift", b_solver=b_solver, tol=1e-10, max_iter=200)
    grad, _, info = dense.strategy_gradient(strategy, layer, x)
    assert dense.rel_err(grad, exact) <= 1e-8
    assert info["backward_iters"] >= 1 and info["backward_residual"] < 1e-10
    assert info["backward_converged"] == 1.0


@pytest.mark.parametrize("b_solver", B_SOLVERS)
def test_torchdeq_ift_error_shrinks_as_tol_tightens(problem, b_solver):
    layer, x, exact, _ = problem
    tols = (1e-2, 1e-4, 1e-6, 1e-8, 1e-10)
    errors = [
        dense.rel_err(
            dense.strategy_gradient(
                get_strategy("torchdeq-ift", b_solver=b_solver, tol=t), layer, x
            )[0],
            exact,
        )
        for t in tols
    ]
    assert all(a > b for a, b in zip(errors[:-1], errors[1:], strict=True)), errors
    # ||J|| <= 0.5 here, so a relative residual tol bounds the error by a small multiple of it
    assert all(e <= 10 * t for e, t in zip(errors, tols, strict=True)), errors


def test_torchdeq_ift_fills_backward_stats_during_backward():
    layer, x = dense.TanhLayer(), dense._inputs()
    z, info = get_strategy("torchdeq-ift", tol=1e-12, max_iter=1)(
        layer.layer(x), torch.zeros(x.shape[0], dense.N, dtype=x.dtype), dense.accurate_solver()
    )
    assert "backward_iters" not in info and info["forward_converged"] == 1.0
    dense.loss_fn(z).backward()
    assert info["backward_iters"] == 1 and info["backward_converged"] == 0.0
    assert info["backward_residual"] > 1e-12  # a solve cut short is recorded as such


@pytest.mark.parametrize("b_solver", B_SOLVERS)
def test_torchdeq_ift_solves_an_unbatched_vector_as_one_system(b_solver):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(7, 7, generator=g, dtype=torch.float64)
    W = torch.nn.Parameter(0.6 * W / torch.linalg.matrix_norm(W, 2))
    c = torch.rand(7, generator=g, dtype=torch.float64)

    def grad(strategy):
        W.grad = None
        z, info = strategy(
            lambda z: torch.tanh(W @ z + c),
            torch.zeros(7, dtype=torch.float64),
            dense.accurate_solver(),
        )
        z.square().sum().backward()
        return W.grad, info

    exact, _ = grad(get_strategy("cg", tol=1e-13, max_iter=500))
    ours, info = grad(get_strategy("torchdeq-ift", b_solver=b_solver, tol=1e-10))
    assert dense.rel_err(ours, exact) <= 1e-8
    assert info["backward_converged"] == 1.0


def test_torchdeq_ift_spec_round_trips():
    s = parse_spec("torchdeq-ift:b_solver=broyden:tol=1e-8:max_iter=20")
    assert (s.b_solver, s.tol, s.max_iter) == ("broyden", 1e-8, 20)
    assert parse_spec(s.label).params == s.params


# ---- phantom ----------------------------------------------------------------------------------


def test_phantom_one_undamped_step_is_jfb(problem):
    layer, x, _, jfb_ref = problem
    grad, z, _ = dense.strategy_gradient(get_strategy("phantom", k=1, tau=1.0), layer, x)
    jfb, z_jfb, _ = dense.strategy_gradient(get_strategy("jfb"), layer, x)
    assert torch.equal(grad, jfb) and torch.equal(z, z_jfb)
    assert dense.rel_err(grad, jfb_ref) <= 1e-10


@pytest.mark.parametrize("k, tau", [(1, 0.3), (3, 0.5), (6, 0.8), (4, 1.0)])
def test_phantom_equals_autograd_through_an_explicit_damped_loop(k, tau):
    layer, x = dense.TanhLayer(), dense._inputs()
    grad, z, _ = dense.strategy_gradient(get_strategy("phantom", k=k, tau=tau), layer, x)
    layer.zero_grad()
    f = layer.layer(x)
    zz, _ = dense.accurate_solver()(f, torch.zeros(x.shape[0], dense.N, dtype=x.dtype))
    for _ in range(k):
        zz = tau * f(zz) + (1 - tau) * zz
    dense.loss_fn(zz).backward()
    expected = torch.cat([p.grad.flatten() for p in layer.parameters()])
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(z, zz, rtol=1e-14, atol=0)


def test_phantom_error_falls_as_k_grows(problem):
    layer, x, exact, _ = problem
    errors = [
        dense.rel_err(
            dense.strategy_gradient(get_strategy("phantom", k=k, tau=1.0), layer, x)[0], exact
        )
        for k in (1, 2, 5, 10, 20, 40)
    ]
    assert all(a > b for a, b in zip(errors[:-1], errors[1:], strict=True)), errors
    assert errors[-1] <= 1e-10


def test_phantom_saves_one_layer_per_step():
    jfb = dense.saved_bytes_of(get_strategy("jfb"), 10)
    assert dense.saved_bytes_of(get_strategy("phantom", k=1, tau=1.0), 10) == jfb
    assert dense.saved_bytes_of(get_strategy("phantom", k=3, tau=0.5), 10) > 2 * jfb


# ---- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, params, words",
    [
        ("phantom", {"tau": 0}, ["phantom", "tau", "> 0"]),
        ("phantom", {"tau": 1.5}, ["phantom", "tau", "<= 1"]),
        ("phantom", {"k": 0}, ["phantom", "k", ">= 1"]),
        ("torchdeq-ift", {"b_solver": "newton"}, ["torchdeq-ift", "b_solver", "anderson"]),
        ("torchdeq-ift", {"tol": 0}, ["torchdeq-ift", "tol", "> 0"]),
        ("torchdeq-ift", {"max_iter": 0}, ["torchdeq-ift", "max_iter", ">= 1"]),
    ],
)
def test_bad_parameters_raise_value_errors(name, params, words):
    with pytest.raises(ValueError) as err:
        get_strategy(name, **params)
    assert all(w in str(err.value) for w in words), str(err.value)
