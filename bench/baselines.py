"""Classical (non-learned) reconstruction baselines, as in the reference work's write-up.

* ``direct_inverse``: x = (A^T A + eps I)^-1 A^T d with a tiny eps (1e-6): regularised only
  enough to be defined, it amplifies the noise until the image is unrecognisable.
* ``tikhonov``: x = (A^T A + lam I)^-1 A^T d, the Wiener filter for white signal and noise priors.
* ``gd_tikhonov``: a fixed number of gradient-descent steps on
  1/2 ||A x - d||^2 + lam/2 ||grad x||^2 (a smoothness / Laplacian regulariser).
* ``gd_tv``: a fixed number of gradient-descent steps on 1/2 ||A x - d||^2 + lam TV_delta(x),
  TV_delta(x) = sum sqrt(|grad x|^2 + delta^2) (smoothed isotropic total variation).

All of them use only the task's operator (bench/tasks): ``A``, ``A_adjoint``, ``AtA`` and its
``norm_bound``, exactly as the benchmark applies it (a blur's zero 'same' padding, no circular
approximation). The two closed forms use the task's exact ``normal_solve`` where it has one (a
separable blur through the SVDs of its two 1-D factors, an inpainting mask elementwise); any
other operator falls back to batched conjugate gradients in float64. The gradient-descent ones
need nothing but ``A`` and ``A_adjoint`` (a task may offer a faster equivalent form of them,
``fast_operator``). ``BASELINES`` is their registry; :func:`register_baseline` adds one.

``lam`` is chosen on the training set (:func:`fit_baseline`): the grid value with the best mean
per-image PSNR of the clamped reconstructions, ties going to the smaller ``lam``. A baseline
registered with ``fixed_lam`` (``direct_inverse``: eps = :data:`DIRECT_EPS`) is not fitted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .metrics import psnr
from .registry import Registry


@dataclass(frozen=True)
class BaselineEntry:
    """A registered baseline: ``fn(task, d, lam, *, iters, delta)`` gives the unclamped
    reconstruction of ``d`` (B, C, H, W); ``fixed_lam``, when set, is the one lambda it is run
    with (nothing to fit), else lambda is fitted on the training set (:func:`fit_baseline`)."""

    name: str
    fn: Callable[..., torch.Tensor]
    fixed_lam: float | None = None

    def __call__(self, task, d: torch.Tensor, lam, *, iters: int, delta: float) -> torch.Tensor:
        return self.fn(task, d, lam, iters=iters, delta=delta)


BASELINES: Registry[BaselineEntry] = Registry("baseline")


def register_baseline(name: str, fixed_lam: float | None = None):
    """Decorator: register a baseline ``fn(task, d, lam, *, iters, delta)`` under ``name``.

    ``fixed_lam`` (a finite number > 0) declares a baseline with nothing to fit: it always runs
    with that lambda, e.g. ``register_baseline("direct_inverse", fixed_lam=DIRECT_EPS)``.
    """
    if fixed_lam is not None and not (
        isinstance(fixed_lam, (int, float))
        and not isinstance(fixed_lam, bool)
        and math.isfinite(fixed_lam)
        and fixed_lam > 0
    ):
        raise ValueError(
            f"baseline {name!r}: fixed_lam must be a finite number > 0, got {fixed_lam!r}"
        )

    def add(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        lam = None if fixed_lam is None else float(fixed_lam)
        BASELINES.register(name)(BaselineEntry(name, fn, lam))
        return fn

    return add


DIRECT_EPS = 1e-6  # the "tiny eps" of the direct inverse
DEFAULT_LAMS = tuple(10.0 ** (-4 + 0.5 * k) for k in range(9))  # 1e-4 .. 1, log-spaced
GD_ITERS = 200
TV_DELTA = 1e-2
GRAD_NORM_SQ = 8.0  # ||grad^T grad|| <= 4 per direction (forward differences), 8 in 2-D

_CG_TOL = 1e-12
_CG_MAX_ITER = 10_000
_GRID_CHUNK_NUMEL = 1 << 20  # images x lam values evaluated in one batch during fitting


# --------------------------------------------------------------------------------------------
# Finite differences and objectives.


def finite_diff(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along W and H, zero in the last column/row (Neumann boundary)."""
    gx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    gy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    return gx, gy


def finite_diff_adjoint(gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Exact adjoint of :func:`finite_diff` (minus the discrete divergence)."""
    px, py = gx[..., :, :-1], gy[..., :-1, :]  # the last column/row of grad x is always 0
    return F.pad(px, (1, 0)) - F.pad(px, (0, 1)) + F.pad(py, (0, 0, 1, 0)) - F.pad(py, (0, 0, 0, 1))


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """grad^T grad x, the negative Laplacian with Neumann boundary, as a 5-point stencil.

    Replicate padding makes the differences across the border zero, which is exactly
    ``finite_diff_adjoint(*finite_diff(x))`` at a fraction of the cost.
    """
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    c = p[..., 1:-1, 1:-1]
    return 4 * c - p[..., 1:-1, :-2] - p[..., 1:-1, 2:] - p[..., :-2, 1:-1] - p[..., 2:, 1:-1]


def tikhonov_objective(task, x: torch.Tensor, d: torch.Tensor, lam) -> torch.Tensor:
    """Per-image 1/2 ||A x - d||^2 + lam/2 ||grad x||^2, shape (B,)."""
    gx, gy = finite_diff(x)
    data = 0.5 * (task.A(x) - d).pow(2).flatten(1).sum(1)
    return data + 0.5 * _lam_vector(lam, x) * (gx.pow(2) + gy.pow(2)).flatten(1).sum(1)


def tv_objective(
    task, x: torch.Tensor, d: torch.Tensor, lam, delta: float = TV_DELTA
) -> torch.Tensor:
    """Per-image 1/2 ||A x - d||^2 + lam sum sqrt(|grad x|^2 + delta^2), shape (B,)."""
    gx, gy = finite_diff(x)
    data = 0.5 * (task.A(x) - d).pow(2).flatten(1).sum(1)
    tv = torch.sqrt(gx.pow(2) + gy.pow(2) + delta**2).flatten(1).sum(1)
    return data + _lam_vector(lam, x) * tv


# --------------------------------------------------------------------------------------------
# Helpers.


def _lam_vector(lam, d: torch.Tensor) -> torch.Tensor:
    """``lam`` (a number, or one value per image) as a (B,) tensor in d's dtype and device."""
    lam_t = torch.as_tensor(lam, dtype=d.dtype, device=d.device).reshape(-1)
    if lam_t.numel() not in (1, d.shape[0]):
        raise ValueError(f"lam must be a number or one value per image, got {lam_t.numel()}")
    if not bool(torch.all(torch.isfinite(lam_t) & (lam_t >= 0))):
        raise ValueError(f"lam must be finite and >= 0, got {lam!r}")
    return lam_t.expand(d.shape[0])


def _lam_image(lam, d: torch.Tensor) -> torch.Tensor:
    return _lam_vector(lam, d).reshape(-1, 1, 1, 1)


def _check_iters(iters: int) -> None:
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0, got {iters!r}")


def _gram_bound(task) -> float:
    """An upper bound of ||A^T A|| = ||A||^2: the task's proved norm bound, squared."""
    return float(task.norm_bound) ** 2


def _cg_solve(task, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Batched conjugate gradients on (A^T A + lam I) x = b, one independent system per image.

    ``b`` and ``lam`` are float64 (the system can have a condition number ~1e6, too much for
    float32 CG). Runs until every image has ||r|| <= 1e-12 ||b||. Since the smallest eigenvalue of
    the system is >= lam, the error then is ||x - x*|| <= ||r|| / lam <= 1e-12 ||b|| / lam: at most
    1e-6 ||b|| even for the direct inverse's lam = 1e-6, far below the noise amplification it is
    meant to show, and ~1e-10 ||b|| for the lam values chosen for Tikhonov.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r.pow(2).flatten(1).sum(1)
    stop = (_CG_TOL**2) * rs
    converged = False
    for _ in range(_CG_MAX_ITER):
        if bool(torch.all(rs <= stop)):
            converged = True
            break
        Ap = task.AtA(p) + lam * p
        pAp = (p * Ap).flatten(1).sum(1)
        alpha = torch.where(pAp > 0, rs / pAp.clamp_min(1e-300), torch.zeros_like(pAp))
        x = x + alpha.view(-1, 1, 1, 1) * p
        r = r - alpha.view(-1, 1, 1, 1) * Ap
        rs_new = r.pow(2).flatten(1).sum(1)
        beta = torch.where(rs > 0, rs_new / rs.clamp_min(1e-300), torch.zeros_like(rs))
        p = r + beta.view(-1, 1, 1, 1) * p
        rs = rs_new
    if not converged:
        warnings.warn(
            f"conjugate gradients stopped after {_CG_MAX_ITER} iterations before reaching "
            f"relative residual {_CG_TOL:g}",
            RuntimeWarning,
            stacklevel=3,
        )
    return x


def solve_regularised(task, d: torch.Tensor, lam) -> torch.Tensor:
    """x = (A^T A + lam I)^-1 A^T d for every image of ``d`` (B, C, H, W); ``lam`` > 0.

    ``lam`` is a number or one value per image. Computed in float64 and returned in d's dtype:
    with the task's exact ``normal_solve`` where it has one, by conjugate gradients otherwise
    (see :func:`_cg_solve`). float64 because 1 / (s^2 + lam) amplifies round-off up to 1 / lam,
    1e6 for the direct inverse: ~1e-10 in float64, but ~0.1 in float32.
    """
    lam_t = _lam_vector(lam, d)
    if not bool(torch.all(lam_t > 0)):
        raise ValueError("lam must be > 0 (A^T A is singular or nearly so)")
    atd = task.A_adjoint(d.double())
    lam_i = lam_t.double().view(-1, 1, 1, 1)
    x = task.normal_solve(atd, lam_i) if task.has_normal_solve else _cg_solve(task, atd, lam_i)
    return x.to(d.dtype)


# --------------------------------------------------------------------------------------------
# The four baselines (unclamped).


def direct_inverse(task, d: torch.Tensor, eps: float = DIRECT_EPS) -> torch.Tensor:
    """(A^T A + eps I)^-1 A^T d: the 'direct inverse', regularised only by a tiny ``eps``."""
    return solve_regularised(task, d, eps)


def tikhonov(task, d: torch.Tensor, lam) -> torch.Tensor:
    """(A^T A + lam I)^-1 A^T d: Tikhonov / Wiener filter for white signal and noise."""
    return solve_regularised(task, d, lam)


def gd_tikhonov(
    task,
    d: torch.Tensor,
    lam,
    iters: int = GD_ITERS,
    callback: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """``iters`` gradient steps on 1/2 ||A x - d||^2 + lam/2 ||grad x||^2 from x0 = A^T d.

    The objective is L-smooth with L = ||A||^2 + 8 lam (:func:`_gram_bound`, and
    ||grad^T grad|| <= 8), so the step 1/L decreases it at every step. ``callback``, if given,
    is called with x0 and with every iterate.
    """
    _check_iters(iters)
    ops = task.fast_operator(d)
    lam_i = _lam_image(lam, d)
    step = 1.0 / (_gram_bound(task) + GRAD_NORM_SQ * lam_i)
    atd = ops.A_adjoint(d)
    x = atd
    if callback is not None:
        callback(x)
    for _ in range(iters):
        grad = ops.AtA(x) - atd + lam_i * laplacian(x)
        x = x - step * grad
        if callback is not None:
            callback(x)
    return x


def gd_tv(
    task,
    d: torch.Tensor,
    lam,
    iters: int = GD_ITERS,
    delta: float = TV_DELTA,
    callback: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """``iters`` gradient steps on 1/2 ||A x - d||^2 + lam TV_delta(x) from x0 = A^T d.

    TV_delta(x) = sum sqrt(|grad x|^2 + delta^2) per channel (isotropic in H, W). Its Hessian is
    bounded by ||grad||^2 / delta = 8 / delta, so with L = ||A||^2 + 8 lam / delta the step 1/L
    decreases the objective at every step. ``callback`` as in :func:`gd_tikhonov`.
    """
    _check_iters(iters)
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a finite number > 0, got {delta!r}")
    ops = task.fast_operator(d)
    lam_i = _lam_image(lam, d)
    step = 1.0 / (_gram_bound(task) + GRAD_NORM_SQ * lam_i / delta)
    atd = ops.A_adjoint(d)
    x = atd
    if callback is not None:
        callback(x)
    for _ in range(iters):
        gx, gy = finite_diff(x)
        norm = torch.sqrt(gx.pow(2) + gy.pow(2) + delta**2)
        grad = ops.AtA(x) - atd + lam_i * finite_diff_adjoint(gx / norm, gy / norm)
        x = x - step * grad
        if callback is not None:
            callback(x)
    return x


# The registered baselines share one signature; the closed forms take no iterations.


@register_baseline("direct_inverse", fixed_lam=DIRECT_EPS)
def _direct_inverse(task, d: torch.Tensor, lam, *, iters: int, delta: float) -> torch.Tensor:
    """(A^T A + eps I)^-1 A^T d with a tiny eps: the unregularised inverse."""
    return direct_inverse(task, d, lam)


@register_baseline("tikhonov")
def _tikhonov(task, d: torch.Tensor, lam, *, iters: int, delta: float) -> torch.Tensor:
    """(A^T A + lam I)^-1 A^T d, the Wiener filter for white signal and noise priors."""
    return tikhonov(task, d, lam)


@register_baseline("gd_tikhonov")
def _gd_tikhonov(task, d: torch.Tensor, lam, *, iters: int, delta: float) -> torch.Tensor:
    """Gradient descent on 1/2 ||A x - d||^2 + lam/2 ||grad x||^2 (smoothness prior)."""
    return gd_tikhonov(task, d, lam, iters=iters)


@register_baseline("gd_tv")
def _gd_tv(task, d: torch.Tensor, lam, *, iters: int, delta: float) -> torch.Tensor:
    """Gradient descent on 1/2 ||A x - d||^2 + lam TV_delta(x) (smoothed total variation)."""
    return gd_tv(task, d, lam, iters=iters, delta=delta)


# --------------------------------------------------------------------------------------------
# Public API: a fitted baseline, and fitting lam on the training set.


@dataclass
class Baseline:
    """A classical baseline with its regularisation weight.

    ``lam`` is the chosen lambda; ``None`` takes a baseline's registered ``fixed_lam`` (the
    tiny eps for ``direct_inverse``), which a fitted baseline has no default for. ``train_psnr`` is
    the mean per-image PSNR on the fit images at ``lam`` and ``grid`` maps every tried lambda to
    its mean training PSNR (both filled in by :func:`fit_baseline`).
    """

    name: str
    lam: float | None
    iters: int = GD_ITERS
    delta: float = TV_DELTA
    train_psnr: float | None = None
    grid: dict[float, float] = field(default_factory=dict)

    def __post_init__(self):
        entry = BASELINES.get(self.name)  # ValueError naming the registered baselines
        if self.lam is None:
            if entry.fixed_lam is None:
                raise ValueError(f"baseline {self.name!r} needs a lam")
            self.lam = entry.fixed_lam
        if not (math.isfinite(self.lam) and self.lam > 0):
            raise ValueError(f"lam must be a finite number > 0, got {self.lam!r}")

    def reconstruct(self, task, d: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Reconstruct images from measurements ``d`` (B, C, H, W), in d's dtype and device.

        The result is clamped to [0, 1] (the image range, as used for all metrics) unless
        ``clamp`` is False.
        """
        with torch.no_grad():
            x = BASELINES.get(self.name)(task, d, self.lam, iters=self.iters, delta=self.delta)
        return x.clamp(0.0, 1.0) if clamp else x


def _grid_psnr(
    name: str, task, x: torch.Tensor, d: torch.Tensor, lams: Sequence[float], **kw
) -> list[float]:
    """Mean per-image PSNR of the clamped reconstruction for every lam, evaluated in batches
    that stack several lam values (one lam per stacked copy of the images)."""
    per_chunk = max(1, _GRID_CHUNK_NUMEL // max(1, d.numel()))
    scores: list[float] = []
    for start in range(0, len(lams), per_chunk):
        chunk = list(lams[start : start + per_chunk])
        dd = d.repeat(len(chunk), 1, 1, 1)
        lam_vec = torch.tensor(chunk, dtype=d.dtype, device=d.device).repeat_interleave(len(d))
        with torch.no_grad():
            rec = BASELINES.get(name)(task, dd, lam_vec, **kw).clamp(0.0, 1.0)
        per_image = psnr(rec, x.repeat(len(chunk), 1, 1, 1)).view(len(chunk), len(d))
        scores.extend(float(v) for v in per_image.mean(1))
    return scores


def fit_baseline(
    name: str,
    task,
    train_x: torch.Tensor,
    train_d: torch.Tensor,
    lams: Sequence[float] | None = None,
    max_fit_images: int = 32,
    *,
    iters: int = GD_ITERS,
    delta: float = TV_DELTA,
) -> Baseline:
    """Choose lambda for baseline ``name`` on training pairs (``train_x`` clean (B, C, H, W),
    ``train_d`` their measurements ``task.A(train_x) + noise``, of any shape the task gives).

    Every lambda of ``lams`` (default :data:`DEFAULT_LAMS`, 1e-4 .. 1) reconstructs the first
    ``max_fit_images`` training measurements; the one with the best mean per-image PSNR of the
    clamped reconstructions wins, ties going to the smaller lambda. A baseline registered with
    ``fixed_lam`` has nothing to fit: it keeps that lambda (``direct_inverse``: eps =
    :data:`DIRECT_EPS`), its grid is that one value and ``lams`` is ignored.
    """
    entry = BASELINES.get(name)
    if train_x.ndim != 4 or train_d.ndim != 4 or train_x.shape[:2] != train_d.shape[:2]:
        raise ValueError(
            f"train_x and train_d must both be (B, C, ...) batches of the same images, got "
            f"{tuple(train_x.shape)} and {tuple(train_d.shape)}"
        )
    measured = tuple(task.A(train_x[:1].to(train_d.dtype)).shape[1:])
    if measured != tuple(train_d.shape[1:]):  # measurements may be smaller (superres)
        raise ValueError(
            f"train_d has shape {tuple(train_d.shape)} but the task measures images of shape "
            f"{tuple(train_x.shape[1:])} as {measured}"
        )
    if train_x.shape[0] == 0:
        raise ValueError("need at least one training image")
    if (
        isinstance(max_fit_images, bool)
        or not isinstance(max_fit_images, int)
        or max_fit_images < 1
    ):
        raise ValueError(f"max_fit_images must be an int >= 1, got {max_fit_images!r}")
    x = train_x[:max_fit_images].to(train_d.dtype)
    d = train_d[:max_fit_images]
    if entry.fixed_lam is not None:
        grid_lams = [entry.fixed_lam]
    else:
        grid_lams = sorted(float(v) for v in (DEFAULT_LAMS if lams is None else lams))
        if not grid_lams or not all(math.isfinite(v) and v > 0 for v in grid_lams):
            raise ValueError(f"lams must be a non-empty sequence of finite numbers > 0: {lams!r}")
    scores = _grid_psnr(name, task, x, d, grid_lams, iters=iters, delta=delta)
    best = 0
    for i, score in enumerate(scores):  # ascending lam, strict '>': ties keep the smaller lam
        if score > scores[best]:
            best = i
    return Baseline(
        name=name,
        lam=grid_lams[best],
        iters=iters,
        delta=delta,
        train_psnr=scores[best],
        grid=dict(zip(grid_lams, scores, strict=True)),
    )


def fit_all(
    task,
    train_x: torch.Tensor,
    train_d: torch.Tensor,
    names: Sequence[str] | None = None,
    *,
    lams: Sequence[float] | None = None,
    max_fit_images: int = 32,
) -> list[Baseline]:
    """:func:`fit_baseline` for every name in ``names`` (default: all of :data:`BASELINES`)."""
    names = BASELINES.names() if names is None else tuple(names)
    for name in names:
        BASELINES.get(name)
    return [
        fit_baseline(name, task, train_x, train_d, lams=lams, max_fit_images=max_fit_images)
        for name in names
    ]
