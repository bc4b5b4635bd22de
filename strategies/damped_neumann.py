"""Damped Neumann series: v = tau sum_{i<=k} ((1 - tau) I + tau J^T)^i g."""

from strategies import Param, Strategy, register
from strategies._implicit import implicit_output


@register
class DampedNeumann(Strategy):
    """The phantom gradient's backward written as a truncated series, one J^T product per term.

    Geng, Zhang, Bai, Wang & Lin, "On Training Implicit Models" (NeurIPS 2021, arXiv
    2111.05177), Sec. 3: backprop through k+1 damped steps z <- (1 - tau) z + tau f(z) from z*
    gives v = tau sum_{i=0}^{k} ((1 - tau) I + tau J^T)^i g, which is ``phantom:k=k+1`` with
    every Jacobian taken at z* (equal to it up to the forward residual). As k grows it tends to
    tau (tau (I - J^T))^-1 g = (I - J^T)^-1 g, the exact adjoint, for any 0 < tau <= 1 when f
    contracts; tau = 1 is ``neumann``, k = 0 is tau times jfb.
    """

    name = "damped-neumann"
    cost_params = ("k",)
    parameters = {
        "k": Param(10, ge=0, le=1000, doc="number of J^T products"),
        "tau": Param(0.5, gt=0, le=1, doc="damping factor"),
    }

    def __call__(self, f, z0, solver):
        z_star, info = self.fixed_point(f, z0, solver)

        def adjoint(J, g):
            v = term = self.tau * g
            for _ in range(self.k):
                term = (1 - self.tau) * term + self.tau * J.T(term)
                v = v + term
            info["backward_iters"] = float(self.k)
            return v

        return implicit_output(f, z_star, adjoint), info
