"""How cost grows (issue 16 §6): time per training step and peak step memory per strategy
against image side and depth, with fitted growth exponents; and unrolled memory against k.

python perf/growth.py [--sides 32,64,128] [--depths 5,9,17] [--width 32] [--batch 4]
                      [--strategies jfb,gmres:tol=1e-3:max_iter=50,neumann:k=10,unrolled:k=10]
                      [--ks 5,10,20] [--steps 3] [--out results/growth]

One process, one configuration at a time, on RGB patches of the bundled photos, the certified
prox layer (MaxMin) and Anderson forward. Per configuration: the median of ``--steps`` timed
training steps after one warm-up step (step_time_s, and of it certify_time_s), and the exact
peak of live tensor bytes of one replayed step (``peak_step_bytes``, the certification's apart).
Exponents are least-squares slopes of log(cost) on log(side) at the smallest depth and on
log(depth) at the smallest side. Writes OUT.csv and OUT.png and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench import diagnostics
from bench.config import load_suite
from bench.measure import StepClock
from bench.model import build_model
from bench.solver import solver_from_config
from bench.task_data import load_task_data
from bench.training_step import train_step
from strategies import parse_spec


def measure(run, strategy_spec: str, side: int, depth: int, width: int, batch: int, steps: int):
    data_cfg = dataclasses.replace(run.data, patch_size=side, n_images=max(2 * batch, 16))
    data = load_task_data(data_cfg, run.problem)
    x = data.train_x[:batch].float()  # the runner trains in float32 ([train] dtype)
    d = data.task.simulate(x, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(run.model, width=width, depth=depth), data.task, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.train.lr)
    solver, clock = solver_from_config(run.solver), StepClock(torch.device("cpu"))
    strategy = parse_spec(strategy_spec)
    rows = [
        train_step(model, strategy, solver, optimizer, x, d, clock)[0] for _ in range(steps + 1)
    ]
    peaks = diagnostics.peak_step_bytes(
        model, optimizer,
        lambda split: train_step(model, strategy, solver, optimizer, x, d, clock, after_certify=split),
    )  # fmt: skip
    timed = rows[1:]
    return {
        "strategy": strategy_spec, "side": side, "depth": depth, "width": width, "batch": batch,
        "step_time_s": statistics.median(r["step_time_s"] for r in timed),
        "certify_time_s": statistics.median(r["certify_time_s"] for r in timed),
        "forward_iters": statistics.median(r["forward_iters"] for r in timed),
        **peaks,
    }  # fmt: skip


def exponent(frame: pd.DataFrame, x: str, y: str) -> float:
    frame = frame[frame[y] > 0]
    if frame[x].nunique() < 2:
        return float("nan")
    return float(np.polyfit(np.log(frame[x]), np.log(frame[y]), 1)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    p.add_argument("--sides", type=ints, default=[32, 64, 128])
    p.add_argument("--depths", type=ints, default=[5, 9, 17])
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument(
        "--strategies", default="jfb,gmres:tol=1e-3:max_iter=50,neumann:k=10,unrolled:k=10"
    )
    p.add_argument("--ks", type=ints, default=[5, 10, 20])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("results/growth"))
    args = p.parse_args()
    run = load_suite("midsize").runs()[0]
    specs = args.strategies.split(",")
    grid = [(s, side, args.depths[0]) for s in specs for side in args.sides]
    grid += [(s, args.sides[0], depth) for s in specs for depth in args.depths[1:]]
    grid += [(f"unrolled:k={k}", args.sides[0], args.depths[0]) for k in args.ks]
    rows = []
    for spec, side, depth in dict.fromkeys(grid):
        rows.append(measure(run, spec, side, depth, args.width, args.batch, args.steps))
        r = rows[-1]
        print(f"{spec:32s} side {side:4d} depth {depth:3d}: {r['step_time_s']:.3f} s/step, "
              f"peak {r['peak_step_bytes'] / 2**20:.1f} MiB", flush=True)  # fmt: skip
    frame = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out.with_suffix(".csv"), index=False)
    lines = ["| strategy | time ~ side^a | memory ~ side^a | time ~ depth^b | memory ~ depth^b |",
             "|---|---|---|---|---|"]  # fmt: skip
    for spec in specs:
        own = frame[frame["strategy"] == spec]
        by_side = own[own["depth"] == args.depths[0]]
        by_depth = own[own["side"] == args.sides[0]]
        lines.append(
            f"| {spec} | {exponent(by_side, 'side', 'step_time_s'):.2f} | "
            f"{exponent(by_side, 'side', 'peak_step_bytes'):.2f} | "
            f"{exponent(by_depth, 'depth', 'step_time_s'):.2f} | "
            f"{exponent(by_depth, 'depth', 'peak_step_bytes'):.2f} |"
        )
    unrolled = frame[frame["strategy"].str.startswith("unrolled:k=")].copy()
    unrolled = unrolled[(unrolled["side"] == args.sides[0]) & (unrolled["depth"] == args.depths[0])]
    unrolled["k"] = unrolled["strategy"].str.split("=").str[1].astype(int)
    lines.append("")
    lines.append(f"unrolled: peak step memory ~ k^{exponent(unrolled, 'k', 'peak_step_bytes'):.2f}"
                 f" (k = {', '.join(map(str, sorted(unrolled['k'])))})")  # fmt: skip
    print("\n".join(lines))
    _figure(frame, specs, args)


def _figure(frame: pd.DataFrame, specs: list[str], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for spec in specs:
        own = frame[frame["strategy"] == spec]
        by_side = own[own["depth"] == args.depths[0]].sort_values("side")
        by_depth = own[own["side"] == args.sides[0]].sort_values("depth")
        axes[0].loglog(by_side["side"], by_side["step_time_s"], "o-", label=spec)
        axes[1].loglog(by_side["side"], by_side["peak_step_bytes"] / 2**20, "o-", label=spec)
        axes[2].loglog(by_depth["depth"], by_depth["peak_step_bytes"] / 2**20, "o-", label=spec)
    axes[0].set(xlabel="image side", ylabel="median step time (s)")
    axes[1].set(xlabel="image side", ylabel="peak step memory (MiB)")
    axes[2].set(xlabel="depth of g", ylabel="peak step memory (MiB)")
    axes[0].legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
