"""PSNR/SSIM: agreement with scikit-image's reference implementation, per-image averaging, and
the metric registry (a registered metric reaches the tables and the report)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import MINI, markdown_tables
from scipy import ndimage
from skimage import data, metrics

from bench.metrics import METRICS, mean_metrics, psnr, register_metric, ssim


def _degrade(img: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """Noisy and/or blurred copy of a [0, 1] image (H, W) or (H, W, C), clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    sigma = (1.0, 1.0, 0.0) if img.ndim == 3 else 1.0  # blur space, not channels
    if kind == "noise":
        return np.clip(img + rng.normal(0.0, 0.05, img.shape), 0.0, 1.0)
    if kind == "blur":
        return ndimage.gaussian_filter(img, sigma)
    return np.clip(ndimage.gaussian_filter(img, sigma) + rng.normal(0.0, 0.02, img.shape), 0.0, 1.0)


def _pairs(group: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(clean, degraded) pairs of real images, float64 in [0, 1]."""
    if group == "faces25":
        clean = list(data.lfw_subset()[:8])
    elif group == "camera64":
        cam = data.camera() / 255.0
        clean = [cam[y : y + 64, x : x + 64] for y, x in [(64, 64), (192, 256), (320, 128)]]
    elif group == "astronaut64rgb":
        ast = data.astronaut() / 255.0
        clean = [ast[y : y + 64, x : x + 64] for y, x in [(100, 200), (300, 300)]]
    else:  # camera128
        cam = data.camera() / 255.0
        clean = [cam[y : y + 128, x : x + 128] for y, x in [(0, 0), (200, 300)]]
    return [
        (img, _degrade(img, kind, seed))
        for seed, img in enumerate(clean)
        for kind in ("noise", "blur", "both")
    ]


def _to_batch(img: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(img))
    return t.permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None]


def _stack(pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """(degraded, clean) batches of a group of same-sized pairs."""
    return (
        torch.cat([_to_batch(noisy) for _, noisy in pairs]),
        torch.cat([_to_batch(clean) for clean, _ in pairs]),
    )


def _channel_axis(img: np.ndarray) -> int | None:
    return 2 if img.ndim == 3 else None


def _skimage_ssim(clean: np.ndarray, noisy: np.ndarray, **kw) -> float:
    return metrics.structural_similarity(
        clean,
        noisy,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=_channel_axis(clean),
        **kw,
    )


def _ssim_map_mirror(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSIM map (Wang et al. 2004) with an 11x11 Gaussian (sigma 1.5) window and whole-sample
    mirror padding ('d c b | a b c d', torch's "reflect"), written independently of torchmetrics.
    """
    c1, c2 = 0.01**2, 0.03**2
    sigma = (1.5, 1.5, 0.0) if x.ndim == 3 else 1.5

    def blur(a):
        return ndimage.gaussian_filter(a, sigma, truncate=3.5, mode="mirror")

    mx, my = blur(x), blur(y)
    vx = np.maximum(blur(x * x) - mx * mx, 0.0)
    vy = np.maximum(blur(y * y) - my * my, 0.0)
    cxy = blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


GROUPS = ["faces25", "camera64", "astronaut64rgb", "camera128"]


def _scored(group: str, metric) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """(value, clean, degraded) for each pair of ``group``, ``metric`` computed on the whole group
    in one batch (checked to give one value per image)."""
    pairs = _pairs(group)
    got = metric(*_stack(pairs))
    assert got.shape == (len(pairs),)
    return [
        (value, clean, noisy) for value, (clean, noisy) in zip(got.tolist(), pairs, strict=True)
    ]


@pytest.mark.parametrize("group", GROUPS)
def test_psnr_matches_skimage(group):
    for value, clean, noisy in _scored(group, psnr):
        expected = metrics.peak_signal_noise_ratio(clean, noisy, data_range=1.0)
        # torchmetrics converts ln -> log10 with a float32 constant: ~1e-7 relative error
        assert value == pytest.approx(expected, rel=1e-6, abs=0)


@pytest.mark.parametrize("group", GROUPS)
def test_ssim_is_the_interior_mean_of_an_independent_ssim_map(group):
    for value, clean, noisy in _scored(group, ssim):
        ref_map = _ssim_map_mirror(noisy, clean)
        # The interior of this independent map is exactly scikit-image's SSIM (5-pixel border
        # dropped), which validates the reference itself ...
        assert ref_map[5:-5, 5:-5].mean() == pytest.approx(_skimage_ssim(clean, noisy), abs=1e-10)
        # ... and bench.metrics.ssim averages that same interior, not the padded border.
        assert value == pytest.approx(ref_map[5:-5, 5:-5].mean(), abs=1e-10)


# The bar is 1e-3 per image against scikit-image; float32 inputs (as in training) measured up to
# 1.9e-4 (camera64: float32 accumulation in the window sums), float64 ~1e-15. A border effect
# (torchmetrics' own whole-map mean) was 0.015-0.14 on these groups.


@pytest.mark.parametrize("group", GROUPS)
def test_ssim_close_to_skimage(group):
    pairs = _pairs(group)
    x, y = _stack(pairs)
    expected = [_skimage_ssim(clean, noisy) for clean, noisy in pairs]
    for dtype, tol in ((torch.float32, 1e-3), (torch.float64, 1e-10)):
        got = ssim(x.to(dtype), y.to(dtype)).tolist()
        assert max(abs(v - e) for v, e in zip(got, expected, strict=True)) < tol


def test_values_are_per_image_and_independent_of_the_batch():
    pairs = _pairs("camera64")
    x, y = _stack(pairs)
    p, s = psnr(x, y), ssim(x, y)
    assert p.shape == s.shape == (len(pairs),)
    for i, (clean, noisy) in enumerate(pairs):
        assert p[i].item() == pytest.approx(metrics.peak_signal_noise_ratio(clean, noisy), rel=1e-6)
        assert s[i].item() == pytest.approx(ssim(x[i : i + 1], y[i : i + 1]).item(), abs=1e-12)


def test_batch_psnr_is_the_mean_of_per_image_psnr_not_a_pooled_mse():
    y = torch.full((2, 1, 16, 16), 0.5, dtype=torch.float64)
    x = y.clone()
    x[0] += 0.001  # MSE 1e-6 -> 60 dB
    x[1] += 0.1  # MSE 1e-2 -> 20 dB
    means = mean_metrics(x, y)
    mean_psnr, mean_ssim = means["psnr"], means["ssim"]
    assert mean_psnr == pytest.approx(40.0, abs=1e-4)
    pooled = 10 * math.log10(1 / ((1e-6 + 1e-2) / 2))  # ~23 dB: what a pooled MSE would give
    assert abs(mean_psnr - pooled) > 10
    assert mean_ssim == pytest.approx(ssim(x, y).mean().item(), abs=1e-12)


def test_inputs_are_not_clamped():
    y = torch.ones(1, 1, 16, 16)
    x = torch.full((1, 1, 16, 16), 1.1)  # out of range: MSE 0.01 -> 20 dB, not inf after a clamp
    assert psnr(x, y).item() == pytest.approx(20.0, abs=1e-4)
    assert ssim(x, y).item() < 1.0


def test_identical_images():
    x = _to_batch(_pairs("faces25")[0][0])
    assert psnr(x, x).item() == math.inf
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)


def test_float32_inputs_give_float64_results_close_to_float64_inputs():
    x, y = _stack(_pairs("faces25"))
    p32, s32 = psnr(x.float(), y.float()), ssim(x.float(), y.float())
    assert p32.dtype == s32.dtype == torch.float64
    # only the rounding of the inputs to float32 and float32 arithmetic in SSIM differ
    torch.testing.assert_close(p32, psnr(x, y), rtol=1e-5, atol=0)
    torch.testing.assert_close(s32, ssim(x, y), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fn", [psnr, ssim, mean_metrics])
def test_bad_inputs_raise(fn):
    with pytest.raises(ValueError, match="shape"):
        fn(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 15))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        fn(torch.rand(1, 16, 16), torch.rand(1, 16, 16))
    with pytest.raises(ValueError, match="floating"):
        fn(
            torch.zeros(1, 1, 16, 16, dtype=torch.uint8),
            torch.zeros(1, 1, 16, 16, dtype=torch.uint8),
        )


def test_ssim_rejects_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.rand(1, 1, 10, 32), torch.rand(1, 1, 10, 32))
    assert ssim(torch.rand(1, 1, 11, 11), torch.rand(1, 1, 11, 11)).shape == (1,)


def test_the_registry_names_each_metric_with_its_direction_and_refuses_unknown_names():
    assert METRICS.get("psnr").fn is psnr and METRICS.get("ssim").fn is ssim
    assert METRICS.get("psnr").higher_is_better and METRICS.get("ssim").higher_is_better
    with pytest.raises(ValueError, match=r"unknown metric 'lpips'; accepted: psnr, ssim"):
        METRICS.get("lpips")
    with pytest.raises(ValueError, match="taken"):  # a second plug-in cannot replace psnr
        register_metric("psnr", "other")(lambda x, y: x.flatten(1).mean(1))


@pytest.mark.slow
def test_a_registered_metric_runs_through_the_pipeline_into_the_report(tmp_path, monkeypatch):
    """One registry entry: the runner records it per evaluation and per run (even registered
    after bench.results fixed its column lists), and the report can rank by it."""
    from bench.config import load_suite
    from bench.metrics import Metric
    from bench.report import build_report
    from bench.sweep import run_suite
    from bench.task_data import load_task_data

    def mae(x, y):
        return (x.double() - y.double()).abs().flatten(1).mean(1)

    monkeypatch.setitem(METRICS._entries, "mae", Metric("mae", mae, "MAE", False, "", 4))
    load_task_data.cache_clear()  # data loaded by an earlier test was scored without mae
    suite_file = tmp_path / "mini.toml"
    suite_file.write_text(MINI.replace("seeds = 3", "seeds = 2"))
    out = tmp_path / "res"
    assert run_suite(load_suite(suite_file), out, progress=False)["ok"] == 2
    runs, epochs = pd.read_csv(out / "runs.csv"), pd.read_csv(out / "epochs.csv")
    for frame, columns in ((runs, ["final_test_mae", "naive_test_mae"]), (epochs, ["test_mae"])):
        values = frame[columns].to_numpy()
        assert np.isfinite(values).all() and ((0 < values) & (values < 1)).all()
    markdown = (build_report(out, tmp_path / "rep", metric="mae").parent / "report.md").read_text()
    assert "Target MAE: **" in markdown
    # a fresh folder is of the current schema even when no strategy solves in backward (jfb only)
    assert "Older results folder" not in markdown and "written before" not in markdown
    quality = next(t for t in markdown_tables(markdown) if "MAE" in t[0] and "runs" in t[0])
    cells = {row[0]: row[quality[0].index("MAE")] for row in quality[1:]}
    assert cells["jfb"] == f"{runs['final_test_mae'].mean():.4f} ± " + cells["jfb"].split("± ")[1]


def test_mean_metrics_scores_a_large_set_in_bounded_chunks_equal_to_the_reference(monkeypatch):
    """A whole set is scored a few images at a time (issue 20: one SSIM call over 20 test images
    of 1024x1024 RGB asked for 10 GB), with the means of the per-image reference values."""
    import bench.metrics as bm

    pairs = _pairs("faces25")  # 24 pairs of 25x25 images
    noisy, clean = _stack(pairs)
    calls = []

    def counted(fn):
        def wrapper(x, y, **kw):
            calls.append((fn.__name__, len(x)))
            return fn(x, y, **kw)

        return wrapper

    for name in ("peak_signal_noise_ratio", "structural_similarity_index_measure"):
        monkeypatch.setattr(bm, name, counted(getattr(bm, name)))
    values = mean_metrics(noisy, clean, chunk_values=5 * 25 * 25)
    assert calls and max(n for _, n in calls) == 5  # never the whole set of 24
    assert sum(n for fn, n in calls if fn == "peak_signal_noise_ratio") == len(pairs)
    expected_psnr = np.mean(
        [metrics.peak_signal_noise_ratio(c, n, data_range=1.0) for c, n in pairs]
    )
    expected_ssim = np.mean([_skimage_ssim(c, n) for c, n in pairs])
    # torchmetrics' float32 ln -> log10 constant: ~1e-7 relative (as in test_psnr_matches_skimage)
    assert values["psnr"] == pytest.approx(expected_psnr, rel=1e-6, abs=0)
    assert values["ssim"] == pytest.approx(expected_ssim, abs=1e-6)
    with pytest.raises(ValueError, match="chunk_values"):
        mean_metrics(noisy, clean, chunk_values=0)
