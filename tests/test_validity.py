"""What a run records about its own validity and cost: the gradient-fidelity reference, the
memory of the training step, skipped updates, evaluations, every info entry, the saved model."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import run_config

import bench.diagnostics as diagnostics
import bench.training as training
from bench.config import RunConfig, SolverConfig
from bench.device import strict_fp32
from bench.execution import execute
from bench.solver import make_solver
from bench.task_data import load_task_data
from bench.training import load_trained_model, train
from strategies import Strategy, register

CPU = torch.device("cpu")
pytestmark = pytest.mark.slow  # every test here trains a real model


def _run(strategy="jfb", **train_kw) -> RunConfig:
    train_cfg = dict(epochs=2, batch_size=8, lr=1e-2, grad_fidelity=True, n_recon=2)
    train_cfg.update(train_kw)
    return run_config(
        strategy,
        0,
        suite="validity",
        data=dict(dataset="faces", image_size=12, n_images=30),
        model=dict(width=4, depth=2, lipschitz=0.9),
        solver=dict(name="anderson", max_iter=100, tol=1e-4),
        train=train_cfg,
    )


@register
class _Reporter(Strategy):
    """JFB that also reports a custom number in ``info`` (for the recording test)."""

    name = "test-reporter"

    def __call__(self, f, z0, solver):
        with torch.no_grad():
            z_star, info = solver(f, z0)
        return f(z_star.detach()), {**info, "custom_metric": 42.0, "note": "text is ignored"}


def test_fidelity_reference_converges_and_records_its_residuals():
    tables = train(_run("jfb"), CPU)
    epochs = tables["epochs"]
    fid = epochs[epochs["grad_reference_converged"].notna()]
    assert len(fid) == 2  # first and last evaluation
    assert (fid["grad_reference_converged"] == 1).all()
    assert (fid["grad_reference_forward_residual"] <= diagnostics.FIDELITY_TOL).all()
    assert (fid["grad_reference_backward_residual"] <= diagnostics.FIDELITY_TOL).all()
    assert ((fid["grad_cosine"] > 0) & (fid["grad_cosine"] <= 1 + 1e-9)).all()
    runs = tables["runs"].iloc[0]
    assert runs["grad_cosine_first"] == fid["grad_cosine"].iloc[0]


def test_unconverged_fidelity_reference_gives_nan_not_a_number(monkeypatch):
    monkeypatch.setattr(diagnostics, "FIDELITY_MAX_ITER", 2)  # the reference cannot converge
    tables = train(_run("jfb"), CPU)
    fid = tables["epochs"].dropna(subset=["grad_reference_converged"])
    assert (fid["grad_reference_converged"] == 0).all()
    assert fid["grad_cosine"].isna().all()
    assert (fid["grad_reference_backward_residual"] > diagnostics.FIDELITY_TOL).any() or (
        fid["grad_reference_forward_residual"] > diagnostics.FIDELITY_TOL
    ).any()
    assert math.isnan(tables["runs"].iloc[0]["grad_cosine_last"])


def test_peak_step_bytes_does_not_depend_on_gradient_fidelity():
    on = train(_run("cg:tol=1e-6:max_iter=50", grad_fidelity=True), CPU)["runs"].iloc[0]
    off = train(_run("cg:tol=1e-6:max_iter=50", grad_fidelity=False), CPU)["runs"].iloc[0]
    assert on["peak_step_bytes"] == off["peak_step_bytes"] > 0
    assert on["final_test_psnr"] == off["final_test_psnr"]  # diagnostics change nothing


def test_peak_step_bytes_grows_with_unrolled_depth_not_with_solver_iterations():
    def peak(strategy, max_iter=100, tol=1e-4):
        run = dataclasses.replace(
            _run(strategy, grad_fidelity=False, epochs=1),
            solver=SolverConfig(name="fixed_point_iter", max_iter=max_iter, tol=tol),
        )
        return train(run, CPU)["runs"].iloc[0]["peak_step_bytes"]

    assert peak("jfb", max_iter=10, tol=1e-12) == peak("jfb", max_iter=60, tol=1e-12)
    assert peak("unrolled:k=8") > peak("unrolled:k=2")


def test_skipped_updates_are_recorded_and_change_nothing():
    # max_iter=1 with a tight tol: no CG solve converges, so every step is skipped
    tables = train(_run("cg:tol=1e-12:max_iter=1:skip_unconverged=true", grad_fidelity=False), CPU)
    steps, runs = tables["steps"], tables["runs"].iloc[0]
    assert (steps["skipped"] == 1).all() and runs["skipped_steps"] == len(steps)
    assert (steps["backward_converged"] == 0).all()
    fresh = training._Setup.build(_run("jfb"), CPU).model  # same seed: the initial weights
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(tables["model"][name], value, rtol=0, atol=0)


def test_every_numeric_info_entry_is_recorded():
    steps = train(_run("test-reporter", grad_fidelity=False), CPU)["steps"]
    assert (steps["custom_metric"] == 42.0).all()
    assert "note" not in steps.columns
    assert (steps["forward_converged"] == 1).all()


def test_evaluations_every_n_steps_and_after_the_last():
    # 24 training images / batch 8 = 3 steps per epoch, 3 epochs = 9 steps
    tables = train(_run("jfb", epochs=3, eval_every=4, grad_fidelity=False), CPU)
    epochs = tables["epochs"]
    assert epochs["step"].tolist() == [4, 8, 9]
    assert epochs["epoch_end"].tolist() == [0.0, 0.0, 1.0]
    assert epochs["train_time_s"].is_monotonic_increasing
    assert (epochs["layer_lipschitz"] < 0.9 + 1e-6).all()  # the certified bound, measured
    assert (epochs["layer_lipschitz_converged"] == 1).all()
    per_epoch = train(_run("jfb", epochs=3, grad_fidelity=False), CPU)["epochs"]
    assert per_epoch["step"].tolist() == [3, 6, 9] and (per_epoch["epoch_end"] == 1).all()


def test_memory_figures_cover_training_steps_only(monkeypatch):
    # a diagnostic that allocates far more than a step must not raise the recorded peaks
    big = []

    def greedy(*args, **kwargs):
        big.append(torch.ones(64 * 2**20 // 8, dtype=torch.float64))  # 64 MiB, kept alive
        return {"layer_lipschitz": 0.5, "layer_lipschitz_converged": 1.0}

    baseline = train(_run("jfb", grad_fidelity=False), CPU)["runs"].iloc[0]
    monkeypatch.setattr(diagnostics, "layer_lipschitz", greedy)
    greedy_run = train(_run("jfb", grad_fidelity=False), CPU)["runs"].iloc[0]
    assert greedy_run["peak_step_bytes"] == baseline["peak_step_bytes"]
    # the RSS peak is sampled inside steps: the first 64 MiB arrive after the first step
    # (its evaluation), so at most the later steps see them, never more than they hold
    assert greedy_run["peak_rss_bytes"] < baseline["peak_rss_bytes"] + 3 * 64 * 2**20


def test_the_trained_model_is_saved_and_rebuilds(tmp_path):
    run = _run("jfb", grad_fidelity=False)
    assert execute(run, tmp_path).status == "ok"
    part = tmp_path / "parts" / run.run_id
    model = load_trained_model(part)
    data = load_task_data(run.data, run.problem)
    solver = make_solver("anderson", max_iter=100, tol=1e-4, m=5, lam=1e-4)
    from strategies import parse_spec

    with torch.no_grad():
        xhat, _ = model(data.test_d.float()[:2], parse_spec("jfb"), solver)
    saved = __import__("numpy").load(tmp_path / "recons" / f"{run.run_id}.npz")["x"]
    torch.testing.assert_close(xhat.clamp(0, 1), torch.from_numpy(saved), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not a finished run"):
        load_trained_model(tmp_path)


def test_the_peak_memory_replay_leaves_training_unchanged(monkeypatch):
    measured = train(_run("cg:tol=1e-6:max_iter=50", grad_fidelity=False), CPU)
    monkeypatch.setattr(
        training, "_peak_step_bytes", lambda *args: {"peak_step_bytes": 0, "certify_peak_bytes": 0}
    )
    plain = train(_run("cg:tol=1e-6:max_iter=50", grad_fidelity=False), CPU)
    assert measured["runs"].iloc[0]["peak_step_bytes"] > 0
    for name, value in plain["model"].items():
        torch.testing.assert_close(measured["model"][name], value, rtol=0, atol=0)
    cols = ["loss", "forward_iters", "backward_iters"]
    assert measured["steps"][cols].equals(plain["steps"][cols])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_float32_gradient_on_cuda_matches_float64_once_tf32_is_off():
    """With cuDNN's default TF32 convolutions, cg's float32 gradient stayed 1.6e-4 from the
    float64 one (H100, tol 1e-7); the harness turns TF32 off so float32 means float32."""
    from bench.model import ReconstructionDEQ
    from bench.solver import FixedPointSolver
    from bench.tasks import GaussianBlur
    from strategies import get_strategy

    device = torch.device("cuda")
    strict_fp32(device)
    torch.manual_seed(0)
    model = ReconstructionDEQ(GaussianBlur(5, 1.0), channels=1, width=8, depth=2)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 24, 24, generator=g, dtype=torch.float64)
    d = model.task.simulate(x, g)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        m = model.to(device=device, dtype=dtype)
        m.zero_grad(set_to_none=True)
        solver = FixedPointSolver(
            "fixed_point_iter", max_iter=2000, tol=1e-7 if dtype == torch.float32 else 1e-12
        )
        z, _ = m(d.to(device, dtype), get_strategy("cg", tol=1e-7, max_iter=500), solver)
        torch.nn.functional.mse_loss(z, x.to(device, dtype)).backward()
        grads[dtype] = torch.cat([p.grad.flatten().double() for p in m.parameters()])
    err = (grads[torch.float32] - grads[torch.float64]).norm() / grads[torch.float64].norm()
    assert err < 2e-5, f"float32 gradient error {err:.2e}"
