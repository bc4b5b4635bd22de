"""A suite and the runs it expands to: :class:`Suite` (its strategies, seeds, baselines,
sections and sweep) and :class:`RunConfig` (everything that determines one training run, and
the hash that identifies it for resuming)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field, fields
from typing import Any

from .sections import SECTIONS, DataConfig, ModelConfig, ProblemConfig, SolverConfig, TrainConfig

MAX_RUN_ID = 120  # well under the 255-byte file-name limit, with room for suffixes


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
    # A hash of the images actually loaded (set by bench.task_data.fingerprinted_runs, from bench.sweep.plan): a folder whose files change
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
