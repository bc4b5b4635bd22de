"""Suite configuration: TOML files -> validated dataclasses -> one RunConfig per run.

A suite file has the sections below; every key is optional (defaults are the dataclass fields)
and an unknown key or a value of the wrong type is an error naming the file, section and key.

    name = "quick"                      # defaults to the file name
    strategies = ["jfb", "cg:tol=1e-6", "neumann:k=10", "unrolled:k=10"]
    seeds = 2                           # seeds 0..N-1, or a list [0, 3]
    baselines = ["direct_inverse", "tikhonov", "gd_tikhonov", "gd_tv"]
    [data]    dataset, root, image_size, n_images, test_fraction, patch_size, channels
    [problem] kernel_size, sigma, noise_std
    [model]   width, depth, eta, alpha, lipschitz, form, lipschitz_control
    [solver]  name, max_iter, tol, m, lam
    [train]   epochs, batch_size, lr, device, dtype, n_recon, grad_fidelity, eval_every,
              lr_schedule
    [sweep]   "section.key" = [values]  # cartesian product, e.g. "solver.max_iter" = [10, 100]
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from strategies import parse_spec

SUITES_DIR = Path(__file__).parent / "suites"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "faces"
    root: str = ""
    image_size: int = 0  # 0: the data set's own size (faces: 25) or its default
    n_images: int = 0  # 0: all
    test_fraction: float = 0.2
    patch_size: int = 32
    channels: int = 0  # 0: the data set's own


@dataclass(frozen=True)
class ProblemConfig:
    kernel_size: int = 5
    sigma: float = 1.0
    noise_std: float = 0.01


@dataclass(frozen=True)
class ModelConfig:
    width: int = 32
    depth: int = 3
    eta: float = 0.3
    alpha: float = 0.05
    lipschitz: float = 0.9
    # "prox": T(x) = (A^T A + alpha I)^-1 (A^T d + alpha D(x)); "grad": the seed's gradient step.
    form: str = "prox"
    # "operator": each conv divided by its operator norm (a contraction by construction, see
    # bench/model.py); "aol": a cheaper certified rescaling; "kernel": torch's spectral_norm of
    # the reshaped kernel (the common practice, which bounds nothing).
    lipschitz_control: str = "operator"


@dataclass(frozen=True)
class SolverConfig:
    name: str = "anderson"
    max_iter: int = 50
    tol: float = 1e-3
    m: int = 5
    lam: float = 1e-4


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-3
    device: str = "auto"
    dtype: str = "float32"
    n_recon: int = 6  # test images kept for the reconstruction figure
    grad_fidelity: bool = True  # cosine to the exact gradient at the first and last epoch
    eval_every: int = 0  # evaluate every N training steps too (0: at the end of each epoch only)
    lr_schedule: str = "constant"  # "constant", "cosine" or "onecycle" (per step)


SECTIONS = {
    "data": DataConfig,
    "problem": ProblemConfig,
    "model": ModelConfig,
    "solver": SolverConfig,
    "train": TrainConfig,
}
TOP_KEYS = ("name", "strategies", "seeds", "baselines", "sweep", *SECTIONS)


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> RunConfig:
        """The inverse of :meth:`to_dict` (e.g. for a run folder's ``config.json``)."""
        sections = {name: SECTIONS[name](**raw[name]) for name in SECTIONS}
        return cls(raw["suite"], raw["strategy"], raw["seed"], **sections)

    @property
    def config_hash(self) -> str:
        # The device is where a run happens, not what it is: a CPU and a GPU run of the same
        # config are the same experiment, so it stays out of the hash (and is recorded per run).
        payload = self.to_dict()
        payload.pop("suite")
        payload["train"].pop("device")
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def setting_hash(self) -> str:
        """Identifies the setting shared by all strategies and seeds (for grouping results)."""
        payload = self.to_dict()
        for key in ("suite", "strategy", "seed"):
            payload.pop(key)
        payload["train"].pop("device")
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def run_id(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.strategy)
        return f"{safe}-s{self.seed}-{self.config_hash}"


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
        """All runs: sweep points x strategies x seeds."""
        keys = [k for k, _ in self.sweep]
        grids = [v for _, v in self.sweep] or [()]
        points = itertools.product(*grids) if self.sweep else [()]
        out = []
        for point in points:
            sections = {name: getattr(self, name) for name in SECTIONS}
            for key, value in zip(keys, point, strict=True):
                section, attr = key.split(".")
                sections[section] = dataclasses.replace(sections[section], **{attr: value})
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
    return cls(**{k: _check_value(where, k, v, defaults[k]) for k, v in raw.items()})


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return tuple(range(value))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
    ):
        return tuple(value)
    raise ValueError(f"{where}: seeds must be an int >= 1 or a list of ints >= 0, got {value!r}")


def _strategies(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [s for s in value.split(",") if s.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise ValueError(f"{where}: strategies must be a non-empty list of strings, got {value!r}")
    labels = []
    for spec in value:
        try:
            labels.append(parse_spec(spec).label)
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
        out.append((key, tuple(_check_value(f"{where} [sweep]", key, v, default) for v in values)))
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
    return Suite(name=name, **kwargs)


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
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    return suite_from_dict(raw, path.stem, str(path))


def with_overrides(suite: Suite, **overrides: Any) -> Suite:
    """Apply command-line overrides (None means 'not given')."""
    where = "command line"
    changes: dict[str, Any] = {}
    if overrides.get("strategies") is not None:
        changes["strategies"] = _strategies(overrides["strategies"], where)
    if overrides.get("seeds") is not None:
        changes["seeds"] = _seeds(overrides["seeds"], where)
    data, train = {}, {}
    for key, target in (("dataset", data), ("data_root", data), ("epochs", train), ("lr", train)):
        if overrides.get(key) is not None:
            target["root" if key == "data_root" else key] = overrides[key]
    if overrides.get("device") is not None:
        train["device"] = overrides["device"]
    if data:
        changes["data"] = dataclasses.replace(suite.data, **data)
    if train:
        changes["train"] = dataclasses.replace(suite.train, **train)
    return dataclasses.replace(suite, **changes)
