"""Train one run, the same way for every strategy: its data on the device, the model and
optimiser, the instrumented steps, evaluations with their diagnostics, and the run's tables.
Also rebuilds a trained model from its run folder.

A run whose loss or fixed point stops being finite or bounded is *diverged*: a result recorded
in its tables, not a failure.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from strategies import final_output, parse_spec

from . import diagnostics
from .config import RunConfig
from .device import DTYPES, strict_fp32
from .measure import PeakMemory, SavedBytes, StepClock
from .metrics import mean_metrics
from .model import build_model
from .out_of_memory import during
from .rows import RunRecord, run_tables
from .solver import solver_from_config
from .task_data import DATA_SETTINGS, IMAGE_SETTINGS, TaskData, load_task_data
from .training_step import train_step

FIDELITY_SEED = 20_000  # the fixed batch for gradient fidelity
FIDELITY_BATCH = 8  # images in the fixed batch for gradient fidelity and ||dT/dx||, at most
# ... and at most this many pixel values (8 faces of 25x25): the float64 reference's convolutions
# take the CPU's slow path, and on 8 64x64 RGB patches it cost 25 jfb steps per evaluation (one
# patch: 3); fewer, larger images measure the same quantities on fewer samples
FIDELITY_VALUES = 8 * 25 * 25


def fidelity_images(image_shape: tuple[int, ...], batch_size: int, n_train: int) -> int:
    """Images in the fixed batch the diagnostics use: FIDELITY_BATCH, the training batch or the
    training set, whichever is smallest, and no more than FIDELITY_VALUES values, but one at
    least."""
    values = math.prod(image_shape)
    return max(1, min(FIDELITY_BATCH, batch_size, n_train, FIDELITY_VALUES // values))


# The settings that size a training step's tensors, named when it runs out of memory.
STEP_SETTINGS = f"train.batch_size, model.width or {IMAGE_SETTINGS}"
DIVERGED_ABS = 1e3  # images live in [0, 1]: a reconstruction this large has blown up


class Diverged(Exception):
    """A run's loss or fixed point stopped being finite / bounded: a result, not a failure."""


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _evaluate(model, strategy, solver, x, d, batch_size) -> tuple[dict[str, float], torch.Tensor]:
    """Every metric's mean per-image test value on the clamped reconstructions, and those."""
    model.eval()
    recon = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out, _ = model(d[i : i + batch_size], strategy, solver)
            recon.append(final_output(out).clamp(0, 1))
    model.train()
    recon = torch.cat(recon)
    return mean_metrics(recon, x), recon


def _schedule(optimizer, run: RunConfig, total_steps: int):
    """The per-step learning-rate schedule ``[train] lr_schedule`` names (None for constant)."""
    name = run.train.lr_schedule
    if name == "constant":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, run.train.lr, total_steps=total_steps)
    raise ValueError(f"unknown lr_schedule {name!r}; accepted: constant, cosine, onecycle")


@dataclass
class _Setup:
    """Everything a run needs before its first step (data on the device, model, optimiser)."""

    run: RunConfig
    data: TaskData
    train_x: torch.Tensor
    test_x: torch.Tensor
    test_d: torch.Tensor
    fid_x: torch.Tensor
    fid_d: torch.Tensor
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    strategy: object
    solver: object
    generator: torch.Generator

    @classmethod
    def build(cls, run: RunConfig, device: torch.device) -> _Setup:
        strict_fp32(device)
        data = load_task_data(run.data, run.problem)
        to = dict(device=device, dtype=DTYPES[run.train.dtype])
        train_x, test_x, test_d = (t.to(**to) for t in (data.train_x, data.test_x, data.test_d))
        torch.manual_seed(run.seed)
        generator = torch.Generator().manual_seed(run.seed)  # batch order and training noise
        model = build_model(run.model, data.task, train_x.shape[1]).to(**to)
        fid_x = train_x[: fidelity_images(train_x.shape[1:], run.train.batch_size, len(train_x))]
        fid_d = data.task.simulate(fid_x, torch.Generator().manual_seed(FIDELITY_SEED))
        solver = solver_from_config(run.solver)
        return cls(
            run, data, train_x, test_x, test_d, fid_x, fid_d, model,
            torch.optim.Adam(model.parameters(), lr=run.train.lr),
            parse_spec(run.strategy), solver, generator,
        )  # fmt: skip


def _check_finite(row: dict, xhat: torch.Tensor, epoch: int, step: int) -> None:
    if not math.isfinite(row["loss"]):
        raise Diverged(f"loss became {row['loss']} at epoch {epoch}, step {step}")
    if xhat.detach().abs().max().item() > DIVERGED_ABS:
        raise Diverged(f"fixed point blew up (|x| > {DIVERGED_ABS:g}) at epoch {epoch}")


def _evaluation(s: _Setup, rec: RunRecord, epoch: int, epoch_end: bool, fidelity: bool) -> None:
    """Evaluate on the test set, measure ||dT/dx|| and (when asked) the gradient fidelity."""
    t0 = time.perf_counter()
    bs = s.run.train.batch_size
    since = rec.evals[-1]["step"] if rec.evals else 0  # train_loss: mean since the last one
    test_metrics, rec.recon = _evaluate(s.model, s.strategy, s.solver, s.test_x, s.test_d, bs)
    if not all(math.isfinite(v) for v in test_metrics.values()):
        raise Diverged(f"test reconstruction not finite at epoch {epoch}")
    t1 = time.perf_counter()
    row = {
        "epoch": epoch,
        "step": len(rec.steps),
        "epoch_end": float(epoch_end),
        "train_loss": float(np.mean([r["loss"] for r in rec.steps[since:]] or [math.nan])),
        **{f"test_{m}": v for m, v in test_metrics.items()},
        **{f"naive_test_{m}": v for m, v in s.data.naive_metrics.items()},
        "train_time_s": rec.train_time_s,
        "grad_cosine": math.nan,
        "grad_reference_converged": math.nan,
        "grad_reference_forward_residual": math.nan,
        "grad_reference_backward_residual": math.nan,
        **diagnostics.ADJOINT_NAN,
        **diagnostics.layer_lipschitz(s.model, s.solver, s.fid_d),
        "certified_lipschitz_bound": s.model.contraction_bound(),
    }
    # how much of the proved bound the layer uses (NaN where nothing is proved)
    row["contraction_budget_used"] = row["layer_lipschitz"] / row["certified_lipschitz_bound"]
    if fidelity:
        row.update(diagnostics.gradient_cosine(s.model, s.strategy, s.solver, s.fid_x, s.fid_d))
    rec.evals.append(row)
    rec.eval_time_s += t1 - t0
    rec.diagnostics_time_s += time.perf_counter() - t1
    rec.sample_load()


def _train_loop(s: _Setup, rec: RunRecord, memory: PeakMemory, device, progress: bool) -> None:
    run = s.run
    n_batches = math.ceil(len(s.train_x) / run.train.batch_size)
    total_steps = run.train.epochs * n_batches
    scheduler = _schedule(s.optimizer, run, total_steps)
    clock = StepClock(device)
    # Peak live bytes are measured on a replay of one step after the first (Adam's state then
    # exists; the first when there is only one), whose effects are undone: the tracker slows the
    # step down, and the timed steps and the training itself must not see it.
    tracked_step = 2 if total_steps > 1 else 1
    bar = tqdm(range(1, run.train.epochs + 1), desc=run.strategy, unit="epoch", leave=False,
               disable=not progress)  # fmt: skip
    for epoch in bar:
        for idx in _batches(len(s.train_x), run.train.batch_size, s.generator):
            x = s.train_x[idx]
            d = s.data.task.simulate(x, s.generator)
            step = len(rec.steps) + 1
            every = run.train.jac_reg_every
            jac_reg = run.train.jac_reg if (step - 1) % every == 0 else 0.0
            in_step = f"in a training step (batch of {len(x)} images of {_shape(x)})"
            if step == tracked_step:
                t0 = time.perf_counter()
                with during(in_step, STEP_SETTINGS):
                    peaks = _peak_step_bytes(s, x, d, clock, jac_reg)
                rec.peak_step_bytes = peaks["peak_step_bytes"]
                rec.certify_peak_bytes = peaks["certify_peak_bytes"]
                rec.diagnostics_time_s += time.perf_counter() - t0
            counter = SavedBytes() if step == 1 else None  # one step suffices: exact
            with memory, during(in_step, STEP_SETTINGS):
                wall, cpu = time.perf_counter(), time.process_time()
                row, xhat = train_step(
                    s.model, s.strategy, s.solver, s.optimizer, x, d, clock, counter, jac_reg,
                    aside=memory.paused,
                )  # fmt: skip
                rec.step_cpu_s += time.process_time() - cpu  # every thread of the process
                rec.step_wall_s += time.perf_counter() - wall
            if counter:
                rec.saved_bytes = counter.total
            if scheduler is not None:
                scheduler.step()
            rec.train_time_s += row["step_time_s"]
            rec.steps.append({"epoch": epoch, "step": step, **row})
            _check_finite(row, xhat, epoch, step)
            epoch_end = step % n_batches == 0
            if _evaluates(run, step, epoch_end, total_steps):
                fidelity = run.train.grad_fidelity and (not rec.evals or step == total_steps)
                what = f"evaluating (test set in batches of {run.train.batch_size}, diagnostics)"
                with during(what, f"train.batch_size or {IMAGE_SETTINGS}"):
                    _evaluation(s, rec, epoch, epoch_end, fidelity)


def _shape(x: torch.Tensor) -> str:
    return "×".join(map(str, x.shape[1:]))


def _peak_step_bytes(s: _Setup, x, d, clock: StepClock, jac_reg: float) -> dict[str, int]:
    """Peak live tensor bytes of a training step on (x, d), replayed and then undone, split into
    the certification's and the rest's (see :func:`bench.diagnostics.peak_step_bytes`)."""

    def step(after_certify):
        train_step(
            s.model, s.strategy, s.solver, s.optimizer, x, d, clock,
            jac_reg=jac_reg, after_certify=after_certify, bound=False,
        )  # fmt: skip

    return diagnostics.peak_step_bytes(s.model, s.optimizer, step)


def _evaluates(run: RunConfig, step: int, epoch_end: bool, total_steps: int) -> bool:
    """Whether to evaluate after ``step``: every ``eval_every`` steps (or at each epoch's end
    when it is 0), and always after the last step."""
    every = run.train.eval_every
    return step == total_steps or (step % every == 0 if every else epoch_end)


def train(run: RunConfig, device: torch.device, progress: bool = False) -> dict:
    """Train one run; return its tables (``runs``/``epochs``/``steps``), reconstructions and
    final model weights.

    Memory figures cover training steps only: the peak RSS and GPU memory are taken inside the
    steps (evaluation, the gradient-fidelity reference and the Lipschitz estimate are outside),
    and ``peak_step_bytes`` is the exact peak of live tensor bytes of one step. The run's
    wall-clock is split into setup, training steps, evaluation and diagnostics; the timing
    columns say whether the step times can be trusted (see :func:`bench.summary.timing_verdict`).
    """
    started = time.perf_counter()
    rec = RunRecord()
    rec.sample_load()
    with during(f"moving the data to {device} and building the model", DATA_SETTINGS):
        s = _Setup.build(run, device)
    rec.setup_time_s = time.perf_counter() - started
    memory = PeakMemory(device)
    try:
        with memory.sampling():
            _train_loop(s, rec, memory, device, progress)
    except Diverged as err:
        rec.status, rec.reason = "diverged", str(err)
    rec.sample_load()
    tables = run_tables(
        run, s.strategy, s.data, rec, memory, device, time.perf_counter() - started,
        certified_lipschitz_bound=s.model.contraction_bound(), fidelity_images=len(s.fid_x),
    )  # fmt: skip
    tables["model"] = {k: v.detach().cpu() for k, v in s.model.state_dict().items()}
    return tables


def load_trained_model(run_dir: str | Path) -> torch.nn.Module:
    """Rebuild a run's trained model from its folder (``results/<suite>/parts/<run_id>``).

    Reads the run's ``config.json`` and ``model.pt`` (with ``weights_only=True``) and returns
    the model in eval mode, in the run's dtype, on the CPU. Its layer for measurements ``d`` is
    ``model.make_layer(d)``; a reconstruction is ``model(d, strategy, solver)``.
    """
    run_dir = Path(run_dir)
    for name in ("config.json", "model.pt"):
        if not (run_dir / name).is_file():
            raise ValueError(f"{str(run_dir)!r} is not a finished run folder: no {name}")
    run = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    data = load_task_data(run.data, run.problem)
    model = build_model(run.model, data.task, data.train_x.shape[1])
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(DTYPES[run.train.dtype]).eval()
