"""One instrumented training step, the same for every strategy: its phases timed, the forward
solve recorded, Jacobian products counted, and the certified bound on the strategy's adjoint
computed outside the step's measurements."""

from __future__ import annotations

import contextlib
import math

import torch

from strategies import final_output, weighted_loss

from .bounds import AdjointProbe, relative_bound, relative_residual
from .measure import JacobianProducts, RecordingSolver, StepClock
from .solver import jacobian_frobenius_sq

STEP_INFO = (
    "forward_iters", "forward_residual", "forward_converged", "backward_iters", "backward_residual"
)  # fmt: skip


def _numeric_info(info: dict) -> dict[str, float]:
    """Every numeric entry a strategy put in ``info`` (bools as 0/1), as floats."""
    return {k: float(v) for k, v in info.items() if isinstance(v, (int, float))}


def train_step(
    model,
    strategy,
    solver,
    optimizer,
    x,
    d,
    clock: StepClock,
    counter=None,
    jac_reg: float = 0.0,
    after_certify=None,
    bound: bool = True,
    aside=contextlib.nullcontext,
):
    """One instrumented training step: returns (its ``steps`` row without epoch/step, output).

    The phases are timed by ``clock``: certification (the model's normalised weights, the same
    work for every strategy), the forward pass (solve and the strategy's forward), backward and
    the optimiser, so that forward and backward times are the solver's and the strategy's own.
    ``counter`` (a :class:`SavedBytes`), when given, counts the bytes the forward pass saves for
    backward; ``after_certify``, when given, is called between certification and the forward
    pass (the peak-memory replay splits its peak there). A strategy that sets
    ``info["skip_update"]`` (e.g. cg:skip_unconverged=true after an unconverged adjoint solve)
    gets no parameter update; the row then has ``skipped = 1``. The loss is the MSE of the
    reconstruction (weighted over a strategy's :class:`~strategies.WeightedOutputs`).
    ``jac_reg`` > 0 adds that weight times the Hutchinson estimate of ||dT/dx||_F^2 / dim at the
    reconstruction to the objective (Bai et al.'s Jacobian regularisation), recorded as
    ``jac_frobenius_sq`` (NaN on steps without it); ``loss`` stays the reconstruction loss,
    comparable with and without it.

    ``bound`` (default on): the certified bound on the relative error of the strategy's
    adjoint (``adjoint_error_bound``, from ``adjoint_residual``; :mod:`bench.bounds`), computed
    between backward and the optimiser step inside ``aside()`` (a context that pauses the
    caller's memory window): it is in none of the step's times, products or byte counts. The
    probe that reads the adjoint adds one elementwise add per graph-building evaluation of f.
    The replayed peak-memory step turns it off.
    """
    optimizer.zero_grad(set_to_none=True)
    # the harness, not the strategy, records the forward solve and counts Jacobian products
    recorder, products = RecordingSolver(solver), JacobianProducts()
    counted, layer = products.strategy(strategy), {}
    probe = AdjointProbe() if bound and strategy.has_adjoint else None

    def call(f, z0, solver):
        layer["f"] = f  # the regulariser's T: the very layer the strategy got, uncounted
        return counted(probe.layer(f, z0) if probe else f, z0, solver)

    marks = [clock.mark()]
    with products, counter.count() if counter else contextlib.nullcontext():
        weights = model.certified_weights(x.shape[-2:])  # the images', not d's (superres)
        marks.append(clock.mark())
        if after_certify is not None:
            after_certify()
        out, info = model(d, call, recorder, weights=weights)
        loss = weighted_loss(out, lambda z: torch.nn.functional.mse_loss(z, x))
    xhat, objective, jac_sq = final_output(out), loss, math.nan
    if probe:
        probe.watch(xhat)
    if jac_reg > 0:  # outside ``products``: the regulariser's products are not the strategy's
        penalty = jacobian_frobenius_sq(layer["f"], xhat)
        objective, jac_sq = loss + jac_reg * penalty, penalty.item()
    marks.append(clock.mark())
    with products:
        objective.backward()  # strategies with a backward solve complete ``info`` here
    marks.append(clock.mark())
    info = {**recorder.merge(info), "jacobian_products": float(products.total)}
    with aside():  # before the update: the bound is on the adjoint of these parameters
        adjoint = _adjoint_bound(model, probe, layer.get("f"))
    marks.append(clock.mark())
    skipped = bool(info.get("skip_update", 0))
    if not skipped:
        optimizer.step()
    marks.append(clock.mark())
    certify, fwd, bwd, bound, opt = clock.durations(marks)
    row = {key: math.nan for key in STEP_INFO}
    row.update(_numeric_info(info))
    row.pop("skip_update", None)
    row.update(adjoint)
    # the adjoint bound's own product, outside step_time_s: a diagnostic, not the strategy's cost
    row["adjoint_bound_time_s"] = bound if not math.isnan(adjoint["adjoint_residual"]) else math.nan
    row.update(
        loss=loss.item(),
        certify_time_s=certify,
        jac_frobenius_sq=jac_sq,
        forward_time_s=fwd,
        backward_time_s=bwd,
        optimizer_time_s=opt,
        step_time_s=certify + fwd + bwd + opt,
        skipped=float(skipped),
    )
    return row, xhat


def _adjoint_bound(model, probe: AdjointProbe | None, f) -> dict[str, float]:
    """``adjoint_residual`` (worst sample's ||g - (I - J)^T v|| / ||g||) and
    ``adjoint_error_bound`` of a step; NaN where the strategy has no adjoint (unrolled), the
    bound is off, or the model has no certificate (the bound only)."""
    read = probe.read() if probe is not None else None
    if read is None or f is None:
        return {"adjoint_residual": math.nan, "adjoint_error_bound": math.nan}
    v, g, x = read
    residual = float(relative_residual(f, x, g, v).max())
    return {
        "adjoint_residual": residual,
        "adjoint_error_bound": relative_bound(residual, model.contraction_bound()),
    }
