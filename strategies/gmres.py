"""Exact implicit gradient: solve (I - J)^T v = dl/dz* by restarted GMRES, with J^T u only."""

import torch

from strategies import Param, Strategy, register
from strategies._implicit import implicit_output


@register
class GMRES(Strategy):
    """Implicit-function-theorem gradient with the adjoint system solved by GMRES (Saad & Schultz,
    1986), one J^T u product per iteration and no J u (no forward mode, no double backward).

    GMRES minimises the residual over the Krylov space, so it needs at most as many products as
    any other method building its iterate from the same products (a fixed-point iteration or
    torchdeq's Broyden/Anderson on v = J^T v + g), and unlike cg's normal equations it does not
    square the condition number. Each sample's system is solved on its own, until
    ||g - (I - J)^T v|| <= tol * ||g|| (the residual GMRES tracks as it goes).
    """

    name = "gmres"
    exact = True
    parameters = {
        "tol": Param(1e-6, gt=0, doc="relative residual of (I - J)^T v = g"),
        "max_iter": Param(100, ge=1, le=10000, doc="maximum J^T u products"),
        "restart": Param(40, ge=1, le=1000, doc="Krylov vectors kept before a restart"),
    }

    def __call__(self, f, z0, solver):
        z_star, info = self.fixed_point(f, z0, solver)

        def adjoint(J, g):
            M = lambda u: u - J.T(u)  # noqa: E731
            v, iters, residual = gmres(M, g, self.tol, self.max_iter, self.restart)
            info.update(
                backward_iters=float(iters),
                backward_residual=residual,
                backward_converged=float(residual <= self.tol),
            )
            return v

        return implicit_output(f, z_star, adjoint), info


def gmres(M, g, tol, max_iter, restart):
    """Solve M v = g per sample (dim 0 is the batch; a tensor of < 2 dims is one system).

    Returns (v, products of M used, worst relative residual). Samples advance together: one
    batched M u per iteration; a sample that has met ``tol`` stops extending its Krylov basis
    (its new basis vectors are zero), so its solution is the one at its own stopping iteration.
    The basis is orthogonalised by classical Gram-Schmidt done twice (CGS2: as stable as
    modified Gram-Schmidt, in 4 batched matrix products instead of a Python loop over the basis),
    and the Hessenberg matrix is reduced by Givens rotations accumulated in Q, so the residual of
    every sample is known after each product without solving a least-squares problem.
    """
    shape = g.shape
    g = g.reshape(1, -1) if g.ndim < 2 else g.flatten(1)
    B, tiny = g.shape[0], torch.finfo(g.dtype).tiny
    apply = lambda u: M(u.view(shape)).reshape(B, -1)  # noqa: E731
    g_norm = g.norm(dim=1)
    v = torch.zeros_like(g)
    active, rel, products = g_norm > 0, torch.zeros_like(g_norm), 0  # g = 0: v = 0
    while active.any() and products < max_iter:
        r = g
        if products:  # a restart: the true residual, not the recurrence's
            r, products = g - apply(v), products + 1
        beta = r.norm(dim=1)
        rel = beta / g_norm.clamp_min(tiny)
        active = active & (rel > tol)
        m = min(restart, max_iter - products)
        if not active.any() or m < 1:
            break
        V = g.new_zeros(B, min(m + 1, 8), g.shape[1])  # the basis; grows by doubling, as used
        V[:, 0] = torch.where(active[:, None], r / beta.clamp_min(tiny)[:, None], 0)
        R = g.new_zeros(B, m, m)  # the rotated Hessenberg matrix, upper triangular
        Q = torch.eye(m + 1, dtype=g.dtype, device=g.device).repeat(B, 1, 1)
        used = torch.zeros(B, dtype=torch.long, device=g.device)  # columns each sample uses
        for k in range(m):
            w = apply(V[:, k])
            products += 1
            h = torch.zeros(B, m + 1, dtype=g.dtype, device=g.device)
            for _ in range(2):  # CGS2
                c = torch.bmm(V[:, : k + 1], w[:, :, None])[..., 0]
                w = w - torch.bmm(c[:, None], V[:, : k + 1])[:, 0]
                h[:, : k + 1] += c
            h[:, k + 1] = w.norm(dim=1)
            h = torch.bmm(Q, h[:, :, None])[..., 0]  # earlier rotations
            a, b = h[:, k], h[:, k + 1]
            rho = torch.hypot(a, b)
            cos = torch.where(rho > 0, a / rho.clamp_min(tiny), 1.0)
            sin = torch.where(rho > 0, b / rho.clamp_min(tiny), 0.0)
            R[:, : k + 1, k] = torch.cat([h[:, :k], rho[:, None]], dim=1)
            Q[:, [k, k + 1]] = torch.stack(
                [cos[:, None] * Q[:, k] + sin[:, None] * Q[:, k + 1],
                 -sin[:, None] * Q[:, k] + cos[:, None] * Q[:, k + 1]], dim=1
            )  # fmt: skip
            used = torch.where(active, k + 1, used)
            rel = torch.where(active, beta * Q[:, k + 1, 0].abs() / g_norm.clamp_min(tiny), rel)
            active = active & (rel > tol)
            if not active.any():
                break
            if k + 1 == V.shape[1]:
                V = torch.cat([V, torch.zeros_like(V[:, : m + 1 - V.shape[1]])], dim=1)
            V[:, k + 1] = torch.where(active[:, None], w / h[:, k + 1, None].clamp_min(tiny), 0)
        # y = R^-1 (beta Q e1) on each sample's own leading columns: the others become identity
        cols = torch.arange(m, device=g.device)
        unused = cols[None, :] >= used[:, None]
        R = torch.where(unused[:, None, :], torch.diag_embed(unused.to(g.dtype)), R)
        e = torch.where(unused, 0.0, beta[:, None] * Q[:, :m, 0])
        y = torch.linalg.solve_triangular(R, e[:, :, None], upper=True)
        n = min(m, V.shape[1])  # y is zero beyond the columns any sample used
        v = v + torch.bmm(y[:, :n].transpose(1, 2), V[:, :n])[:, 0]
        active = rel > tol
    return v.view(shape), products, float(rel.max())
