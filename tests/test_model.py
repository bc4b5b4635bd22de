"""The DE-GRAD layer T(x) = x - eta (A^T(Ax - d) + x - D(x)) and the forward solver."""

import pytest
import torch

from bench.model import ALPHA_MAX, ETA_MAX, DeblurDEQ, Denoiser
from bench.problem import GaussianBlur
from bench.solver import FixedPointSolver, lipschitz_estimate


def _model(channels=1, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return DeblurDEQ(GaussianBlur(5, 1.0), channels=channels, width=8, depth=3).to(dtype)


def test_layer_matches_its_definition():
    model = _model().eval()  # eval: spectral norm does no power-iteration step per weight read
    g = torch.Generator().manual_seed(1)
    d = torch.rand(2, 1, 12, 12, generator=g, dtype=torch.float64)
    z = torch.rand(2, 1, 12, 12, generator=g, dtype=torch.float64)
    f = model.make_layer(d)
    A = model.operator
    reg = model.alpha * (z - model.denoiser(z))
    expected = z - model.eta * (A.A_adjoint(A.A(z) - d) + reg)
    torch.testing.assert_close(f(z), expected)
    torch.testing.assert_close(model.initial_iterate(d), A.A_adjoint(d))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layer_is_a_contraction(channels, seed):
    model = _model(channels, seed=seed)
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(3, channels, 16, 16, generator=g, dtype=torch.float64)
    z = torch.rand(3, channels, 16, 16, generator=g, dtype=torch.float64)
    f = model.make_layer(d)
    for _ in range(5):  # settle spectral norm's power iteration, as training does
        model.denoiser.weights()
    f = model.make_layer(d)
    assert lipschitz_estimate(f, z, iters=30) < 1.0


def test_lipschitz_estimate_matches_dense_jacobian_norm():
    model = _model()
    d = torch.rand(1, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    f = model.make_layer(d)
    z = torch.rand_like(d)
    J = torch.autograd.functional.jacobian(lambda u: f(u.view_as(z)).flatten(), z.flatten())
    exact = torch.linalg.matrix_norm(J, 2).item()
    estimate = lipschitz_estimate(f, z, iters=300)
    # power iteration approaches the top singular value from below; slowly, as the top of the
    # spectrum of this weakly contractive layer is clustered
    assert exact * 0.995 <= estimate <= exact * (1 + 1e-9)


def test_eta_and_alpha_stay_positive_and_inside_the_contraction_region():
    model = _model()
    for raw in (-50.0, 0.0, 50.0):
        with torch.no_grad():
            model.eta_raw.fill_(raw)
            model.alpha_raw.fill_(raw)
        eta, alpha = model.eta.item(), model.alpha.item()
        assert 0.0 <= eta <= ETA_MAX and 0.0 <= alpha <= ALPHA_MAX
        assert eta * (1 + 2 * alpha) <= 2.0


@pytest.mark.parametrize("eta_raw, alpha_raw", [(10.0, 10.0), (0.0, 10.0), (10.0, -2.0)])
def test_contraction_holds_at_the_edges_of_the_parameter_range(eta_raw, alpha_raw):
    model = _model().eval()
    with torch.no_grad():
        model.eta_raw.fill_(eta_raw)
        model.alpha_raw.fill_(alpha_raw)
    d = torch.rand(2, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert lipschitz_estimate(model.make_layer(d), torch.rand_like(d), iters=50) < 1.0


def test_solver_finds_the_fixed_point_and_reports_honestly():
    model = _model()
    d = torch.rand(2, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    f, z0 = model.make_layer(d), model.initial_iterate(d)
    # plain iteration converges for any contraction (Anderson may stall on weak ones)
    z, info = FixedPointSolver("fixed_point_iter", max_iter=3000, tol=1e-9)(f, z0)
    rel = ((f(z) - z).flatten(1).norm(dim=1) / f(z).flatten(1).norm(dim=1)).max().item()
    assert rel < 1e-8 and info["forward_converged"] == 1.0
    assert info["forward_residual"] == pytest.approx(rel, rel=0.5)
    assert not z.requires_grad
    _, capped = FixedPointSolver("fixed_point_iter", max_iter=2, tol=1e-8)(f, z0)
    assert capped["forward_converged"] == 0.0 and capped["forward_iters"] <= 2
    assert capped["forward_residual"] > 1e-8


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: FixedPointSolver("newton"), "newton"),
        (lambda: FixedPointSolver(max_iter=0), "max_iter"),
        (lambda: FixedPointSolver(tol=0), "tol"),
        (lambda: Denoiser(width=0), "width"),
        (lambda: Denoiser(lipschitz=1.0), "lipschitz"),
        (lambda: DeblurDEQ(GaussianBlur(), eta=0.9), "eta"),
        (lambda: DeblurDEQ(GaussianBlur(), alpha=0.0), "alpha"),
    ],
)
def test_bad_settings_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
