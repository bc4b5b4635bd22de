"""One registry pattern for every plug-in kind but strategies (tasks, metrics, data sets, forward
solvers, baselines): a decorator that adds an entry under a name, and one error for a name that
is not there, ``unknown <kind> 'x'; accepted: a, b``.

    TASKS = Registry("task")

    @TASKS.register("blur")
    class GaussianBlur(Task): ...

    TASKS.get("blur")  # the class; TASKS.get("x") raises ValueError
    list(TASKS)        # registered names, in registration order

Strategies keep their own registry (``strategies/__init__.py``): it also discovers files and
entry points and reports broken plugins, which none of these kinds need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry for one kind of plug-in; iterating gives the names in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under ``name`` (returned unchanged).

        A name already taken by another object is a ValueError naming both, so a second
        plug-in never silently replaces the first; registering the same object again is a no-op.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty str name, got {name!r}")

        def add(entry: T) -> T:
            other = self._entries.get(name)
            if other is not None and other is not entry:
                raise ValueError(
                    f"{self.kind} name {name!r} is taken by {_describe(other)}; "
                    f"{_describe(entry)} cannot register it too"
                )
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """The entry registered under ``name``; ValueError naming the accepted names otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a config file
            raise ValueError(
                f"unknown {self.kind} {name!r}; accepted: {', '.join(self._entries) or 'none'}"
            ) from None

    def unregister(self, name: str) -> None:
        """Remove the entry under ``name`` (ValueError naming the accepted names if none).

        For tests and interactive sessions that register a temporary plug-in; a run never
        removes one.
        """
        self.get(name)
        del self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self):
        return self._entries.items()

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


def _describe(entry: object) -> str:
    module = getattr(entry, "__module__", None)
    name = getattr(entry, "__qualname__", None) or repr(entry)
    return f"{module}.{name}" if module else name
