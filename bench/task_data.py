"""The data a run sees: a (data, problem) setting's task, its images and the fixed test
measurements, loaded once per setting and fingerprinted (the fingerprint is part of each run's
identity)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from functools import cache

import torch

from .config import DataConfig, ProblemConfig, RunConfig, Suite
from .data import load_dataset
from .metrics import mean_metrics
from .out_of_memory import during
from .tasks import Task, make_task

TEST_NOISE_SEED = 10_000  # test measurements are the same for every run and seed
# The settings that size a run's tensors, named when it runs out of memory.
IMAGE_SETTINGS = "the image size (data.patch_size or data.image_size)"
DATA_SETTINGS = f"data.n_images or {IMAGE_SETTINGS}"


@dataclass
class TaskData:
    """The task, its data and fixed test measurements for one (data, problem) setting, on the
    CPU in float64."""

    task: Task
    train_x: torch.Tensor
    test_x: torch.Tensor
    test_d: torch.Tensor
    # metric name -> mean over the test images of the task's naive reconstruction (e.g. the
    # blurred input): the reference every run is compared to
    naive_metrics: dict[str, float]
    fingerprint: str = ""  # of the images loaded: part of each run's identity (fingerprinted_runs)


@cache
def load_task_data(data: DataConfig, problem: ProblemConfig) -> TaskData:
    """Load the data set and simulate the fixed test measurements (cached per setting).

    Running out of memory here is an :class:`OutOfMemory` (a ValueError: before training, the
    command stops with one line and exit 2) naming the data set and what to lower.
    """
    with during(f"loading data set {data.dataset!r} and scoring its test set", DATA_SETTINGS):
        return _load_task_data(data, problem)


def _load_task_data(data: DataConfig, problem: ProblemConfig) -> TaskData:
    images = load_dataset(
        data.dataset,
        root=data.root or None,
        image_size=data.image_size or None,
        n_images=data.n_images or None,
        test_fraction=data.test_fraction,
        patch_size=data.patch_size,
        channels=data.channels or None,
    )
    task = make_task(problem)
    h, w = images.train.shape[-2:]
    try:  # checked on the suite already where the size was known then (bench.config)
        task.check_image_size(int(h), int(w))
    except ValueError as err:
        raise ValueError(
            f"task {problem.task!r} cannot take the {h}x{w} images of data set "
            f"{data.dataset!r}: {err}"
        ) from None
    train_x, test_x = images.train.double(), images.test.double()
    test_d = task.simulate(test_x, torch.Generator().manual_seed(TEST_NOISE_SEED))
    naive = mean_metrics(task.naive(test_d), test_x)
    return TaskData(task, train_x, test_x, test_d, naive, _fingerprint(images.train, images.test))


def _fingerprint(*tensors: torch.Tensor) -> str:
    """A content hash of the loaded images (shapes and values): the data a run really saw."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(repr(tuple(t.shape)).encode())
        digest.update(t.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


def fingerprinted_runs(suite: Suite) -> list[RunConfig]:
    """The suite's runs, each carrying the fingerprint of the images its data setting loads."""
    return [
        dataclasses.replace(run, data_fingerprint=load_task_data(run.data, run.problem).fingerprint)
        for run in suite.runs()
    ]
