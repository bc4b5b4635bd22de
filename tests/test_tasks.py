"""The blur operator: exact adjoint, normalisation, and measurements."""

import pytest
import torch

from bench.problem import Blur, DeblurProblem, GaussianBlur, gaussian_kernel


def _inner(a, b):
    return (a * b).sum().item()


@pytest.mark.parametrize(
    "op",
    [
        GaussianBlur(5, 1.0),
        GaussianBlur(7, 2.0),
        Blur(torch.rand(3, 5, generator=torch.Generator().manual_seed(0))),  # not symmetric
    ],
    ids=["gauss5", "gauss7", "random3x5"],
)
@pytest.mark.parametrize("shape", [(2, 1, 9, 9), (3, 3, 8, 13)])
def test_adjoint_identity(op, shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randn(shape, generator=g, dtype=torch.float64)
    lhs, rhs = _inner(op.A(x), y), _inner(x, op.A_adjoint(y))
    assert abs(lhs - rhs) <= 1e-6 * max(1.0, abs(lhs))


def test_adjoint_is_the_transpose_of_the_dense_matrix():
    op = Blur(torch.rand(3, 3, generator=torch.Generator().manual_seed(2)))
    n = 6 * 7
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, 6, 7)
    A = op.A(basis).reshape(n, n).T  # column j = A e_j
    At = op.A_adjoint(basis).reshape(n, n).T
    torch.testing.assert_close(At, A.T, rtol=0, atol=1e-12)


def test_gaussian_kernel_is_normalised_and_norm_at_most_one():
    k = gaussian_kernel(5, 1.0)
    assert k.shape == (5, 5) and abs(k.sum().item() - 1) < 1e-12 and (k > 0).all()
    assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))
    op = GaussianBlur(5, 1.0)
    u = torch.randn(1, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for _ in range(200):  # power iteration on A^T A
        u = op.AtA(u)
        u = u / u.norm()
    assert op.A(u).norm().item() <= 1.0 + 1e-9


def test_blur_preserves_constant_interior_and_smooths():
    op = GaussianBlur(5, 1.0)
    x = torch.ones(1, 1, 12, 12)
    torch.testing.assert_close(op.A(x)[..., 2:-2, 2:-2], x[..., 2:-2, 2:-2])
    noise = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    assert op.A(noise).std() < 0.5 * noise.std()


def test_measurements_are_seeded_and_noisy_at_the_requested_level():
    problem = DeblurProblem(GaussianBlur(5, 1.0), noise_std=0.01)
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    d1 = problem.measure(x, torch.Generator().manual_seed(7))
    d2 = problem.measure(x, torch.Generator().manual_seed(7))
    torch.testing.assert_close(d1, d2, rtol=0, atol=0)
    residual = d1 - problem.operator.A(x)
    assert 0.009 < residual.std().item() < 0.011


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: gaussian_kernel(4, 1.0), "odd"),
        (lambda: gaussian_kernel(0, 1.0), "kernel_size"),
        (lambda: gaussian_kernel(5, 0.0), "sigma"),
        (lambda: gaussian_kernel(5, float("nan")), "sigma"),
        (lambda: DeblurProblem(GaussianBlur(), noise_std=-1), "noise_std"),
        (lambda: GaussianBlur().A(torch.zeros(3, 8, 8)), r"\(B, C, H, W\)"),
    ],
)
def test_bad_input_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
