"""PeakLiveBytes: the exact peak of live tensor bytes inside a block.

References are independent of the tracker: hand-computed byte counts, and the allocator's own
allocation/free events as recorded by ``torch.profiler`` (replayed to a running total), and on a
GPU ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import weakref

import pytest
import torch

from bench.measure import PeakLiveBytes, cuda_allocator_vs_tracked, peak_live_bytes
from bench.model import ReconstructionDEQ
from bench.solver import FixedPointSolver
from bench.tasks import GaussianBlur
from strategies import Strategy, parse_spec

F32, F64 = torch.float32, torch.float64


def test_hand_computed_sequence():
    with PeakLiveBytes() as m:
        a = torch.empty(1000, dtype=F32)  # 4000
        b = torch.empty(500, dtype=F64)  # 4000 -> 8000 live
        assert m.live_bytes == 8000
        v = b[10:].view(2, 245).t()  # views share b's storage: nothing new
        b.add_(1.0)  # in place: nothing new
        a.mul_(2.0)
        assert m.live_bytes == 8000
        del a  # -> 4000
        c = torch.empty(250, dtype=F32)  # 1000 -> 5000
        assert m.live_bytes == 5000
        del b  # the view keeps b's storage alive
        assert m.live_bytes == 5000
        del v  # -> 1000
        assert m.live_bytes == 1000
        e = torch.ones(100, dtype=F64) + 1  # 800 temporary + 800 result: 2800 at most
        assert m.live_bytes == 1800
        assert m.peak_bytes == 8000
        big = torch.zeros(3000, dtype=F32)  # 12000 -> 13800 live: the new peak
        del big
    assert m.peak_bytes == 13800
    assert m.live_bytes == 1800  # c and e outlive the block and are still followed
    del c, e
    assert m.live_bytes == 0


def test_transient_temporaries_and_baseline():
    before = torch.ones(10_000, dtype=F64)  # exists before entering: baseline, not counted
    with PeakLiveBytes() as m:
        before.mul_(3.0)
        del before  # freeing a baseline tensor is not credited
        x = torch.ones(100, dtype=F64)  # 800
        for _ in range(5):
            x = x * 2 + 1  # each line: a temporary and a result live at once next to x
    # peak: x (800) + (x * 2) temp (800) + its +1 result (800) = 2400
    assert m.peak_bytes == 2400
    assert m.live_bytes == 800


def test_round_to_counts_blocks():
    with PeakLiveBytes(round_to=512) as m:
        a = torch.empty(1, dtype=F32)  # 4 B -> one 512 B block
        b = torch.empty(129, dtype=F32)  # 516 B -> 1024
        del a, b
        torch.empty(0)  # nothing allocated
    assert m.peak_bytes == 1536
    with pytest.raises(ValueError, match="round_to"):
        PeakLiveBytes(round_to=0)


def test_backward_and_grads_are_counted():
    w = torch.ones(1000, dtype=F32, requires_grad=True)  # baseline
    with PeakLiveBytes() as m:
        y = (w * 3.0).sum()  # 4000 temporary, 4 B result; the temporary dies after sum
        forward_peak = m.peak_bytes
        y.backward()  # grad_output ones (4 B) + dy/dw (4000 B, becomes w.grad)
    assert forward_peak == 4004
    assert m.peak_bytes == 4008
    assert m.live_bytes == 4004  # y and w.grad outlive the block
    assert torch.equal(w.grad, torch.full((1000,), 3.0))


def test_peak_live_bytes_returns_the_result():
    peak, result = peak_live_bytes(lambda n: torch.zeros(n, dtype=F64).sum(), 50)
    assert peak == 408 and result.item() == 0.0


def test_torch_func_and_no_grad_are_tracked():
    x = torch.randn(256, dtype=F64)
    with PeakLiveBytes() as m, torch.no_grad():
        _, tangent = torch.func.jvp(torch.sin, (x,), (torch.ones_like(x),))
    # ones_like (2048) + sin (2048) + cos (2048) + tangent (2048) alive at once, at most
    assert 3 * 2048 <= m.peak_bytes <= 4 * 2048
    assert torch.equal(tangent, torch.cos(x))


def test_holds_no_tensor_alive():
    with PeakLiveBytes() as m:
        t = torch.empty(1000, dtype=F32)
        view = t[::2]
        refs = [weakref.ref(t), weakref.ref(view), weakref.ref(t.untyped_storage())]
    del t, view
    gc.collect()
    assert all(r() is None for r in refs)
    assert m.live_bytes == 0 and m.peak_bytes == 4000


# --- an MLP step against the allocator's own events -------------------------------------------


def profiler_peak(fn) -> tuple[int, int]:
    """(peak, final) of bytes allocated inside ``fn`` and still live, from the profiler's
    allocator events (exported chrome trace), replayed by address."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/trace.json"
        prof.export_chrome_trace(path)
        with open(path) as fh:
            trace = json.load(fh)
    events = [e for e in trace["traceEvents"] if e.get("name") == "[memory]"]
    events.sort(key=lambda e: float(e["ts"]))
    live: dict[int, int] = {}
    total = peak = 0
    for e in events:
        addr, nbytes = int(e["args"]["Addr"]), int(e["args"]["Bytes"])
        if nbytes > 0:
            live[addr] = nbytes
            total += nbytes
        elif addr in live:  # frees of blocks allocated before fn are ignored
            total -= live.pop(addr)
        peak = max(peak, total)
    return peak, total


def test_mlp_step_matches_profiler_allocator_events():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 5))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(64, 30), torch.randn(64, 5)

    def step():
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()

    step()  # first step creates the momentum buffers
    opt.zero_grad(set_to_none=True)
    ref_peak, ref_final = profiler_peak(step)
    opt.zero_grad(set_to_none=True)
    with PeakLiveBytes() as m:
        step()
    grads = sum(p.grad.nbytes for p in net.parameters())
    assert ref_final == grads  # sanity of the reference: only the new grads survive
    assert m.live_bytes == grads
    assert m.peak_bytes == ref_peak
    # the peak is above activations + grads of the first layer, i.e. backward was seen
    assert m.peak_bytes > 64 * 20 * 4 + 20 * 30 * 4


# --- ReconstructionDEQ training steps --------------------------------------------------------------


def deq_setup(spec: str, max_iter: int = 20, device="cpu"):
    torch.manual_seed(0)
    model = ReconstructionDEQ(GaussianBlur(5, 1.0), 1, 4, 3).to(device=device, dtype=F64)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 12, 12, generator=g, dtype=F64)
    d = model.task.A(x) + 0.01 * torch.randn(x.shape, generator=g, dtype=F64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    solver = FixedPointSolver("fixed_point_iter", max_iter=max_iter, tol=1e-12)
    return model, parse_spec(spec), solver, optimizer, x.to(device), d.to(device)


def deq_step(model, strategy, solver, optimizer, x, d):
    xhat, _ = model(d, strategy, solver)
    loss = torch.nn.functional.mse_loss(xhat, x)
    loss.backward()
    optimizer.step()
    return loss.detach(), xhat.detach()


def measured_second_step(spec: str, max_iter: int = 20) -> PeakLiveBytes:
    args = deq_setup(spec, max_iter)
    deq_step(*args)  # Adam state exists from here on, as in the runner's measured step
    args[3].zero_grad(set_to_none=True)
    with PeakLiveBytes() as m:
        deq_step(*args)
    return m


@pytest.mark.parametrize("spec", ["jfb", "cg:max_iter=10"])
def test_tracker_leaves_training_step_bit_identical(spec):
    runs = []
    for tracked in (False, True):
        model, *rest = args = deq_setup(spec)
        outputs = []
        for _ in range(2):
            args[3].zero_grad(set_to_none=True)
            with PeakLiveBytes() if tracked else contextlib.nullcontext():
                outputs += deq_step(*args)
        grads = [p.grad.clone() for p in model.parameters()]
        params = [p.detach().clone() for p in model.parameters()]
        runs.append(outputs + grads + params)
    plain, tracked = runs
    assert len(plain) == len(tracked)
    assert all(torch.equal(a, b) for a, b in zip(plain, tracked, strict=True))


def test_jfb_peak_is_independent_of_solver_iterations():
    short, long = measured_second_step("jfb", 10), measured_second_step("jfb", 100)
    assert long.n_allocations > short.n_allocations + 1000  # the extra iterations ran, seen
    assert short.peak_bytes == long.peak_bytes > 0


def test_unrolled_peak_grows_with_unrolled_steps():
    k2, k8 = measured_second_step("unrolled:k=2"), measured_second_step("unrolled:k=8")
    # every unrolled step keeps its activations for backward
    assert k8.peak_bytes > k2.peak_bytes + 6 * 2 * 144 * 8


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
@pytest.mark.parametrize("case", ["mlp", "jfb"])
def test_agrees_with_cuda_max_memory_allocated(case):
    device = torch.device("cuda")
    if case == "mlp":
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 5)
        ).to(device)
        opt = torch.optim.Adam(net.parameters())
        x, y = torch.randn(64, 30, device=device), torch.randn(64, 5, device=device)

        def step():
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    else:
        args = deq_setup("jfb", device=device)
        opt = args[3]

        def step():
            deq_step(*args)

    allocator_peak, tracked_blocks = cuda_allocator_vs_tracked(
        step, lambda: opt.zero_grad(set_to_none=True)
    )
    opt.zero_grad(set_to_none=True)
    with PeakLiveBytes() as exact:
        step()
    # The caching allocator rounds every block up to 512 bytes; counted the same way, the
    # tracker must give the allocator's figure, and the exact byte count lies below it. The DEQ
    # layer's cuDNN convolutions, cuFFT and cuSOLVER calls also take workspaces from the
    # allocator that are no tensors (on an H100: 140,800 allocator bytes vs 95,744 tensor
    # bytes), so there the tensor figure is a lower bound of the allocator's.
    if case == "mlp":
        assert tracked_blocks == allocator_peak
    else:
        assert 0 < tracked_blocks <= allocator_peak
    assert exact.peak_bytes <= tracked_blocks


# ---- the harness's own records of a step: Jacobian products and the forward solve ---------------


def _step_row(strategy, solver=None):
    """The ``steps`` row of one training step of a tiny float64 ReconstructionDEQ (lr 0)."""
    from bench.measure import StepClock
    from bench.training_step import train_step

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = ReconstructionDEQ(GaussianBlur(5, 1.0), channels=1, width=4, depth=2).double()
    x = torch.rand(2, 1, 12, 12, generator=g, dtype=F64)
    d = model.task.simulate(x, g)
    solver = solver or FixedPointSolver("anderson", max_iter=100, tol=1e-10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    row, _ = train_step(model, strategy, solver, optimizer, x, d, StepClock("cpu"))
    return row


class HandNeumann(Strategy):
    """Three J^T products taken with torch.autograd.grad directly, not through any harness tool,
    and nothing reported: the harness must still count them."""

    name = "hand-neumann"

    def __call__(self, f, z0, solver):
        with torch.no_grad():
            z_star, _ = solver(f, z0)
        z = z_star.detach().requires_grad_()
        with torch.enable_grad():
            fz = f(z)

        def hook(g):
            v = term = g
            for _ in range(3):
                (term,) = torch.autograd.grad(fz, z, term, retain_graph=True)
                v = v + term
            return v

        out = f(z_star.detach())
        out.register_hook(hook)
        return out, {}


# Expected counts from each method's definition: jfb backpropagates through f once; neumann:k=K
# takes K J^T products and one final v^T df/dtheta; unrolled:k=K backpropagates through K layers;
# cg (CGLS) takes one J^T and one J u per iteration, less the last iteration's J u, plus the J u
# before the first (so it J u and it J^T), one J^T that builds the J u map, and the final VJP;
# gmres one J^T per iteration and the final VJP.
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("jfb", lambda it: 1),
        ("neumann:k=6", lambda it: 7),
        ("unrolled:k=5", lambda it: 5),
        ("cg:tol=1e-8", lambda it: 2 * it + 2),
        ("gmres:tol=1e-8", lambda it: it + 1),
    ],
)
def test_the_harness_counts_each_strategys_jacobian_products(spec, expected):
    row = _step_row(parse_spec(spec))
    iters = row["backward_iters"]
    assert row["jacobian_products"] == expected(iters)
    if spec.startswith(("cg", "gmres")):
        assert iters >= 2  # a real solve, so the count depends on it


def test_products_a_strategy_takes_by_itself_are_counted():
    assert _step_row(HandNeumann())["jacobian_products"] == 3 + 1


class Inventing(Strategy):
    """Claims a converged solve in 0 iterations whatever the solver did."""

    name = "inventing"

    def __call__(self, f, z0, solver):
        with torch.no_grad():
            z_star, _ = solver(f, z0)
        fake = {"forward_iters": 0.0, "forward_residual": 0.0, "forward_converged": 1.0}
        return f(z_star.detach()), fake


class Omitting(Strategy):
    """Reports nothing about its forward solve."""

    name = "omitting"

    def __call__(self, f, z0, solver):
        with torch.no_grad():
            z_star, _ = solver(f, z0)
        return f(z_star.detach()), {}


@pytest.mark.parametrize("strategy", [Inventing(), Omitting()])
def test_forward_solve_statistics_come_from_the_harness(strategy):
    # 3 plain iterations cannot reach 1e-30: the true record is 3 iterations, not converged
    solver = FixedPointSolver("fixed_point_iter", max_iter=3, tol=1e-30)
    row = _step_row(strategy, solver)
    assert row["forward_iters"] == 3 and row["forward_converged"] == 0.0
    assert row["forward_residual"] > 1e-30
