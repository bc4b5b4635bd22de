"""Helpers shared by several test modules (kept here, not imported from one test module into
another)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A suite small enough to train in seconds, with one run per built-in strategy kind.
TINY = """
strategies = ["jfb", "cg:tol=1e-6:max_iter=300", "neumann:k=3", "unrolled:k=3"]
seeds = 1
baselines = ["tikhonov"]
[data]
dataset = "faces"
n_images = 30
[model]
width = 4
depth = 2
alpha = 0.05
[solver]
name = "broyden"  # converges where torchdeq's Anderson stalls on this weak contraction
max_iter = 300
tol = 1e-5
[train]
epochs = 2
batch_size = 8
lr = 5e-3
n_recon = 3
"""


# The smallest suite that trains through the whole pipeline (width 2, one epoch, no fidelity
# check): for tests of the machinery around training (resume, locks, parallel sweeps).
MINI = """
strategies = ["jfb"]
seeds = 3
[data]
dataset = "faces"
n_images = 6
[model]
width = 2
depth = 1
[solver]
name = "fixed_point_iter"
max_iter = 30
tol = 1e-3
[train]
epochs = 1
batch_size = 4
n_recon = 1
grad_fidelity = false
device = "cpu"
"""

# The suite of the one real run that the tests which only read a results folder share (the
# session fixture `mini_run` of conftest.py trains it once): two strategies, two seeds each.
MINI_RUN = MINI.replace('strategies = ["jfb"]', 'strategies = ["jfb", "unrolled:k=2"]').replace(
    "seeds = 3", "seeds = 2"
)


def run_config(strategy: str = "jfb", seed: int = 0, *, suite: str = "s", **sections):
    """One run's config without a suite file: each section (``data=``, ``model=``, ...) at its
    defaults unless given, as a dict of the fields that differ (``model={"width": 2}``) or whole
    (``solver=SolverConfig(...)``)."""
    from bench.config import SECTIONS, RunConfig

    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise TypeError(f"run_config: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    built = {}
    for name, kind in SECTIONS.items():
        given = sections.get(name, {})
        built[name] = given if isinstance(given, kind) else kind(**given)
    return RunConfig(suite, strategy, seed, **built)


def markdown_tables(markdown: str) -> list[list[list[str]]]:
    """Every Markdown table of a report as rows of cells (header first, rule dropped)."""
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|- "):
                current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def subprocess_env(extra_path: Path | None = None) -> dict:
    env = dict(os.environ)
    paths = [str(ROOT)] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(*args, cwd: Path, extra_path: Path | None = None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *map(str, args)],
        cwd=cwd,
        env=subprocess_env(extra_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_in_process(*args) -> subprocess.CompletedProcess:
    """`implicit-bench ARGS` through ``bench.cli.main`` in this process, answered as :func:`cli`
    answers (exit status, stdout, stderr). For tests of what the command says, writes and
    returns: no interpreter start and torch import (seconds each). Keep :func:`cli` where the test
    is about a real process (signals, workers, imports, the interpreter's exit)."""
    from bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit_:  # argparse's usage errors and --help
            code = exit_.code
    if isinstance(code, str):  # sys.exit("message"): printed to stderr, status 1
        err.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess(list(args), code or 0, out.getvalue(), err.getvalue())
