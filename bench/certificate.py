"""Certifying a convolution: proved upper bounds on its operator norm on images.

``conv_operator_norm`` (the model's default ``lipschitz_control = "operator"``) bounds the norm
of the zero-padded convolution on every image up to a size from the kernel's DFT on a fixed
frequency grid with a proved correction, each sample verified by a Cholesky test;
``aol_rescale`` (``"aol"``) rescales a kernel so that its convolution has norm <= 1 on every
image size. The proofs are in the docstrings and in docs/model.md ("Why T is a contraction").
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def aol_rescale(weight: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """The AOL-rescaled kernel: its convolution has operator norm <= 1 (see module docstring).

    ``weight``: (out, in, k, k). r_i = sum over j and offsets of |Q_ij|, Q = P^T * P the
    cross-correlations of the input channels' filters, computed as one convolution.
    """
    k = weight.shape[-1]
    pt = weight.transpose(0, 1)  # (in, out, k, k): filters of each input channel
    gram = F.conv2d(pt, pt, padding=k - 1)  # (in, in, 2k-1, 2k-1)
    r = gram.abs().sum(dim=(1, 2, 3))
    return weight * r.clamp_min(eps).rsqrt().view(1, -1, 1, 1)


# Frequencies per axis of the size-independent certificate (see conv_operator_norm): on images
# larger than this grid (minus the kernel's border) the bound is sampled on CERT_GRID x CERT_GRID
# frequencies and corrected by 1 / (1 - (pi (d1 + d2) / CERT_GRID)^2 / 2), 1.0197 for 3x3 kernels.
CERT_GRID = 32
# The certificate's slack over the largest sampled singular value found: every sample is verified
# below (1 + CERT_TOL) times it (plus a rounding margin ~1e-4), which lets one Cholesky test per
# sample decide, where an exact value per sample costs an SVD each (~10x more on CPU).
CERT_TOL = 1e-3
# SVDs proposing the maximum before the first verification: the samples with the largest
# Frobenius norms and those with the largest column norm (a lower bound on sigma_1^2), this many
# of each; every sample that then fails verification gets its own SVD. Either ranking alone
# missed the maximum on some kernels (28 failures on a fresh 32-channel one); together, none.
CERT_PROPOSALS = 4
_TINY = torch.finfo(torch.float32).tiny


def _degree(k: int) -> float:
    """Degree of a k-tap kernel's DFT as a trigonometric polynomial, taps centred: (k - 1) / 2
    for odd k; k - 1 for even k (its taps cannot be centred on integers)."""
    return (k - 1) / 2 if k % 2 else k - 1


def certificate_grid(
    kernel_shape: tuple[int, int], image_size: tuple[int, int], max_grid: int = CERT_GRID
) -> tuple[tuple[int, int], float]:
    """The DFT grid :func:`conv_operator_norm` samples for ``image_size``, and its correction.

    An axis whose cyclic embedding (n + k - 1 points) fits in ``max_grid`` is sampled exactly
    (no correction); a longer axis is sampled at ``max_grid`` frequencies and contributes
    d pi / max_grid to the half-spacing sum s; the correction is 1 / (1 - s^2 / 2).
    """
    grid, spacing = [], 0.0
    for n, k in zip(image_size, kernel_shape, strict=True):
        if n + k - 1 <= max_grid:
            grid.append(n + k - 1)
        else:
            grid.append(max_grid)
            spacing += _degree(k) * math.pi / max_grid
    if spacing**2 / 2 >= 1:
        raise ValueError(
            f"certificate grid {max_grid} is too coarse for a {kernel_shape} kernel "
            f"(needs (pi (d1 + d2) / grid)^2 / 2 < 1)"
        )
    return (grid[0], grid[1]), 1.0 / (1.0 - spacing**2 / 2)


def conv_operator_norm(
    weight: torch.Tensor, image_size: tuple[int, int], max_grid: int = CERT_GRID
) -> torch.Tensor:
    """A proven upper bound on the operator norm of the zero-padded convolution by ``weight``
    on every image up to ``image_size``, differentiable in ``weight``.

    The zero-padded convolution on an H x W image is a sub-block (a compression) of the
    convolution on any larger domain that contains its support: the circular one on the
    (H + k - 1) x (W + k - 1) grid (Sedghi et al., ICLR 2019), or the one on Z (an infinite
    axis). Its norm is therefore at most the largest singular value of the kernel's DFT
    F(w) = sum_taps K_tap e^{-i w.tap}, over the grid's frequencies on a cyclic axis and over all
    w in [0, 2 pi) on an infinite one. Short axes (n + k - 1 <= ``max_grid``) are cyclic and
    sampled exactly; on a long axis j the supremum over continuous w_j is bounded from samples
    every 2 pi / N (N = ``max_grid``), which makes the cost independent of the image size:

    Proof. Let M = sup sigma_1(F(w)), attained at w* with unit singular vectors u, v, and
    g(w) = Re u^H F(w) v. With the taps centred, g is a real trigonometric polynomial of degree
    d_j = (k_j - 1) / 2 in w_j, and |g| <= sigma_1(F) <= M everywhere, with g(w*) = M: w* is a
    global maximum of g, so grad g(w*) = 0. By Bernstein's inequality applied twice,
    |d^2 g / dw_i dw_j| <= d_i d_j M. The nearest sample w_s has |w_s,j - w*_j| <= delta_j, with
    delta_j = pi / N on a long axis and 0 on a cyclic one (w* is then a grid frequency). Taylor's
    theorem gives sigma_1(F(w_s)) >= g(w_s) >= M (1 - s^2 / 2), s = sum_j d_j delta_j, hence
    M <= max_samples sigma_1(F) / (1 - s^2 / 2). (Centring the taps multiplies F by a unimodular
    scalar, which leaves sigma_1 unchanged; for even k, d_j = k_j - 1 without centring.)

    The samples' maximum is bounded without a graph by :func:`verified_sample_bound`: SVDs
    propose it, one Cholesky test per sample verifies every sample below it (within
    ``CERT_TOL``). The sample whose SVD gave the largest value is recomputed with its graph, so
    the result is differentiable in ``weight`` at the cost of one small SVD (the gradient of a
    maximum is the gradient of its argmax). A real kernel's spectrum is conjugate-symmetric, so
    the ``rfft2`` half of the grid covers every frequency.
    """
    kh, kw = weight.shape[-2:]
    grid, correction = certificate_grid((kh, kw), tuple(image_size), max_grid)
    samples = certificate_samples(grid, max_grid, (kh, kw), weight.device)
    with torch.no_grad():
        bound, found, best = verified_sample_bound(weight.detach(), samples)
    # the argmax sample's sigma_1 with its graph (svdvals: an SVD of held singular vectors,
    # u^H F v, is cheaper but not bit-identical under a TorchDispatchMode like PeakLiveBytes)
    sigma = torch.linalg.svdvals(_dft_at(weight, samples, best.view(1))[0])[0]
    # the value is the certificate; the gradient is the argmax sample's
    return sigma * (bound / found).to(sigma.dtype) * correction


@dataclass(frozen=True, eq=False)
class FrequencySamples:
    """Frequencies at which the certificate samples a kernel's DFT, with what it derives from
    them once per grid and kernel shape (:func:`certificate_samples` caches them)."""

    freqs: torch.Tensor  # (samples, 2) radians, float64
    taps: torch.Tensor  # (samples, kh, kw): e^{-i w.tap}, complex128
    # G(w) = C_0 + sum over the offsets delta > 0 (half of them; C_-delta = C_delta^T) of
    # cos(w.delta) (C_delta + C_-delta) - i sin(w.delta) (C_delta - C_-delta):
    cos: torch.Tensor  # (samples, 1 + half): 1, then cos(w.delta) for delta > 0, float64
    sin: torch.Tensor  # (samples, half): sin(w.delta) for delta > 0, float64
    pair_offset: torch.Tensor  # (taps^2,): the offset b - a of each pair of taps (a, b)

    def __len__(self) -> int:
        return len(self.freqs)

    @classmethod
    def at(cls, freqs: torch.Tensor, kernel_shape: tuple[int, int]) -> FrequencySamples:
        kh, kw = kernel_shape
        f1, f2 = freqs.double()[:, 0, None, None], freqs.double()[:, 1, None, None]
        a = torch.arange(kh, device=freqs.device, dtype=torch.float64)
        b = torch.arange(kw, device=freqs.device, dtype=torch.float64)
        d1 = torch.arange(1 - kh, kh, device=freqs.device, dtype=torch.float64)
        d2 = torch.arange(1 - kw, kw, device=freqs.device, dtype=torch.float64)
        tap = torch.cartesian_prod(torch.arange(kh), torch.arange(kw)).to(freqs.device)
        delta = (tap[None, :, :] - tap[:, None, :]).flatten(0, 1)
        angle = (f1 * d1[:, None] + f2 * d2).flatten(1)[:, angle_count(kh, kw) // 2 :]
        return cls(
            freqs=freqs.double(),
            taps=_unit(-(f1 * a[:, None] + f2 * b)),
            cos=angle.cos(),  # its first column is delta = 0: cos 1
            sin=angle[:, 1:].sin(),
            pair_offset=(delta[:, 0] + kh - 1) * (2 * kw - 1) + delta[:, 1] + kw - 1,
        )


def angle_count(kh: int, kw: int) -> int:
    """The number of tap offsets delta of a kh x kw kernel, (2 kh - 1) (2 kw - 1)."""
    return (2 * kh - 1) * (2 * kw - 1)


def _unit(angle: torch.Tensor) -> torch.Tensor:
    return torch.polar(torch.ones_like(angle), angle)


@functools.lru_cache(maxsize=64)
def certificate_samples(
    grid: tuple[int, int], max_grid: int, kernel_shape: tuple[int, int], device=None
) -> FrequencySamples:
    """The frequencies :func:`conv_operator_norm` samples on
    ``grid``: the ``rfft2`` half of the grid (a real kernel's spectrum is conjugate-symmetric),
    and, where both axes are long (sampled at ``max_grid``, even) with kernels of equal degree,
    only its checkerboard p + q even.

    The proof's correction depends on the samples only through s = max over w of the weighted
    L1 distance sum_j d_j |w_j - w_s,j| to the nearest sample. On the square grid of spacing
    h = 2 pi / N that is d h; the checkerboard's L1 balls of radius h (diamonds) tile the plane
    too, so half the samples give the same s and the same correction. The checkerboard is
    closed under w -> -w (N even), so its rfft half still covers every frequency up to
    conjugation.
    """
    p = torch.arange(grid[0], device=device)
    q = torch.arange(grid[1] // 2 + 1, device=device)
    pq = torch.cartesian_prod(p, q)
    long_axes = grid[0] == grid[1] == max_grid and max_grid % 2 == 0
    if long_axes and _degree(kernel_shape[0]) == _degree(kernel_shape[1]):
        pq = pq[pq.sum(dim=1) % 2 == 0]
    freqs = 2 * math.pi * pq.double() / torch.tensor(grid, dtype=torch.float64, device=device)
    return FrequencySamples.at(freqs, kernel_shape)


def _dft_at(weight: torch.Tensor, samples: FrequencySamples, index: torch.Tensor) -> torch.Tensor:
    """F(w) = sum_taps K_tap e^{-i w.tap} at the samples ``index``: (len(index), out, in), with
    the graph of ``weight``."""
    taps = samples.taps[index].to(_complex(weight.dtype))
    return torch.einsum("oiab,sab->soi", weight.to(taps.dtype), taps)


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def gram_samples(weight: torch.Tensor, samples: FrequencySamples) -> torch.Tensor:
    """G(w) = F(w)^H F(w) at the frequencies of ``samples``, on the kernel's
    smaller channel side r (F(w)^T has F(w)'s singular values): (samples, r, r), computed in
    float64 and returned in ``weight``'s complex dtype.

    G(w) = sum_delta C_delta e^{-i w.delta}, C_delta = sum_a K_a^T K_(a + delta) the taps'
    cross-correlations: one (taps r) x (taps r) product for every pair of taps, and two
    (samples x offsets / 2) products for G's real and imaginary parts (C_-delta = C_delta^T),
    where the kernel's DFT and a product per sample cost ~10x more on CPU.
    """
    w = (weight if weight.shape[1] <= weight.shape[0] else weight.transpose(0, 1)).double()
    out, r, kh, kw = w.shape
    # every pair of taps: pairs[a, b] = K_a^T K_b, one (taps r) x (taps r) product
    flat = w.permute(0, 2, 3, 1).reshape(out, kh * kw * r)
    pairs = (flat.T @ flat).view(kh * kw, r, kh * kw, r).transpose(1, 2)
    # C_delta = sum over the pairs (a, a + delta) of K_a^T K_(a + delta)
    count = angle_count(kh, kw)
    offsets = torch.zeros(count, r * r, dtype=w.dtype, device=w.device)
    offsets.index_add_(0, samples.pair_offset, pairs.flatten(0, 1).flatten(1))
    # offsets are ordered so that -delta is at count - 1 - (index of delta): C_-delta = C_delta^T
    ahead, behind = offsets[count // 2 + 1 :], offsets[: count // 2].flip(0)
    real = samples.cos @ torch.cat([offsets[count // 2 : count // 2 + 1], ahead + behind])
    imag = samples.sin @ (behind - ahead)
    gram = torch.empty(real.shape, dtype=_complex(weight.dtype), device=w.device)
    torch.view_as_real(gram)[..., 0].copy_(real)  # rounded once, from float64
    torch.view_as_real(gram)[..., 1].copy_(imag)
    return gram.view(-1, r, r)


def _frobenius(g: torch.Tensor) -> torch.Tensor:
    # torch.linalg.matrix_norm is ~3x slower than this on complex batches (CPU)
    squares = torch.addcmul(g.real.square(), g.imag, g.imag) if g.is_complex() else g.square()
    return squares.sum(dim=(-2, -1)).sqrt()


def verified_below(
    gram: torch.Tensor, level: float, fro: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each Hermitian matrix G of the batch ``gram``: whether lambda_max(G) <= ``level`` +
    margin is proved, and the margin (a few 1e-4 x level in float32, ~1e-12 in float64).

    Proof. The Cholesky factorisation of A = level I - G succeeding in floating point (unit
    roundoff u) gives R with A + dA = R^H R positive semi-definite, where
    |dA| <= gamma |R^H| |R| elementwise, gamma = c (n + 1) u / (1 - c (n + 1) u) (Higham,
    "Accuracy and Stability of Numerical Algorithms", 2002, Thm 10.3; c = 2 covers complex
    arithmetic, Sec. 3.6), so ||dA||_2 <= gamma ||R||_F^2, and ||R||_F^2 = tr(A + dA) <= tr(A) +
    gamma ||R||_F^2 gives ||R||_F^2 <= tr(A) / (1 - gamma). Forming A rounds its diagonal by at
    most u (level + max |G_ii|), and rounding G from float64 moves it by at most
    u ||G||_F in norm. Hence lambda_min(A) >= -margin and lambda_max(G) <= level + margin, with
    margin = gamma tr(A) / (1 - gamma) + u (level + 2 ||G||_F) for the float64 G that was
    rounded (tr(A) = n level - tr(G), computed in float64 with a 1e-6 allowance).
    ``fro``: the matrices' Frobenius norms, when the caller has them.
    """
    n = gram.shape[-1]
    u = torch.finfo(gram.real.dtype).eps / 2
    shifted = gram.neg()
    shifted.diagonal(dim1=-2, dim2=-1).add_(level)
    _, info = torch.linalg.cholesky_ex(shifted)
    gamma = 2 * (n + 1) * u / (1 - 2 * (n + 1) * u)
    fro = _frobenius(gram).double() if fro is None else fro
    # ||R||_F^2 = tr(A + dA) <= tr(A) + gamma ||R||_F^2, so ||R||_F^2 <= tr(A) / (1 - gamma)
    trace = (n * level - gram.diagonal(dim1=-2, dim2=-1).real.double().sum(dim=-1)).clamp_min(0)
    margin = gamma / (1 - gamma) * trace * (1 + 1e-6) + u * (level + 2 * fro)
    return info == 0, margin


def verified_sample_bound(
    weight: torch.Tensor, samples: FrequencySamples, tol: float = CERT_TOL
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A proved upper bound on the largest singular value of the kernel's DFT at the
    frequencies of ``samples``; the largest singular value found by SVD; and its sample's index.

    SVDs of the samples with the largest Frobenius norms and of those with the largest column
    norms (``CERT_PROPOSALS`` of each) propose the maximum s; every sample
    is then verified below ((1 + ``tol``) s)^2 + margin in its Gram matrix by
    :func:`verified_below`; a sample that fails gets its own SVD (it may be the maximum), and
    the failed samples are verified again at a level raised by at least (1 + ``tol``)^2, until
    none fails. The bound is at most (1 + ``tol``) (1 + ~1e-4) above the samples' maximum.
    """
    gram = gram_samples(weight, samples)
    every = torch.arange(gram.shape[0], device=gram.device)
    squares = torch.addcmul(gram.real.square(), gram.imag, gram.imag)  # |G_ij|^2
    fro = squares.sum(dim=(-2, -1)).sqrt().double()
    column = squares.sum(dim=-2).amax(dim=-1)  # max_j ||G e_j||^2 <= lambda_max(G)^2
    proposed = torch.cat(
        [
            fro.argsort(descending=True)[:CERT_PROPOSALS],
            column.argsort(descending=True)[:CERT_PROPOSALS],
        ]
    ).unique()
    found = torch.linalg.svdvals(_dft_at(weight, samples, proposed))[:, 0].double()
    best, top = proposed[found.argmax()], found.max()
    level = float(top * (1 + tol)) ** 2
    bound_sq = torch.zeros((), dtype=torch.float64, device=gram.device)
    pending = every
    while len(pending):
        first = len(pending) == len(every)  # no copy of the whole batch on the first round
        passed, margin = verified_below(
            gram if first else gram[pending], level, fro if first else fro[pending]
        )
        if passed.any():
            bound_sq = torch.maximum(bound_sq, level + margin[passed].max())
        pending = pending[~passed]
        if len(pending):
            values = torch.linalg.svdvals(_dft_at(weight, samples, pending))[:, 0].double()
            if values.max() > top:
                best, top = pending[values.argmax()], values.max()
            # strictly increasing (also from 0, for an all-zero kernel): the loop ends
            level = max(level * (1 + tol) ** 2, float(top * (1 + tol)) ** 2, _TINY)
    return bound_sq.sqrt(), top, best
