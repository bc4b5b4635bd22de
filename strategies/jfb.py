"""Jacobian-free backprop (Fung et al., AAAI 2022): replace (I - J)^{-1} by I."""

import torch

from strategies import Strategy, register


@register
class JFB(Strategy):
    """Solve without a graph, then backprop through one application of f at the fixed point.

    Memory is that of one layer, whatever the number of solver iterations.
    """

    name = "jfb"

    def __call__(self, f, z0, solver):
        with torch.no_grad():
            z_star, info = solver(f, z0)
        return f(z_star.detach()), dict(info)
