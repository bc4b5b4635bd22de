"""Jacobian-free backprop (Fung et al., AAAI 2022): replace (I - J)^{-1} by I."""

from strategies import Strategy, register


@register
class JFB(Strategy):
    """Solve without a graph, then backprop through one application of f at the fixed point.

    Memory is that of one layer, whatever the number of solver iterations.
    """

    name = "jfb"

    def __call__(self, f, z0, solver):
        z_star, info = self.fixed_point(f, z0, solver)
        return f(z_star), info
