"""Train the implicit network once per run and record everything, the same way for every strategy.

``run_suite`` walks a suite's runs, skips those already complete in the results folder (same
config hash), trains the rest one at a time and writes each run's rows atomically when it ends.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import time
import traceback
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from strategies import get_strategy, parse_spec

from . import results
from .config import DataConfig, ProblemConfig, RunConfig, Suite
from .data import load_dataset
from .measure import PeakMemory, SavedBytes, StepClock, device_name
from .metrics import psnr, ssim
from .model import DeblurDEQ
from .problem import DeblurProblem, GaussianBlur
from .solver import lipschitz_estimate, make_solver

DTYPES = {"float32": torch.float32, "float64": torch.float64}
TEST_NOISE_SEED = 10_000  # test measurements are the same for every run and seed
FIDELITY_SEED = 20_000  # the fixed batch for gradient fidelity
FIDELITY_MAX_ITER = 2000
STEP_INFO = (
    "forward_iters", "forward_residual", "forward_converged", "backward_iters", "backward_residual"
)  # fmt: skip
DIVERGED_ABS = 1e3  # images live in [0, 1]: a reconstruction this large has blown up


class Diverged(Exception):
    """A run's loss or fixed point stopped being finite / bounded: a result, not a failure."""


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; a device that is not there is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; accepted: auto, cpu, cuda, cuda:N")
    return device


@dataclass
class Problem:
    """Data and measurements for one (data, problem) setting, on the CPU in float64."""

    problem: DeblurProblem
    train_x: torch.Tensor
    test_x: torch.Tensor
    test_d: torch.Tensor
    blurred_psnr: float  # of the clamped measurements: the reference every run is compared to
    blurred_ssim: float


@cache
def prepare(data: DataConfig, problem: ProblemConfig) -> Problem:
    """Load the data set and make the fixed test measurements (cached per setting)."""
    images = load_dataset(
        data.dataset,
        root=data.root or None,
        image_size=data.image_size or None,
        n_images=data.n_images or None,
        test_fraction=data.test_fraction,
        patch_size=data.patch_size,
        channels=data.channels or None,
    )
    deblur = DeblurProblem(GaussianBlur(problem.kernel_size, problem.sigma), problem.noise_std)
    train_x, test_x = images.train.double(), images.test.double()
    test_d = deblur.measure(test_x, torch.Generator().manual_seed(TEST_NOISE_SEED))
    blurred = test_d.clamp(0, 1)
    return Problem(
        deblur,
        train_x,
        test_x,
        test_d,
        psnr(blurred, test_x).mean().item(),
        ssim(blurred, test_x).mean().item(),
    )


@cache  # a subprocess per run otherwise; versions cannot change within a process
def _versions() -> dict:
    from importlib.metadata import version

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "torch_version": torch.__version__,
        "torchdeq_version": version("torchdeq"),
        "git_commit": commit or "unknown",
    }


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().flatten().double() for p in model.parameters()])


def _evaluate(model, strategy, solver, x, d, batch_size) -> tuple[float, float, torch.Tensor]:
    """Mean per-image test PSNR/SSIM of clamped reconstructions, and the reconstructions."""
    model.eval()
    recon = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xhat, _ = model(d[i : i + batch_size], strategy, solver)
            recon.append(xhat.clamp(0, 1))
    model.train()
    recon = torch.cat(recon)
    return psnr(recon, x).mean().item(), ssim(recon, x).mean().item(), recon


def _gradient_cosine(model, strategy, solver, run: RunConfig, x, d) -> float:
    """Cosine between the strategy's gradient and the exact implicit gradient on a fixed batch,
    and whether the reference's forward and CG solves both converged (1.0) or not (0.0).

    The reference is a float64 copy of the model with a tight forward solve and a tight CG solve.
    Both use eval mode so spectral norm does not step its power iteration between the two.
    """

    def grad_of(m, strat, solv, dtype):
        m.eval()
        m.zero_grad(set_to_none=True)
        xhat, info = m(d.to(dtype), strat, solv)
        torch.nn.functional.mse_loss(xhat, x.to(dtype)).backward()
        g = _flat_grad(m)
        m.zero_grad(set_to_none=True)
        m.train()
        return g, info

    import copy

    dtype = next(model.parameters()).dtype
    g, _ = grad_of(model, strategy, solver, dtype)
    reference = copy.deepcopy(model).double()
    # A cosine needs ~3 digits: 1e-6 on both solves is ample. Plain iteration converges for any
    # contraction, where torchdeq's Anderson can stall on weakly contractive layers.
    ref_solver = make_solver("fixed_point_iter", max_iter=FIDELITY_MAX_ITER, tol=1e-6)
    ref_strategy = get_strategy("cg", tol=1e-6, max_iter=500)
    g_ref, info = grad_of(reference, ref_strategy, ref_solver, torch.float64)
    converged = info["forward_converged"] * info["backward_converged"]
    return torch.nn.functional.cosine_similarity(g, g_ref, dim=0).item(), converged


def _solver_extras(run: RunConfig) -> dict:
    return {"m": run.solver.m, "lam": run.solver.lam} if run.solver.name == "anderson" else {}


def train_step(model, strategy, solver, optimizer, x, d, clock: StepClock, counter=None):
    """One instrumented training step: returns (its ``steps`` row without epoch/step, output).

    The phases are timed by ``clock``; ``counter`` (a :class:`SavedBytes`), when given, counts
    the bytes the forward pass saves for backward.
    """
    optimizer.zero_grad(set_to_none=True)
    marks = [clock.mark()]
    with counter.count() if counter else contextlib.nullcontext():
        xhat, info = model(d, strategy, solver)
        loss = torch.nn.functional.mse_loss(xhat, x)
    marks.append(clock.mark())
    loss.backward()  # strategies with a backward solve complete ``info`` here
    marks.append(clock.mark())
    optimizer.step()
    marks.append(clock.mark())
    fwd, bwd, opt = clock.durations(marks)
    row = {
        "loss": loss.item(),
        "forward_time_s": fwd,
        "backward_time_s": bwd,
        "optimizer_time_s": opt,
        "step_time_s": fwd + bwd + opt,
        **{key: info.get(key, math.nan) for key in STEP_INFO},
    }
    return row, xhat


def train(run: RunConfig, device: torch.device, progress: bool = False) -> dict:
    """Train one run; return its tables (``runs``/``epochs``/``steps``) and reconstructions."""
    data = prepare(run.data, run.problem)
    dtype = DTYPES[run.train.dtype]
    to = dict(device=device, dtype=dtype)
    train_x, test_x, test_d = (t.to(**to) for t in (data.train_x, data.test_x, data.test_d))
    problem = data.problem
    torch.manual_seed(run.seed)
    generator = torch.Generator().manual_seed(run.seed)  # batch order and training noise
    channels = train_x.shape[1]
    m = run.model
    model = DeblurDEQ(problem.operator, channels, m.width, m.depth, m.eta, m.alpha, m.lipschitz).to(
        **to
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=run.train.lr)
    strategy = parse_spec(run.strategy)
    solver = make_solver(
        run.solver.name, max_iter=run.solver.max_iter, tol=run.solver.tol, **_solver_extras(run)
    )
    fid_idx = torch.arange(min(run.train.batch_size, len(train_x)))
    fid_x = train_x[fid_idx]
    fid_d = problem.measure(fid_x, torch.Generator().manual_seed(FIDELITY_SEED))

    clock = StepClock(device)
    steps, epochs = [], []
    saved = math.nan
    status, reason = "ok", ""
    wall = 0.0
    recon = None
    with PeakMemory(device) as memory:
        try:
            epoch_bar = tqdm(
                range(1, run.train.epochs + 1),
                desc=run.strategy,
                unit="epoch",
                leave=False,
                disable=not progress,
            )
            for epoch in epoch_bar:
                losses = []
                for step, idx in enumerate(_batches(len(train_x), run.train.batch_size, generator)):
                    x = train_x[idx]
                    d = problem.measure(x, generator)
                    counter = SavedBytes() if not steps else None  # one step suffices: exact
                    row, xhat = train_step(model, strategy, solver, optimizer, x, d, clock, counter)
                    wall += row["step_time_s"]
                    if counter:
                        saved = counter.total
                    steps.append({"epoch": epoch, "step": len(steps) + 1, **row})
                    loss_value = row["loss"]
                    losses.append(loss_value)
                    if not math.isfinite(loss_value):
                        raise Diverged(
                            f"loss became {loss_value} at epoch {epoch}, step {step + 1}"
                        )
                    if xhat.detach().abs().max().item() > DIVERGED_ABS:
                        raise Diverged(
                            f"fixed point blew up (|x| > {DIVERGED_ABS:g}) at epoch {epoch}"
                        )
                test_psnr, test_ssim, recon = _evaluate(
                    model, strategy, solver, test_x, test_d, run.train.batch_size
                )
                if not math.isfinite(test_psnr):
                    raise Diverged(f"test reconstruction not finite at epoch {epoch}")
                cosine = reference_converged = math.nan
                if run.train.grad_fidelity and epoch in (1, run.train.epochs):
                    cosine, reference_converged = _gradient_cosine(
                        model, strategy, solver, run, fid_x, fid_d
                    )
                epochs.append(
                    {
                        "epoch": epoch,
                        "train_loss": float(np.mean(losses)),
                        "test_psnr": test_psnr,
                        "test_ssim": test_ssim,
                        "blurred_test_psnr": data.blurred_psnr,
                        "blurred_test_ssim": data.blurred_ssim,
                        "wall_time_s": wall,
                        "grad_cosine": cosine,
                        "grad_reference_converged": reference_converged,
                    }
                )
        except Diverged as err:
            status, reason = "diverged", str(err)
    lipschitz = math.nan
    if status == "ok":
        model.eval()
        f = model.make_layer(test_d[: run.train.batch_size])
        z, _ = solver(f, model.initial_iterate(test_d[: run.train.batch_size]))
        lipschitz = lipschitz_estimate(f, z)
        model.train()

    return _tables(
        run, device, status, reason, steps, epochs, saved, memory, lipschitz, data, recon, strategy
    )


def _tables(
    run, device, status, reason, steps, epochs, saved, memory, lipschitz, data, recon, strategy
):
    keys = {"run_id": run.run_id, "strategy": strategy.name, "seed": run.seed}
    steps_df = pd.DataFrame([{**keys, **s} for s in steps], columns=results.STEP_COLUMNS)
    epoch_columns = [*results.EPOCH_COLUMNS, "grad_reference_converged"]
    epochs_df = pd.DataFrame([{**keys, **e} for e in epochs], columns=epoch_columns)
    last = epochs[-1] if epochs else {}
    cos = epochs_df["grad_cosine"].dropna()
    med = lambda col: float(steps_df[col].median()) if len(steps_df) else math.nan  # noqa: E731
    row = {
        **_setting_columns(run, device, data),
        **keys,
        "strategy_label": run.strategy,
        "params": json.dumps(strategy.params, sort_keys=True),
        **{f"p_{k}": v for k, v in strategy.params.items()},
        "status": status,
        "status_reason": reason,
        "final_train_loss": last.get("train_loss", math.nan),
        "final_test_psnr": last.get("test_psnr", math.nan),
        "final_test_ssim": last.get("test_ssim", math.nan),
        "blurred_test_psnr": last.get("blurred_test_psnr", math.nan),
        "blurred_test_ssim": last.get("blurred_test_ssim", math.nan),
        "total_wall_time_s": last.get("wall_time_s", float(steps_df["step_time_s"].sum())),
        "median_step_time_s": med("step_time_s"),
        "median_forward_time_s": med("forward_time_s"),
        "median_backward_time_s": med("backward_time_s"),
        "median_optimizer_time_s": med("optimizer_time_s"),
        "saved_bytes": saved,
        "peak_rss_bytes": memory.rss_bytes,
        "peak_gpu_memory_bytes": memory.gpu_bytes if memory.gpu_bytes is not None else math.nan,
        "peak_gpu_device_memory_bytes": memory.gpu_device_bytes or math.nan,
        "mean_forward_iters": float(steps_df["forward_iters"].mean())
        if len(steps_df)
        else math.nan,
        "forward_converged_frac": float(steps_df["forward_converged"].mean())
        if len(steps_df)
        else math.nan,
        "mean_backward_iters": float(steps_df["backward_iters"].mean())
        if len(steps_df)
        else math.nan,
        "grad_cosine_first": float(cos.iloc[0]) if len(cos) else math.nan,
        "grad_cosine_last": float(cos.iloc[-1]) if len(cos) else math.nan,
        "lipschitz_estimate": lipschitz,
    }
    return {
        "runs": pd.DataFrame([row]),
        "epochs": epochs_df,
        "steps": steps_df,
        "recon": None if recon is None else recon[: run.train.n_recon].float().cpu().numpy(),
    }


def _setting_columns(run: RunConfig, device, data: Problem | None) -> dict:
    return {
        "suite": run.suite,
        "dataset": run.data.dataset,
        "image_size": int(data.test_x.shape[-1]) if data else run.data.image_size,
        "channels": int(data.test_x.shape[1]) if data else math.nan,
        "n_train": len(data.train_x) if data else math.nan,
        "n_test": len(data.test_x) if data else math.nan,
        "batch_size": run.train.batch_size,
        "epochs": run.train.epochs,
        "lr": run.train.lr,
        "blur_kernel_size": run.problem.kernel_size,
        "blur_sigma": run.problem.sigma,
        "noise_std": run.problem.noise_std,
        "solver": run.solver.name,
        "solver_max_iter": run.solver.max_iter,
        "solver_tol": run.solver.tol,
        "model_width": run.model.width,
        "model_depth": run.model.depth,
        "device": str(device),
        "device_name": device_name(device),
        "config_hash": run.config_hash,
        **_versions(),
    }


def _save_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    results.atomic_write_bytes(path, buf.getvalue())


def execute(run: RunConfig, out: Path, progress: bool = False) -> str:
    """Train one run and write its part of the tables; a failure is recorded, not raised.

    Returns the run's status. KeyboardInterrupt propagates: the run in progress is simply lost.
    """
    out = Path(out)
    device = resolve_device(run.train.device)
    try:
        tables = train(run, device, progress)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # anything but divergence: record it, keep the sweep going
        part = out / "parts" / run.run_id
        results.atomic_write_bytes(part / "error.log", traceback.format_exc().encode())
        row = {
            **_setting_columns(run, device, None),
            "run_id": run.run_id,
            "strategy": run.strategy.split(":")[0],
            "strategy_label": run.strategy,
            "params": "",
            "seed": run.seed,
            "status": "failed",
            "status_reason": f"{type(err).__name__}: {err}".splitlines()[0][:500],
        }
        tables = {"runs": pd.DataFrame([row]).reindex(columns=results.RUN_COLUMNS)}
    recon = tables.pop("recon", None)
    if recon is not None:
        _save_npz(out / "recons" / f"{run.run_id}.npz", x=recon)
    results.write_run(out, run.run_id, tables)
    return str(tables["runs"]["status"].iloc[0])


def run_baselines(suite: Suite, out: Path) -> None:
    """Fit the suite's classical baselines on each data setting's training set (once, resumable)."""
    from .baselines import fit_all

    if not suite.baselines:
        return
    done = results.completed_runs(out)
    for index, (data_cfg, problem_cfg, train_cfg) in enumerate(suite.data_settings()):
        run = RunConfig(
            suite.name, "baseline", 0, data_cfg, problem_cfg, suite.model, suite.solver, train_cfg
        )
        ids = {name: f"baseline-{name}-{run.config_hash}" for name in suite.baselines}
        if all(i in done for i in ids.values()):
            continue
        data = prepare(data_cfg, problem_cfg)
        op = data.problem.operator
        train_d = data.problem.measure(
            data.train_x, torch.Generator().manual_seed(TEST_NOISE_SEED + 1)
        )
        fitted = fit_all(op, data.train_x, train_d, names=suite.baselines)
        reference = {"original": data.test_x, "blurred": data.test_d.clamp(0, 1)}
        for baseline in fitted:
            xhat = baseline.reconstruct(op, data.test_d)
            reference[f"baseline_{baseline.name}"] = xhat
            row = {
                **_setting_columns(run, torch.device("cpu"), data),
                "run_id": ids[baseline.name],
                "strategy": f"baseline:{baseline.name}",
                "strategy_label": f"baseline:{baseline.name}",
                "params": json.dumps({"lam": baseline.lam}),
                "p_lam": baseline.lam,
                "seed": 0,
                "status": "ok",
                "status_reason": "",
                "final_test_psnr": psnr(xhat, data.test_x).mean().item(),
                "final_test_ssim": ssim(xhat, data.test_x).mean().item(),
                "blurred_test_psnr": data.blurred_psnr,
                "blurred_test_ssim": data.blurred_ssim,
            }
            frame = pd.DataFrame([row]).reindex(columns=[*results.RUN_COLUMNS, "p_lam"])
            results.write_run(out, ids[baseline.name], {"runs": frame})
        if index == 0:  # the report's reconstruction grid uses the first setting's test images
            n = suite.train.n_recon
            _save_npz(
                out / "recons" / "reference.npz",
                **{k: v[:n].float().numpy() for k, v in reference.items()},
            )


def plan(suite: Suite, out: Path, force: bool = False) -> tuple[list[RunConfig], dict[str, int]]:
    """The runs still to do in ``out``, and status counts starting with the skipped ones.

    ok and diverged runs are results and are skipped; a failed run is retried. With ``force``
    everything is redone and the old parts of the runs to redo are removed first.
    """
    import shutil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = suite.runs()
    done = {} if force else results.completed_runs(out)
    todo = [r for r in runs if done.get(r.run_id) not in ("ok", "diverged")]
    if force:
        for run in todo:
            shutil.rmtree(out / "parts" / run.run_id, ignore_errors=True)
    return todo, {"skipped": len(runs) - len(todo), "ok": 0, "diverged": 0, "failed": 0}


def run_suite(
    suite: Suite, out: Path, force: bool = False, progress: bool = True
) -> dict[str, int]:
    """Run (or resume) every run of ``suite`` into ``out``; return counts of statuses."""
    out = Path(out)
    for run in suite.runs():  # fail fast on settings, before any training
        resolve_device(run.train.device)
    todo, counts = plan(suite, out, force)
    run_baselines(suite, out)
    bar = tqdm(todo, desc=f"{suite.name}", unit="run", disable=not progress)
    for run in bar:
        bar.set_postfix_str(run.strategy)
        t0 = time.perf_counter()
        status = execute(run, out, progress=progress)
        counts[status] += 1
        row = results.read_table(out / "parts" / run.run_id / "runs.csv").iloc[0]
        bar.write(
            f"{run.run_id}: {status}"
            + (f" ({row['status_reason']})" if status != "ok" else "")
            + f"  psnr {row['final_test_psnr']:.2f} dB  ssim {row['final_test_ssim']:.3f}"
            f"  step {row['median_step_time_s'] * 1e3:.1f} ms  saved {row['saved_bytes'] / 2**20:.2f} MiB"
            f"  [{time.perf_counter() - t0:.1f} s]"
        )
        results.merge(out)
    results.merge(out)
    return counts
