"""The reconstruction grid: the same test images for the original, the naive reconstruction,
the baselines and one run per strategy label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from bench.baselines import BASELINES
from bench.metrics import Metric
from bench.report.figures.style import Drawn, PlotSkipped
from bench.report.model import ReportData, finite_rows

RECON_MAX_IMAGES = 3
RECON_MAX_STRATEGIES = 12

# ---------------------------------------------------------------------------------------------
# 6. Reconstructions


def _tile_scores(images: np.ndarray, reference: np.ndarray, metric: Metric) -> np.ndarray:
    """Per-image ``metric`` of ``images`` (clamped to [0, 1], as shown) against ``reference``:
    the registered function, the one the tables report."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float64)).clamp(0.0, 1.0)
    return metric(x, torch.from_numpy(np.asarray(reference, dtype=np.float64))).numpy()


def _to_image(array: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) in [0, 1] -> something imshow draws: (H, W) gray or (H, W, 3) colour."""
    array = np.clip(np.asarray(array, dtype=float), 0.0, 1.0)
    if array.shape[0] == 1:
        return array[0], "gray"
    return np.moveaxis(array[:3], 0, -1), None


@dataclass(frozen=True)
class ReconColumns:
    """The grid's ``columns``, (title, images N×C×H×W) each, and ``notes`` on the runs it could
    not show."""

    columns: list[tuple[str, np.ndarray]]
    notes: list[str]


def recon_columns(data: ReportData) -> ReconColumns:
    """The reconstruction grid's columns: original, the task's naive reconstruction, baselines,
    one run per label; and notes on what is left out."""
    reference_path = data.recons_dir / "reference.npz"
    if not reference_path.exists():
        raise PlotSkipped(f"{reference_path.name} missing in {data.recons_dir}")
    with np.load(reference_path) as reference:
        arrays = {key: reference[key] for key in reference.files}
    # "measured" (the runner's key); "naive" and "blurred": other and older spellings of it.
    naive_key = next((k for k in ("measured", "naive", "blurred") if k in arrays), None)
    if "original" not in arrays or naive_key is None:
        raise PlotSkipped("recons/reference.npz lacks the 'original' or 'measured' array")
    original = arrays["original"]
    columns = [("original", original), (data.naive_name, arrays[naive_key])]
    stored = {
        k.removeprefix("baseline_"): v for k, v in arrays.items() if k.startswith("baseline_")
    }
    # Baselines with nothing fitted (a fixed lambda, e.g. the direct inverse: what the problem
    # looks like unregularised) each get a column; of the fitted ones, the best in the primary
    # metric. A baseline no longer registered here counts as fitted.
    for name in [n for n in stored if n in BASELINES and BASELINES.get(n).fixed_lam is not None]:
        columns.append((name.replace("_", " "), stored.pop(name)))
    if stored:
        metric = data.primary_metric
        column = f"final_test_{metric.name}"
        scores = finite_rows(data.baselines, column).groupby("baseline_name")[column].mean()

        def score(name: str) -> float:
            value = (
                float(scores[name])
                if name in scores
                else float(_tile_scores(stored[name], original, metric).mean())
            )
            return metric.oriented(value)

        best = max(stored, key=score)
        columns.append((f"best baseline:\n{best}", stored[best]))
    missing, notes = [], []
    shown = 0
    for label in data.labels:
        runs = data.learned_ok[data.learned_ok["label"] == label].sort_values("seed")
        files = [data.recons_dir / f"{run_id}.npz" for run_id in runs["run_id"]]
        files = [f for f in files if f.exists()]
        if not files:
            if len(runs):
                missing.append(label)
            continue
        if shown == RECON_MAX_STRATEGIES:
            notes.append(
                f"reconstruction grid shows the first {RECON_MAX_STRATEGIES} strategy labels only"
            )
            break
        with np.load(files[0]) as npz:
            x = npz["x"] if "x" in npz.files else None
        if x is None or x.shape != original.shape:
            notes.append(f"{files[0].name}: no array 'x' of shape {original.shape}; not shown")
            continue
        seed = runs[runs["run_id"] == files[0].stem]["seed"].iloc[0]
        seed_text = f" (seed {int(seed)})" if pd.notna(seed) else ""
        columns.append((f"{label}{seed_text}", x))
        shown += 1
    if missing:
        notes.append("no reconstruction file (recons/<run_id>.npz) for: " + ", ".join(missing))
    return ReconColumns(columns, notes)


def plot_reconstructions(data: ReportData) -> Drawn:
    """Grid of the same test images: original, naive reconstruction, baselines and each strategy
    (the primary metric below each tile).

    Drawn as one montage image in a single axes: a grid of dozens of axes costs seconds to lay out.
    Its notes name the runs left out.
    """
    found = recon_columns(data)
    columns = found.columns
    original = columns[0][1]
    n_images = min(RECON_MAX_IMAGES, original.shape[0])
    if n_images == 0:
        raise PlotSkipped("recons/reference.npz holds no images")
    height, width = original.shape[2:]
    gap = max(2, width // 16)  # white gutter between tiles
    band = max(6, int(0.25 * height))  # room under each tile for its score
    metric = data.primary_metric
    canvas = np.ones((n_images * (height + band), len(columns) * (width + gap) - gap, 3))
    fig_width = 1.45 * len(columns) + 0.3
    fig_height = (fig_width - 0.3) * canvas.shape[0] / canvas.shape[1] + 0.9  # + titles
    fig = Figure(figsize=(fig_width, fig_height), layout="constrained")
    ax = fig.subplots()
    centers = []
    for col, (_, images) in enumerate(columns):
        x0 = col * (width + gap)
        centers.append(x0 + width / 2)
        scores = _tile_scores(images[:n_images], original[:n_images], metric)
        for row in range(n_images):
            y0 = row * (height + band)
            image, _ = _to_image(images[row])
            canvas[y0 : y0 + height, x0 : x0 + width] = (
                image[..., None] if image.ndim == 2 else image
            )
            if col > 0:
                ax.text(
                    x0 + width / 2, y0 + height + band / 2,
                    metric.format(scores[row], unit=True),
                    ha="center", va="center", fontsize="x-small",
                )  # fmt: skip
    ax.imshow(canvas, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(centers, [title for title, _ in columns], fontsize="x-small")
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(
        f"Reconstructions of the same test images ({metric.label} vs original)", fontsize="small"
    )
    return Drawn(fig, tuple(found.notes))
