"""Gradient strategies for implicit networks, and their registry.

    from strategies import Strategy, get_strategy, list_strategies, register
    strategy = get_strategy("cg", tol=1e-6, max_iter=100)
    z, info = strategy(f, z0, solver)

Every module in this folder (not starting with ``_``) is imported on first use, and installed
packages add strategies through the entry-point group ``implicit_bench.strategies``. A module or
plugin that fails to load is reported (a warning on stderr, and ``broken_strategies()``) with its
file and error while the others load; a name claimed by two classes is an error naming both
files, and neither class is used.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from importlib.metadata import entry_points

from ._base import Info, Param, Strategy, WeightedOutputs, final_output, weighted_loss
from ._implicit import Jacobian, batch_dot, implicit_output

__all__ = [
    "Info",
    "Jacobian",
    "Param",
    "Strategy",
    "WeightedOutputs",
    "final_output",
    "weighted_loss",
    "batch_dot",
    "implicit_output",
    "broken_strategies",
    "get_strategy",
    "list_strategies",
    "parse_spec",
    "register",
    "strategy_class",
    "unregistered_strategies",
]

ENTRY_POINT_GROUP = "implicit_bench.strategies"
_REGISTRY: dict[str, type[Strategy]] = {}
_BROKEN: dict[str, str] = {}  # module file or plugin -> why it did not load
_UNREGISTERED: dict[str, str] = {}  # strategy file -> a named Strategy class it did not register
_CONFLICTS: dict[str, str] = {}  # strategy name claimed twice -> the message naming both files
_discovered = False


class NameClash(ValueError):
    """Two different strategy classes claim one name."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


def _source(cls: type) -> str:
    try:
        return inspect.getsourcefile(cls) or cls.__module__
    except TypeError:  # defined in a string (exec), not a file
        return cls.__module__


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add a :class:`Strategy` subclass to the registry under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"@register expects a Strategy subclass, got {cls!r}")
    if not cls.name or not isinstance(cls.name, str):
        raise ValueError(f"strategy class {cls.__qualname__} needs a non-empty str `name`")
    bad = [k for k, p in cls.parameters.items() if not isinstance(p, Param)]
    if bad:
        raise TypeError(f"strategy {cls.name!r}: parameters {bad} must be declared as Param(...)")
    unknown = [k for k in cls.cost_params if k not in cls.parameters]
    if unknown or not isinstance(cls.exact, bool):
        raise TypeError(
            f"strategy {cls.name!r}: cost_params {unknown} are not declared parameters"
            if unknown
            else f"strategy {cls.name!r}: exact must be True or False, got {cls.exact!r}"
        )
    if not isinstance(cls.has_adjoint, bool):
        raise TypeError(
            f"strategy {cls.name!r}: has_adjoint must be True or False, got {cls.has_adjoint!r}"
        )
    other = _REGISTRY.get(cls.name)
    # The same class defined again (a module re-executed) replaces itself; any other class
    # claiming a taken name is an error, so a stray copy of a file never silently wins.
    same = other is not None and (other.__module__, other.__qualname__) == (
        cls.__module__,
        cls.__qualname__,
    )
    if other is not None and not same:
        raise NameClash(
            cls.name,
            f"strategy name {cls.name!r} is claimed twice: by {other.__qualname__} in "
            f"{_source(other)} and by {cls.__qualname__} in {_source(cls)}",
        )
    _REGISTRY[cls.name] = cls
    return cls


def _broken(source: str, err: BaseException) -> None:
    problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    _BROKEN[source] = problem
    if isinstance(err, NameClash):
        _REGISTRY.pop(err.name, None)  # ambiguous: neither class is used
        _CONFLICTS[err.name] = str(err)
    print(
        f"implicit-bench: warning: strategy {source} could not be loaded: {problem}",
        file=sys.stderr,
    )


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True  # set first: a module importing ``strategies`` must not recurse here
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            try:
                module = importlib.import_module(f"{__name__}.{mod.name}")
            except Exception as err:  # one broken file must not take the others down
                _broken(_module_file(mod), err)
            else:
                _warn_unregistered(module, _module_file(mod))
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, Strategy):
                register(obj)
        except Exception as err:  # a broken plugin must not pass silently
            _broken(f"plugin {ep.name!r} ({ep.value})", err)


def _warn_unregistered(module, source: str) -> None:
    """A Strategy subclass defined in a strategies file but never registered is almost always a
    forgotten ``@register``: say so, instead of the strategy silently not existing."""
    registered = set(_REGISTRY.values())
    for obj in vars(module).values():
        if (
            isinstance(obj, type)
            and issubclass(obj, Strategy)
            and obj.__module__ == module.__name__
            and obj.name
            and obj not in registered
        ):
            _UNREGISTERED[source] = obj.__qualname__
            print(
                f"implicit-bench: warning: {source} defines strategy class {obj.__qualname__} "
                f"({obj.name!r}) but does not register it: add @register",
                file=sys.stderr,
            )


def unregistered_strategies() -> dict[str, str]:
    """Strategy files defining a named Strategy subclass without ``@register``: file -> class."""
    _discover()
    return dict(_UNREGISTERED)


def _module_file(mod: pkgutil.ModuleInfo) -> str:
    path = getattr(mod.module_finder, "path", "")
    return f"{path}/{mod.name}.py" if path else mod.name


def broken_strategies() -> dict[str, str]:
    """Strategy modules and plugins that failed to load: their file (or plugin) -> the error."""
    _discover()
    return dict(_BROKEN)


def list_strategies() -> list[str]:
    """Names of all registered strategies, sorted."""
    _discover()
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    """The registered class for ``name``; ValueError listing the known names otherwise."""
    _discover()
    if name in _CONFLICTS:
        raise ValueError(f"{_CONFLICTS[name]}; remove one of them")
    if name not in _REGISTRY:
        broken = "; ".join(f"{source}: {problem}" for source, problem in _BROKEN.items())
        raise ValueError(
            f"unknown strategy {name!r}; accepted: {', '.join(sorted(_REGISTRY)) or 'none'}"
            + (f" (failed to load: {broken})" if broken else "")
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
        if key in params:
            raise ValueError(f"strategy spec {spec!r}: parameter {key!r} is given twice")
        try:
            params[key] = cls.parameters[key].parse(text)
        except ValueError as err:
            raise ValueError(f"strategy {name!r}: bad value for {key}: {err}") from None
    return cls(**params)
