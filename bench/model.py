"""The implicit reconstruction network: a fixed-point layer T whose contraction is proved, not hoped.

The network is generic over the task (bench/tasks): it uses only the task's ``A``, ``A_adjoint``,
``AtA``, ``norm_bound`` and, in the prox form, its exact ``normal_solve``. Two forms of T with the
same fixed points (the minimisers' stationarity condition A^T (A x - d) + alpha (x - D(x)) = 0),
selected by ``form``:

* ``"prox"`` (default; Gilton et al.'s DE-Prox):  T(x) = (A^T A + alpha I)^-1 (A^T d + alpha D(x)).
* ``"grad"`` (the reference work's DE-Grad):       T(x) = x - eta (A^T (A x - d) + alpha (x - D(x))).

The learned part is D(x) = L ((1 - t) x + t g(x)), with t in (0, 1) learnable, L = ``lipschitz``
< 1, and g a stack of 3x3 convolutions with 1-Lipschitz activations between them, each
convolution certified 1-Lipschitz as an operator on images (below), so Lip(g) <= 1 and
Lip(D) <= L ((1 - t) + t Lip(g)) <= L. The activation, ``activation``:

* ``"relu"`` (default).
* ``"maxmin"``: GroupSort with groups of two (Anil, Lucas & Grosse, ICML 2019, "Sorting out
  Lipschitz function approximation"): the hidden channels in pairs (a, b) -> (max, min). Each
  pair's output is a permutation of its input, so its Jacobian is a permutation matrix wherever
  it exists: 1-Lipschitz like ReLU, but gradient-norm preserving, where ReLU zeroes half the
  directions and a stack of norm-bounded layers then loses expressiveness. It needs an even
  ``width``.

Then, for every task:

* prox: dT/dx = alpha (A^T A + alpha I)^-1 dD/dx. A^T A is symmetric positive semi-definite
  whatever A is, so (A^T A + alpha I)^-1 is symmetric with eigenvalues 1 / (s^2 + alpha) <=
  1 / alpha, and ||dT/dx|| <= alpha / alpha * Lip(D) <= L < 1 for every alpha > 0 and every
  operator: blur, inpainting mask, or any other. The margin 1 - L does not depend on A: in A's
  (near-)null space (a blur's high frequencies, an inpainting mask's missing pixels) T is
  alpha (alpha I)^-1 D = D there, which still contracts by L.
* grad: dT/dx = (1 - eta alpha) I - eta A^T A + eta alpha dD/dx. With b = ``task.norm_bound``
  >= ||A|| the eigenvalues of the first two terms lie in [1 - eta alpha - eta b^2, 1 - eta alpha],
  so with eta (b^2 + 2 alpha) <= 2 their norm is <= 1 - eta alpha and
  ||dT/dx|| <= 1 - eta alpha (1 - L) < 1: a contraction with a small margin (~0.01 here). The
  step is therefore bounded by eta < 2 / (b^2 + 2 ALPHA_MAX), which is ETA_MAX = 0.5 for b = 1
  (a normalised blur, an inpainting mask).

Certifying a convolution, ``lipschitz_control``:

* ``"operator"`` (default): each kernel is divided by a proved upper bound on the operator norm
  of its zero-padded convolution on the images being processed (:func:`conv_operator_norm`: the
  largest singular value of the kernel's DFT over the (H + k - 1) x (W + k - 1) grid, Sedghi et
  al., ICLR 2019, or, on axes longer than ``CERT_GRID``, over a fixed grid with a proved
  correction), recomputed from the current weights once per training step (its own phase) —
  never an estimate that lags the weights, as one power-iteration step per training step (Ryu et
  al. 2019) would be. It costs one small Cholesky factorisation per frequency sample and a few SVDs per step.
* ``"aol"``: each kernel P is rescaled per input channel, P' = P diag(r)^-1/2 with
  r_i = sum_j sum_offsets |(P^T * P)_ij| (Prach & Lampert, ECCV 2022, "Almost-Orthogonal Layers").
  By the Schur test the convolution with P' has operator norm <= 1 on square-summable signals on
  Z^2, hence for every image size. Cheaper (one tiny convolution), but more conservative: on the
  faces it trained to ~0.1 dB below ``operator``.

``lipschitz_control = "kernel"`` keeps torch's ``spectral_norm`` of each kernel reshaped to a
matrix, the common practice, which does NOT bound the convolution's operator norm (up to ~3x
larger for 3x3 kernels). It is kept so the benchmark can show what each strategy does when the
contraction assumption fails.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .tasks import Task

ETA_MAX = 0.5
ACTIVATIONS = ("relu", "maxmin")
ALPHA_MAX = 1.5  # with ETA_MAX: eta * (1 + 2 alpha) < 2, where the grad form's bound holds
FORMS = ("prox", "grad")
LIPSCHITZ_CONTROLS = ("operator", "aol", "kernel")


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
            cos=angle.cos().index_fill(1, torch.tensor([0], device=freqs.device), 1.0),
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
    cross-correlations: one small convolution and one (samples x offsets) product, where the
    kernel's DFT and a product per sample cost ~10x more on CPU.
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

    SVDs of the samples with the largest Frobenius norms propose the maximum s; every sample
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


def maxmin(x: torch.Tensor) -> torch.Tensor:
    """GroupSort-2 over channels: pairs (x[:, i], x[:, i + C/2]) -> (max, min), C even.

    1-Lipschitz and gradient-norm preserving (each pair's output is a permutation of it)."""
    a, b = x.chunk(2, dim=1)
    return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


_ACTIVATION_FNS = {"relu": F.relu, "maxmin": maxmin}


def check_activation_width(activation: str, width: int, depth: int) -> None:
    """ValueError unless ``width`` suits ``activation``: maxmin pairs the hidden channels, so it
    needs an even width (with ``depth`` 1 there are no hidden channels and no activation).
    ``bench.config.ModelConfig`` calls it too, so a suite that no run could use is refused when
    it is loaded, not when each run starts training."""
    if activation == "maxmin" and depth > 1 and width % 2:
        raise ValueError(
            f"width must be even for activation 'maxmin' (it pairs channels), got {width}"
        )


class Denoiser(nn.Module):
    """D(x) = L ((1 - t) x + t g(x)), g: ``depth`` certified 3x3 convolutions with 1-Lipschitz
    activations (``relu`` or ``maxmin``) between them."""

    def __init__(
        self,
        channels: int = 1,
        width: int = 32,
        depth: int = 3,
        lipschitz: float = 0.9,
        lipschitz_control: str = "operator",
        activation: str = "relu",
    ):
        super().__init__()
        for name, value in (("channels", channels), ("width", width), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model {name} must be an int >= 1, got {value!r}")
        if not (isinstance(lipschitz, (int, float)) and 0 < lipschitz < 1):
            raise ValueError(f"model lipschitz must be in (0, 1), got {lipschitz!r}")
        if lipschitz_control not in LIPSCHITZ_CONTROLS:
            raise ValueError(
                f"model lipschitz_control must be one of {', '.join(LIPSCHITZ_CONTROLS)}, "
                f"got {lipschitz_control!r}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"model activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
            )
        check_activation_width(activation, width, depth)
        sizes = [channels] + [width] * (depth - 1) + [channels]
        convs = [
            nn.Conv2d(c_in, c_out, 3, padding=1)
            for c_in, c_out in zip(sizes[:-1], sizes[1:], strict=True)
        ]
        if lipschitz_control == "kernel":
            convs = [spectral_norm(conv) for conv in convs]
        self.convs = nn.ModuleList(convs)
        self.mix_raw = nn.Parameter(torch.zeros(()))  # t = sigmoid(mix_raw), 0.5 at start
        self.lipschitz = float(lipschitz)
        self.lipschitz_control = lipschitz_control
        self.activation = activation

    def weights(self, image_size: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised (weight, bias) of each conv for images of ``image_size``, computed once
        per layer construction (``operator`` control certifies images up to that size).

        With ``kernel`` control, reading ``conv.weight`` runs a spectral-norm power iteration
        in training mode, so this is never called inside the fixed-point loop: T must stay the
        same function while it is solved and differentiated.
        """
        if self.lipschitz_control == "kernel":
            return [(conv.weight, conv.bias) for conv in self.convs]
        if self.lipschitz_control == "aol":
            return [(aol_rescale(conv.weight), conv.bias) for conv in self.convs]
        return [
            (conv.weight / conv_operator_norm(conv.weight, image_size), conv.bias)
            for conv in self.convs
        ]

    @property
    def mix(self) -> torch.Tensor:
        return torch.sigmoid(self.mix_raw)

    @staticmethod
    def evaluate(
        weights, mix: torch.Tensor, lipschitz: float, x: torch.Tensor, activation: str = "relu"
    ) -> torch.Tensor:
        """D(x) for precomputed ``weights`` (from :meth:`weights`) and ``mix`` t."""
        act = _ACTIVATION_FNS[activation]
        g = x
        for i, (w, b) in enumerate(weights):
            g = F.conv2d(g, w, b, padding=1)
            if i < len(weights) - 1:
                g = act(g)
        return lipschitz * ((1 - mix) * x + mix * g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.weights(x.shape[-2:])
        return self.evaluate(weights, self.mix, self.lipschitz, x, self.activation)


def eta_max(task: Task) -> float:
    """The grad form's largest step for ``task``: eta (b^2 + 2 ALPHA_MAX) <= 2, b its norm bound."""
    return min(ETA_MAX, 2.0 / (task.norm_bound**2 + 2 * ALPHA_MAX))


class ReconstructionDEQ(nn.Module):
    """Implicit reconstruction network for a task: x* = T(x*), solved from x0 = A^T d (see the
    module docstring)."""

    def __init__(
        self,
        task: Task,
        channels: int = 1,
        width: int = 32,
        depth: int = 3,
        eta: float = 0.3,
        alpha: float = 0.05,
        lipschitz: float = 0.9,
        form: str = "prox",
        lipschitz_control: str = "operator",
        activation: str = "relu",
    ):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"model form must be one of {', '.join(FORMS)}, got {form!r}")
        if form == "prox" and not task.has_normal_solve:
            raise ValueError(
                f"model form 'prox' needs the task's exact normal_solve, which {task!r} lacks; "
                "use form 'grad'"
            )
        self._eta_max = eta_max(task)
        limits = (
            (("eta", eta, self._eta_max), ("alpha", alpha, ALPHA_MAX)) if form == "grad" else ()
        )
        for name, value, top in limits:
            if not (isinstance(value, (int, float)) and 0 < value < top):
                raise ValueError(f"model {name} must be in (0, {top}), got {value!r}")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"model alpha must be a finite number > 0, got {alpha!r}")
        self.task = task
        self.form = form
        self.denoiser = Denoiser(channels, width, depth, lipschitz, lipschitz_control, activation)
        if form == "grad":  # x = top * sigmoid(raw): learnable, positive and bounded
            self.eta_raw = nn.Parameter(torch.tensor(math.log(eta / (self._eta_max - eta))))
            self.alpha_raw = nn.Parameter(torch.tensor(math.log(alpha / (ALPHA_MAX - alpha))))
        else:  # any alpha > 0 keeps the prox form contractive
            self.alpha_raw = nn.Parameter(torch.tensor(math.log(alpha)))

    @property
    def eta(self) -> torch.Tensor:
        if self.form != "grad":
            raise AttributeError("the prox form has no step size eta")
        return self._eta_max * torch.sigmoid(self.eta_raw)

    @property
    def alpha(self) -> torch.Tensor:
        if self.form == "grad":
            return ALPHA_MAX * torch.sigmoid(self.alpha_raw)
        return self.alpha_raw.exp()

    def contraction_bound(self) -> float:
        """The proved bound on ||dT/dx|| for the current parameters; NaN where none is proved."""
        if self.denoiser.lipschitz_control == "kernel":
            return math.nan
        lip = self.denoiser.lipschitz
        if self.form == "prox":
            return lip
        eta, alpha = float(self.eta.detach()), float(self.alpha.detach())
        return 1 - eta * alpha * (1 - lip)

    def initial_iterate(self, d: torch.Tensor) -> torch.Tensor:
        """x0 = A^T d (no graph)."""
        with torch.no_grad():
            return self.task.A_adjoint(d)

    def certified_weights(self, image_size: tuple[int, int]) -> list:
        """The denoiser's normalised (weight, bias) pairs for images up to ``image_size``, with
        their graph to the parameters: the Lipschitz control's work (the certificate, or the
        ``kernel`` control's power iteration), which the runner times as its own phase."""
        return self.denoiser.weights(image_size)

    def make_layer(self, d: torch.Tensor, weights: list | None = None):
        """Return f: z -> T(z) for the measurements ``d``.

        Everything that does not depend on z (A^T d, alpha, eta, the normalised weights) is
        computed here once, with its graph to the parameters, and captured by the closure.
        ``weights``: from :meth:`certified_weights` for the size of the images ``d`` measures,
        that of A^T d (computed here when not given).
        """
        op, den, dtype = self.task, self.denoiser, d.dtype
        atd = op.A_adjoint(d).to(dtype)
        alpha, mix = self.alpha.to(dtype), den.mix.to(dtype)
        if weights is None:
            # the images' size, not the measurements' (smaller for super-resolution)
            weights = self.certified_weights(atd.shape[-2:])
        weights = [(w.to(dtype), b.to(dtype)) for w, b in weights]
        lip, act = den.lipschitz, den.activation

        if self.form == "prox":

            def f(z: torch.Tensor) -> torch.Tensor:
                return op.normal_solve(
                    atd + alpha * Denoiser.evaluate(weights, mix, lip, z, act), alpha
                )

            return f

        eta = self.eta.to(dtype)

        def f(z: torch.Tensor) -> torch.Tensor:
            r = op.AtA(z) - atd + alpha * (z - Denoiser.evaluate(weights, mix, lip, z, act))
            return z - eta * r

        return f

    def forward(self, d: torch.Tensor, strategy, solver, weights: list | None = None):
        """Reconstruct from ``d`` with a gradient ``strategy`` and forward ``solver``: (x, info).
        ``weights``: precomputed :meth:`certified_weights` (computed here when not given)."""
        return strategy(self.make_layer(d, weights), self.initial_iterate(d), solver)


def build_model(config, task: Task, channels: int) -> ReconstructionDEQ:
    """The model a :class:`bench.config.ModelConfig` describes, for ``task`` and ``channels``."""
    return ReconstructionDEQ(
        task,
        channels,
        config.width,
        config.depth,
        config.eta,
        config.alpha,
        config.lipschitz,
        config.form,
        config.lipschitz_control,
        config.activation,
    )
