"""What a run measures about its own validity, beside training: gradient fidelity against an
exact reference, ||dT/dx|| at the fixed point, and the peak tensor memory of one training step.

Each is a pure measurement of a model in a given state: the runner calls them at its evaluations
and times them as ``diagnostics_time_s``; nothing here trains.
"""

from __future__ import annotations

import copy
import math

import torch

from strategies import Jacobian, final_output, get_strategy, weighted_loss
from strategies.gmres import gmres

from .bounds import AdjointProbe, relative_bound, relative_error, relative_residual
from .measure import PeakLiveBytes
from .solver import lipschitz_estimate, make_solver

FIDELITY_MAX_ITER = 500
FIDELITY_TOL = 1e-6
# The exact adjoint the measured adjoint error is taken against: tighter than FIDELITY_TOL, so
# that the reference's own error (up to (1 + gamma) / (1 - gamma) times its residual) stays far
# below the errors measured.
ADJOINT_REFERENCE_TOL = 1e-10


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().flatten().double() for p in model.parameters()])


def gradient_cosine(model, strategy, solver, x, d) -> dict[str, float]:
    """Cosine between the strategy's gradient and the exact implicit gradient on a fixed batch,
    and the strategy's adjoint error next to its certified bound.

    The reference is a float64 copy of the model with a forward solve (Broyden) and a GMRES adjoint
    solve, both to 1e-6. Its residuals are recorded; where either solve did not reach its tolerance the
    cosine is NaN: a number computed from an unconverged reference would look like a finding.
    Both gradients are taken in eval mode, so that nothing in the model changes between them.

    The adjoint columns (:func:`adjoint_fidelity`): ``adjoint_error`` is the worst sample's
    measured ||v - v*|| / ||v*|| of the adjoint v the strategy used, and ``adjoint_error_bound``
    the certified bound at the same point (:mod:`bench.bounds`), both in float64.
    """
    probe = AdjointProbe() if strategy.has_adjoint else None
    layers = {}

    def probed(f, z0, solv):
        layers["f"] = f
        return strategy(probe.layer(f, z0) if probe else f, z0, solv)

    def grad_of(m, strat, solv, dtype, watch=None):
        m.eval()
        m.zero_grad(set_to_none=True)
        out, info = m(d.to(dtype), strat, solv)
        if watch is not None:
            watch.watch(final_output(out))
        weighted_loss(out, lambda z: torch.nn.functional.mse_loss(z, x.to(dtype))).backward()
        g = flat_grad(m)
        m.zero_grad(set_to_none=True)
        m.train()
        return g, info

    dtype = next(model.parameters()).dtype
    g, _ = grad_of(model, probed, solver, dtype, probe)
    reference = copy.deepcopy(model).double()
    # Broyden, not the training default Anderson (m=5, lam=1e-4): measured on the quick layer
    # after training, in float64 to 1e-6, Anderson stagnated (78 iterations, 1.76 s; the run's
    # largest cost after its steps) where Broyden took 16 (0.24 s) to the same tolerance and the
    # same fixed point (relative difference 2e-6). The residual check below is unchanged.
    ref_solver = make_solver("broyden", max_iter=FIDELITY_MAX_ITER, tol=FIDELITY_TOL)
    # GMRES needs one J^T u per iteration where CGLS needs a J u and a J^T u and squares the
    # condition number: on the float64 quick layer 20 products against 76, agreeing to 9e-11.
    ref_strategy = get_strategy("gmres", tol=FIDELITY_TOL, max_iter=FIDELITY_MAX_ITER)
    g_ref, info = grad_of(reference, ref_strategy, ref_solver, torch.float64)
    converged = bool(info["forward_converged"] and info["backward_converged"])
    cosine = torch.nn.functional.cosine_similarity(g, g_ref, dim=0).item()
    read = probe.read() if probe is not None else None
    adjoint = ADJOINT_NAN
    if read is not None:
        reference.eval()
        f64 = reference.make_layer(d.double())
        reference.train()
        adjoint = adjoint_fidelity(f64, *(t.double() for t in read), model.contraction_bound())
    return {
        "grad_cosine": cosine if converged else math.nan,
        "grad_reference_converged": float(converged),
        "grad_reference_forward_residual": info["forward_residual"],
        "grad_reference_backward_residual": info["backward_residual"],
        **adjoint,
    }


ADJOINT_NAN = {"adjoint_error": math.nan, "adjoint_error_bound": math.nan}


def adjoint_fidelity(f, v, g, x, gamma: float) -> dict[str, float]:
    """The measured relative error of the adjoint ``v`` against the exact v* of
    (I - J)^T v* = ``g`` with J = df/dx at ``x`` (GMRES to ADJOINT_REFERENCE_TOL), and the
    certified bound from v's residual and ``gamma``; worst sample of each. The measured error is
    NaN where the reference solve missed its tolerance."""
    bound = relative_bound(float(relative_residual(f, x, g, v).max()), gamma)
    jacobian = Jacobian(f, x)
    v_ref, _, residual = gmres(
        lambda u: u - jacobian.T(u), g, ADJOINT_REFERENCE_TOL, FIDELITY_MAX_ITER, restart=100
    )
    error = float(relative_error(v, v_ref).max()) if residual <= ADJOINT_REFERENCE_TOL else math.nan
    return {"adjoint_error": error, "adjoint_error_bound": bound}


def layer_lipschitz(model, solver, d) -> dict[str, float]:
    """||dT/dx|| at the fixed point of a fixed batch (power iteration run to convergence)."""
    model.eval()
    with torch.no_grad():
        f = model.make_layer(d)
        z, _ = solver(f, model.initial_iterate(d))
    estimate = lipschitz_estimate(f, z)
    model.train()
    return {
        "layer_lipschitz": estimate.value,
        "layer_lipschitz_converged": float(estimate.converged),
    }


def peak_step_bytes(model, optimizer, step) -> dict[str, int]:
    """Peak live tensor bytes of ``step(after_certify)`` (a training step of ``model``), which is
    replayed and then undone: the model's and the optimiser's states are restored afterwards.

    Split where the step calls ``after_certify``: ``certify_peak_bytes`` is the peak while the
    model certifies its weights (the same for every strategy: its transient buffers are the
    certificate's, not the strategy's); ``peak_step_bytes`` is the peak of the rest of the step
    (forward, backward, optimiser), with the certified weights and their graph counted as live.
    The whole step's peak is the larger of the two.
    """
    model_state = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    with PeakLiveBytes() as tracker:
        step(tracker.split)
    model.load_state_dict(model_state)
    optimizer.load_state_dict(optimizer_state)
    optimizer.zero_grad(set_to_none=True)
    certify = tracker.phase_peaks[0] if tracker.phase_peaks else 0
    return {"peak_step_bytes": tracker.phase_peak_bytes, "certify_peak_bytes": certify}
