"""The built-in suites at the reference work's size (issue 16): their settings are the reference
setting's, and the CelebA one runs end to end on a fabricated CelebA folder."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.config import load_suite
from bench.diagnostics import gradient_cosine
from bench.measure import StepClock
from bench.model import build_model
from bench.solver import solver_from_config
from bench.task_data import load_task_data
from bench.training import fidelity_images
from bench.training_step import train_step
from strategies import parse_spec

# The reference work (named in the README; ../shared/REFERENCES.md): 128x128 RGB, 5x5 Gaussian blur,
# noise 0.01, a 17-layer DnCNN of width 64, Anderson (m = 5, tol 1e-3, max 50 iterations), its
# four strategies (jfb, an exact implicit gradient, Neumann, unrolled); gmres added (issue 16).
REFERENCE_STRATEGIES = {"jfb", "cg", "neumann", "unrolled", "gmres"}


@pytest.mark.parametrize("name", ["reference", "celeba"])
def test_reference_size_suites_hold_the_reference_setting(name):
    suite = load_suite(name)
    runs = suite.runs()
    assert {r.strategy.split(":")[0] for r in runs} == REFERENCE_STRATEGIES
    assert len({r.seed for r in runs}) >= 3
    run = runs[0]
    side = run.data.image_size if run.data.dataset == "celeba" else run.data.patch_size
    assert (side, run.data.channels) == (128, 3)
    assert (run.problem.task, run.problem.kernel_size, run.problem.sigma) == ("blur", 5, 1.0)
    assert run.problem.noise_std == 0.01
    assert (run.model.width, run.model.depth) == (64, 17)
    assert run.model.lipschitz_control == "operator"  # certified
    assert (run.solver.name, run.solver.m, run.solver.tol, run.solver.max_iter) == (
        "anderson", 5, 1e-3, 50,
    )  # fmt: skip


def test_midsize_preset_has_the_reference_shape_at_a_cpu_size():
    run = load_suite("midsize").runs()[0]
    assert (run.data.dataset, run.data.patch_size, run.data.channels) == ("patches", 64, 3)
    assert 5 <= run.model.depth <= 9 and 32 <= run.model.width <= 64
    assert run.model.lipschitz_control == "operator" and run.solver.name == "anderson"


def _fake_celeba(root, n: int = 10) -> None:
    """``n`` aligned-CelebA-shaped JPEGs (178 x 218) with an official partition file."""
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        pixels = rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)
    parts = ["0"] * (n - 4) + ["1", "1", "2", "2"]
    lines = [f"{i:06d}.jpg {p}" for i, p in enumerate(parts, start=1)]
    (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_celeba_suite_runs_a_few_steps_on_a_fabricated_celeba_folder(tmp_path):
    # the suite's own settings (certified operator control, MaxMin, prox, Anderson, blur) on a
    # CelebA folder; only sizes are shrunk so that it runs in seconds
    _fake_celeba(tmp_path / "data")
    out = tmp_path / "out"
    shrink = [
        "data.image_size=16", "data.n_images=8", "model.width=4", "model.depth=3",
        "train.epochs=1", "train.batch_size=3", "train.eval_every=2",
    ]  # fmt: skip
    argv = ["run", "celeba", "--data-root", str(tmp_path / "data"), "--out", str(out),
            "--strategies", "jfb", "--seeds", "1", "--quiet"]  # fmt: skip
    for item in shrink:
        argv += ["--set", item]
    assert main(argv) == 0
    runs = pd.read_csv(out / "runs.csv")
    learned = runs[runs["strategy"] == "jfb"].iloc[0]
    assert learned["status"] == "ok"
    assert (learned["dataset"], learned["image_size"], learned["channels"]) == ("celeba", 16, 3)
    assert learned["n_train"] == 6 and learned["n_test"] == 2  # the official partition
    assert (learned["lipschitz_control"], learned["model_activation"]) == ("operator", "maxmin")
    assert learned["certified_lipschitz_bound"] == 0.97
    steps = pd.read_csv(out / "steps.csv")
    assert len(steps) == 2 and (steps["certify_time_s"] > 0).all()


def test_the_diagnostics_batch_shrinks_with_the_image_to_a_fixed_budget():
    assert fidelity_images((1, 25, 25), 16, 80) == 8  # the quick suite: unchanged
    assert fidelity_images((3, 64, 64), 8, 226) == 1  # the midsize preset
    assert fidelity_images((3, 128, 128), 8, 51) == 1  # at least one image
    assert fidelity_images((1, 12, 12), 4, 40) == 4  # never more than a training batch
    assert fidelity_images((1, 12, 12), 16, 3) == 3  # nor than the training set


@pytest.mark.slow
def test_the_kept_subset_measures_the_same_gradient_fidelity():
    # the gradient fidelity of a batch is the agreement of per-image gradients summed: an exact
    # strategy agrees with the float64 reference on one image as on eight, and jfb's cosine on
    # the first image is close to its cosine on all eight of a trained layer
    run = load_suite("quick").runs()[0]
    data = load_task_data(run.data, run.problem)
    x = data.train_x[:8].float()
    d = data.task.simulate(x, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = build_model(run.model, data.task, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.train.lr)
    solver, jfb = solver_from_config(run.solver), parse_spec("jfb")
    for i in range(20):
        xi = data.train_x[8 * i % 72 : 8 * i % 72 + 8].float()
        di = data.task.simulate(xi, torch.Generator().manual_seed(i))
        train_step(model, jfb, solver, optimizer, xi, di, StepClock(torch.device("cpu")))
    exact = parse_spec("gmres:tol=1e-7:max_iter=200")
    for strategy, tolerance in [(exact, 5e-3), (jfb, 0.05)]:  # float32 gradients
        full = gradient_cosine(model, strategy, solver, x, d)["grad_cosine"]
        one = gradient_cosine(model, strategy, solver, x[:1], d[:1])["grad_cosine"]
        assert abs(full - one) <= tolerance
    assert gradient_cosine(model, exact, solver, x[:1], d[:1])["grad_cosine"] > 0.99
