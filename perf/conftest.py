"""Shared set-up of the micro-benchmarks: one fixed ReconstructionDEQ layer, batch and forward solver.

Everything here is the same for every strategy. Environment variables: ``IMPLICIT_BENCH_DEVICE``
(default ``cpu``), ``IMPLICIT_BENCH_ROUNDS`` (timed rounds, default 3) and, on the CPU,
``IMPLICIT_BENCH_THREADS`` (torch threads, default 1). Run with
``pytest perf --benchmark-only``; ``make test`` does not collect this folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from bench.model import ReconstructionDEQ
from bench.solver import FixedPointSolver
from bench.tasks import GaussianBlur

DEVICE = torch.device(os.environ.get("IMPLICIT_BENCH_DEVICE", "cpu"))
ROUNDS = int(os.environ.get("IMPLICIT_BENCH_ROUNDS", "3"))
THREADS = int(os.environ.get("IMPLICIT_BENCH_THREADS", "1"))
if DEVICE.type == "cpu":
    # One thread by default: on a shared or oversubscribed CPU, torch's OpenMP threads wait on
    # each other and a layer's time swings by 100x between runs (seen on a 2-core machine).
    torch.set_num_threads(THREADS)
# TF32 convolutions and matmuls (the GPU default for cuDNN convolutions) round inputs to 10-bit
# mantissas: on an H100 cg could not reach 1e-4 gradient error with them even at tol 1e-7, so a
# comparison "at matched error" would compare nothing. Full float32 it is.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
BATCH, CHANNELS, SIZE, WIDTH, DEPTH = 8, 1, 32, 16, 3
SOLVER = dict(name="anderson", max_iter=30, tol=1e-4)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


@dataclass
class Deblur:
    """The benchmark's model, ground truth ``x``, measurements ``d`` and forward solver."""

    model: ReconstructionDEQ
    x: torch.Tensor
    d: torch.Tensor
    solver: FixedPointSolver


def _make_deblur(dtype: torch.dtype = torch.float32, seed: int = 0) -> Deblur:
    torch.manual_seed(seed)
    model = ReconstructionDEQ(GaussianBlur(5, 1.0), channels=CHANNELS, width=WIDTH, depth=DEPTH)
    model = model.to(device=DEVICE, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(BATCH, CHANNELS, SIZE, SIZE, generator=g, dtype=dtype).to(DEVICE)
    d = model.task.simulate(x, g)
    return Deblur(model, x, d, FixedPointSolver(**SOLVER))


@pytest.fixture(scope="session")
def make_deblur():
    """Factory ``make_deblur(dtype=float32, seed=0) -> Deblur``: a fresh model and data,
    identical for a given seed, so that every strategy starts from the same state."""
    return _make_deblur


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The benchmark's device (``IMPLICIT_BENCH_DEVICE``, default ``cpu``)."""
    return DEVICE


@pytest.fixture(scope="session")
def sync():
    """Waits for queued GPU work (no-op on the CPU): call it inside timed functions, so that a
    timer measures the work and not its launch."""
    return _sync


@pytest.fixture(scope="session")
def rounds() -> int:
    """Timed rounds per benchmark (``IMPLICIT_BENCH_ROUNDS``, default 3)."""
    return ROUNDS
