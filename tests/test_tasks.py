"""The tasks (bench/tasks): every registered operator checked against its dense matrix —
adjointness, the exact normal solve, the norm bound — plus the blur's and the mask's own
properties, measurements, and the registry."""

import dataclasses

import pytest
import torch

from bench.config import ProblemConfig
from bench.tasks import TASKS, BlurTask, GaussianBlur, InpaintTask, make_task
from bench.tasks.blur import gaussian_kernel

F64 = torch.float64


def _inner(a, b):
    return (a * b).sum().item()


def _configs():
    """One non-default configuration of every registered task (so a new task is covered)."""
    extra = {
        "blur": {"kernel_size": 7, "sigma": 1.5},
        "inpaint": {"mask_keep_fraction": 0.3},
        "superres": {"factor": 3},
    }
    return [ProblemConfig(task=name, **extra.get(name, {})) for name in TASKS]


def _accepted(task, sizes):
    """The (h, w) of ``sizes`` the task takes; at least one of them, and a non-square one."""
    ok = []
    for h, w in sizes:
        try:
            task.check_image_size(h, w)
        except ValueError:
            continue
        ok.append((h, w))
    assert any(h != w for h, w in ok), f"{task!r} takes none of the non-square sizes {sizes}"
    return ok


# sides that every built-in configuration above takes (superres: multiples of 3), and others
SIZES = [(9, 9), (6, 12), (9, 15), (24, 24), (8, 13), (7, 9)]


def _dense(op, c: int, h: int, w: int, fn: str = "A") -> torch.Tensor:
    """The M x N matrix of ``op.<fn>`` on (c, h, w) inputs (N = c h w), column j = fn(e_j):
    rectangular where the output has another shape (A of super-resolution: M < N). For
    ``A_adjoint`` the inputs are measurements, of the shape A gives (c, h, w) images."""
    if fn == "A_adjoint":
        c, h, w = op.A(torch.zeros(1, c, h, w, dtype=F64)).shape[1:]
    n = c * h * w
    basis = torch.eye(n, dtype=F64).reshape(n, c, h, w)
    return getattr(op, fn)(basis).reshape(n, -1).T


TASK_IDS = [c.task for c in _configs()]


@pytest.mark.parametrize("config", _configs(), ids=TASK_IDS)
def test_every_task_has_an_exact_adjoint(config):
    task = make_task(config)
    g = torch.Generator().manual_seed(1)
    for (h, w), b, c in zip(_accepted(task, SIZES), (2, 3, 1, 2), (1, 3, 2, 1), strict=False):
        x = torch.randn(b, c, h, w, generator=g, dtype=F64)
        y = torch.randn(task.A(x).shape, generator=g, dtype=F64)
        lhs, rhs = _inner(task.A(x), y), _inner(x, task.A_adjoint(y))
        assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))
        assert task.A_adjoint(y).shape == x.shape
        # and A^T is the transpose of A's dense matrix; AtA is A^T A (N x N)
        a, at = _dense(task, c, h, w), _dense(task, c, h, w, "A_adjoint")
        torch.testing.assert_close(at, a.T, rtol=0, atol=1e-12)
        torch.testing.assert_close(_dense(task, c, h, w, "AtA"), a.T @ a, rtol=0, atol=1e-12)


@pytest.mark.parametrize("config", _configs(), ids=TASK_IDS)
def test_every_task_norm_bound_bounds_the_dense_operator(config):
    task = make_task(config)
    largest = 0.0
    for h, w in _accepted(task, SIZES):
        sigma_max = torch.linalg.matrix_norm(_dense(task, 1, h, w), 2).item()
        assert sigma_max <= task.norm_bound * (1 + 1e-12)
        largest = max(largest, sigma_max)
    # a bound, but not a loose one (zero padding only lowers ||A|| near the border)
    assert task.norm_bound <= 1.05 * largest


@pytest.mark.parametrize("config", _configs(), ids=TASK_IDS)
@pytest.mark.parametrize("lam", [0.03, torch.tensor([0.5, 1e-3]).view(2, 1, 1, 1)])
def test_every_task_normal_solve_matches_a_dense_solve(config, lam):
    """Where a task has an exact normal solve (optional: the prox-form layer needs it, the
    baselines fall back to conjugate gradients), it is (A^T A + lam I)^-1 on every size."""
    task = make_task(config)
    if not task.has_normal_solve:
        with pytest.raises(ValueError, match="normal_solve"):
            task.normal_solve(torch.zeros(1, 1, 6, 12, dtype=F64), 0.1)
        return
    for h, w in _accepted(task, SIZES)[:3]:
        y = torch.rand(2, 3, h, w, dtype=F64, generator=torch.Generator().manual_seed(0))
        a = _dense(task, 3, h, w)
        lams = torch.as_tensor(lam, dtype=F64).reshape(-1).expand(2)
        eye = torch.eye(a.shape[1], dtype=F64)
        dense = torch.stack(
            [torch.linalg.solve(a.T @ a + lams[i] * eye, y[i].flatten()) for i in range(2)]
        )
        got = task.normal_solve(y, lam.to(F64) if torch.is_tensor(lam) else lam)
        torch.testing.assert_close(got, dense.reshape(y.shape), atol=1e-10, rtol=0)


def test_the_built_in_tasks_have_an_exact_normal_solve():
    for config in _configs():
        assert make_task(config).has_normal_solve, config.task


@pytest.mark.parametrize("config", _configs(), ids=TASK_IDS)
def test_every_task_declares_its_settings_and_a_naive_image(config):
    """Each declared setting is a ProblemConfig field with the Param's default, and a column
    of runs.csv; the naive reconstruction is an image in [0, 1] of the images' shape."""
    task = make_task(config)
    cls = type(task)
    assert cls.naive_label and cls.naive_label != "naive reconstruction"
    defaults = {f.name: f.default for f in dataclasses.fields(ProblemConfig)}
    for key, param in cls.settings.items():
        assert defaults[key] == param.default and param.check(getattr(config, key)) is not None
    assert set(task.setting_columns()) == {cls.column(k) for k in cls.settings}
    h, w = _accepted(task, SIZES)[-1]
    x = torch.rand(2, 1, h, w, dtype=F64, generator=torch.Generator().manual_seed(2))
    naive = task.naive(task.simulate(x, torch.Generator().manual_seed(3)))
    assert naive.shape == x.shape and 0 <= naive.min() and naive.max() <= 1


@pytest.mark.parametrize("config", _configs(), ids=TASK_IDS)
def test_measurements_are_seeded_and_noisy_at_the_requested_level(config):
    task = make_task(dataclasses.replace(config, noise_std=0.02))
    x = torch.rand(4, 1, 72, 72, generator=torch.Generator().manual_seed(5))
    d1 = task.simulate(x, torch.Generator().manual_seed(7))
    d2 = task.simulate(x, torch.Generator().manual_seed(7))
    torch.testing.assert_close(d1, d2, rtol=0, atol=0)
    residual = d1 - task.A(x)
    assert 0.019 < residual.std().item() < 0.021
    assert make_task(dataclasses.replace(config, noise_std=0.0)).simulate(x).equal(task.A(x))


def test_the_mask_keeps_the_requested_fraction_of_pixels_seeded_and_shared_by_channels():
    task = InpaintTask(keep_fraction=0.3, seed=4)
    x = torch.rand(2, 3, 20, 10, dtype=F64)
    m = task.mask(x)
    assert m.shape == (1, 1, 20, 10) and set(m.unique().tolist()) == {0.0, 1.0}
    assert int(m.sum()) == 60  # round(0.3 * 200)
    assert torch.equal(task.A(x), x * m)  # every channel and image masked alike
    assert torch.equal(InpaintTask(0.3, seed=4).mask(x), m)  # the seed alone fixes it
    assert not torch.equal(InpaintTask(0.3, seed=5).mask(x), m)
    assert torch.equal(InpaintTask(0.3, seed=4).mask(x.float()), m.float())  # any dtype
    # the naive reconstruction is the zero-filled masked image
    d = task.simulate(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(task.naive(d), (d * m).clamp(0, 1), rtol=0, atol=0)


def test_gaussian_kernel_is_normalised_and_symmetric():
    k = gaussian_kernel(5, 1.0)
    assert k.shape == (5, 5) and abs(k.sum().item() - 1) < 1e-12 and (k > 0).all()
    assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))


def test_blur_adjoint_holds_for_an_asymmetric_kernel():
    task = BlurTask(torch.rand(3, 5, generator=torch.Generator().manual_seed(0)))
    a, at = _dense(task, 1, 6, 7), _dense(task, 1, 6, 7, "A_adjoint")
    torch.testing.assert_close(at, a.T, rtol=0, atol=1e-12)
    assert not task.has_normal_solve  # not separable: the prox layer must refuse it
    with pytest.raises(ValueError, match="separable"):
        task.normal_solve(torch.zeros(1, 1, 6, 7, dtype=F64), 0.1)


def test_blur_preserves_constant_interior_and_smooths():
    op = GaussianBlur(5, 1.0)
    x = torch.ones(1, 1, 12, 12)
    torch.testing.assert_close(op.A(x)[..., 2:-2, 2:-2], x[..., 2:-2, 2:-2])
    noise = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    assert op.A(noise).std() < 0.5 * noise.std()


def test_setting_columns_name_each_task_parameters():
    assert make_task(ProblemConfig(kernel_size=7, sigma=2.0)).setting_columns() == {
        "blur_kernel_size": 7,
        "blur_sigma": 2.0,
    }
    inpaint = make_task(ProblemConfig(task="inpaint", mask_keep_fraction=0.4, mask_seed=3))
    assert inpaint.setting_columns() == {"mask_keep_fraction": 0.4, "mask_seed": 3}
    assert isinstance(inpaint, InpaintTask) and inpaint.naive_label == "masked input"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: gaussian_kernel(4, 1.0), "odd"),
        (lambda: gaussian_kernel(0, 1.0), "kernel_size"),
        (lambda: gaussian_kernel(5, 0.0), "sigma"),
        (lambda: gaussian_kernel(5, float("nan")), "sigma"),
        (lambda: GaussianBlur(noise_std=-1), "noise_std"),
        (lambda: GaussianBlur().A(torch.zeros(3, 8, 8)), r"\(B, C, H, W\)"),
        (lambda: InpaintTask(keep_fraction=0.0), "keep_fraction"),
        (lambda: InpaintTask(keep_fraction=1.5), "keep_fraction"),
        (lambda: InpaintTask(seed=-1), "seed"),
        # round(1e-9 * 625) = 0: no pixel measured (issue 20, item 10)
        (
            lambda: InpaintTask(keep_fraction=1e-9).A(torch.zeros(1, 1, 25, 25)),
            r"keeps 0 of the 625 pixels of a 25x25 image.*>= 0.0016",
        ),
        (lambda: InpaintTask().A(torch.zeros(8, 8)), r"\(B, C, H, W\)"),
        (
            lambda: TASKS.get("denoise"),
            r"unknown task 'denoise'; accepted: blur, inpaint, superres",
        ),
        (lambda: ProblemConfig(task="denoise"), "denoise"),
        # a key of another task would be silently ignored
        (lambda: ProblemConfig(task="inpaint", sigma=2.0), "sigma is a setting of task 'blur'"),
        (lambda: ProblemConfig(mask_keep_fraction=0.2), "mask_keep_fraction .* 'inpaint'"),
    ],
)
def test_bad_input_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_blur_suites_keep_their_run_ids_the_task_keys_being_at_their_defaults():
    from bench.config import load_suite

    for run in load_suite("quick").runs():
        problem = run.identity().get("problem", {})
        assert not {"task", "mask_keep_fraction", "mask_seed"} & set(problem), problem
    inpaint = load_suite("inpaint").runs()[0]
    assert inpaint.problem.task == "inpaint"
    assert inpaint.identity()["problem"]["task"] == "inpaint"


def test_a_part_written_before_the_task_plug_in_is_read_under_the_new_names(tmp_path):
    """An old blur run (blurred_test_*, no task column) stays a complete run, not a broken part."""
    import pandas as pd

    from bench import results

    renamed = {"naive_test_psnr": "blurred_test_psnr", "naive_test_ssim": "blurred_test_ssim"}
    row = {renamed.get(c, c): 1.0 for c in results.RUN_COLUMNS if c != "task"}
    row |= {"run_id": "old-s0-abc", "status": "ok", "config_hash": "abc", "blur_kernel_size": 5}
    part = tmp_path / "parts" / "old-s0-abc"
    part.mkdir(parents=True)
    pd.DataFrame([row]).to_csv(part / "runs.csv", index=False)
    runs = results.read_part(part)["runs"]
    assert runs.loc[0, "naive_test_psnr"] == 1.0 and "blurred_test_psnr" not in runs
    assert runs.loc[0, "task"] == "blur"
    assert results.completed_runs(tmp_path) == {"old-s0-abc": "ok"}
