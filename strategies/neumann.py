"""Truncated Neumann series for the implicit gradient: v = sum_{i<=k} (J^T)^i g."""

from strategies import Param, Strategy, register
from strategies._implicit import implicit_output


@register
class Neumann(Strategy):
    """Approximate (I - J^T)^{-1} g by its first k+1 Neumann terms (k = 0 is JFB).

    Converges as ||J||^k when f is a contraction; each term is one J^T product.
    """

    name = "neumann"
    cost_params = ("k",)
    parameters = {"k": Param(10, ge=0, le=1000, doc="number of J^T products")}

    def __call__(self, f, z0, solver):
        z_star, info = self.fixed_point(f, z0, solver)

        def adjoint(J, g):
            v = term = g
            for _ in range(self.k):
                term = J.T(term)
                v = v + term
            info["backward_iters"] = float(self.k)
            return v

        return implicit_output(f, z_star, adjoint), info
