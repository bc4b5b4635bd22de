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
  of its zero-padded convolution on the images being processed
  (:func:`bench.certificate.conv_operator_norm`: the largest singular value of the kernel's DFT
  over the (H + k - 1) x (W + k - 1) grid, Sedghi et al., ICLR 2019, or, on axes longer than
  ``CERT_GRID``, over a fixed grid with a proved correction), recomputed from the current
  weights once per training step (its own phase) — never an estimate that lags the weights, as
  one power-iteration step per training step (Ryu et al. 2019) would be. It costs one small
  Cholesky factorisation per frequency sample and a few SVDs per step.
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

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .certificate import aol_rescale, conv_operator_norm
from .tasks import Task

ETA_MAX = 0.5
ACTIVATIONS = ("relu", "maxmin")
ALPHA_MAX = 1.5  # with ETA_MAX: eta * (1 + 2 alpha) < 2, where the grad form's bound holds
FORMS = ("prox", "grad")
LIPSCHITZ_CONTROLS = ("operator", "aol", "kernel")


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
