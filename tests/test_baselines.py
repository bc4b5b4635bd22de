"""Classical baselines on real images (scikit-image's LFW faces, 25x25, shipped in the wheel)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from skimage import data as skdata

from bench import baselines as bl
from bench.tasks import BlurTask, GaussianBlur, InpaintTask

NOISE = 0.01


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean per-image PSNR (data range 1), written independently of bench.baselines."""
    mse = ((x.double() - ref.double()) ** 2).mean(dim=(1, 2, 3))
    return float((10.0 * torch.log10(1.0 / mse)).mean())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run single-threaded: the tensors here are tiny, and when other torch processes share the
    few CPU cores, OpenMP threads spin-waiting on each other made this module ~40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def faces():
    x = torch.from_numpy(skdata.lfw_subset()[:100]).unsqueeze(1).to(torch.float64)
    op = GaussianBlur(5, 1.0, NOISE)
    d = op.simulate(x, torch.Generator().manual_seed(0))
    return {"op": op, "train_x": x[:80], "train_d": d[:80], "test_x": x[80:], "test_d": d[80:]}


@pytest.fixture(scope="module")
def fitted(faces):
    fits = bl.fit_all(faces["op"], faces["train_x"], faces["train_d"])
    return {b.name: b for b in fits}


@pytest.fixture(scope="module")
def naive_psnr(faces):
    return psnr(faces["test_d"].clamp(0, 1), faces["test_x"])


def dense_matrix(op, h: int, w: int) -> torch.Tensor:
    """The N x N matrix of ``op.A`` on one-channel h x w images, column i = A e_i."""
    n = h * w
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, h, w)
    return op.A(basis).reshape(n, n).T


KERNELS = {
    "gaussian": GaussianBlur(5, 1.0, NOISE),
    # separable but asymmetric and non-square: catches flips and H/W mix-ups in the fast path
    # (dominant centre taps keep A well conditioned, so the dense reference solve is accurate)
    "separable_asym": BlurTask(
        torch.outer(torch.tensor([1.0, 4.0, 2.0]), torch.tensor([1.0, 2, 8, 3, 1])) / 105, NOISE
    ),
    # not separable: exercises the conjugate-gradient fallback
    "non_separable": BlurTask(torch.tensor([[0.0, 1, 2], [1, 4, 1], [3, 2, 1]]) / 15, NOISE),
    # the second task: an exact elementwise normal solve, and A with a null space
    "inpaint": InpaintTask(0.6, seed=1, noise_std=NOISE),
}


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("lam", [1e-2, bl.DIRECT_EPS])
def test_closed_form_matches_dense_solve(kernel, lam):
    op = KERNELS[kernel]
    h, w = 8, 7
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, h, w, generator=g, dtype=torch.float64)
    d = op.simulate(x, g)
    a = dense_matrix(op, h, w)
    rhs = (a.T @ d.reshape(2, -1).T).T
    ref = torch.linalg.solve(a.T @ a + lam * torch.eye(h * w, dtype=torch.float64), rhs.T).T
    got = bl.tikhonov(op, d, lam).reshape(2, -1)
    scale = ref.abs().max()
    assert (got - ref).abs().max() <= 1e-8 * max(1.0, float(scale))
    if lam == bl.DIRECT_EPS:
        assert torch.equal(bl.direct_inverse(op, d), bl.tikhonov(op, d, lam))


def test_finite_differences_are_adjoint_and_laplacian_consistent():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 6, 9, generator=g, dtype=torch.float64)
    p, q = torch.randn(2, 2, 3, 6, 9, generator=g, dtype=torch.float64)
    gx, gy = bl.finite_diff(x)
    assert torch.equal(gx[..., :, :-1], torch.diff(x, dim=-1))
    assert torch.equal(gy[..., :-1, :], torch.diff(x, dim=-2))
    lhs = (gx * p).sum() + (gy * q).sum()
    rhs = (x * bl.finite_diff_adjoint(p, q)).sum()
    assert abs(float(lhs - rhs)) < 1e-10
    assert torch.allclose(bl.laplacian(x), bl.finite_diff_adjoint(gx, gy), atol=1e-12)


def test_direct_inverse_inverts_our_operator_on_noise_free_data(faces):
    op, x = faces["op"], faces["test_x"]
    d = op.A(x)
    # tiny eps: only the few singular values below sqrt(eps) are damped
    assert psnr(bl.direct_inverse(op, d), x) > 40.0
    # vanishing eps: the exact inverse of A (zero padding included) up to round-off
    assert (bl.direct_inverse(op, d, eps=1e-12) - x).abs().max() < 1e-5
    rec32 = bl.direct_inverse(op, d.float())
    assert rec32.dtype == torch.float32 and psnr(rec32, x) > 40.0


@pytest.mark.slow
def test_direct_inverse_amplifies_noise(faces, fitted, naive_psnr):
    b = fitted["direct_inverse"]
    assert b.lam == bl.DIRECT_EPS
    rec = b.reconstruct(faces["op"], faces["test_d"])
    assert psnr(rec, faces["test_x"]) < naive_psnr - 10.0  # measured ~6.6 dB vs ~21.1 dB


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tikhonov", "gd_tikhonov", "gd_tv"])
def test_regularised_baselines_beat_blurred_input(faces, fitted, naive_psnr, name):
    rec = fitted[name].reconstruct(faces["op"], faces["test_d"])
    assert rec.shape == faces["test_d"].shape and rec.dtype == torch.float64
    assert float(rec.min()) >= 0.0 and float(rec.max()) <= 1.0
    # measured gains: +3.8 (tikhonov), +4.1 (gd_tikhonov), +4.4 dB (gd_tv)
    assert psnr(rec, faces["test_x"]) > naive_psnr + 2.0


@pytest.fixture(scope="module")
def masked_faces(faces):
    """The same faces, half the pixels kept (the second task, solved through its own A only)."""
    op = InpaintTask(0.5, seed=0, noise_std=NOISE)
    x = torch.cat([faces["train_x"], faces["test_x"]])
    d = op.simulate(x, torch.Generator().manual_seed(0))
    fits = bl.fit_all(op, x[:80], d[:80], names=("tikhonov", "gd_tikhonov", "gd_tv"))
    return op, x[80:], d[80:], {b.name: b for b in fits}


@pytest.mark.slow
def test_inpainting_baselines_fill_the_missing_pixels(masked_faces):
    op, x, d, fitted = masked_faces
    naive = psnr(op.naive(d), x)  # zero-filled: ~8 dB on these faces
    # Tikhonov cannot fill a pixel A does not see: it only shrinks the kept ones
    tik = fitted["tikhonov"].reconstruct(op, d)
    assert bool((tik[..., op.mask(d)[0, 0] == 0] == 0).all())
    # the smoothness priors fill them from their neighbours (measured +14.1 and +7.4 dB: 200
    # steps of 1 / (1 + 8 lam / delta) leave smoothed TV far from its minimum here)
    assert psnr(fitted["gd_tikhonov"].reconstruct(op, d), x) > naive + 10.0
    assert psnr(fitted["gd_tv"].reconstruct(op, d), x) > naive + 5.0


@pytest.mark.slow
def test_float32_matches_float64(faces, fitted):
    d = faces["test_d"][:8]
    for b in fitted.values():
        r64 = b.reconstruct(faces["op"], d)
        r32 = b.reconstruct(faces["op"], d.float())
        assert r32.dtype == torch.float32
        assert abs(psnr(r32, faces["test_x"][:8]) - psnr(r64, faces["test_x"][:8])) < 0.01


def own_objective(op, x, d, lam, kind):
    """The GD objectives, computed from op.A and torch.diff only."""
    data = 0.5 * ((op.A(x) - d) ** 2).sum(dim=(1, 2, 3))
    dx = torch.nn.functional.pad(torch.diff(x, dim=-1), (0, 1))
    dy = torch.nn.functional.pad(torch.diff(x, dim=-2), (0, 0, 0, 1))
    if kind == "gd_tikhonov":
        return data + 0.5 * lam * (dx**2 + dy**2).sum(dim=(1, 2, 3))
    return data + lam * torch.sqrt(dx**2 + dy**2 + bl.TV_DELTA**2).sum(dim=(1, 2, 3))


@pytest.mark.parametrize("name", ["gd_tikhonov", "gd_tv"])
@pytest.mark.parametrize("lam", [1e-3, 1e-1, 1.0])
def test_gradient_descent_decreases_objective_monotonically(faces, name, lam):
    op, d = faces["op"], faces["test_d"][:6]
    iterates = []
    fn = bl.gd_tikhonov if name == "gd_tikhonov" else bl.gd_tv
    fn(op, d, lam, iters=60, callback=iterates.append)
    assert len(iterates) == 61
    assert torch.allclose(iterates[0], op.A_adjoint(d), rtol=0, atol=1e-13)  # x0 = A^T d
    obj = torch.stack([own_objective(op, x, d, lam, name) for x in iterates])  # (iters+1, B)
    mine = bl.tikhonov_objective if name == "gd_tikhonov" else bl.tv_objective
    assert torch.allclose(mine(op, iterates[-1], d, lam), obj[-1], rtol=1e-12)
    steps = obj[1:] - obj[:-1]
    assert bool((steps <= 1e-12 * obj[:-1].abs()).all()), float(steps.max())
    assert bool((obj[-1] < obj[0]).all())


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("name", ["gd_tikhonov", "gd_tv"])
def test_gradient_descent_matches_a_plain_reference_loop(kernel, name):
    """The GD baselines (which may use a faster matrix form of A) against a loop on op.A."""
    op, lam, iters = KERNELS[kernel], 0.05, 20
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 9, 8, generator=g, dtype=torch.float64)
    d = op.simulate(x, g)
    norm_a = torch.linalg.matrix_norm(dense_matrix(op, 9, 8), 2).item()  # ||A|| <= 1: all
    assert norm_a <= op.norm_bound * (1 + 1e-12)
    step = 1.0 / (op.norm_bound**2 + 8 * lam / (bl.TV_DELTA if name == "gd_tv" else 1))
    ref = op.A_adjoint(d)
    for _ in range(iters):
        ref = ref.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(own_objective(op, ref, d, lam, name).sum(), ref)
        ref = ref - step * grad
    fn = bl.gd_tikhonov if name == "gd_tikhonov" else bl.gd_tv
    assert torch.allclose(fn(op, d, lam, iters=iters), ref, rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tikhonov", "gd_tikhonov", "gd_tv"])
def test_lambda_is_the_best_on_the_training_grid(faces, fitted, name):
    b = fitted[name]
    assert b.lam in bl.DEFAULT_LAMS
    x, d = faces["train_x"][:32], faces["train_d"][:32]  # the default max_fit_images
    scores = {
        lam: psnr(bl.Baseline(name, lam).reconstruct(faces["op"], d), x) for lam in bl.DEFAULT_LAMS
    }
    best = max(scores.values())
    assert math.isclose(scores[b.lam], best, abs_tol=1e-9)
    # bench.metrics.psnr (torchmetrics) takes ln(10) in float32: ~1e-7 relative to this file's
    assert math.isclose(b.train_psnr, best, rel_tol=1e-6)
    # an interior optimum: the grid brackets it (otherwise the grid would need widening)
    assert min(bl.DEFAULT_LAMS) < b.lam < max(bl.DEFAULT_LAMS)


def test_lambda_ties_go_to_the_smaller_value(faces, monkeypatch):
    monkeypatch.setattr(bl, "_grid_psnr", lambda name, op, x, d, lams, **kw: [20.0] * len(lams))
    b = bl.fit_baseline(
        "tikhonov", faces["op"], faces["train_x"], faces["train_d"], lams=[0.5, 0.1, 0.3]
    )
    assert b.lam == 0.1


def test_unknown_name_raises(faces):
    with pytest.raises(ValueError, match=r"'wiener'.*direct_inverse, tikhonov, gd_tikhonov, gd_tv"):
        bl.fit_baseline("wiener", faces["op"], faces["train_x"], faces["train_d"])
    with pytest.raises(ValueError, match="wiener"):
        bl.fit_all(faces["op"], faces["train_x"], faces["train_d"], names=("tikhonov", "wiener"))
    with pytest.raises(ValueError, match="wiener"):
        bl.Baseline("wiener", 0.1)


# ---- the registry: a baseline declares a fixed lambda, or has it fitted ------------------------


@pytest.fixture
def shrinking_baselines():
    """Two baselines registered for one test, x = d / (1 + lam): ``test-fixed`` declares
    lambda = 0.3, ``test-fitted`` does not. Each records the lambdas it was run with."""
    seen: dict[str, set[float]] = {"test-fixed": set(), "test-fitted": set()}

    def shrink(name):
        def fn(task, d, lam, *, iters, delta):
            lam = torch.as_tensor(lam, dtype=d.dtype)
            seen[name].update(lam.flatten().tolist())
            return d / (1 + lam.reshape(-1, 1, 1, 1))

        return fn

    bl.register_baseline("test-fixed", fixed_lam=0.3)(shrink("test-fixed"))
    bl.register_baseline("test-fitted")(shrink("test-fitted"))
    yield seen
    bl.BASELINES.unregister("test-fixed")
    bl.BASELINES.unregister("test-fitted")


def test_a_baseline_with_a_fixed_lambda_is_not_fitted(faces, shrinking_baselines):
    x, d = faces["train_x"][:6], faces["train_d"][:6]
    b = bl.fit_baseline("test-fixed", faces["op"], x, d, lams=[0.1, 1.0])
    assert b.lam == 0.3 and list(b.grid) == [0.3]
    assert sorted(shrinking_baselines["test-fixed"]) == pytest.approx([0.3])
    assert b.train_psnr == pytest.approx(psnr((d / 1.3).clamp(0, 1), x), rel=1e-6)
    assert bl.Baseline("test-fixed", None).lam == 0.3


def test_a_baseline_without_a_fixed_lambda_is_fitted_over_the_grid(faces, shrinking_baselines):
    x, d = faces["train_x"][:6], faces["train_d"][:6]
    lams = [0.5, 0.01, 0.1]
    b = bl.fit_baseline("test-fitted", faces["op"], x, d, lams=lams)
    assert list(b.grid) == sorted(lams)
    assert sorted(shrinking_baselines["test-fitted"]) == pytest.approx(sorted(lams))
    scores = {lam: psnr((d / (1 + lam)).clamp(0, 1), x) for lam in lams}
    assert b.lam == max(scores, key=scores.get)
    assert all(b.grid[lam] == pytest.approx(scores[lam], rel=1e-6) for lam in lams)
    with pytest.raises(ValueError, match="'test-fitted' needs a lam"):
        bl.Baseline("test-fitted", None)


def test_direct_inverse_declares_its_tiny_eps():
    assert bl.BASELINES.get("direct_inverse").fixed_lam == bl.DIRECT_EPS
    assert all(bl.BASELINES.get(n).fixed_lam is None for n in ("tikhonov", "gd_tikhonov", "gd_tv"))


@pytest.mark.parametrize("fixed_lam", [0.0, -1.0, math.nan, math.inf, True, "0.1"])
def test_a_fixed_lambda_must_be_a_finite_positive_number(fixed_lam):
    with pytest.raises(ValueError, match=f"'test-bad'.*fixed_lam.*{re.escape(repr(fixed_lam))}"):
        bl.register_baseline("test-bad", fixed_lam=fixed_lam)
    assert "test-bad" not in bl.BASELINES
