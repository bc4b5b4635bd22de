"""Where a run computes and in what precision: the device a setting names, the run's dtype,
true float32 on CUDA, and the cores this process may use."""

from __future__ import annotations

import os

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; a device that is not there is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; accepted: auto, cpu, cuda, cuda:N")
    return device


def strict_fp32(device: torch.device) -> None:
    """Turn off TF32 for CUDA convolutions and matrix products (process-wide).

    PyTorch lets cuDNN convolutions use TF32 by default: a 10-bit mantissa, relative error about
    1e-3, the size of the forward solver's tolerance. On an H100 it capped the float32 gradient
    error of cg at 1.6e-4 against the float64 reference even at tol 1e-7, so fixed-point residuals
    and gradient fidelity would measure TF32 rounding, not the strategy. The harness compares
    strategies in true float32 on every device.
    """
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; the machine's count where the platform
    has no affinity call, e.g. macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
