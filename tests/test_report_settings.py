"""The report on results folders of the newer schema: several settings, statistics over seeds,
equal-time comparison, validity flags, peak step memory, and schema checks on foreign tables.

Every folder is fabricated; expected numbers are computed here, independently of bench.report
(scipy.stats' paired / one-sample t tests, or by hand).
"""

from __future__ import annotations

import colorsys
import json
import re
from pathlib import Path

import matplotlib.colors
import numpy as np
import pandas as pd
import pytest
from helpers import cli_in_process, markdown_tables
from scipy import stats

from bench.report import build_report, model, prepare
from bench.report import figures as plots
from bench.results import EPOCH_COLUMNS, RUN_COLUMNS, STEP_COLUMNS

MIB = 2**20
SETTING = dict(
    dataset="faces", image_size=25, channels=1, n_train=80, n_test=20, batch_size=16, epochs=2,
    lr=5e-3, blur_kernel_size=5, blur_sigma=1.0, noise_std=0.01, solver="anderson",
    solver_max_iter=50, solver_tol=1e-3, model_width=16, model_depth=3, model_form="prox",
    lipschitz_control="operator",
)  # fmt: skip
NEW_RUN_COLUMNS = {
    "setting_hash": np.nan, "model_form": np.nan, "lipschitz_control": np.nan,
    "max_layer_lipschitz": 0.8, "backward_converged_frac": np.nan, "skipped_steps": 0,
    "peak_step_bytes": 2 * MIB, "eval_time_s": 1.0, "diagnostics_time_s": 1.0,
    "run_wall_time_s": 10.0,
}  # fmt: skip
NEW_EPOCH_COLUMNS = (
    "step", "epoch_end", "layer_lipschitz", "layer_lipschitz_converged",
    "grad_reference_converged", "grad_reference_forward_residual",
    "grad_reference_backward_residual",
)  # fmt: skip


def _hash(setting: dict) -> str:
    return "h" + str(abs(hash(json.dumps(setting, sort_keys=True))) % 10**10)


def _params(label: str) -> dict:
    """The parameters a label names: ``unrolled:k=20`` -> ``{"k": 20}``."""
    pairs = (pair.split("=") for pair in label.split(":")[1:])
    return {key: int(value) if value.isdigit() else float(value) for key, value in pairs}


class Folder:
    """Builds runs/epochs/steps tables of the newer schema, then writes them."""

    def __init__(self):
        self.runs, self.epochs, self.steps = [], [], []

    def learned(self, label, seed, psnr, wall, setting=None, ssim=None, evaluations=None, **run):
        """One ok run; ``evaluations``: [(epoch, step, epoch_end, train_time_s, psnr)], by default
        two epochs with two evaluations each, ending at (wall, psnr)."""
        setting = {**SETTING, **(setting or {})}
        strategy = label.split(":")[0]
        run_id = f"{label.replace(':', '_').replace('=', '')}-s{seed}-{_hash(setting)}"
        ssim = 0.7 + psnr / 1000 if ssim is None else ssim
        if evaluations is None:
            evaluations = [
                (1, 2, 0.0, wall / 4, psnr - 3), (1, 4, 1.0, wall / 2, psnr - 2),
                (2, 6, 0.0, 3 * wall / 4, psnr - 1), (2, 8, 1.0, wall, psnr),
            ]  # fmt: skip
        row = dict.fromkeys(RUN_COLUMNS, np.nan) | NEW_RUN_COLUMNS | setting
        row.update(
            run_id=run_id, suite="fab", strategy=strategy, strategy_label=label,
            params=json.dumps(_params(label)),
            seed=seed, status="ok", status_reason="", device="cpu", config_hash="c" + run_id,
            setting_hash=_hash(setting), final_test_psnr=psnr, final_test_ssim=ssim,
            train_time_s=wall, forward_converged_frac=1.0, mean_forward_iters=10,
            saved_bytes=MIB, peak_rss_bytes=500 * MIB, naive_test_psnr=20.0,
            naive_test_ssim=0.5, grad_cosine_first=0.99, grad_cosine_last=0.98,
            lipschitz_estimate=0.8,
        )  # fmt: skip
        row.update({f"p_{key}": value for key, value in _params(label).items()})
        row.update(run)
        self.runs.append(row)
        for epoch, step, end, time, value in evaluations:
            self.epochs.append(
                dict.fromkeys(EPOCH_COLUMNS, np.nan)
                | dict.fromkeys(NEW_EPOCH_COLUMNS, np.nan)
                | dict(
                    run_id=run_id, strategy=strategy, seed=seed, epoch=epoch, step=step,
                    epoch_end=end, train_loss=1.0 / step, test_psnr=value,
                    test_ssim=ssim, train_time_s=time, layer_lipschitz=0.8,
                    layer_lipschitz_converged=1.0,
                )
            )  # fmt: skip
        self.steps.append(
            dict.fromkeys(STEP_COLUMNS, np.nan)
            | dict(run_id=run_id, strategy=strategy, seed=seed, epoch=1, step=0,
                   step_time_s=0.01, forward_time_s=0.005, backward_time_s=0.004,
                   optimizer_time_s=0.001, forward_iters=10, forward_converged=1.0)
        )  # fmt: skip
        return run_id

    def baseline(self, name, psnr, setting=None, ssim=0.8):
        setting = {**SETTING, **(setting or {})}
        row = dict.fromkeys(RUN_COLUMNS, np.nan) | NEW_RUN_COLUMNS | setting
        row.update(
            run_id=f"baseline-{name}-{_hash(setting)}", suite="fab",
            strategy=f"baseline:{name}", strategy_label=f"baseline:{name}", params="{}", seed=0,
            status="ok", status_reason="", final_test_psnr=psnr, final_test_ssim=ssim,
            # The runner hashes the baseline's own config: it need not match a learned setting.
            setting_hash="baseline-" + _hash(setting), naive_test_psnr=20.0,
            peak_step_bytes=np.nan,
        )  # fmt: skip
        self.runs.append(row)

    def write(self, folder: Path, drop: tuple[str, ...] = ()) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, rows in (("runs", self.runs), ("epochs", self.epochs), ("steps", self.steps)):
            frame = pd.DataFrame(rows)
            dropped = [
                c for c in drop if c in frame.columns and not (name == "steps" and c == "step")
            ]
            frame.drop(columns=dropped).to_csv(folder / f"{name}.csv", index=False)
        return folder


@pytest.fixture
def no_figures(monkeypatch):
    """Text-only builds (figures cost seconds each); the memory test draws its one figure."""
    monkeypatch.setattr(plots, "plot_specs", lambda data: [])


def _cells(markdown: str, first_cell: str, header: str) -> list[str]:
    """The cells of column ``header`` in rows ``first_cell``, in the order the tables appear."""
    return [
        row[rows[0].index(header)]
        for rows in markdown_tables(markdown)
        if header in rows[0]
        for row in rows[1:]
        if row[0] == first_cell
    ]


def _compared(markdown: str, name: str, metric: str, header: str) -> list[str]:
    """The cells of column ``header`` in the comparisons table's rows for comparison ``name`` in
    ``metric`` (its axis label, e.g. "PSNR (dB)"): one row per comparison and metric."""
    return [
        row[rows[0].index(header)]
        for rows in markdown_tables(markdown)
        if rows[0][:2] == ["comparison", "metric"]
        for row in rows[1:]
        if row[0] == name and row[1] == metric
    ]


def _build(folder: Path, tmp_path: Path, **kwargs) -> str:
    html = build_report(folder, tmp_path / "out", **kwargs)
    return (html.parent / "report.md").read_text()


def _half(values) -> float:
    values = np.asarray(values, dtype=float)
    low, high = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    return (high - low) / 2


# ---------------------------------------------------------------------------------------------
# Issue 9 item 2: settings are never pooled as seeds


NOISE_PSNR = {  # noise_std -> label -> PSNR per seed 0, 1, 2
    0.01: {"jfb": [27.0, 27.4, 27.2], "cg": [27.5, 27.9, 27.6]},
    0.2: {"jfb": [19.0, 19.5, 18.8], "cg": [19.2, 19.1, 19.3]},
}
NOISE_BASELINE = {0.01: 26.0, 0.2: 18.0}


def _noise_sweep() -> Folder:
    folder = Folder()
    for noise, per_label in NOISE_PSNR.items():
        for label, values in per_label.items():
            for seed, psnr in enumerate(values):
                folder.learned(label, seed, psnr, 8.0, setting={"noise_std": noise})
        folder.baseline("tv", NOISE_BASELINE[noise], setting={"noise_std": noise})
    return folder


@pytest.mark.slow
def test_a_noise_sweep_is_summarised_per_setting_never_pooled(tmp_path, no_figures):
    markdown = _build(_noise_sweep().write(tmp_path / "res"), tmp_path)
    assert "### Setting: noise_std = 0.01" in markdown
    assert "### Setting: noise_std = 0.2" in markdown
    assert markdown.index("noise_std = 0.01") < markdown.index("noise_std = 0.2")
    for label in ("jfb", "cg"):
        expected = [
            f"{np.mean(NOISE_PSNR[noise][label]):.2f} ± {_half(NOISE_PSNR[noise][label]):.2f}"
            for noise in (0.01, 0.2)
        ]
        assert _cells(markdown, label, "PSNR (dB)") == expected
        assert _cells(markdown, label, "runs") == ["3 ok", "3 ok"]  # pooled would say 6
    # Each setting's table shows its own baseline (matched by data, not by the baseline's hash).
    assert _cells(markdown, "baseline: tv", "PSNR (dB)") == ["26.00", "18.00"]
    assert "Best final test PSNR: cg with 27.67 dB (mean over 3 seed(s)); best classical " in (
        markdown
    )
    assert "best classical baseline tv: 18.00 dB" in markdown


@pytest.mark.slow
def test_older_tables_without_setting_hash_are_split_by_their_setting_columns(tmp_path, no_figures):
    folder = _noise_sweep()
    # A failed run records no data sizes: it must join its setting, not form a third one.
    failed = dict.fromkeys(RUN_COLUMNS, np.nan) | {**SETTING, "n_train": np.nan, "channels": np.nan}
    failed.update(run_id="cg-s3-x", strategy="cg", strategy_label="cg", seed=3, status="failed",
                  status_reason="RuntimeError: boom", noise_std=0.2)  # fmt: skip
    folder.runs.append(failed)
    drop = tuple(NEW_RUN_COLUMNS) + NEW_EPOCH_COLUMNS
    markdown = _build(folder.write(tmp_path / "old", drop=drop), tmp_path)
    assert markdown.count("### Setting: ") == 2 * 2  # summary and observations, two settings
    assert _cells(markdown, "cg", "runs") == ["3 ok", "3 ok, 1 failed"]
    assert "have no `setting_hash`" in markdown
    assert "were written before the columns" not in markdown  # notes, not crashes:
    assert "`runs.csv` was written before the columns setting_hash" in markdown


@pytest.mark.slow
def test_a_scaling_shaped_folder_keeps_settings_apart_and_scaling_figures_compare_them(
    tmp_path, monkeypatch
):
    every = plots.plot_specs
    monkeypatch.setattr(
        plots, "plot_specs", lambda d: [s for s in every(d) if s.name.startswith("scaling")]
    )
    folder = Folder()
    for max_iter in (10, 30, 100):
        for label in ("jfb", "unrolled:k=5"):
            folder.learned(label, 0, 25.0, 5.0, setting={"solver_max_iter": max_iter},
                           saved_bytes=max_iter * MIB, peak_step_bytes=max_iter * MIB)  # fmt: skip
    out = build_report(folder.write(tmp_path / "scaling"), tmp_path / "out").parent
    markdown = (out / "report.md").read_text()
    for max_iter in (10, 30, 100):
        assert f"### Setting: solver_max_iter = {max_iter}" in markdown
    assert _cells(markdown, "jfb", "runs") == ["1 ok"] * 3
    assert _cells(markdown, "jfb", "PSNR (dB)") == ["25.00 (1 seed: no CI)"] * 3
    assert (out / "scaling_solver_max_iter.png").exists()
    assert "show the first setting only (**solver_max_iter = 10**) of 3" in markdown
    assert "jfb: peak step memory ×10.00 from solver_max_iter=10 to solver_max_iter=100" in (
        markdown
    )


# ---------------------------------------------------------------------------------------------
# Issue 8 §6: statistics


@pytest.mark.slow
def test_paired_differences_to_jfb_and_the_best_baseline_with_t_intervals(tmp_path, no_figures):
    jfb = [25.0, 26.0, 27.5]
    cg = [25.5, 26.1, 28.4]  # differences 0.5, 0.1, 0.9: interval contains 0
    neumann = [26.0, 27.1, 28.4, 30.0]  # seed 3 has no jfb run: paired over seeds 0-2 only
    folder = Folder()
    for label, values in (("jfb", jfb), ("cg", cg), ("neumann:k=20", neumann)):
        for seed, psnr in enumerate(values):
            folder.learned(label, seed, psnr, 8.0, ssim=0.7 + psnr / 100)
    folder.baseline("tv", 26.0)
    markdown = _build(folder.write(tmp_path / "res"), tmp_path)

    def interval(low, high):
        return f"[{low:+.2f}, {high:+.2f}]"

    ci = stats.ttest_rel(cg, jfb).confidence_interval(0.95)
    assert ci.low < 0 < ci.high
    expected = f"no significant difference ({np.mean(cg) - np.mean(jfb):+.2f} {interval(*ci)})"
    assert _cells(markdown, "cg", "Δ PSNR vs jfb (95% CI)") == [expected]
    assert _compared(markdown, "cg − jfb", "PSNR (dB)", "verdict") == ["no significant difference"]

    paired = np.array(neumann[:3]) - np.array(jfb)
    ci = stats.ttest_rel(neumann[:3], jfb).confidence_interval(0.95)
    assert ci.low > 0
    assert _cells(markdown, "neumann:k=20", "Δ PSNR vs jfb (95% CI)") == [
        f"{paired.mean():+.2f} {interval(*ci)}"
    ]
    assert _compared(markdown, "neumann:k=20 − jfb", "PSNR (dB)", "seeds") == ["3"]
    assert _compared(markdown, "neumann:k=20 − jfb", "PSNR (dB)", "verdict") == ["significant"]
    assert _cells(markdown, "jfb", "Δ PSNR vs jfb (95% CI)") == ["reference"]
    # SSIM difference, paired the same way (SSIM = 0.7 + PSNR / 100 here).
    ssim_ci = stats.ttest_rel(np.array(neumann[:3]) / 100, np.array(jfb) / 100).confidence_interval(
        0.95
    )
    assert _compared(markdown, "neumann:k=20 − jfb", "SSIM", "Δ [95% CI]") == [
        f"{paired.mean() / 100:+.4f} [{ssim_ci.low:+.4f}, {ssim_ci.high:+.4f}]"
    ]

    # Best learned (neumann, 27.875 dB) vs the deterministic tv baseline: its t interval, shifted.
    ci = stats.ttest_1samp(np.array(neumann) - 26.0, 0.0).confidence_interval(0.95)
    name = "best learned (neumann:k=20) − best baseline (tv)"
    assert ci.low < 0 < ci.high  # four seeds spread too widely to tell
    # The comparisons table gives the verdict its own column: the difference cell is numbers only.
    assert _compared(markdown, name, "PSNR (dB)", "Δ [95% CI]") == [
        f"{np.mean(neumann) - 26:+.2f} {interval(*ci)}"
    ]
    assert _compared(markdown, name, "PSNR (dB)", "verdict") == ["no significant difference"]
    assert f"95% CI {interval(*ci)} over 4 seeds" in markdown
    # The mean ± half-width of each label's own interval.
    assert _cells(markdown, "neumann:k=20", "PSNR (dB)") == [
        f"{np.mean(neumann):.2f} ± {_half(neumann):.2f}"
    ]


def test_one_seed_says_the_interval_is_not_available(tmp_path, no_figures):
    folder = Folder()
    folder.learned("jfb", 0, 25.0, 8.0)
    folder.learned("cg", 0, 25.4, 8.0)
    folder.baseline("tv", 26.0)
    markdown = _build(folder.write(tmp_path / "res"), tmp_path)
    assert _cells(markdown, "cg", "PSNR (dB)") == ["25.40 (1 seed: no CI)"]
    assert _cells(markdown, "cg", "Δ PSNR vs jfb (95% CI)") == ["+0.40 (1 seed: CI not available)"]
    assert _compared(markdown, "cg − jfb", "PSNR (dB)", "verdict") == ["CI not available (1 seed)"]
    assert "-0.60 dB from one seed: no confidence interval available" in markdown


# ---------------------------------------------------------------------------------------------
# Issue 8 §6: equal-time comparison; epochs.csv with several evaluations per epoch


@pytest.mark.slow
def test_psnr_at_a_common_training_time_budget(tmp_path, no_figures):
    # (epoch, step, epoch_end, train_time_s, psnr): three evaluations per epoch.
    fast = {
        0: [(1, 2, 0, 1.0, 20.0), (1, 4, 0, 2.0, 21.0), (1, 6, 1, 3.0, 22.0),
            (2, 8, 0, 4.0, 22.5), (2, 10, 0, 5.0, 23.0), (2, 12, 1, 6.0, 23.5)],
        1: [(1, 2, 0, 1.2, 20.5), (1, 4, 0, 2.4, 21.5), (1, 6, 1, 3.6, 22.5),
            (2, 8, 0, 4.8, 23.0), (2, 10, 0, 6.0, 23.2), (2, 12, 1, 7.2, 24.0)],
    }  # fmt: skip
    slow = {
        seed: [(e, s, end, 2.5 * t, p + 1.0) for e, s, end, t, p in rows]
        for seed, rows in fast.items()
    }
    folder = Folder()
    for seed in (0, 1):
        folder.learned("jfb", seed, fast[seed][-1][4], fast[seed][-1][3], evaluations=fast[seed])
        folder.learned("cg", seed, slow[seed][-1][4], slow[seed][-1][3], evaluations=slow[seed])
    markdown = _build(folder.write(tmp_path / "res"), tmp_path)
    # By hand: final times jfb 6.0, 7.2 (median 6.6); cg 15, 18 (median 16.5) -> budget 6.6 s.
    budget = min(np.median([6.0, 7.2]), np.median([15.0, 18.0]))
    assert budget == pytest.approx(6.6)
    assert "Equal-time budget: **6.6 s** of training" in markdown
    at_budget = {
        label: [max((t, p) for _, _, _, t, p in runs[seed] if t <= budget)[1] for seed in (0, 1)]
        for label, runs in (("jfb", fast), ("cg", slow))
    }
    assert at_budget == {"jfb": [23.5, 23.2], "cg": [22.0, 22.5]}  # cg at 5.0 s and 6.0 s
    for label, values in at_budget.items():
        expected = f"{np.mean(values):.2f} ± {_half(values):.2f}"
        assert _cells(markdown, label, "PSNR at 6.6 s") == [expected]
    # Time to target stays, at evaluation (not epoch) granularity: target = 23.0 dB given.
    markdown = _build(tmp_path / "res", tmp_path, target=23.0)
    first = np.mean([5.0, 4.8])  # jfb's first evaluations at >= 23 dB
    assert _cells(markdown, "jfb", "time to 23.00 dB") == [f"{first:.3g} s"]


def test_figures_against_the_epoch_use_end_of_epoch_rows(tmp_path):
    folder = Folder()
    folder.learned("jfb", 0, 25.0, 8.0)  # epoch_end flags on steps 4 and 8
    rows = [(1, 2, 9.0), (1, 4, 10.0), (2, 6, 11.0), (2, 8, 12.0)]  # no flag column: last per epoch
    folder.learned("cg", 0, 12.0, 8.0, evaluations=[(e, s, np.nan, s, p) for e, s, p in rows])
    data, _ = prepare(folder.write(tmp_path / "res"))
    ends = data.end_of_epoch().set_index(["label", "epoch"])["step"]
    assert ends.to_dict() == {("cg", 1): 4, ("cg", 2): 8, ("jfb", 1): 4, ("jfb", 2): 8}
    # Against time, every evaluation is a point of the curve.
    curve = plots.mean_curves(data.epochs, "test_psnr")
    assert list(curve[curve["label"] == "cg"]["mean"]) == [9.0, 10.0, 11.0, 12.0]


# ---------------------------------------------------------------------------------------------
# Issue 8 §2-4: validity flags and memory


@pytest.mark.slow
def test_runs_on_broken_assumptions_are_flagged_and_named(tmp_path, no_figures):
    folder = Folder()
    for seed in (0, 1):
        folder.learned("jfb", seed, 25.0 + seed, 8.0)
    cg_bad = folder.learned("cg", 0, 25.2, 8.0, max_layer_lipschitz=1.031,
                            backward_converged_frac=0.5)  # fmt: skip
    folder.learned("cg", 1, 25.9, 8.0, backward_converged_frac=1.0)
    neumann_bad = folder.learned("neumann:k=20", 0, 25.1, 8.0, forward_converged_frac=0.9)
    folder.learned("neumann:k=20", 1, 25.5, 8.0)
    # Contractive by runs.csv, but one evaluation in epochs.csv says otherwise.
    folder.epochs[-1]["layer_lipschitz"] = 1.004
    neumann_lip = folder.runs[-1]["run_id"]
    # The gradient-fidelity reference did not converge at the last evaluation of jfb seed 1;
    # the runs row carries a (wrong) number that must never be shown.
    jfb_ref = folder.runs[1]["run_id"]
    folder.runs[1]["grad_cosine_last"] = 0.4242
    for row in folder.epochs:
        row["grad_reference_converged"] = 1.0
        if row["run_id"] == jfb_ref and row["step"] == 8:
            row["grad_reference_converged"] = 0.0
            row["grad_cosine"] = 0.4242
    markdown = _build(folder.write(tmp_path / "res"), tmp_path)
    assert _cells(markdown, "cg", "validity flags") == [
        "⚠ not contractive 1/2; bwd conv. < 95% 1/2"
    ]
    assert _cells(markdown, "neumann:k=20", "validity flags") == [
        "⚠ not contractive 1/2; fwd conv. < 95% 1/2"
    ]
    assert _cells(markdown, "jfb", "validity flags") == ["⚠ grad ref. unconverged 1/2"]
    assert _cells(markdown, "cg", "max ‖∂T/∂x‖") == ["1.031"]
    assert f"`{cg_bad}` (max 1.031). The implicit-function gradient assumes" in markdown
    assert "its gradients are not the exact gradient" in markdown
    assert f"`{neumann_lip}` (max 1.004). The Neumann series assumes" in markdown
    assert f"`{neumann_bad}` (90%). An unconverged forward solve means the loss is not " in markdown
    assert f"`{cg_bad}` (50%). Its gradients are then not the implicit gradient" in markdown
    assert f"`{jfb_ref}` (1 unconverged). Those cosines are n/a" in markdown
    assert "0.424" not in markdown
    assert _cells(markdown, "jfb", "grad cos last") == ["0.980 (1/2 n/a)"]


@pytest.mark.slow
def test_contractive_converged_runs_say_so_and_older_tables_still_flag(tmp_path, no_figures):
    folder = Folder()
    for seed in (0, 1):
        folder.learned("jfb", seed, 25.0, 8.0)
    markdown = _build(folder.write(tmp_path / "res"), tmp_path)
    assert _cells(markdown, "jfb", "validity flags") == ["none"]
    assert "Every run's layer was a contraction at every measured evaluation" in markdown
    # Older results: no per-evaluation Lipschitz, only runs.csv lipschitz_estimate (>= 1 here).
    folder.runs[1]["lipschitz_estimate"] = 1.05
    old = folder.write(tmp_path / "old", drop=(*NEW_RUN_COLUMNS, *NEW_EPOCH_COLUMNS))
    markdown = _build(old, tmp_path)
    assert _cells(markdown, "jfb", "validity flags") == ["⚠ not contractive 1/2"]
    assert f"`{folder.runs[1]['run_id']}` (max 1.050)" in markdown
    assert "measurements are not reported" in markdown


def test_peak_step_memory_is_the_main_memory_figure(tmp_path, monkeypatch):
    every = plots.plot_specs
    monkeypatch.setattr(plots, "plot_specs", lambda d: [s for s in every(d) if s.name == "memory"])
    folder = Folder()
    for seed in (0, 1):
        folder.learned("jfb", seed, 25.0, 8.0, peak_step_bytes=(3 + seed) * MIB)
        folder.learned("unrolled:k=20", seed, 25.0, 8.0, peak_step_bytes=(30 + seed) * MIB)
        folder.learned("phantom", seed, 25.0, 8.0, peak_step_bytes=0.5 * MIB)
    out = build_report(folder.write(tmp_path / "res"), tmp_path / "out").parent
    markdown = (out / "report.md").read_text()
    assert _cells(markdown, "jfb", "peak step memory") == ["3.5 MiB"]
    assert _cells(markdown, "unrolled:k=20", "peak RSS (train steps)") == ["500.0 MiB"]
    (header,) = [t[0] for t in markdown_tables(markdown) if "peak step memory" in t[0]]
    assert header.index("peak step memory") < header.index("peak RSS (train steps)")
    ratio = 30.5 / 3.5
    assert (
        f"unrolled:k=20 needs {ratio:.1f}× the peak tensor memory of a training step of jfb"
        in markdown
    )
    # Far less than jfb is said too, not hidden under "within 1.5×".
    assert "phantom needs 7.0× less than jfb in peak tensor memory of a training step" in markdown
    assert "within 1.5× the peak tensor memory" not in markdown
    svg = (out / "memory.svg").read_text()
    assert svg.index("peak tensor memory of a training step") < svg.index("peak process RSS")


# ---------------------------------------------------------------------------------------------
# Issue 9 item 10: foreign tables


@pytest.mark.parametrize(
    ("table", "content", "message"),
    [
        ("runs", "name,value\nfoo,1\n", r"runs\.csv is not an implicit-bench runs table: it "
                                        r"lacks the required column\(s\) run_id, strategy, status"),
        ("runs", "run_id,strategy,status\nx,jfb,ok\n", r"runs\.csv .* only 3 of the"),
        ("runs", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", r"runs\.csv"),
        ("steps", "a,b,c\n1,2,3\n", r"steps\.csv is not an implicit-bench steps table"),
        ("epochs", "time,value\n1,2\n", r"epochs\.csv is not an implicit-bench epochs table"),
    ],
)  # fmt: skip
def test_foreign_tables_are_one_clear_error(tmp_path, no_figures, table, content, message):
    results = Folder()
    results.learned("jfb", 0, 25.0, 8.0)
    folder = results.write(tmp_path / "res")
    path = folder / f"{table}.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message):
        build_report(folder, tmp_path / "out")


def test_a_foreign_number_column_names_file_and_column(tmp_path, no_figures):
    results = Folder()
    results.learned("jfb", 0, 25.0, 8.0)
    folder = results.write(tmp_path / "res")
    epochs = pd.read_csv(folder / "epochs.csv")
    epochs["test_psnr"] = epochs["test_psnr"].astype(object)
    epochs.loc[2, "test_psnr"] = "high"
    epochs.to_csv(folder / "epochs.csv", index=False)
    with pytest.raises(ValueError, match=r"epochs\.csv .* column 'test_psnr' holds a non-number "
                                         r"\('high' on line 4\)"):  # fmt: skip
        build_report(folder, tmp_path / "out")


def test_cli_exits_2_with_one_line_on_a_foreign_runs_csv(tmp_path):
    folder = tmp_path / "res"
    folder.mkdir()
    (folder / "runs.csv").write_text("name,value\nfoo,1\n")
    result = cli_in_process("report", folder, "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("implicit-bench: error: ")
    assert "runs.csv" in lines[0] and "run_id" in lines[0]
    assert not (tmp_path / "out" / "report.html").exists()


# ---------------------------------------------------------------------------------------------
# Issue 10 §2: a results folder of the schema before this session is still read

# runs.csv and epochs.csv columns as the harness wrote them before train_time_s / naive_test_*
# (and the timing columns) existed; written here from these lists, not copied from a folder.
OLD_RUN_COLUMNS = (
    "run_id", "suite", "strategy", "strategy_label", "params", "seed", "status", "status_reason",
    "dataset", "image_size", "channels", "n_train", "n_test", "batch_size", "epochs", "lr",
    "blur_kernel_size", "blur_sigma", "noise_std", "solver", "solver_max_iter", "solver_tol",
    "model_width", "model_depth", "device", "device_name", "torch_version", "torchdeq_version",
    "git_commit", "config_hash", "final_train_loss", "final_test_psnr", "final_test_ssim",
    "blurred_test_psnr", "blurred_test_ssim", "total_wall_time_s", "median_step_time_s",
    "median_forward_time_s", "median_backward_time_s", "median_optimizer_time_s", "saved_bytes",
    "peak_rss_bytes", "peak_gpu_memory_bytes", "peak_gpu_device_memory_bytes",
    "mean_forward_iters", "forward_converged_frac", "mean_backward_iters", "grad_cosine_first",
    "grad_cosine_last", "lipschitz_estimate", "lr_schedule", "model_form", "lipschitz_control",
    "model_lipschitz", "setting_hash", "max_layer_lipschitz", "certified_lipschitz_bound",
    "backward_converged_frac", "skipped_steps", "peak_step_bytes", "run_wall_time_s",
    "eval_time_s", "diagnostics_time_s",
)  # fmt: skip
OLD_EPOCH_COLUMNS = (
    "run_id", "strategy", "seed", "epoch", "train_loss", "test_psnr", "test_ssim",
    "blurred_test_psnr", "blurred_test_ssim", "wall_time_s", "grad_cosine", "step", "epoch_end",
    "layer_lipschitz", "layer_lipschitz_converged", "grad_reference_converged",
    "grad_reference_forward_residual", "grad_reference_backward_residual",
)  # fmt: skip


def test_a_folder_of_the_older_schema_is_read_under_the_new_names(tmp_path, no_figures):
    totals = {0: 7.5, 1: 8.5}  # total_wall_time_s: the sum of step times, now train_time_s
    psnrs = {0: [22.0, 24.5], 1: [23.0, 25.0]}
    runs, epochs = [], []
    for seed, total in totals.items():
        run_id = f"jfb-s{seed}"
        runs.append(
            dict.fromkeys(OLD_RUN_COLUMNS, np.nan) | SETTING | dict(
                run_id=run_id, suite="old", strategy="jfb", strategy_label="jfb", params="{}",
                seed=seed, status="ok", config_hash=f"c{seed}", setting_hash="s",
                final_test_psnr=psnrs[seed][-1], final_test_ssim=0.8, blurred_test_psnr=21.0,
                blurred_test_ssim=0.6, total_wall_time_s=total, median_step_time_s=0.05,
            )
        )  # fmt: skip
        for epoch, psnr in enumerate(psnrs[seed], start=1):
            epochs.append(
                dict.fromkeys(OLD_EPOCH_COLUMNS, np.nan) | dict(
                    run_id=run_id, strategy="jfb", seed=seed, epoch=epoch, step=4 * epoch,
                    epoch_end=1, train_loss=0.1, test_psnr=psnr, test_ssim=0.8,
                    blurred_test_psnr=21.0, blurred_test_ssim=0.6,
                    wall_time_s=total * epoch / len(psnrs[seed]),
                )
            )  # fmt: skip
    folder = tmp_path / "old"
    folder.mkdir()
    pd.DataFrame(runs, columns=list(OLD_RUN_COLUMNS)).to_csv(folder / "runs.csv", index=False)
    pd.DataFrame(epochs, columns=list(OLD_EPOCH_COLUMNS)).to_csv(folder / "epochs.csv", index=False)
    markdown = _build(folder, tmp_path, target=24.0)
    # Renamed columns are read: training time, the naive reconstruction, time to target.
    assert _cells(markdown, "jfb", "train time") == [f"{np.mean(list(totals.values())):.3g} s"]
    assert _cells(markdown, "blurred input", "PSNR (dB)") == ["21.00"]
    first = np.mean(list(totals.values()))  # both reach 24 dB at their second, last, epoch
    assert _cells(markdown, "jfb", "time to 24.00 dB") == [f"{first:.3g} s"]
    # ... and the report says the folder is of an older schema, once in the findings.
    assert (
        "`runs.csv` is from an older schema: read `total_wall_time_s` as `train_time_s`, "
        "`blurred_test_psnr` as `naive_test_psnr`" in markdown
    )
    assert "`epochs.csv` is from an older schema: read `wall_time_s` as `train_time_s`" in markdown
    findings = markdown[markdown.index("## Findings") : markdown.index("## Figures")]
    assert "**Older results folder**" in findings
    assert "predates the timing-reliability record" in findings
    assert "not recorded in these results: contraction and convergence, timing reliability" in (
        findings
    )
    assert "timing" not in markdown_tables(markdown.split("Cost:")[1])[0][0]


# ---------------------------------------------------------------------------------------------
# Issue 11 §2: runs whose timing is unreliable are flagged

LOAD_NOTE = "load average 3.9 above the 2 usable cores"


def _timing_folder() -> tuple[Folder, str]:
    folder = Folder()
    folder.learned("jfb", 0, 25.0, 8.0, timing_reliable=True, timing_note="")
    noisy = folder.learned("jfb", 1, 25.4, 8.0, timing_reliable=False, timing_note=LOAD_NOTE)
    for seed in (0, 1):
        folder.learned("cg", seed, 25.2, 9.0, timing_reliable=True, timing_note="")
    return folder, noisy


def test_unreliable_timings_are_flagged_in_findings_cost_table_and_observations(
    tmp_path, no_figures
):
    folder, noisy = _timing_folder()
    markdown = _build(folder.write(tmp_path / "res"), tmp_path)
    assert _cells(markdown, "jfb", "timing") == ["⚠ unreliable 1/2"]
    assert _cells(markdown, "cg", "timing") == ["reliable"]
    cost = markdown[markdown.index("Cost:") : markdown.index("Memory:")]
    assert f"⚠ Unreliable timings: `{noisy}` (jfb): {LOAD_NOTE}." in cost
    findings = markdown[markdown.index("## Findings") : markdown.index("## Figures")]
    assert f"unreliable timing: `{noisy}` ({LOAD_NOTE})" in findings
    assert "**Failed assumptions**" in findings
    observations = markdown[markdown.index("## Observations") :]
    assert f"⚠ Unreliable timing in 1 of 4 run(s): `{noisy}` (jfb: {LOAD_NOTE})" in observations


@pytest.mark.slow
def test_reliable_timings_are_not_flagged_and_a_foreign_flag_is_an_error(tmp_path, no_figures):
    folder, noisy = _timing_folder()
    for row in folder.runs:
        row["timing_reliable"], row["timing_note"] = True, ""
    markdown = _build(folder.write(tmp_path / "res"), tmp_path)
    assert "unreliable" not in markdown.lower()
    assert _cells(markdown, "jfb", "timing") == ["reliable"]
    folder.runs[1]["timing_reliable"] = "maybe"
    with pytest.raises(ValueError, match=r"runs\.csv .* column 'timing_reliable' holds 'maybe'"):
        _build(folder.write(tmp_path / "bad"), tmp_path)


# ---------------------------------------------------------------------------------------------
# Issue 10 §5: short labels, one palette, a scaling figure per declared cost parameter


@pytest.mark.slow
def test_rows_are_labelled_by_the_strategys_short_label(tmp_path, no_figures):
    from strategies import get_strategy

    folder = Folder()
    folder.learned("cg:tol=1e-06:max_iter=300", 0, 25.0, 8.0)
    folder.learned("unrolled:k=20", 0, 25.0, 8.0)
    folder.learned("mystery:alpha=2", 0, 24.0, 8.0)  # a plugin that is not installed here
    markdown = _build(folder.write(tmp_path / "res"), tmp_path)
    cg = get_strategy("cg", tol=1e-6, max_iter=300).short_label
    assert cg == "cg:max_iter=300"  # tol=1e-6 is cg's default
    assert _cells(markdown, cg, "runs") == ["1 ok"]
    assert _cells(markdown, "unrolled:k=20", "runs") == ["1 ok"]
    assert "cg:tol=1e-06" not in markdown.split("## All runs")[0]
    assert _cells(markdown, "mystery:alpha=2", "runs") == ["1 ok"]
    assert "strategies not registered here (mystery)" in markdown


@pytest.fixture
def toy_strategy(monkeypatch):
    import strategies
    from strategies import Param, Strategy

    class Toy(Strategy):
        name = "toy"
        cost_params = ("m",)
        parameters = {"m": Param(3, ge=1, doc="toy cost knob")}

    strategies.list_strategies()  # discover the real ones first
    monkeypatch.setitem(strategies._REGISTRY, "toy", Toy)
    return Toy


def _toy_folder() -> Folder:
    folder = Folder()
    for m in (1, 2, 4):
        folder.learned(f"toy:m={m}", 0, 25.0, 8.0, peak_step_bytes=m * MIB)
    folder.learned("jfb", 0, 25.0, 8.0, peak_step_bytes=MIB)
    return folder


@pytest.mark.slow
def test_a_scaling_figure_per_declared_cost_parameter(tmp_path, monkeypatch, toy_strategy):
    every = plots.plot_specs
    monkeypatch.setattr(
        plots, "plot_specs", lambda d: [s for s in every(d) if s.name.startswith("scaling")]
    )
    out = build_report(_toy_folder().write(tmp_path / "res"), tmp_path / "out").parent
    assert (out / "scaling_m.png").exists() and not (out / "scaling_k.png").exists()
    markdown = (out / "report.md").read_text()
    assert "### Memory and time vs m (toy: toy cost knob)" in markdown
    assert "toy: peak step memory ×4.00 from m=1 to m=4" in markdown


def _legend_colors(figure) -> dict[str, tuple]:
    return {
        h.get_label(): matplotlib.colors.to_rgb(h.get_color())
        for h in figure.legends[0].legend_handles
        if hasattr(h, "get_color")
    }


@pytest.mark.slow
def test_one_palette_in_every_figure_and_every_folder(tmp_path, toy_strategy):
    data, _ = prepare(_toy_folder().write(tmp_path / "res"))
    (variable,) = [v for v in model.scaling_variables(data) if v.name == "m"]
    loss = _legend_colors(plots.plot_loss(data))
    scaling = _legend_colors(plots.plot_scaling(data, variable))
    assert loss["jfb"] == scaling["jfb"]
    # Several labels of one strategy: shades of its colour (the same hue), distinct.
    shades = [loss[f"toy:m={m}"] for m in (1, 2, 4)]
    assert len(set(shades)) == 3
    for shade in shades:
        assert colorsys.rgb_to_hls(*shade)[0] == pytest.approx(
            colorsys.rgb_to_hls(*scaling["toy"])[0], abs=1e-6
        )
    # Another folder, other strategies: jfb keeps its colour.
    other = Folder()
    for label in ("cg", "neumann:k=5", "jfb"):
        other.learned(label, 0, 25.0, 8.0)
    data, _ = prepare(other.write(tmp_path / "other"))
    assert _legend_colors(plots.plot_loss(data))["jfb"] == loss["jfb"]


@pytest.mark.slow
def test_jacobian_products_per_step_come_from_runs_or_steps(tmp_path, no_figures):
    folder = Folder()
    for seed, products in ((0, 4), (1, 6)):
        folder.learned("neumann:k=3", seed, 25.0, 8.0)
        folder.steps[-1]["jacobian_products"] = products  # runs.csv leaves the mean empty
    folder.learned("cg", 0, 25.0, 8.0, jacobian_products_per_step=12.0)
    markdown = _build(folder.write(tmp_path / "res"), tmp_path)
    assert _cells(markdown, "neumann:k=3", "J products / step") == [f"{np.mean([4, 6]):.1f}"]
    assert _cells(markdown, "cg", "J products / step") == ["12.0"]


def test_sparse_evaluations_are_not_missing_epochs_but_an_early_stop_is(tmp_path, no_figures):
    folder = Folder()
    # eval_every: evaluations in epochs 3 and 5 of 5 only: complete
    sparse = [(3, 30, 0.0, 1.0, 25.0), (5, 50, 1.0, 2.0, 26.0)]
    folder.learned("jfb", 0, 26.0, 2.0, evaluations=sparse, epochs=5)
    # evaluations that stop in epoch 3 of 5: something is missing
    early = [(2, 20, 1.0, 1.0, 25.0), (3, 30, 1.0, 1.5, 25.5)]
    short_id = folder.learned("jfb", 1, 25.5, 1.5, evaluations=early, epochs=5)
    markdown = _build(folder.write(tmp_path / "res"), tmp_path)
    notes = [line for line in markdown.splitlines() if "before their last epoch" in line]
    assert len(notes) == 1 and short_id in notes[0] and "jfb-s0" not in notes[0]


@pytest.mark.slow
def test_a_registered_metric_gets_its_own_quality_panels(tmp_path, monkeypatch):
    from bench.metrics import METRICS, Metric

    mae = Metric("mae", lambda x, y: (x - y).abs().flatten(1).mean(1), "MAE", False)
    monkeypatch.setitem(METRICS._entries, "mae", mae)
    folder = Folder()
    for seed in (0, 1):
        folder.learned("jfb", seed, 26.0 + seed / 10, 2.0)
    for row in folder.epochs:
        row["test_mae"] = 0.05
    for row in folder.runs:
        row["naive_test_mae"] = 0.2
    data, _ = prepare(folder.write(tmp_path / "res"))
    assert data.naive_metrics["mae"] == pytest.approx(0.2)
    for plot in (plots.plot_quality_vs_epoch, plots.plot_quality_vs_time):
        axes = [ax for ax in plot(data).axes if ax.get_ylabel()]
        assert [ax.get_ylabel() for ax in axes] == ["test PSNR (dB)", "test SSIM", "test MAE"]


# ---------------------------------------------------------------------------------------------
# Issue 10 §1: the report loops over the metric registry; any metric can be the primary one

# Final MAE per seed (lower is better): cg is better than jfb in MAE although jfb has the higher
# PSNR, and tv is the better baseline in MAE although tikhonov has the higher PSNR, so every
# ranking below tells which metric it used.
MAE = {"jfb": [0.040, 0.042, 0.041], "cg": [0.030, 0.034, 0.031]}
PSNR = {"jfb": [26.0, 26.2, 26.1], "cg": [25.0, 25.3, 25.1]}
BASELINE_MAE = {"tv": 0.035, "tikhonov": 0.050}
BASELINE_PSNR = {"tv": 24.0, "tikhonov": 25.5}


@pytest.fixture
def mae(monkeypatch):
    """MAE registered as a lower-is-better metric, for this test only."""
    from bench.metrics import METRICS, Metric

    metric = Metric("mae", lambda x, y: (x - y).abs().flatten(1).mean(1), "MAE", False, "", 4)
    monkeypatch.setitem(METRICS._entries, "mae", metric)
    return metric


def _mae_folder(path: Path) -> Path:
    folder = Folder()
    for label in ("jfb", "cg"):
        for seed, (psnr, final) in enumerate(zip(PSNR[label], MAE[label], strict=True)):
            folder.learned(label, seed, psnr, 8.0, final_test_mae=final, naive_test_mae=0.08)
            # four evaluations, MAE falling to its final value: 1.6, 1.4, 1.2, 1.0 times it
            for i, row in enumerate(folder.epochs[-4:]):
                row["test_mae"] = final * (1.6 - 0.2 * i)
    for name in ("tv", "tikhonov"):
        folder.baseline(name, BASELINE_PSNR[name])
        folder.runs[-1]["final_test_mae"] = BASELINE_MAE[name]
    return folder.write(path)


@pytest.mark.slow
def test_a_registered_metric_gets_columns_comparisons_and_a_table_of_its_own(
    tmp_path, no_figures, mae
):
    markdown = _build(_mae_folder(tmp_path / "res"), tmp_path)
    summary = markdown[markdown.index("## Summary tables") : markdown.index("## Observations")]
    tables = markdown_tables(summary)
    # PSNR stays primary; three metrics and the six other quality columns do not fit in eight
    # columns, so MAE continues in a table of its own, and no table gets wider.
    assert max(len(t[0]) for t in tables) <= 8
    quality = next(t for t in tables if "Δ PSNR vs jfb (95% CI)" in t[0])
    assert "PSNR (dB)" in quality[0] and "MAE" not in quality[0]
    further = [t for t in tables if "MAE" in t[0]]
    assert len(further) == 1
    cells = {row[0]: row[further[0][0].index("MAE")] for row in further[0][1:]}
    assert cells["cg"] == f"{np.mean(MAE['cg']):.4f} ± {_half(MAE['cg']):.4f}"
    assert cells["baseline: tv"] == f"{BASELINE_MAE['tv']:.4f}"
    assert cells["blurred input"] == "0.0800"
    # The paired difference in MAE, against scipy's paired t interval.
    ci = stats.ttest_rel(MAE["cg"], MAE["jfb"]).confidence_interval(0.95)
    difference = np.mean(MAE["cg"]) - np.mean(MAE["jfb"])
    assert _compared(markdown, "cg − jfb", "MAE", "Δ [95% CI]") == [
        f"{difference:+.4f} [{ci.low:+.4f}, {ci.high:+.4f}]"
    ]
    # The findings still rank by PSNR.
    assert "**Best learned vs best baseline**: jfb − tikhonov" in markdown


@pytest.mark.slow
def test_a_lower_is_better_metric_as_the_primary_one_ranks_the_other_way(tmp_path, no_figures, mae):
    markdown = _build(_mae_folder(tmp_path / "res"), tmp_path, metric="mae")
    findings = markdown[markdown.index("## Findings") : markdown.index("## Figures")]
    # Lowest MAE wins: cg among strategies, tv among baselines (PSNR would pick jfb, tikhonov).
    assert "**Best learned vs best baseline**: cg − tv" in findings
    assert re.search(r"\*\*Best at equal training time\*\* \([^)]*\): \*\*cg\*\*", findings)
    learned = np.array(MAE["cg"]) - BASELINE_MAE["tv"]
    ci = stats.ttest_1samp(learned, 0.0).confidence_interval(0.95)
    assert _compared(markdown, "best learned (cg) − best baseline (tv)", "MAE", "Δ [95% CI]") == [
        f"{learned.mean():+.4f} [{ci.low:+.4f}, {ci.high:+.4f}]"
    ]
    ci = stats.ttest_rel(MAE["cg"], MAE["jfb"]).confidence_interval(0.95)
    assert _cells(markdown, "cg", "Δ MAE vs jfb (95% CI)") == [
        f"{np.mean(MAE['cg']) - np.mean(MAE['jfb']):+.4f} [{ci.low:+.4f}, {ci.high:+.4f}]"
    ]
    # Default target: cg's mean final MAE is below tv's, so the target is tv's MAE, and a run
    # reaches it at its first evaluation with MAE <= 0.035 (computed here per seed).
    assert f"Target MAE: **{BASELINE_MAE['tv']:.4f}**" in markdown
    header = f"time to {BASELINE_MAE['tv']:.4f}"
    reached = [
        [t for t, f in zip((2.0, 4.0, 6.0, 8.0), 1.6 - 0.2 * np.arange(4), strict=True)
         if final * f <= BASELINE_MAE["tv"]][0]
        for final in MAE["cg"]
    ]  # fmt: skip
    assert _cells(markdown, "cg", header) == [f"{np.mean(reached):.3g} s"]
    assert _cells(markdown, "jfb", header) == ["not reached"]


def test_an_unknown_or_unrecorded_primary_metric_is_a_clear_error(tmp_path, no_figures, mae):
    results = _mae_folder(tmp_path / "res")
    with pytest.raises(ValueError, match="unknown metric 'lpips'; accepted: psnr, ssim"):
        build_report(results, tmp_path / "out", metric="lpips")
    folder = Folder()
    folder.learned("jfb", 0, 25.0, 8.0)
    with pytest.raises(ValueError, match="metric 'mae' has no final value in any run"):
        build_report(folder.write(tmp_path / "plain"), tmp_path / "out", metric="mae")
    done = cli_in_process("report", results, "--out", tmp_path / "o", "--metric", "lpips")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "unknown metric 'lpips'" in done.stderr and "Traceback" not in done.stderr


def test_the_pareto_front_follows_a_lower_is_better_primary_metric(tmp_path, mae):
    folder = Folder()
    # (label, step time, final MAE): jfb fastest, cg slower and better, neumann slower and worse
    for label, step, final in (("jfb", 0.01, 0.04), ("cg", 0.02, 0.03), ("neumann", 0.03, 0.05)):
        folder.learned(label, 0, 25.0, 8.0, final_test_mae=final)
        folder.steps[-1]["step_time_s"] = step
    data, _ = prepare(folder.write(tmp_path / "res"))
    data.primary = "mae"
    table = plots.pareto_table(data).table
    assert table["quality"].to_dict() == pytest.approx({"jfb": 0.04, "cg": 0.03, "neumann": 0.05})
    assert table["pareto"].to_dict() == {"jfb": True, "cg": True, "neumann": False}


@pytest.mark.slow
def test_the_setup_lists_strategy_parameters_with_their_types(tmp_path, no_figures):
    folder = Folder()
    folder.learned("jfb", 0, 25.0, 8.0)
    # a bool parameter: runs.csv's p_ column holds it as 1, the params JSON as true
    folder.learned("cg", 0, 25.0, 8.0, params=json.dumps({"skip_unconverged": True, "tol": 1e-4}))
    folder.runs[-1]["p_skip_unconverged"] = 1
    for k in (5, 20):
        folder.learned(f"unrolled:k={k}", 0, 25.0, 8.0)
    markdown = _build(folder.write(tmp_path / "res"), tmp_path)
    assert _cells(markdown, "strategy parameter skip_unconverged", "value") == ["True"]
    assert _cells(markdown, "strategy parameter tol", "value") == ["0.0001"]
    assert _cells(markdown, "strategy parameter k", "value") == ["5, 20"]
