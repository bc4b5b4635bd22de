"""A suite file (TOML), or a suite with command-line overrides, -> a validated :class:`Suite`.

Every key is checked: an unknown one, a value of the wrong type or out of its declared range
is a ValueError naming the file (or command-line item), section and key, raised before any
run (see :mod:`bench.config` for the file's sections).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from strategies import parse_spec

from ..data import expected_image_size
from ..tasks import make_task
from .sections import SECTIONS, DataConfig
from .settings import INT64_MAX
from .suite import Suite

SUITES_DIR = Path(__file__).parent.parent / "suites"
# A suite's name becomes a folder name (results/<name>): no separators, no leading dot.
SUITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_SEEDS = 10_000  # seeds = N runs N seeds per strategy and sweep point
TOP_KEYS = ("name", "strategies", "seeds", "baselines", "sweep", *SECTIONS)


def _check_value(where: str, key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise ValueError(
            f"{where}: {key} must be {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _section(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table, got {raw!r}")
    defaults = {f.name: f.default for f in fields(cls)}
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(defaults)}"
        )
    values = {k: _check_value(where, k, v, defaults[k]) for k, v in raw.items()}
    try:
        return cls(**values)
    except ValueError as err:  # a value out of its declared range
        raise ValueError(f"{where}: {err}") from None


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SEEDS:
        return tuple(range(value))
    if (
        isinstance(value, list)
        and 0 < len(value) <= MAX_SEEDS
        and all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= INT64_MAX for s in value
        )
    ):
        _no_duplicates(value, f"{where}: seeds")
        return tuple(value)
    raise ValueError(
        f"{where}: seeds must be an int in [1, {MAX_SEEDS}] or a list of at most {MAX_SEEDS} "
        f"ints in [0, 2^63 - 1], got {value!r}"
    )


def _no_duplicates(values, what: str) -> None:
    repeated = sorted({repr(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(
            f"{what} lists {', '.join(repeated)} more than once: the same run would be "
            "trained and counted twice"
        )


def _strategies(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [s for s in value.split(",") if s.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise ValueError(f"{where}: strategies must be a non-empty list of strings, got {value!r}")
    labels = []
    for spec in value:
        try:
            # Only the parameters that differ from their defaults: a strategy gaining a new
            # parameter (with a default) keeps its runs' labels and ids.
            labels.append(parse_spec(spec).short_label)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return tuple(dict.fromkeys(labels))  # canonical labels, duplicates dropped


def _sweep(raw: Any, where: str, sections: dict) -> tuple[tuple[str, tuple], ...]:
    if not isinstance(raw, dict):
        raise ValueError(f'{where}: [sweep] must be a table of "section.key" = [values]')
    out = []
    for key, values in raw.items():
        section, _, attr = key.partition(".")
        if section not in SECTIONS or attr not in {f.name for f in fields(SECTIONS[section])}:
            raise ValueError(f'{where}: [sweep] key {key!r} is not a known "section.key"')
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: [sweep] {key} must be a non-empty list")
        default = getattr(sections[section], attr)
        checked = [_check_value(f"{where} [sweep]", key, v, default) for v in values]
        _no_duplicates(checked, f"{where}: [sweep] {key}")
        for value in checked:
            try:
                dataclasses.replace(sections[section], **{attr: value})
            except ValueError as err:
                raise ValueError(f"{where}: [sweep] {section}.{err}") from None
        out.append((key, tuple(checked)))
    return tuple(out)


def suite_from_dict(raw: dict, name: str, where: str) -> Suite:
    """Validate a parsed suite document (``where`` names it in error messages)."""
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(TOP_KEYS)}"
        )
    sections = {s: _section(cls, raw.get(s, {}), f"{where} [{s}]") for s, cls in SECTIONS.items()}
    kwargs: dict[str, Any] = dict(sections)
    if "name" in raw:
        if not isinstance(raw["name"], str) or not raw["name"]:
            raise ValueError(f"{where}: name must be a non-empty string")
        name = raw["name"]
    if not SUITE_NAME.match(name):
        raise ValueError(
            f"{where}: suite name {name!r} must be a plain file name (letters, digits, '.', '_', "
            "'-', at most 64 characters, not starting with '.' or '-'): it names the results folder"
        )
    if "strategies" in raw:
        kwargs["strategies"] = _strategies(raw["strategies"], where)
    if "seeds" in raw:
        kwargs["seeds"] = _seeds(raw["seeds"], where)
    if "baselines" in raw:
        from ..baselines import BASELINES

        value = raw["baselines"]
        if not isinstance(value, list) or not all(b in BASELINES for b in value):
            raise ValueError(
                f"{where}: baselines must be a list from {', '.join(BASELINES)}, got {value!r}"
            )
        kwargs["baselines"] = tuple(value)
    if "sweep" in raw:
        kwargs["sweep"] = _sweep(raw["sweep"], where, sections)
    suite = Suite(name=name, **kwargs)
    try:  # every combination of the swept values, not only each value alone
        settings = suite.data_settings()
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    for data, problem, _ in settings:
        _check_image_size(data, problem, where)
    return suite


def _check_image_size(data: DataConfig, problem: Any, where: str) -> None:
    """ValueError if the task cannot take the data's images, where their size is known now."""
    side = expected_image_size(data.dataset, data.image_size, data.patch_size)
    if side is not None:
        try:
            make_task(problem).check_image_size(side, side)
        except ValueError as err:
            raise ValueError(
                f"{where}: [problem] task {problem.task!r} cannot take the {side}x{side} images "
                f"of data set {data.dataset!r}: {err}"
            ) from None


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name (``quick``, ``celeba``, ``scaling``) or a path to a TOML file."""
    path = Path(name_or_path)
    if not (path.suffix == ".toml" or path.exists()):
        path = SUITES_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ValueError(
                f"unknown suite {name_or_path!r}; built-in: {', '.join(list_suites())} "
                "(or give a path to a .toml file)"
            )
    if not path.is_file():
        raise ValueError(f"suite file not found: {str(path)!r}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:  # TOML is UTF-8; the bare error names no file
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    return suite_from_dict(raw, path.stem, str(path))


def suite_to_dict(suite: Suite) -> dict:
    """The suite as the TOML document that would load it (the inverse of ``suite_from_dict``)."""
    raw: dict[str, Any] = {
        "name": suite.name,
        "strategies": list(suite.strategies),
        "seeds": list(suite.seeds),
        "baselines": list(suite.baselines),
        **{name: dataclasses.asdict(getattr(suite, name)) for name in SECTIONS},
    }
    if suite.sweep:
        raw["sweep"] = {key: list(values) for key, values in suite.sweep}
    return raw


def _parse_value(text: str) -> Any:
    """A command-line value as TOML reads it (``3``, ``1e-3``, ``true``, ``[1, 2]``); anything
    that is no TOML value (``cuda``, ``jfb,cg``) is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def with_overrides(
    suite: Suite, sets: Sequence[str] = (), *, notes: list[str] | None = None, **shortcuts: Any
) -> Suite:
    """The suite with command-line overrides applied and validated like the suite file.

    ``sets`` holds ``--set`` items, ``KEY=VALUE`` with the dotted keys of ``[sweep]``
    (``train.epochs=3``, ``solver.tol=1e-4``) or a top-level key (``seeds=3``,
    ``strategies=jfb,cg``). ``shortcuts`` are the CLI's named options (``epochs``, ``lr``,
    ``seeds``, ``strategies``, ``dataset``, ``data_root``, ``device``; None means not given),
    each the same as its ``--set`` item. All go through ``suite_from_dict``: one set of checks.

    The command line wins over the suite's ``[sweep]``: overriding a swept key replaces its
    sweep by the one value given, and ``notes`` (when a list is passed) receives a line saying
    so for each such key, for the caller to show: an override is never dropped silently.
    """
    raw = suite_to_dict(suite)
    items: list[tuple[str, Any, str]] = [
        (SHORTCUTS[key], value, f"--{key.replace('_', '-')} {value}")
        for key, value in shortcuts.items()
        if value is not None
    ]
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        items.append((key.strip(), _parse_value(text.strip()), f"--set {item}"))
    for key, value, where in items:
        section, dot, attr = key.partition(".")
        if not dot:
            if key not in ("strategies", "seeds", "baselines"):
                raise ValueError(
                    f"--set {key}: unknown key; accepted: strategies, seeds, baselines or "
                    f"SECTION.KEY with SECTION one of {', '.join(SECTIONS)}"
                )
            raw[key] = value
        elif section not in SECTIONS or attr not in {f.name for f in fields(SECTIONS[section])}:
            accepted = ", ".join(f.name for f in fields(SECTIONS.get(section, DataConfig)))
            raise ValueError(
                f"--set {key}: unknown key"
                + (f"; [{section}] accepts: {accepted}" if section in SECTIONS else "")
            )
        else:
            raw[section][attr] = value
            swept = raw.get("sweep", {}).pop(key, None)
            if swept is not None:
                if not raw["sweep"]:
                    del raw["sweep"]
                if notes is not None:
                    notes.append(
                        f"{where} replaces the suite's [sweep] over {key} "
                        f"({', '.join(map(repr, swept))}): every run uses {key} = {value!r}"
                    )
        suite_from_dict(raw, suite.name, where)  # each item checked on its own: errors name it
    return suite_from_dict(raw, suite.name, "command line")


# The CLI's named options (bench.cli passes them all, None when not given), each a --set
# shortcut, in the order they are applied.
SHORTCUTS = {
    "strategies": "strategies",
    "seeds": "seeds",
    "epochs": "train.epochs",
    "lr": "train.lr",
    "dataset": "data.dataset",
    "data_root": "data.root",
    "device": "train.device",
}
