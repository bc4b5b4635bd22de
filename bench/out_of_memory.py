"""Running out of memory, told in one line: what did not fit and the setting to lower.

torch reports an allocation that fails as a ``RuntimeError`` ("DefaultCPUAllocator: can't
allocate memory: you tried to allocate N bytes", on the CPU) or a ``torch.OutOfMemoryError``
("CUDA out of memory. Tried to allocate 10.00 GiB ...", a subclass), Python as a
``MemoryError``. :func:`during` turns any of them, raised inside one phase of the work, into an
:class:`OutOfMemory` naming that phase, the allocation and the settings that size it. A run that
runs out of memory is then a failed run with that line as its reason (the sweep goes on); the
data check before training reports it as bad input (exit 2).
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
