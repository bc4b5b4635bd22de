"""Running out of memory, told in one line: what did not fit and the setting to lower.

torch reports an allocation that fails as a ``RuntimeError`` ("DefaultCPUAllocator: can't
allocate memory: you tried to allocate N bytes", on the CPU) or a ``torch.OutOfMemoryError``
("CUDA out of memory. Tried to allocate 10.00 GiB ...", a subclass), Python as a
``MemoryError``. :func:`during` turns any of them, raised inside one phase of the work, into an
:class:`OutOfMemory` naming that phase, the allocation and the settings that size it. A run that
runs out of memory is then a failed run with that line as its reason (the sweep goes on); the
data check before training reports it as bad input (exit 2). Before training,
:func:`minimum_run_bytes` bounds a run's needs from its settings, so that a run which cannot
fit is warned about (:func:`fit_warning`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

# "you tried to allocate 10737418240 bytes" (CPU) or "Tried to allocate 10.00 GiB" (CUDA)
_ALLOCATION = re.compile(
    r"tried to allocate (?:(?P<bytes>\d+) bytes|(?P<size>[\d.]+ [KMGTP]?i?B))", re.IGNORECASE
)
_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


class OutOfMemory(ValueError):
    """An allocation did not fit; the message is one line naming where and what to lower."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (not yet told as an :class:`OutOfMemory`)."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(m in text for m in _MESSAGES)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def allocation(err: BaseException) -> str:
    """What the failed allocation asked for, from torch's message ("could not allocate 10.0
    GiB"), or "an allocation failed" when the message does not say."""
    match = _ALLOCATION.search(str(err))
    if match is None:
        return "an allocation failed"
    size = _bytes(int(match["bytes"])) if match["bytes"] else match["size"]
    return f"could not allocate {size}"


def describe(err: BaseException, what: str, lower: str) -> str:
    """The one line: ``out of memory <what> (<allocation>); lower <lower>``."""
    return f"out of memory {what} ({allocation(err)}); lower {lower}"


@contextlib.contextmanager
def during(what: str, lower: str) -> Iterator[None]:
    """Raise an allocation failure inside the block as :class:`OutOfMemory` (``what`` says
    where, e.g. "in a training step (batch of 16 images)"; ``lower`` the settings to lower).

    An :class:`OutOfMemory` from an inner block passes unchanged: the innermost phase names it.
    The original error stays chained (``__cause__``) for the run's ``error.log``.
    """
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        raise OutOfMemory(describe(err, what, lower)) from err


def minimum_run_bytes(
    *,
    n_train: int,
    n_test: int,
    image_shape: tuple[int, int, int],
    batch_size: int,
    width: int,
    depth: int,
    dtype_bytes: int,
    on_gpu: bool,
) -> dict[str, int]:
    """A lower bound on a run's peak memory from its settings: ``{"host": ..., "gpu": ...}``.

    Counted: the data set held in float64 on the host (training images, test images and their
    measurements); on the run's device, the data in the run's dtype (on the host a float64 run
    shares those tensors), the activations one application of the network saves for backward
    (each hidden layer's activation, ``(depth - 1) width`` values per pixel, plus the input and
    output) for one batch, and the test set's reconstructions. Not counted:
    the solver's history, a strategy's extra saved iterates (unrolled:k saves k applications),
    the optimiser, the allocator's overhead; so a run needs at least this much, usually more.
    """
    channels, height, width_px = image_shape
    image = channels * height * width_px
    pixels = height * width_px
    data = (n_train + 2 * n_test) * image
    host = data * 8
    device = 0 if (not on_gpu and dtype_bytes == 8) else data * dtype_bytes
    step = batch_size * pixels * ((depth - 1) * width + 2 * channels) * dtype_bytes
    recon = n_test * image * dtype_bytes
    if on_gpu:
        return {"host": host, "gpu": device + step + recon}
    return {"host": host + device + step + recon, "gpu": 0}


def available_bytes(device: torch.device) -> int:
    """Memory free for new allocations: the GPU's free memory (``torch.cuda.mem_get_info``) on
    CUDA, else the host's available memory (``psutil``)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def fit_warning(run_id: str, need: int, at_once: int, available: int, where: str) -> str | None:
    """The one-line warning when ``at_once`` runs of ``need`` bytes each exceed ``available``
    (None when they fit)."""
    if need * at_once <= available:
        return None
    many = f", {at_once} at once" if at_once > 1 else ""
    return (
        f"{run_id} and the runs sharing its setting need at least {_bytes(need)} of {where} "
        f"memory each{many}, more than the {_bytes(available)} available: they will likely fail "
        "out of memory; lower train.batch_size, model.width, the image size"
        + (" or -j" if at_once > 1 else "")
    )
