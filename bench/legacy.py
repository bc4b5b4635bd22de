"""Run ids that older harness commits gave the same run, so their folders resume.

Until the task became a plug-in, a run id's hash covered the whole config (less the suite and
the device) as that commit declared it; since then it covers the non-default settings
(:meth:`bench.config.RunConfig.identity`). A current run has the id an older commit would have
given it only if every setting that commit did not know is at its default (then the older run
ran what the current one would). Each scheme below is the list of settings the commits from the
named one on hashed, read from the history of bench/config.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

from . import results
from .config import SECTIONS, RunConfig

_FIRST = {
    "data": (
        "dataset",
        "root",
        "image_size",
        "n_images",
        "test_fraction",
        "patch_size",
        "channels",
    ),
    "problem": ("kernel_size", "sigma", "noise_std"),
    "model": ("width", "depth", "eta", "alpha", "lipschitz"),
    "solver": ("name", "max_iter", "tol", "m", "lam"),
    "train": ("epochs", "batch_size", "lr", "device", "dtype", "n_recon"),
}


@dataclass(frozen=True)
class HashScheme:
    """The settings a range of older commits hashed into run ids (the whole config they knew)."""

    since: str  # the first commit that hashed exactly these
    settings: dict[str, tuple[str, ...]]
    fingerprint: bool  # whether a loaded data set's fingerprint entered the hash


def _plus(base: dict, **added: tuple[str, ...]) -> dict:
    return {name: base[name] + added.get(name, ()) for name in base}


_GRAD = _plus(_FIRST, train=("grad_fidelity",))
_FORMS = _plus(
    _GRAD,
    model=("form", "lipschitz_control"),
    train=("eval_every", "lr_schedule"),
)
SCHEMES = (
    HashScheme("56b4a50", _FIRST, fingerprint=False),
    HashScheme("994bf2b", _GRAD, fingerprint=False),
    HashScheme("9ae5bfa", _FORMS, fingerprint=False),
    HashScheme("b61d383", _FORMS, fingerprint=True),  # up to 67f38c6, which hashes identity()
)


def legacy_config_hash(run: RunConfig, scheme: HashScheme) -> str | None:
    """The config hash ``scheme``'s commits gave ``run``; None if ``run`` sets something they
    did not know to other than its default (no older run can have been this run)."""
    payload: dict = {"strategy": run.strategy, "seed": run.seed}
    for name, cls in SECTIONS.items():
        section, known = getattr(run, name), scheme.settings[name]
        for f in fields(cls):
            value = getattr(section, f.name)
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if f.name not in known and value != default:
                return None
        payload[name] = {k: getattr(section, k) for k in known if k != "device"}
    if scheme.fingerprint and run.data_fingerprint:
        payload["data_fingerprint"] = run.data_fingerprint
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def legacy_config_hashes(run: RunConfig) -> list[str]:
    """Every config hash an older commit gave ``run`` (newest scheme first, no repeats)."""
    hashes = (legacy_config_hash(run, scheme) for scheme in reversed(SCHEMES))
    return list(dict.fromkeys(h for h in hashes if h is not None))


def legacy_run_ids(run: RunConfig) -> list[str]:
    """The ids older commits gave ``run`` (its label and seed with an older config hash)."""
    tail = f"-s{run.seed}-{run.config_hash}"
    head = run.run_id.removesuffix(tail)
    return [f"{head}-s{run.seed}-{h}" for h in legacy_config_hashes(run)]


def older_parts(runs: list[RunConfig], done: dict[str, str]) -> dict[str, str]:
    """Current run id -> the id of a complete part an older commit wrote for the same run, for
    the ``runs`` without a complete part of their own (``done``: run id -> status)."""
    found = {}
    for run in runs:
        if done.get(run.run_id) in results.COMPLETE:
            continue
        older = next((i for i in legacy_run_ids(run) if done.get(i) in results.COMPLETE), None)
        if older is not None:
            found[run.run_id] = older
    return found


def adopt(out: Path, runs: list[RunConfig], done: dict[str, str]) -> dict[str, str]:
    """Count the complete parts older commits wrote for ``runs`` as theirs (see
    :func:`older_parts`); returns current id -> older id.

    An adopted part keeps its id, its rows and its ``git_commit``; only its ``setting_hash`` is
    set to the current scheme's, so the report pools it with the current runs of its setting.
    """
    by_id = {run.run_id: run for run in runs}
    found = older_parts(runs, done)
    for current, older in found.items():
        results.set_setting_hash(out, older, by_id[current].setting_hash)
    return found
