"""One training step, and the backward pass alone, for every registered strategy.

The layer, batch, forward solver and optimiser are fixed (perf/conftest.py), so the
strategies differ only in how they produce the gradient. ``extra_info`` records the bytes
autograd saves for backward and the solver iterations (and whether the solves converged) of the
last round; None where a strategy has no such solve.
"""

import pytest
import torch.nn.functional as F
from torch.optim import Adam

from bench.measure import saved_bytes
from strategies import get_strategy, list_strategies, weighted_loss

STATS = ("forward_iters", "forward_converged", "backward_iters", "backward_converged")


def _record(benchmark, strategy, deblur, info):
    nbytes, _ = saved_bytes(
        lambda: weighted_loss(
            deblur.model(deblur.d, strategy, deblur.solver)[0], lambda z: F.mse_loss(z, deblur.x)
        )
    )
    benchmark.extra_info.update(
        strategy=strategy.label,
        saved_bytes=nbytes,
        **{k: info.get(k) for k in STATS},
    )


@pytest.mark.parametrize("name", list_strategies())
def test_training_step(benchmark, name, make_deblur, sync, rounds):
    """Forward with the strategy + MSE loss + backward + Adam step."""
    deblur, strategy = make_deblur(), get_strategy(name)
    model, optimiser, info = deblur.model, Adam(deblur.model.parameters(), lr=1e-3), {}

    def step():
        optimiser.zero_grad(set_to_none=True)
        out, step_info = model(deblur.d, strategy, deblur.solver)
        weighted_loss(out, lambda z: F.mse_loss(z, deblur.x)).backward()
        optimiser.step()
        sync()
        info.update(step_info)

    benchmark.group = "training step"
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1, iterations=1)
    _record(benchmark, strategy, deblur, info)


@pytest.mark.parametrize("name", list_strategies())
def test_backward(benchmark, name, make_deblur, sync, rounds):
    """``loss.backward()`` alone; the forward runs untimed in ``setup``."""
    deblur, strategy = make_deblur(), get_strategy(name)
    model, last = deblur.model, {}

    def setup():
        model.zero_grad(set_to_none=True)
        out, last["info"] = model(deblur.d, strategy, deblur.solver)  # completed in backward
        loss = weighted_loss(out, lambda z: F.mse_loss(z, deblur.x))
        sync()
        return (loss,), {}

    def backward(loss):
        loss.backward()
        sync()

    benchmark.group = "backward"
    benchmark.pedantic(backward, setup=setup, rounds=rounds, warmup_rounds=1)
    _record(benchmark, strategy, deblur, last["info"])
