"""A small implicit layer with an independent, dense-Jacobian reference gradient, shared by the
strategy conformance tests and the peer (torchdeq) tests.

f(z) = tanh(W z + U x + b) with ||W||_2 = 0.5, small enough for dense Jacobians; the exact
implicit gradient is computed with torch.linalg.solve, independently of the strategies.
"""

import torch

from bench.measure import saved_bytes
from bench.solver import FixedPointSolver
from strategies import final_output, weighted_loss

N, M = 5, 3  # state size, input size


class TanhLayer(torch.nn.Module):
    def __init__(self, dtype=torch.float64, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(N, N, generator=g, dtype=torch.float64)
        self.W = torch.nn.Parameter((0.5 * W / torch.linalg.matrix_norm(W, 2)).to(dtype))
        self.U = torch.nn.Parameter(torch.randn(N, M, generator=g, dtype=torch.float64).to(dtype))
        self.b = torch.nn.Parameter(
            0.1 * torch.randn(N, generator=g, dtype=torch.float64).to(dtype)
        )

    def layer(self, x):
        return lambda z: torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


def loss_fn(z):
    return ((z - 0.3) ** 2).sum() + z.sum() ** 2 / 10  # couples samples through the loss only


def accurate_solver():
    return FixedPointSolver("fixed_point_iter", max_iter=300, tol=1e-14)


def strategy_gradient(strategy, layer, x, solver=None):
    layer.zero_grad()
    f = layer.layer(x)
    out, info = strategy(f, torch.zeros(x.shape[0], N, dtype=x.dtype), solver or accurate_solver())
    weighted_loss(out, loss_fn).backward()
    return torch.cat([p.grad.flatten() for p in layer.parameters()]), final_output(out), info


def exact_fixed_point(layer, x):
    f = layer.layer(x)
    z = torch.zeros(x.shape[0], N, dtype=x.dtype)
    with torch.no_grad():
        for _ in range(200):  # contraction factor <= 0.5: error 0.5^200
            z = f(z)
    return z


def dense_param_jacobian(layer, x_b, z_b):
    """d f(z_b; theta) / d theta as a dense (N, n_params) matrix, z_b held fixed."""
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach() for p in layer.parameters())

    def f_of(*ps):
        W, U, b = dict(zip(names, ps, strict=True)).values()
        return torch.tanh(W @ z_b + U @ x_b + b)

    jac = torch.autograd.functional.jacobian(f_of, params)
    return torch.cat([j.reshape(N, -1) for j in jac], dim=1)


def reference_gradients(layer, x):
    """(exact implicit gradient, JFB gradient) from dense Jacobians."""
    z = exact_fixed_point(layer, x)
    g = torch.autograd.functional.jacobian(loss_fn, z)  # dl/dz*
    exact, jfb = 0.0, 0.0
    for b in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(layer.layer(x[b : b + 1]), z[b : b + 1])
        J = J.reshape(N, N)
        v = torch.linalg.solve((torch.eye(N, dtype=x.dtype) - J).T, g[b])
        P = dense_param_jacobian(layer, x[b], z[b])
        exact, jfb = exact + v @ P, jfb + g[b] @ P
    return exact, jfb


def _inputs(batch=4, dtype=torch.float64, seed=1):
    return torch.randn(batch, M, generator=torch.Generator().manual_seed(seed)).to(dtype)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def saved_bytes_of(strategy, solver_iters):
    torch.manual_seed(0)
    from bench.model import ReconstructionDEQ
    from bench.tasks import GaussianBlur

    model = ReconstructionDEQ(GaussianBlur(5, 1.0), channels=1, width=8, depth=3)
    d = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    # tol below reach: the solver runs exactly `solver_iters` iterations
    solver = FixedPointSolver("fixed_point_iter", max_iter=solver_iters, tol=1e-30)

    def step():
        out, info = model(d, strategy, solver)
        return weighted_loss(out, lambda z: z.square().mean())

    nbytes, loss = saved_bytes(step)
    loss.backward()
    return nbytes
