"""Measurement: bytes saved for backward, peak live tensor bytes, step timing, peak memory
(GPU, NVML, RSS).

Each tool measures the same way for every strategy; none knows what is being measured.
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
import warnings
import weakref

import psutil
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from strategies import _implicit


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


class PeakLiveBytes(TorchDispatchMode):
    """Exact peak of live tensor bytes allocated inside a ``with`` block, on any device.

    Every aten op run inside the block is seen (a ``TorchDispatchMode``, below autograd and
    ``torch.func``, so decomposed ops, backward ops, gradients and optimizer updates are all
    seen). Each output storage that is new -- not the storage of one of the op's inputs and not
    already tracked -- is registered once, keyed by (device, data pointer), and a
    ``weakref.finalize`` on its ``UntypedStorage`` subtracts its size when the storage is freed.
    Storages keep their Python object for as long as the C++ storage lives, so the finalizer fires
    exactly at the free; the tracker holds weak references only and never keeps a tensor alive.

    Semantics:

    - ``peak_bytes``: the maximum, over the block, of the bytes of storages allocated inside the
      block and still alive. Tensors that existed before entering (parameters, optimizer state,
      data, earlier gradients) are the baseline and are not counted; freeing one of them inside
      the block is not credited either, so ``peak_bytes`` is the step's own working memory.
      Parameter ``.grad`` tensors created in the block count; so does optimizer state created on
      a first step (measure a later step to leave it out: it then exists before entering).
    - ``live_bytes``: bytes of block-allocated storages alive now (after the block: those that
      outlived it, e.g. new ``.grad`` tensors).
    - Views share their base's storage and add nothing; in-place ops allocate nothing; a
      tracked storage resized by an op (``out=``, ``resize_``) is re-counted at its new size.
    - ``round_to``: each storage counts as its size rounded up to a multiple of ``round_to``
      (and at least one block when non-empty). ``round_to=512`` mimics the CUDA caching
      allocator's block rounding, so that the figure compares with
      ``torch.cuda.max_memory_allocated`` after a reset, minus the bytes allocated at entry.

    Not seen: workspace that a kernel allocates and frees internally, and memory outside torch's
    allocator. It can be large: on the CPU a float64 ``conv2d`` (``_slow_conv2d``) allocates its
    im2col buffer inside the kernel, so for a jfb ReconstructionDEQ step (2 12x12 images, width 4) this
    tracker reports 46,296 B where the profiler's allocator events give 122,632 B (same final
    live bytes). cuDNN workspace is likewise unseen here and included in ``max_memory_allocated``.
    The figure is thus the peak of tensors visible between ops, the same for every strategy.

    Backward: ``loss.backward()`` inside the block is tracked on every device. On the CPU the
    autograd engine runs CPU graphs in the calling thread; for CUDA graphs it runs a worker
    thread, but each graph task carries the caller's ``at::ThreadLocalState``, which includes the
    torch-dispatch-mode stack (ATen/ThreadLocalState.h, ``torch_dispatch_mode_state_``), so the
    mode is active there too; ``tests/test_measure.py`` checks it against
    ``max_memory_allocated`` on a GPU. ``torch.func`` transforms (jvp/vjp) and ``no_grad`` solves
    are seen as plain aten ops.

    Overhead: a Python call per aten op, whatever the tensor sizes; results are unchanged, bit
    for bit. On the shared 2-core CPU, a float64 jfb step on 2 12x12 images (width 4, 30 solver
    iterations, about 2,000 aten ops) took 0.3-0.6 s plain, 1-2 s under a do-nothing dispatch
    mode and about 2.5 s tracked: measure the peak on its own step, never on a timed one. ``torch.distributed._tools.mem_tracker.MemTracker`` works the same way but is
    private API that needs ``torch.distributed`` and reports per-module snapshots that include
    parameters; this class gives the one number the benchmark records.
    """

    def __init__(self, round_to: int = 1):
        super().__init__()
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
            raise ValueError(f"round_to must be a positive int, got {round_to!r}")
        self.round_to = round_to
        self.peak_bytes = 0
        # per-phase peaks: split() closes a phase (see there); the open phase's peak so far
        self.phase_peaks: list[int] = []
        self._phase_peak = 0
        self.n_allocations = 0  # storages registered (for diagnostics)
        self._live = 0
        # key -> (weakref to the storage object, counted bytes, its finalizer)
        self._tracked: dict[tuple, tuple] = {}
        # Finalizers only queue the free (deque.append is atomic): they can run at any bytecode,
        # from the garbage collector or the autograd worker thread, even while this thread is
        # updating the totals. Queued frees are applied before the next op's outputs are added,
        # so no free is ever applied after a later allocation and the peak stays exact.
        self._freed: collections.deque = collections.deque()
        self._lock = threading.Lock()

    @property
    def live_bytes(self) -> int:
        """Bytes of storages allocated inside the block that are alive now."""
        with self._lock:
            self._apply_frees()
            return self._live

    def split(self) -> int:
        """Close the current phase: append its peak (since entering, or the previous split) to
        ``phase_peaks`` and return it. The next phase's peak starts from the bytes alive now
        (what earlier phases left alive counts in it); ``peak_bytes`` stays the whole block's."""
        with self._lock:
            self._apply_frees()
            peak, self._phase_peak = self._phase_peak, self._live
        self.phase_peaks.append(peak)
        return peak

    @property
    def phase_peak_bytes(self) -> int:
        """Peak of the open phase (the whole block when :meth:`split` was never called)."""
        with self._lock:
            return self._phase_peak

    def _apply_frees(self) -> None:
        while self._freed:
            key, ref = self._freed.popleft()
            entry = self._tracked.get(key)
            if entry is not None and entry[0] is ref:
                del self._tracked[key]
                self._live -= entry[1]

    def _size(self, nbytes: int) -> int:
        return -(-nbytes // self.round_to) * self.round_to

    def _register(self, storage: torch.UntypedStorage, key: tuple) -> None:
        nbytes = self._size(storage.nbytes())
        entry = self._tracked.get(key)
        if entry is not None:
            if entry[0]() is storage:  # already tracked: only a resize changes its size
                if nbytes != entry[1]:
                    self._tracked[key] = (entry[0], nbytes, entry[2])
                    self._live += nbytes - entry[1]
                    self._new_peak()
                return
            # the address was reused before the old storage's free was seen: retire it now
            entry[2].detach()
            del self._tracked[key]
            self._live -= entry[1]
        ref = weakref.ref(storage)
        fin = weakref.finalize(storage, self._freed.append, (key, ref))
        fin.atexit = False
        self._tracked[key] = (ref, nbytes, fin)
        self.n_allocations += 1
        self._live += nbytes
        self._new_peak()

    def _new_peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self._live)
        self._phase_peak = max(self._phase_peak, self._live)

    @staticmethod
    def _tensors(obj, found: list) -> list:
        # aten ops take and return only tensors, scalars and (nested) lists/tuples of them:
        # this walk is several times cheaper per op than torch.utils._pytree.tree_flatten.
        if isinstance(obj, torch.Tensor):
            found.append(obj)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                PeakLiveBytes._tensors(item, found)
        elif isinstance(obj, dict):
            for item in obj.values():
                PeakLiveBytes._tensors(item, found)
        return found

    @staticmethod
    def _storage(t: torch.Tensor):
        if t.layout != torch.strided:  # sparse etc.: no single storage to follow
            raise NotImplementedError(f"PeakLiveBytes: {t.layout} tensors are not supported")
        storage = t.untyped_storage()
        return storage, (t.device, storage.data_ptr())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = self._tensors(out, [])
        if not outputs:
            return out
        inputs = {
            self._storage(t)[1]
            for t in self._tensors((args, kwargs), [])
            if t.layout == torch.strided and not t._is_zerotensor()
        }
        # torch.tensor(data) builds its tensor outside the dispatcher and hands it to lift_fresh:
        # that input is a fresh allocation, not a pre-existing one.
        fresh_input = func is torch.ops.aten.lift_fresh.default
        with self._lock:
            self._apply_frees()
            for t in outputs:
                if t._is_zerotensor():  # torch.func's symbolic zeros: no storage, nothing allocated
                    continue
                storage, key = self._storage(t)
                if storage.nbytes() == 0:  # nothing allocated (and data_ptr 0 is shared)
                    continue
                if key in self._tracked or key not in inputs or fresh_input:
                    self._register(storage, key)
        return out


def peak_live_bytes(fn, *args, round_to: int = 1, **kwargs) -> tuple[int, object]:
    """Run ``fn(*args, **kwargs)`` under :class:`PeakLiveBytes`; return (peak bytes, result)."""
    with PeakLiveBytes(round_to=round_to) as tracker:
        result = fn(*args, **kwargs)
    return tracker.peak_bytes, result


# The CUDA caching allocator's block size: every allocation is rounded up to a multiple of it.
CUDA_BLOCK_BYTES = 512


def cuda_allocator_vs_tracked(step, zero_grad) -> tuple[int, int]:
    """(CUDA allocator peak, :class:`PeakLiveBytes` peak in 512-byte blocks) of one ``step()``.

    ``step`` runs once first (optimizer state and library workspaces such as cuBLAS handles are
    created then and persist), ``zero_grad()`` drops the gradients, and the second call is
    measured both ways above the memory allocated before it. Counted in the allocator's blocks,
    the tracker should equal the allocator's peak, except for library workspaces that are no
    tensors (cuDNN, cuFFT, cuSOLVER): the gap between the two is theirs.
    """
    step()
    zero_grad()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with PeakLiveBytes(round_to=CUDA_BLOCK_BYTES) as blocks:
        step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, blocks.peak_bytes


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
    """Peak memory over the windows in which it is entered (``with memory:``), e.g. training
    steps only, so that evaluation and diagnostics between them do not count.

    - ``gpu_bytes``: the largest ``torch.cuda.max_memory_allocated`` over the windows, each taken
      after a reset at the window's start (tensors only), or None off CUDA;
    - ``gpu_device_bytes``: peak NVML device used memory, sampled inside windows (None where NVML
      is absent);
    - ``rss_bytes``: peak resident set size of this process, sampled inside windows. ``ru_maxrss``
      cannot be reset between runs in one process, so a sampler thread reads psutil instead; the
      figure includes the interpreter and whatever earlier runs left allocated.

    Sampling runs in a thread while :meth:`sampling` is active; outside it each window is sampled
    at its start and end only.
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
        self._active = threading.Event()
        self._process = psutil.Process()

    def _sample(self) -> None:
        rss = self._process.memory_info().rss
        self.rss_bytes = max(self.rss_bytes, rss)
        if self._nvml is not None:
            self.gpu_device_bytes = max(self.gpu_device_bytes or 0, self._nvml.used())

    @contextlib.contextmanager
    def sampling(self):
        """Run the sampler thread for the duration of the block (it samples inside windows)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.interval_s):
                if self._active.is_set():
                    self._sample()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    @contextlib.contextmanager
    def paused(self):
        """Leave the window for the block (work that is no part of the step, such as the
        adjoint bound), and open a new one after it; the peaks keep the maximum over windows."""
        self.__exit__(None, None, None)
        try:
            yield self
        finally:
            self.__enter__()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sample()
        self._active.set()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device))
            self.gpu_bytes = max(self.gpu_bytes or 0, peak)
        self._sample()
        self._active.clear()


def device_name(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"


class JacobianProducts:
    """Jacobian products of the layer f inside ``with`` blocks, counted by the harness: the
    device-independent cost unit of a gradient strategy, whatever the strategy reports.

    - J^T u: every gradient that flows back through an output of f. :meth:`strategy` hands the
      strategy a layer whose outputs that require grad carry a counting hook, so each
      vector-Jacobian product through f counts, by whoever takes it: the ``strategies.Jacobian``
      tool (neumann, cg, gmres), torchdeq's own ``autograd.grad`` calls, backprop through
      unrolled's k layers or jfb's one, and the final v^T df/dtheta of every implicit strategy.
    - J u: every product of the ``strategies.Jacobian`` tool (its double-backward J u; building
      that map once costs one more, counted, J^T product). Forward-mode products a strategy takes
      by other means are not seen.

    Evaluations of f without grad (the forward solver's iterations) are not products.
    """

    def __init__(self):
        self.jvp = 0  # J u
        self.vjp = 0  # J^T u

    @property
    def total(self) -> int:
        return self.jvp + self.vjp

    def _count_vjp(self, grad):
        self.vjp += 1  # returns None: the gradient passes unchanged

    def _count_jvp(self) -> None:
        self.jvp += 1

    def layer(self, f):
        """f whose outputs count the products taken through them."""

        def counted(z, *args, **kwargs):
            out = f(z, *args, **kwargs)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(self._count_vjp)
            return out

        return counted

    def strategy(self, strategy):
        """``strategy`` as the harness calls it: with the counted layer."""
        return lambda f, z0, solver: strategy(self.layer(f), z0, solver)

    def __enter__(self) -> JacobianProducts:
        _implicit.JVP_LISTENERS.append(self._count_jvp)
        return self

    def __exit__(self, *exc) -> None:
        _implicit.JVP_LISTENERS.remove(self._count_jvp)


FORWARD_KEYS = ("forward_iters", "forward_residual", "forward_converged")


class RecordingSolver:
    """The forward solver as the harness hands it to a strategy: it records each solve's
    statistics itself, so that a strategy can neither omit nor invent them.

    :meth:`merge` returns a strategy's ``info`` with the ``forward_*`` entries replaced by the
    recorded ones (over several solves in one step: iterations summed, the worst residual,
    converged only if every solve was). A strategy that never called the solver keeps its own
    ``forward_*`` entries: unrolled runs k iterations and reports no ``forward_converged`` (NaN:
    no solve that could converge); shine runs its own Broyden solve (it needs the solver's
    internal state, which torchdeq does not return) and reports its statistics.

    The wrapped solver's settings (``name``, ``max_iter``, ``tol``, ...) read through, so that a
    strategy running its own solve can use the suite's settings.
    """

    def __init__(self, solver):
        self.solver = solver
        self.calls: list[dict[str, float]] = []

    def __getattr__(self, name):
        if name in ("solver", "calls"):  # not yet set (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.solver, name)

    def __call__(self, f, z0):
        z, info = self.solver(f, z0)
        self.calls.append({k: float(info[k]) for k in FORWARD_KEYS})
        return z, info

    def merge(self, info: dict) -> dict:
        if not self.calls:
            return {"forward_converged": math.nan, **info}
        recorded = {
            "forward_iters": sum(c["forward_iters"] for c in self.calls),
            "forward_residual": max(c["forward_residual"] for c in self.calls),
            "forward_converged": float(all(c["forward_converged"] == 1.0 for c in self.calls)),
        }
        return {**{k: v for k, v in info.items() if not k.startswith("forward_")}, **recorded}
