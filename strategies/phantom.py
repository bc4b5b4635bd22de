"""Phantom gradient (Geng et al., NeurIPS 2021), built on torchdeq's ``backward_factory``."""

from torchdeq.grad import backward_factory

from strategies import Param, Strategy, register


@register
class Phantom(Strategy):
    """Backprop through k damped steps z <- tau f(z) + (1 - tau) z from the detached fixed point.

    The unrolled phantom gradient of Geng, Zhang, Bai, Wang & Lin, "On Training Implicit Models"
    (NeurIPS 2021), as torchdeq builds it. k = 1, tau = 1 is JFB; with tau = 1 it is
    ``neumann:k=k-1`` up to the forward residual. Memory grows with k, not with solver iterations.
    """

    name = "phantom"
    cost_params = ("k",)
    parameters = {
        "k": Param(5, ge=1, le=1000, doc="differentiable damped steps"),
        "tau": Param(0.5, gt=0, le=1, doc="damping factor"),
    }

    def __call__(self, f, z0, solver):
        z_star, info = self.fixed_point(f, z0, solver)
        grad_func = backward_factory(grad_type=self.k, tau=self.tau)
        return grad_func(None, damped(f), z_star)[0], info


def damped(f):
    """f as torchdeq presents it to the phantom gradient: ``func(z, tau)``.

    torchdeq calls ``func(z, tau=tau)`` and leaves the damping to ``func`` (its DEQWrapper returns
    tau f(z) + (1 - tau) z, and f(z) itself at tau = 1); this does the same.
    """

    def func(z, tau=1.0):
        fz = f(z)
        return fz if tau == 1.0 else tau * fz + (1 - tau) * z

    return func
