"""Suite configuration: TOML files -> validated dataclasses -> one RunConfig per run.

A suite file has the sections below; every key is optional (defaults are the dataclass fields)
and an unknown key, a value of the wrong type or out of its range (declared with the field, see
``setting``) is an error naming the file, section and key.

    name = "quick"                      # defaults to the file name
    strategies = ["jfb", "cg:tol=1e-6", "neumann:k=10", "unrolled:k=10"]
    seeds = 2                           # seeds 0..N-1, or a list [0, 3]
    baselines = ["direct_inverse", "tikhonov", "gd_tikhonov", "gd_tv"]
    [data]    dataset, root, image_size, n_images, test_fraction, patch_size, channels
    [problem] task, noise_std, and the task's own settings (blur: kernel_size, sigma; inpaint:
              mask_keep_fraction, mask_seed; superres: factor; implicit-bench list tasks)
    [model]   width, depth, eta, alpha, lipschitz, form, lipschitz_control
    [solver]  name, max_iter, tol, m, lam
    [train]   epochs, batch_size, lr, device, dtype, n_recon, grad_fidelity, eval_every,
              lr_schedule, jac_reg, jac_reg_every
    [sweep]   "section.key" = [values]  # cartesian product, e.g. "solver.max_iter" = [10, 100]
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import tomllib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from strategies import parse_spec

from .data import DATASETS, expected_image_size
from .model import ACTIVATIONS, FORMS, LIPSCHITZ_CONTROLS, check_activation_width
from .solver import SOLVERS
from .tasks import TASKS, check_task_settings, make_task

SUITES_DIR = Path(__file__).parent / "suites"
# A suite's name becomes a folder name (results/<name>): no separators, no leading dot.
SUITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_RUN_ID = 120  # well under the 255-byte file-name limit, with room for suffixes
# Every integer is stored as int64 (torch, the tables' Parquet copies): a larger one is no setting.
INT64_MAX = 2**63 - 1
MAX_SEEDS = 10_000  # seeds = N runs N seeds per strategy and sweep point


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


def _check_ranges(obj: Any) -> None:
    """ValueError naming the first field of ``obj`` (a config section) outside its range."""
    for f in fields(obj):
        rule = f.metadata.get("range")
        value = getattr(obj, f.name)
        if rule is not None and not rule.ok(value):
            raise ValueError(f"{f.name} must be {rule.describe()}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = setting("faces", choices=DATASETS)
    root: str = ""
    # 0: the data set's own size (faces: 25) or its default; at most 4096 (a 4096^2 RGB image
    # is 200 MB in float64)
    image_size: int = setting(0, ge=0, le=4096)
    n_images: int = setting(0, ge=0, le=10_000_000)  # 0: all (CelebA has 202,599)
    test_fraction: float = setting(0.2, gt=0, lt=1)
    patch_size: int = setting(32, ge=1, le=4096)
    channels: int = setting(0, choices=(0, 1, 3))  # 0: the data set's own; 1 gray, 3 RGB

    __post_init__ = _check_ranges


def _problem_post_init(self) -> None:
    _check_ranges(self)
    check_task_settings(self)


def _task_fields() -> list[tuple[str, type, Any]]:
    """The registered tasks' settings as ProblemConfig fields (a key shared by two tasks, with
    one type and default, is one field: bench.tasks.register_task checks that)."""
    out: dict[str, tuple[str, type, Any]] = {}
    for _, cls in TASKS.items():
        for key, p in cls.settings.items():
            rule = Range(ge=p.ge, gt=p.gt, le=p.upper, choices=p.choices)
            out.setdefault(key, (key, p.type, field(default=p.default, metadata={"range": rule})))
    return list(out.values())


# The ``[problem]`` section: which task (bench/tasks), the noise, and every registered task's
# own settings (``Task.settings``), so that a task file adds its keys without an edit here. The
# keys of one task must stay at their defaults when another task is selected, so that no key
# is silently ignored; a blur suite's hash-relevant values are the ones it always had (a new
# task's settings enter a run's identity only away from their defaults).
ProblemConfig = dataclasses.make_dataclass(
    "ProblemConfig",
    [
        ("task", str, setting("blur", choices=TASKS)),
        ("noise_std", float, setting(0.01, ge=0)),
        *_task_fields(),
    ],
    frozen=True,
    namespace={
        "__post_init__": _problem_post_init,
        "__doc__": "The ``[problem]`` section: task, noise_std and the tasks' settings.",
    },
)
ProblemConfig.__module__ = __name__  # pickled runs (submitit) find it here


@dataclass(frozen=True)
class ModelConfig:
    # hidden channels; even for activation "maxmin" (bench.model.check_activation_width)
    width: int = setting(32, ge=1, le=4096)
    depth: int = setting(3, ge=1, le=256)  # convolutions of the learned denoiser
    eta: float = setting(0.3, gt=0, lt=0.5)
    alpha: float = setting(0.05, gt=0, lt=1.5)
    lipschitz: float = setting(0.9, gt=0, lt=1)
    # "prox": T(x) = (A^T A + alpha I)^-1 (A^T d + alpha D(x)); "grad": the seed's gradient step.
    form: str = setting("prox", choices=FORMS)
    # "operator": each conv divided by its operator norm (a contraction by construction, see
    # bench/model.py); "aol": a cheaper certified rescaling; "kernel": torch's spectral_norm of
    # the reshaped kernel (the common practice, which bounds nothing).
    lipschitz_control: str = setting("operator", choices=LIPSCHITZ_CONTROLS)
    # between the convolutions of the learned denoiser, both 1-Lipschitz: "relu", or "maxmin"
    # (GroupSort-2, gradient-norm preserving; needs an even width)
    activation: str = setting("relu", choices=ACTIVATIONS)

    def __post_init__(self):
        _check_ranges(self)
        check_activation_width(self.activation, self.width, self.depth)


@dataclass(frozen=True)
class SolverConfig:
    name: str = setting("anderson", choices=SOLVERS)
    max_iter: int = setting(50, ge=1, le=100_000)
    tol: float = setting(1e-3, gt=0)
    # the rest go to the solvers that declare them (register_solver(..., options=)): anderson
    m: int = setting(5, ge=1, le=100)  # past iterates kept
    lam: float = setting(1e-4, ge=0)

    def __post_init__(self):
        """Ranges, and no option the chosen solver would silently ignore: an option it does not
        declare must stay at its default (as a task's keys do under another task)."""
        _check_ranges(self)
        declared = SOLVERS.get(self.name).options
        for f in fields(self):
            if f.name in ("name", "max_iter", "tol") or f.name in declared:
                continue
            if getattr(self, f.name) != f.default:
                raise ValueError(
                    f"solver.{f.name} = {getattr(self, f.name)!r} has no effect on solver "
                    f"{self.name!r} (its options: {', '.join(declared) or 'none'}); leave it out, "
                    f"or at its default {f.default!r}"
                )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = setting(5, ge=1, le=100_000)
    batch_size: int = setting(16, ge=1, le=65_536)
    lr: float = setting(1e-3, gt=0)
    device: str = "auto"  # checked against the machine by runner.resolve_device
    dtype: str = setting("float32", choices=("float32", "float64"))
    n_recon: int = setting(6, ge=0, le=1000)  # test images kept for the reconstruction figure
    grad_fidelity: bool = True  # cosine to the exact gradient at the first and last epoch
    # evaluate every N training steps too (0: at the end of each epoch only)
    eval_every: int = setting(0, ge=0, le=10_000_000)
    # per step
    lr_schedule: str = setting("constant", choices=("constant", "cosine", "onecycle"))
    # Jacobian regularisation (Bai et al. 2021): weight of the Hutchinson estimate of
    # ||dT/dx||_F^2 / dim added to the loss (0: off), on every jac_reg_every-th step
    jac_reg: float = setting(0.0, ge=0)
    jac_reg_every: int = setting(1, ge=1, le=10_000_000)

    __post_init__ = _check_ranges


SECTIONS = {
    "data": DataConfig,
    "problem": ProblemConfig,
    "model": ModelConfig,
    "solver": SolverConfig,
    "train": TrainConfig,
}
TOP_KEYS = ("name", "strategies", "seeds", "baselines", "sweep", *SECTIONS)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run; its hash identifies the run for resuming."""

    suite: str
    strategy: str  # the strategy's label, e.g. "neumann:k=10"
    seed: int
    data: DataConfig
    problem: ProblemConfig
    model: ModelConfig
    solver: SolverConfig
    train: TrainConfig
    # A hash of the images actually loaded (set by runner.plan): a folder whose files change
    # is other data, though its path and settings are the same. Empty: not fingerprinted.
    data_fingerprint: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> RunConfig:
        """The inverse of :meth:`to_dict` (e.g. for a run folder's ``config.json``)."""
        sections = {name: SECTIONS[name](**raw[name]) for name in SECTIONS}
        fingerprint = raw.get("data_fingerprint", "")
        return cls(
            raw["suite"], raw["strategy"], raw["seed"], **sections, data_fingerprint=fingerprint
        )

    def identity(self) -> dict:
        """What makes this run this experiment: the settings that differ from their defaults.

        Only non-default values enter, so a field added later with a default leaves every
        existing run id unchanged. A changed default, by contrast, would keep an id but change
        the experiment: ``bench.provenance`` compares each completed run's full stored config
        with the current one and reports such runs as stale. The device is where a run happens,
        not what it is (a CPU and a GPU run of one config are one experiment): it stays out.
        """
        payload: dict[str, Any] = {"strategy": self.strategy, "seed": self.seed}
        for name, cls in SECTIONS.items():
            section = getattr(self, name)
            changed = {
                f.name: getattr(section, f.name)
                for f in fields(cls)
                if f.name != "device" and getattr(section, f.name) != _default(f)
            }
            if changed:
                payload[name] = changed
        if self.data_fingerprint:  # other images are another experiment
            payload["data_fingerprint"] = self.data_fingerprint
        return payload

    @property
    def config_hash(self) -> str:
        return _digest(self.identity())

    @property
    def setting_hash(self) -> str:
        """Identifies the setting shared by all strategies and seeds (for grouping results)."""
        payload = self.identity()
        del payload["strategy"], payload["seed"]
        return _digest(payload)

    @property
    def run_id(self) -> str:
        """``<label>-s<seed>-<config hash>`` with the label made file-name safe; at most
        ``MAX_RUN_ID`` characters (a long label keeps a readable prefix and a hash of itself)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.strategy)
        tail = f"-s{self.seed}-{self.config_hash}"
        if len(safe) + len(tail) > MAX_RUN_ID:
            digest = hashlib.sha256(self.strategy.encode()).hexdigest()[:10]
            safe = f"{safe[: MAX_RUN_ID - len(tail) - len(digest) - 1]}_{digest}"
        return f"{safe}{tail}"


@dataclass(frozen=True)
class Suite:
    name: str
    strategies: tuple[str, ...] = ("jfb", "cg", "neumann", "unrolled")
    seeds: tuple[int, ...] = (0,)
    baselines: tuple[str, ...] = ()
    data: DataConfig = field(default_factory=DataConfig)
    problem: ProblemConfig = field(default_factory=ProblemConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: tuple[tuple[str, tuple], ...] = ()

    def runs(self) -> list[RunConfig]:
        """All runs: sweep points x strategies x seeds.

        Raises ValueError naming a sweep point whose values do not go together (e.g. an odd
        width swept with activation maxmin), though each value is valid on its own."""
        keys = [k for k, _ in self.sweep]
        grids = [v for _, v in self.sweep] or [()]
        points = itertools.product(*grids) if self.sweep else [()]
        out = []
        for point in points:
            changes: dict[str, dict[str, Any]] = {}
            for key, value in zip(keys, point, strict=True):
                section, attr = key.split(".")
                changes.setdefault(section, {})[attr] = value
            sections = {name: getattr(self, name) for name in SECTIONS}
            for section, values in changes.items():  # a section's keys at once: checked together
                try:
                    sections[section] = dataclasses.replace(sections[section], **values)
                except ValueError as err:
                    where = ", ".join(f"{k} = {v!r}" for k, v in zip(keys, point, strict=True))
                    raise ValueError(f"[sweep] point {where}: [{section}] {err}") from None
            for strategy in self.strategies:
                for seed in self.seeds:
                    out.append(RunConfig(self.name, strategy, seed, **sections))
        return out

    def data_settings(self) -> list[tuple[DataConfig, ProblemConfig, TrainConfig]]:
        """The distinct (data, problem, train) settings of the runs (baselines run once each)."""
        seen = []
        for run in self.runs():
            key = (run.data, run.problem, run.train)
            if key not in seen:
                seen.append(key)
        return seen


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
        from .baselines import BASELINES

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


# The CLI's named options, each a --set shortcut.
SHORTCUTS = {
    "strategies": "strategies",
    "seeds": "seeds",
    "epochs": "train.epochs",
    "lr": "train.lr",
    "device": "train.device",
    "dataset": "data.dataset",
    "data_root": "data.root",
}
