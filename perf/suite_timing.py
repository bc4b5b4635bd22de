"""Where a suite's time goes, and what ``-j 2`` buys: one suite run with ``-j 1``, then ``-j 2``.

    python perf/suite_timing.py [SUITE] [--epochs N] [--seeds N] [--strategies S]
                                      [--jobs 1,2] [--keep DIR]

Each command is the real CLI (``python -m bench.cli run SUITE -j N``), run into a fresh temporary
folder one after the other; its wall-clock is measured around the subprocess, so it includes
interpreter start-up, worker start-up, baselines and merges. Prints Markdown:

1. the command's wall-clock split (start-up, plan, baselines, runs, final merge) per ``-j``;
2. the runs' phase split (setup, training steps, evaluation, diagnostics, the rest), summed
   over the runs, and training steps as a share of the runs' time and of the command's
   wall-clock x jobs (the run slots the machine had);
3. per strategy, the per-step medians with ``-j 1`` and ``-j 2`` side by side, with the threads
   each run had, its CPU utilisation and whether its timing was flagged.

Defaults to the quick suite (about 3 minutes of both cores per ``-j``): run it on a quiet
machine; the timing columns say when it was not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench import results

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("setup_time_s", "train_time_s", "eval_time_s", "diagnostics_time_s")


def run_command(suite: str, out: Path, jobs: int, extra: list[str]) -> float:
    """Run the suite with ``-j jobs`` into ``out``; return the command's wall-clock seconds."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [sys.executable, "-m", "bench.cli", "run", suite, "--out", str(out), "--quiet"]
    cmd += ["-j", str(jobs), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"suite_timing: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return wall


def learned_runs(out: Path) -> pd.DataFrame:
    runs = results.load(out)["runs"]
    return runs[~runs["strategy"].astype(str).str.startswith("baseline:")]


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole > 0 else "n/a"


def command_table(measured: dict) -> list[str]:
    lines = [
        "| -j | command wall-clock | start-up | plan | baselines | runs | final merge "
        "| merges (all) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for jobs, m in measured.items():
        t = m["timing"]
        startup = m["wall"] - t["wall_time_s"]
        final_merge = t["wall_time_s"] - t["plan_time_s"] - t["baselines_time_s"] - t["runs_time_s"]
        lines.append(
            f"| {jobs} | {m['wall']:.1f} s | {startup:.1f} s | {t['plan_time_s']:.1f} s "
            f"| {t['baselines_time_s']:.1f} s | {t['runs_time_s']:.1f} s | {final_merge:.1f} s "
            f"| {t['merge_time_s']:.1f} s |"
        )
    return lines


def phase_table(measured: dict) -> list[str]:
    lines = [
        "| -j | runs | run time (sum) | setup | training steps | evaluation | diagnostics "
        "| rest | steps / run time | steps / (command wall-clock x jobs) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for jobs, m in measured.items():
        runs = m["runs"]
        total = runs["run_wall_time_s"].sum()
        sums = {p: runs[p].sum() for p in PHASES}
        rest = total - sum(sums.values())
        lines.append(
            f"| {jobs} | {len(runs)} | {total:.1f} s | "
            + " | ".join(f"{sums[p]:.1f} s ({pct(sums[p], total)})" for p in PHASES)
            + f" | {rest:.1f} s ({pct(rest, total)}) | {pct(sums['train_time_s'], total)} "
            f"| {pct(sums['train_time_s'], m['wall'] * jobs)} |"
        )
    return lines


def strategy_table(measured: dict) -> list[str]:
    jobs = list(measured)
    header = "| strategy | " + " | ".join(
        f"-j {j}: step median | threads | CPU util. | unreliable" for j in jobs
    )
    ratio = len(jobs) == 2
    header += f" | -j {jobs[1]} / -j {jobs[0]} |" if ratio else " |"
    cols = 1 + 4 * len(jobs) + (1 if ratio else 0)
    lines = [header, "|" + "---|" + "---:|" * (cols - 1)]
    per = {}
    for j, m in measured.items():
        per[j] = (
            m["runs"]
            .groupby("strategy_label")
            .agg(
                step=("median_step_time_s", "median"),
                threads=("torch_threads", "first"),
                util=("cpu_util", "median"),
                unreliable=("timing_reliable", lambda s: int((~s.astype(bool)).sum())),
                n=("run_id", "size"),
            )
        )
    for label in per[jobs[0]].index:
        cells = []
        for j in jobs:
            row = per[j].loc[label] if label in per[j].index else None
            cells.append(
                "n/a | | |"
                if row is None
                else f"{row.step * 1e3:.1f} ms | {row.threads:.0f} | {row.util:.2f} "
                f"| {row.unreliable:.0f}/{row.n:.0f}"
            )
        line = f"| {label} | " + " | ".join(cells)
        if ratio and label in per[jobs[1]].index:
            line += f" | {per[jobs[1]].loc[label].step / per[jobs[0]].loc[label].step:.2f}x"
        lines.append(line + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", nargs="?", default="quick")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seeds", type=int)
    p.add_argument("--strategies")
    p.add_argument("--jobs", default="1,2", help="comma-separated -j values (default 1,2)")
    p.add_argument("--keep", type=Path, help="keep the results folders under DIR")
    args = p.parse_args(argv)
    extra = []
    for flag in ("epochs", "seeds", "strategies"):
        if getattr(args, flag) is not None:
            extra += [f"--{flag}", str(getattr(args, flag))]
    jobs_list = [int(j) for j in args.jobs.split(",")]
    with tempfile.TemporaryDirectory(prefix="suite-timing-") as tmp:
        base = args.keep or Path(tmp)
        measured = {}
        load_before = os.getloadavg()[0]
        for jobs in jobs_list:
            out = base / f"j{jobs}"
            wall = run_command(args.suite, out, jobs, extra)
            measured[jobs] = {
                "wall": wall,
                "timing": json.loads((out / "suite_timing.json").read_text()),
                "runs": learned_runs(out),
            }
        load_after = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"## Suite timing: `{args.suite}`{' ' + ' '.join(extra) if extra else ''}\n\n"
        f"{cores} usable cores; 1-min load average {load_before:.2f} before, "
        f"{load_after:.2f} after. Commands run one after the other.\n"
    )
    print("### The command's wall-clock\n")
    print("\n".join(command_table(measured)) + "\n")
    print("### Where the runs' time goes (summed over runs)\n")
    print("\n".join(phase_table(measured)) + "\n")
    if len(jobs_list) == 2:
        a, b = jobs_list
        print(
            f"-j {b} vs -j {a}: wall-clock {measured[b]['wall']:.1f} s vs "
            f"{measured[a]['wall']:.1f} s, ratio {measured[b]['wall'] / measured[a]['wall']:.2f}\n"
        )
    print("### Per-step medians per strategy\n")
    print("\n".join(strategy_table(measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
