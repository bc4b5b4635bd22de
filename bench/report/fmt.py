"""Formatting numbers, intervals and statuses as the report's cells and sentences show them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

DASH = "—"


def fmt_value(value) -> str:
    """A recorded setting value as text (integers without ``.0``; DASH when not recorded)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


def fmt_seconds(value: float) -> str:
    if pd.isna(value):
        return DASH
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"


def fmt_bytes(value: float) -> str:
    if pd.isna(value):
        return DASH
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def fmt_number(value: float, pattern: str = "{:.3g}") -> str:
    return DASH if pd.isna(value) else pattern.format(value)


def fmt_estimate(estimate, digits: int) -> str:
    """``mean ± half-width`` of the 95 % interval; one seed: no interval, said so. Infinite
    values (a perfect PSNR) are no numbers to average: they are counted apart."""
    if estimate.n == 0:
        return _infinite(estimate) or DASH
    if not estimate.has_interval:
        text = f"{estimate.mean:.{digits}f} (1 seed: no CI)"
    else:
        text = f"{estimate.mean:.{digits}f} ± {estimate.half_width:.{digits}f}"
    extra = _infinite(estimate)
    return f"{text}; {extra} not in the mean" if extra else text


def _infinite(estimate) -> str:
    """``+inf in 3 seeds`` for the infinite values an estimate left out ("" when none)."""
    count = getattr(estimate, "infinite", 0)
    if not count:
        return ""
    value = estimate.infinite_mean
    shown = "±inf" if math.isnan(value) else ("+inf" if value > 0 else "-inf")
    return f"{shown} in {count} seed{'s' if count > 1 else ''}"


def fmt_interval(estimate, digits: int) -> str:
    return f"[{estimate.low:+.{digits}f}, {estimate.high:+.{digits}f}]"


def fmt_difference(estimate, digits: int, unit: str = "") -> str:
    """A difference with its interval and verdict: significant, or "no significant difference"."""
    if estimate is None or (isinstance(estimate, float) and math.isnan(estimate)):
        return DASH
    if estimate.n == 0:
        return _no_difference(estimate)
    value = f"{estimate.mean:+.{digits}f}{unit}"
    if not estimate.has_interval:
        return f"{value} (1 seed: CI not available)"
    interval = fmt_interval(estimate, digits)
    if estimate.significant:
        return f"{value} {interval}"
    return f"no significant difference ({value} {interval})"


def _no_difference(estimate) -> str:
    if getattr(estimate, "infinite", 0):
        return f"no finite difference: {_infinite(estimate)}"
    return "no common seeds"


def verdict(estimate) -> str:
    if estimate.n == 0:
        return _no_difference(estimate)
    if not estimate.has_interval:
        return "CI not available (1 seed)"
    return "significant" if estimate.significant else "no significant difference"


def status_counts(statuses: pd.Series) -> str:
    """``"2 ok, 1 diverged"``: how many runs ended in each status."""
    counts = statuses.value_counts()
    order = ["ok", "diverged", "failed"] + sorted(set(counts.index) - {"ok", "diverged", "failed"})
    return ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
