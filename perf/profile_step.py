"""Profile training steps of the quick suite's layer with torch.profiler.

python perf/profile_step.py [--strategies jfb,cg:tol=1e-4:max_iter=30] [--steps 5]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench.config import load_suite
from bench.measure import StepClock
from bench.model import build_model
from bench.solver import solver_from_config
from bench.task_data import load_task_data
from bench.training_step import train_step
from strategies import parse_spec


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategies", default="jfb,cg:tol=1e-4:max_iter=30")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    run = load_suite("quick").runs()[0]
    data = load_task_data(run.data, run.problem)
    x = data.train_x[: run.train.batch_size].float()
    d = data.task.simulate(x, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = build_model(run.model, data.task, 1)
    solver = solver_from_config(run.solver)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.train.lr)
    clock = StepClock(torch.device("cpu"))
    for spec in args.strategies.split(","):
        strategy = parse_spec(spec)
        for _ in range(3):  # warm-up
            train_step(model, strategy, solver, optimizer, x, d, clock)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                row, _ = train_step(model, strategy, solver, optimizer, x, d, clock)
        print(
            f"=== {spec}: forward_iters {row['forward_iters']}, backward_iters {row['backward_iters']}"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
