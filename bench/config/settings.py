"""How a config field declares its default and its valid range, and how a section checks them.

Each field of a config section (:mod:`bench.config.sections`) is declared with :func:`setting`,
or built from a plug-in's :class:`strategies.Param` (a task's ``[problem]`` settings, a solver's
``[solver]`` options) with :func:`param_fields`; a section's ``__post_init__`` calls
:func:`check_ranges`, so an out-of-range value is refused when a suite is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import Field, dataclass, field, fields
from typing import Any

from strategies import Param

# Every integer is stored as int64 (torch, the tables' Parquet copies): a larger one is no setting.
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Range:
    """The valid values of a setting: bounds (``gt``/``ge``/``lt``/``le``), choices, oddness.

    Floats must also be finite. Declared next to each field with :func:`setting`.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    # a tuple, or a registry (its names, read when checked: plug-ins registered later count)
    choices: Collection | None = None
    odd: bool = False

    def describe(self) -> str:
        rules = [f"{op} {b if isinstance(b, int) else format(b, 'g')}"
                 for op, b in ((">=", self.ge), (">", self.gt), ("<", self.lt), ("<=", self.le))
                 if b is not None]  # fmt: skip
        if self.odd:
            rules.append("odd")
        if self.choices:
            rules.append("one of " + ", ".join(map(str, self.choices)))
        return " and ".join(rules)

    def ok(self, value: Any) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.choices is not None:
            return value in self.choices
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
            or (self.odd and value % 2 != 1)
        )


def setting(default: Any, **rule: Any) -> Any:
    """A config field with its default and its valid range (see :class:`Range`).

    An integer setting must declare an upper bound (``le``/``lt``) or its choices: an absurd
    value (a width of 10^20) is refused when the suite is loaded, with the accepted range,
    instead of failing every run."""
    bounded = {"le", "lt", "choices"} & set(rule)
    if isinstance(default, int) and not isinstance(default, bool) and not bounded:
        raise TypeError(f"integer setting (default {default!r}) declared without an upper bound")
    return field(default=default, metadata={"range": Range(**rule)})


def param_fields(declared: Iterable[tuple[str, Param]]) -> list[tuple[str, type, Field]]:
    """Plug-in settings (name, :class:`strategies.Param`) as ``make_dataclass`` fields, each
    with the Param's default and range; a name declared twice is one field (the registries
    check that its declarations agree in type and default)."""
    out: dict[str, tuple[str, type, Field]] = {}
    for key, p in declared:
        rule = Range(ge=p.ge, gt=p.gt, le=p.upper, choices=p.choices)
        out.setdefault(key, (key, p.type, field(default=p.default, metadata={"range": rule})))
    return list(out.values())


def check_ranges(obj: Any) -> None:
    """ValueError naming the first field of ``obj`` (a config section) outside its range."""
    for f in fields(obj):
        rule = f.metadata.get("range")
        value = getattr(obj, f.name)
        if rule is not None and not rule.ok(value):
            raise ValueError(f"{f.name} must be {rule.describe()}, got {value!r}")
