"""SHINE: the backward pass reuses the forward Broyden solve's inverse-Jacobian estimate."""

from __future__ import annotations

import torch

from strategies import Param, Strategy, register
from strategies._implicit import implicit_output

FALLBACK_RATIO = 1.8  # the paper's: ||v|| > 1.8 ||g|| means the estimate is off; use v = g
# The forward settings when the solver exposes none (a plain callable): torchdeq's
# FixedPointSolver defaults. The strategy then says its forward differs from the suite's.
DEFAULT_FORWARD = {"max_iter": 50, "tol": 1e-3, "stop_mode": "rel"}


@register
class SHINE(Strategy):
    """SHINE (Ramzi, Mannel, Bai, Starck, Ciuciu & Moreau, "SHINE: SHaring the INverse Estimate
    from the forward pass for bi-level optimization and implicit models", ICLR 2022, arXiv
    2106.00553; code ``zaccharieramzi/shine``).

    The forward solve of g(z) = f(z) - z = 0 is a limited-memory Broyden (torchdeq's update, no
    line search) whose estimate of (dg/dz)^-1 is -I + U V^T, ``memory`` rank-one factors per
    sample. Backward needs v = (I - J)^-T dl/dz* = -(dg/dz)^-T g and takes it from the estimate:
    v = g - V (U^T g), with no Jacobian product. ``fallback`` (the paper's): a sample whose
    ||v|| > 1.8 ||g|| uses v = g (jfb) instead. ``refine`` > 0 runs that many Broyden steps on
    the adjoint system v = J^T v + g from that v, the inverse estimate initialised with the
    forward's, transposed (refine + 1 J^T products).

    The solve needs the factors, which torchdeq's Broyden does not return, so the strategy runs
    its own, with the suite solver's ``max_iter``, ``tol`` and ``stop_mode``: it is the suite's
    solve when the suite uses ``broyden`` and the iterations fit in ``memory`` (the same
    iterates; torchdeq keeps every factor). Otherwise ``info["shine_forward_differs"] = 1``.
    The factors, 2 x batch x state size x ``memory`` numbers, are saved for backward.
    """

    name = "shine"
    cost_params = ("refine",)
    parameters = {
        "memory": Param(30, ge=1, le=1000, doc="Broyden factors kept (rank of the estimate)"),
        "fallback": Param(True, doc="use v = g where ||v|| > 1.8 ||g|| (per sample)"),
        "refine": Param(0, ge=0, le=1000, doc="Broyden steps on the adjoint system"),
    }

    def __call__(self, f, z0, solver):
        settings = {k: getattr(solver, k, v) for k, v in DEFAULT_FORWARD.items()}
        z_star, us, vts, stats = broyden(f, z0, memory=self.memory, **settings)
        suite_broyden = getattr(solver, "name", None) == "broyden" and all(
            hasattr(solver, k) for k in DEFAULT_FORWARD
        )
        info = {
            **stats,
            "shine_forward_differs": float(
                not suite_broyden or stats["broyden_updates"] > self.memory  # ring wrapped
            ),
        }
        del info["broyden_updates"]

        def adjoint(J, g, us, vts):
            shape = g.shape
            g_flat = _batch(g)
            v = -_rmatvec(us, vts, g_flat)  # g - V (U^T g)
            fell_back = torch.zeros(g_flat.shape[0], dtype=torch.bool, device=g.device)
            if self.fallback:
                fell_back = v.norm(dim=1) > FALLBACK_RATIO * g_flat.norm(dim=1)
                v = torch.where(fell_back[:, None], g_flat, v)
            info["shine_fallback_frac"] = float(fell_back.double().mean())
            if self.refine:
                jt = lambda u: _batch(J.T(u.view(shape)))  # noqa: E731
                # h(v) = J^T v + g - v has Jacobian (dg/dz)^T: its inverse estimate is the
                # forward's transposed, -I + V U^T, i.e. factors (V, U^T)
                v, residual = _broyden_linear(
                    lambda u: jt(u) + g_flat - u, v, vts.transpose(1, 2), us.transpose(1, 2),
                    self.refine, g_flat.norm(dim=1),
                )  # fmt: skip
                info.update(backward_iters=float(self.refine + 1), backward_residual=residual)
            else:
                info["backward_iters"] = 0.0
            return v.view(shape)

        return implicit_output(f, z_star, adjoint, keep=(us, vts)), info


def _batch(z: torch.Tensor) -> torch.Tensor:
    """(batch, state) view; a tensor of fewer than 2 dims is one system."""
    return z.reshape(1, -1) if z.ndim < 2 else z.flatten(1)


def _matvec(us, vts, x):
    """(-I + U V^T) x per sample."""
    return -x + torch.einsum("bdl,bl->bd", us, torch.einsum("bld,bd->bl", vts, x))


def _rmatvec(us, vts, x):
    """x^T (-I + U V^T) per sample."""
    return -x + torch.einsum("bl,bld->bd", torch.einsum("bd,bdl->bl", x, us), vts)


def _broyden_update(us, vts, column, delta_x, delta_g):
    """Good Broyden's rank-one update of the inverse estimate, in place at ``column`` (torchdeq's
    formula; a zero denominator, a sample already solved, gives a zero update)."""
    vt = _rmatvec(us, vts, delta_x)
    denom = torch.einsum("bd,bd->b", vt, delta_g)[:, None]
    u = (delta_x - _matvec(us, vts, delta_g)) / denom
    ok = torch.isfinite(u).all(dim=1, keepdim=True) & torch.isfinite(vt).all(dim=1, keepdim=True)
    vts[:, column] = torch.where(ok, vt, 0)
    us[:, :, column] = torch.where(ok, u, 0)


@torch.no_grad()
def broyden(f, z0, max_iter, tol, stop_mode, memory):
    """Solve z = f(z) by limited-memory Broyden; returns (z*, U, V^T, stats).

    torchdeq's ``broyden_solver`` without line search, step for step: the same update, the same
    stopping rules (the worst sample's residual below ``tol``, or no progress in 30 steps near
    it), and the lowest-residual iterate of each sample returned. The last ``memory`` factors
    are kept in a ring (torchdeq keeps ``max_iter``); U: (batch, state, memory), V^T: (batch,
    memory, state). ``stats``: the solve's forward_* statistics and its number of updates.
    """
    shape = z0.shape
    x = _batch(z0)
    bsz, dim = x.shape
    g = lambda y: _batch(f(y.view(shape))) - y  # noqa: E731
    gx = g(x)
    us = x.new_zeros(bsz, dim, memory)
    vts = x.new_zeros(bsz, memory, dim)
    update = gx
    lowest = {mode: x.new_full((bsz,), 1e8) for mode in ("abs", "rel")}
    lowest_step = x.new_zeros(bsz)
    lowest_x, trace, nstep, updates = x, [], 0, 0
    while nstep < max_iter:
        x_new = x + update
        gx_new = g(x_new)
        delta_x, delta_g = x_new - x, gx_new - gx
        x, gx = x_new, gx_new
        nstep += 1
        diff = {"abs": gx.norm(dim=1)}
        diff["rel"] = diff["abs"] / ((gx + x).norm(dim=1) + 1e-9)
        better = diff[stop_mode] < lowest[stop_mode]
        lowest_x = torch.where(better[:, None], x, lowest_x)
        lowest_step = torch.where(better, float(nstep), lowest_step)
        for mode in lowest:
            lowest[mode] = torch.where(diff[mode] < lowest[mode], diff[mode], lowest[mode])
        trace.append(diff[stop_mode])
        if diff[stop_mode].max() < tol:
            break
        if nstep > 30:
            recent = torch.stack(trace[-30:])
            progress = recent.max(dim=0)[0] / recent.min(dim=0)[0]
            if diff[stop_mode].max() < 3 * tol and progress.max() < 1.3:
                break
        _broyden_update(us, vts, updates % memory, delta_x, delta_g)
        updates += 1
        update = -_matvec(us, vts, gx)
    residual = float(lowest[stop_mode].max())
    stats = {
        "forward_iters": float(lowest_step.max()),
        "forward_residual": residual,
        "forward_converged": float(residual < tol),
        "broyden_updates": float(updates),
    }
    return lowest_x.view(shape), us, vts, stats


def _broyden_linear(h, v, us, vts, steps, scale):
    """``steps`` Broyden steps on h(v) = 0 from ``v`` with the inverse estimate (us, vts), grown
    by one factor per step; returns (v, worst relative residual ||h(v)|| / scale)."""
    us = torch.cat([us, us.new_zeros(*us.shape[:2], steps)], dim=2)
    vts = torch.cat([vts, vts.new_zeros(vts.shape[0], steps, vts.shape[2])], dim=1)
    column, hv = us.shape[2] - steps, h(v)
    for _ in range(steps):
        step = -_matvec(us, vts, hv)
        h_new = h(v + step)
        _broyden_update(us, vts, column, step, h_new - hv)
        v, hv, column = v + step, h_new, column + 1
    return v, float((hv.norm(dim=1) / scale.clamp_min(1e-30)).max())
