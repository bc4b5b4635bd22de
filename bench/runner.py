"""The name the README documents under ``bench.runner``: :func:`load_trained_model`.

The runner itself is split by step, top-down: :mod:`bench.sweep` (run a suite: plan, baselines,
executor, merges), :mod:`bench.executor` (where runs go), :mod:`bench.execution` (claim, train
and write one run), :mod:`bench.training` (train one run), :mod:`bench.training_step` (one
instrumented step), :mod:`bench.rows` (the tables a run writes), :mod:`bench.task_data` (the
data a run sees) and :mod:`bench.device` (where and in what precision it computes).
"""

from .training import load_trained_model

__all__ = ["load_trained_model"]
