"""Gradient strategies for implicit networks, and their registry.

    from strategies import Strategy, get_strategy, list_strategies, register
    strategy = get_strategy("cg", tol=1e-6, max_iter=100)
    z, info = strategy(f, z0, solver)

Every module in this folder (not starting with ``_``) is imported on first use, and installed
packages add strategies through the entry-point group ``implicit_bench.strategies``.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from ._base import Info, Param, Strategy

__all__ = [
    "Info",
    "Param",
    "Strategy",
    "get_strategy",
    "list_strategies",
    "parse_spec",
    "register",
    "strategy_class",
]

ENTRY_POINT_GROUP = "implicit_bench.strategies"
_REGISTRY: dict[str, type[Strategy]] = {}
_discovered = False


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add a :class:`Strategy` subclass to the registry under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"@register expects a Strategy subclass, got {cls!r}")
    if not cls.name or not isinstance(cls.name, str):
        raise ValueError(f"strategy class {cls.__qualname__} needs a non-empty str `name`")
    bad = [k for k, p in cls.parameters.items() if not isinstance(p, Param)]
    if bad:
        raise TypeError(f"strategy {cls.name!r}: parameters {bad} must be declared as Param(...)")
    other = _REGISTRY.get(cls.name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise ValueError(
            f"strategy name {cls.name!r} is taken by {other.__module__}.{other.__qualname__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as err:  # a broken plugin must not pass silently
            raise RuntimeError(
                f"could not load strategy plugin {ep.name!r} ({ep.value}): {err}"
            ) from err
        if isinstance(obj, type) and issubclass(obj, Strategy):
            register(obj)


def list_strategies() -> list[str]:
    """Names of all registered strategies, sorted."""
    _discover()
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    """The registered class for ``name``; ValueError listing the known names otherwise."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown strategy {name!r}; accepted: {', '.join(sorted(_REGISTRY)) or 'none'}"
        )
    return _REGISTRY[name]


def get_strategy(name: str, **params) -> Strategy:
    """Instantiate strategy ``name`` with keyword parameters (validated)."""
    return strategy_class(name)(**params)


def parse_spec(spec: str) -> Strategy:
    """Build a strategy from ``name`` or ``name:key=value:key=value`` (the CLI form)."""
    name, *pairs = spec.strip().split(":")
    cls = strategy_class(name)
    params = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"strategy spec {spec!r}: expected key=value, got {pair!r}")
        if key not in cls.parameters:
            raise ValueError(
                f"strategy {name!r}: unknown parameter {key!r}; accepted: {cls.accepted()}"
            )
        try:
            params[key] = cls.parameters[key].parse(text)
        except ValueError as err:
            raise ValueError(f"strategy {name!r}: bad value for {key}: {err}") from None
    return cls(**params)
