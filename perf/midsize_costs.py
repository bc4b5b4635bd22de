"""Issue 16 at the middle size: what certification and the diagnostics cost, in jfb steps.

python perf/midsize_costs.py [--side 64] [--width 64] [--depth 5] [--batch 8] [--repeats 7]

One process, side by side, on 64x64 RGB patches of the bundled photos (width 64, depth 5, batch
8 by default), Anderson forward as in the quick suite. Prints medians and ratios:

- a jfb training step with each Lipschitz control (operator: the certificate; kernel: torch's
  spectral_norm, uncertified; aol), and the operator step's certification phase;
- each diagnostic of an evaluation (||dT/dx|| by power iteration, the float64 gradient-fidelity
  reference, the peak-bytes replay) in median operator jfb steps;
- the jfb step's peak bytes (certification apart) against its bytes saved for backward;
- per layer, how tight the certificate is: certified bound / exact all-frequency bound.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from bench import diagnostics
from bench.certificate import conv_operator_norm
from bench.config import load_suite
from bench.measure import SavedBytes, StepClock
from bench.model import build_model
from bench.solver import solver_from_config
from bench.task_data import load_task_data
from bench.training import fidelity_images
from bench.training_step import train_step
from strategies import parse_spec


def _setting(args):
    run = load_suite("quick").runs()[0]
    data = dataclasses.replace(
        run.data, dataset="patches", patch_size=args.side, channels=3, n_images=64
    )
    model = dataclasses.replace(run.model, width=args.width, depth=args.depth)
    return dataclasses.replace(run, data=data, model=model)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    run = _setting(args)
    data = load_task_data(run.data, run.problem)
    x = data.train_x[: args.batch].float()  # the runner trains in float32 ([train] dtype)
    d = data.task.simulate(x, torch.Generator().manual_seed(0))
    solver, clock, jfb = (
        solver_from_config(run.solver),
        StepClock(torch.device("cpu")),
        parse_spec("jfb"),
    )
    print(f"{args.side}x{args.side} RGB, width {args.width}, depth {args.depth}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    models = {}
    for control in ("operator", "kernel", "aol"):
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(run.model, lipschitz_control=control), data.task, 3)
        models[control] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
    rows = {c: [] for c in models}
    for _ in range(args.repeats + 1):  # interleaved, so that load changes hit every control alike
        for control, (model, optimizer) in models.items():
            row, _ = train_step(model, jfb, solver, optimizer, x, d, clock)
            rows[control].append(row)
    med = {
        c: {k: statistics.median(r[k] for r in rs[1:]) for k in ("step_time_s", "certify_time_s")}
        for c, rs in rows.items()
    }
    base = med["kernel"]["step_time_s"]
    for control, m in med.items():
        print(f"jfb step, {control:8s}: {m['step_time_s']:.3f} s (certification "
              f"{m['certify_time_s']:.3f} s) = {m['step_time_s'] / base:.2f}x kernel")  # fmt: skip
    model, optimizer = models["operator"]
    step = med["operator"]["step_time_s"]
    n_fid = fidelity_images(x.shape[1:], args.batch, len(data.train_x))
    fid_x, fid_d = x[:n_fid], d[:n_fid]
    costs = {
        "||dT/dx|| (power iteration)": lambda: diagnostics.layer_lipschitz(model, solver, fid_d),
        "gradient fidelity (float64 reference)": lambda: diagnostics.gradient_cosine(
            model, jfb, solver, fid_x, fid_d
        ),
        "peak-bytes replay": lambda: diagnostics.peak_step_bytes(
            model,
            optimizer,
            lambda split: train_step(
                model, jfb, solver, optimizer, x, d, clock, after_certify=split
            ),
        ),  # fmt: skip
    }
    total = 0.0
    for name, fn in costs.items():
        seconds = _median_time(fn, max(1, args.repeats // 3))
        total += seconds
        print(f"{name:40s} {seconds:.3f} s = {seconds / step:.1f} jfb steps")
    print(f"{'all diagnostics':40s} {total:.3f} s = {total / step:.1f} jfb steps")
    # memory of the operator jfb step: peak after certification vs bytes saved for backward
    peaks = costs["peak-bytes replay"]()
    counter = SavedBytes()
    train_step(model, jfb, solver, optimizer, x, d, clock, counter)
    print(f"peak step bytes {peaks['peak_step_bytes'] / 2**20:.1f} MiB "
          f"(certification apart: {peaks['certify_peak_bytes'] / 2**20:.1f} MiB), saved for "
          f"backward {counter.total / 2**20:.1f} MiB: peak / saved = "
          f"{peaks['peak_step_bytes'] / counter.total:.2f}")  # fmt: skip
    size = (args.side, args.side)
    for i, conv in enumerate(model.denoiser.convs):
        w = conv.weight.detach()
        ratio = conv_operator_norm(w, size) / conv_operator_norm(w, size, max_grid=10**6)
        print(f"layer {i}: certified / exact all-frequency bound = {ratio.item():.4f}")


if __name__ == "__main__":
    main()
