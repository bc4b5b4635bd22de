"""Measurement: bytes saved for backward, step timing, and peak memory (GPU, NVML, RSS).

Each tool measures the same way for every strategy; none knows what is being measured.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings

import psutil
import torch


class SavedBytes:
    """Bytes autograd saves for backward inside a ``with`` block, de-duplicated by storage.

    Exact and device-independent: a ReLU output that is also the next conv's input is one
    storage and is counted once; views count their whole storage once.
    """

    def __init__(self):
        self.storages: dict[tuple, int] = {}

    @property
    def total(self) -> int:
        return sum(self.storages.values())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. sparse or wrapper tensors: no storage
            key, nbytes = ("no-storage", id(t)), t.numel() * t.element_size()
        else:
            key, nbytes = (str(t.device), storage.data_ptr()), storage.nbytes()
        self.storages[key] = max(self.storages.get(key, 0), nbytes)
        return t

    @contextlib.contextmanager
    def count(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self


def saved_bytes(fn, *args, **kwargs) -> tuple[int, object]:
    """Run ``fn(*args, **kwargs)`` and return (bytes saved for backward, its result)."""
    counter = SavedBytes()
    with counter.count():
        result = fn(*args, **kwargs)
    return counter.total, result


class StepClock:
    """Marks phase boundaries of a step; CUDA events on a GPU, ``perf_counter`` on the CPU.

    On CUDA no synchronisation happens between marks: ``durations`` synchronises once, at the end.
    """

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def durations(self, marks: list) -> list[float]:
        """Seconds between consecutive marks."""
        if self.cuda:
            marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(marks[:-1], marks[1:], strict=True)]
        return [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]


class _Nvml:
    """Device-level used memory via NVML (sees the CUDA context and library handles too)."""

    def __init__(self, device: torch.device):
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        self._pynvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def used(self) -> int:
        return int(self._pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)


class PeakMemory:
    """Peak memory over a ``with`` block.

    - ``gpu_bytes``: ``torch.cuda.max_memory_allocated`` after a reset (tensors only), or None;
    - ``gpu_device_bytes``: peak NVML device used memory, sampled (None where NVML is absent);
    - ``rss_bytes``: peak resident set size of this process, sampled. ``ru_maxrss`` cannot be
      reset between runs in one process, so a sampler thread reads psutil instead; the figure
      includes the interpreter and whatever earlier runs left allocated.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.01):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.gpu_bytes: int | None = None
        self.gpu_device_bytes: int | None = None
        self.rss_bytes = 0
        self._nvml = None
        if self.device.type == "cuda":
            try:
                self._nvml = _Nvml(self.device)
            except Exception as err:  # no NVML library: say so, record None
                warnings.warn(f"NVML unavailable, device memory not recorded: {err}", stacklevel=2)
        self._stop = threading.Event()
        self._process = psutil.Process()

    def _sample(self) -> None:
        rss = self._process.memory_info().rss
        self.rss_bytes = max(self.rss_bytes, rss)
        if self._nvml is not None:
            self.gpu_device_bytes = max(self.gpu_device_bytes or 0, self._nvml.used())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.gpu_bytes = int(torch.cuda.max_memory_allocated(self.device))
        self._stop.set()
        self._thread.join()
        self._sample()


def device_name(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"
