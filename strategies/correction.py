"""Fixed-point correction: the loss on several states of the solver's trajectory, weighted."""

from torchdeq.grad import backward_factory

from strategies import Param, Strategy, WeightedOutputs, register
from strategies.phantom import damped


@register
class Correction(Strategy):
    """Phantom gradients from ``n_states`` states of the forward trajectory, losses weighted.

    Bai, Geng & Kolter, "Deep Equilibrium Optical Flow Estimation" (CVPR 2022, arXiv
    2204.08442), Sec. 3.3, as torchdeq implements it (``torchdeq/loss/correction.py``, weight
    ``'exp'``): states z_1, ..., z_n sampled from the solver's trajectory, the last being the
    solver's answer z*, each passed through a phantom gradient (``k`` damped steps,
    z <- tau f(z) + (1 - tau) z, torchdeq's ``backward_factory``), and the training loss
    sum_{i=1}^{n} gamma^(n - i) loss(z_i): the fixed point weighs 1, earlier states less. It
    returns a :class:`WeightedOutputs`; the reconstruction is the last output.

    The trajectory is read where every solver exposes it, the points at which it evaluates f:
    the states are the ones at evenly spaced positions among those evaluations (fewer states
    when the solver evaluated f fewer times). Memory holds n phantom graphs (n x phantom's),
    costs n k J^T products, and does not grow with the solver's iterations beyond the detached
    iterates the forward pass holds until it returns.
    """

    name = "correction"
    cost_params = ("n_states",)
    parameters = {
        "n_states": Param(3, ge=1, le=100, doc="trajectory states with a loss, z* included"),
        "gamma": Param(0.8, gt=0, le=1, doc="weight gamma^(n-i) of state i"),
        "k": Param(1, ge=1, le=1000, doc="phantom steps per state"),
        "tau": Param(1.0, gt=0, le=1, doc="phantom damping"),
    }

    def __call__(self, f, z0, solver):
        visited = []

        def recording(z, *args, **kwargs):  # the solver runs without grad: z is detached
            visited.append(z)
            return f(z, *args, **kwargs)

        z_star, info = self.fixed_point(recording, z0, solver)
        earlier = self.n_states - 1
        # evenly spaced over the evaluations, excluding the last (z* stands for it)
        picks = sorted({int(i * len(visited) / (earlier + 1)) for i in range(1, earlier + 1)})
        states = [visited[i].detach() for i in picks if i < len(visited)]
        states.append(z_star)
        visited.clear()
        grad_func = backward_factory(grad_type=self.k, tau=self.tau)
        outputs = tuple(grad_func(None, damped(f), z)[0] for z in states)
        n = len(outputs)
        weights = tuple(self.gamma ** (n - 1 - i) for i in range(n))
        info["correction_states"] = float(n)
        return WeightedOutputs(outputs, weights), info
