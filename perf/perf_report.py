"""Performance targets and before/after optimisations, measured side by side in one run.

    python perf/perf_report.py [--device cpu|cuda] [--repeats N] [--out reports/PERFORMANCE.md]

Each comparison interleaves its two variants (A, B, A, B, ...) so that machine noise hits both
alike, and reports medians and their ratio. Absolute times depend on the machine; the ratios are
the result. The layer is the quick suite's: batch 16, 1x25x25 faces-sized images, width 16,
depth 3, Anderson (m=5, max 50 iterations, rel. tol 1e-3).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.measure import SavedBytes, StepClock, saved_bytes
from bench.model import Denoiser, ReconstructionDEQ
from bench.solver import make_solver
from bench.tasks import GaussianBlur
from bench.training_step import train_step
from strategies import get_strategy

BATCH, SIZE, WIDTH, DEPTH = 16, 25, 16, 3


def setup(device):
    torch.manual_seed(0)
    # the before/after rows were measured on the gradient-step layer with kernel normalisation
    model = ReconstructionDEQ(
        GaussianBlur(5, 1.0), 1, WIDTH, DEPTH, form="grad", lipschitz_control="kernel"
    ).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 1, SIZE, SIZE, generator=g).to(device)
    d = model.task.simulate(x, g)
    solver = make_solver("anderson", max_iter=50, tol=1e-3, m=5, lam=1e-4)
    return model, x, d, solver


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(a, b, repeats, device, warmup=3):
    """Interleaved timings of two callables: (median a, median b) in seconds."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((a, ta), (b, tb)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def old_layer(model, d, hoist=True, weights_once=True, transpose_adjoint=False):
    """The layer as it would be without each optimisation (for the before/after rows)."""
    op, lip = model.task, model.denoiser.lipschitz

    def adjoint(y):
        if transpose_adjoint:
            return F.conv_transpose2d(y, op._weight(y), padding=op.padding, groups=y.shape[1])
        return op.A_adjoint(y)

    atd = adjoint(d)
    eta, alpha = model.eta, model.alpha
    size, mix = d.shape[-2:], model.denoiser.mix
    weights = model.denoiser.weights(size)

    def f(z):
        w = weights if weights_once else model.denoiser.weights(size)
        data = adjoint(op.A(z)) - atd if hoist else adjoint(op.A(z) - d)
        return z - eta * (data + alpha * (z - Denoiser.evaluate(w, mix, lip, z)))

    return f


def rows(device, repeats):
    model, x, d, solver = setup(device)
    out = []

    def add(what, before, after, note):
        tb, ta = compare(before, after, repeats, device)
        out.append((what, tb, ta, tb / ta, note))

    # --- before/after: the layer evaluation, which runs in every solver iteration
    z = model.initial_iterate(d)
    with torch.no_grad():
        f_new = model.make_layer(d)
        f_tr = old_layer(model, d, transpose_adjoint=True)
        add("adjoint: conv_transpose2d -> flipped conv2d", lambda: f_tr(z), lambda: f_new(z),
            "layer evaluation")  # fmt: skip
        f_nohoist = old_layer(model, d, hoist=False)
        add("A^T d hoisted out of the layer", lambda: f_nohoist(z), lambda: f_new(z),
            "layer evaluation")  # fmt: skip
        f_weights = old_layer(model, d, weights_once=False)
        add("spectral-norm weights read once per step", lambda: f_weights(z), lambda: f_new(z),
            "layer evaluation")  # fmt: skip

    # --- saved-bytes hooks on every step vs on the first step only (what the runner does)
    jfb = get_strategy("jfb")
    opt = torch.optim.Adam(model.parameters(), lr=0.0)  # lr 0: every step sees the same model
    clock = StepClock(device)
    add("saved-bytes hooks only on a run's first step",
        lambda: train_step(model, jfb, solver, opt, x, d, clock, SavedBytes()),
        lambda: train_step(model, jfb, solver, opt, x, d, clock),
        "JFB training step")  # fmt: skip
    return out


def targets(device, repeats):
    model, x, d, solver = setup(device)
    jfb = get_strategy("jfb")
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    clock = StepClock(device)

    def bare():
        opt.zero_grad(set_to_none=True)
        xhat, _ = model(d, jfb, solver)
        F.mse_loss(xhat, x).backward()
        opt.step()

    def instrumented():
        train_step(model, jfb, solver, opt, x, d, clock)

    t_instr, t_bare = compare(instrumented, bare, repeats, device)

    def jfb_fwd_bwd():
        model.zero_grad(set_to_none=True)
        xhat, _ = model(d, jfb, solver)
        F.mse_loss(xhat, x).backward()

    def minimum():  # the physical minimum: a no-grad solve, then one layer forward + backward
        model.zero_grad(set_to_none=True)
        f = model.make_layer(d)
        with torch.no_grad():
            z_star, _ = solver(f, model.initial_iterate(d))
        F.mse_loss(f(z_star), x).backward()

    t_jfb, t_min = compare(jfb_fwd_bwd, minimum, repeats, device)

    def jfb_saved(iters):
        s = make_solver("fixed_point_iter", max_iter=iters, tol=1e-30)
        n, (xhat, _) = saved_bytes(model, d, jfb, s)
        return n

    return [
        ("JFB step / (no-grad solve + one layer forward and backward)", t_jfb, t_min, t_jfb / t_min, "<= 1.05"),
        ("instrumented training step / bare step", t_instr, t_bare, t_instr / t_bare, "<= 1.03"),
    ], (jfb_saved(10), jfb_saved(100))  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=41)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    device = torch.device(args.device)
    target_rows, (saved10, saved100) = targets(device, args.repeats)
    opt_rows = rows(device, args.repeats)
    ms = lambda s: f"{s * 1e3:.3f} ms"  # noqa: E731
    lines = [
        f"Measured on: {device} ({platform.machine()}, {torch.get_num_threads()} torch threads), "
        f"torch {torch.__version__}, {args.repeats} interleaved repeats, medians.",
        "",
        "### Targets",
        "",
        "| measure | numerator | denominator | ratio | target |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {w} | {ms(a)} | {ms(b)} | {r:.3f} | {t} |" for w, a, b, r, t in target_rows],
        f"| JFB bytes saved for backward, 10 vs 100 solver iterations | {saved10} | {saved100} "
        f"| {saved10 / saved100:.3f} | identical |",
        "",
        "### Before / after",
        "",
        "| change | before | after | speed-up | measured on |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {w} | {ms(a)} | {ms(b)} | {r:.2f}x | {n} |" for w, a, b, r, n in opt_rows],
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        page = args.out.read_text() if args.out.exists() else ""
        marker = "<!-- measured -->"
        head = page.split(marker)[0] if marker in page else page
        args.out.write_text(head.rstrip() + f"\n\n{marker}\n\n{text}\n")


if __name__ == "__main__":
    main()
