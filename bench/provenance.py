"""Where a completed run came from, and whether it still answers the question asked now.

A run id names the experiment by its non-default settings (``RunConfig.identity``), so it
survives added fields. What it cannot see is code or defaults changing under it: a strategy's
file edited, a default value changed. Each completed run therefore stores its provenance (the
full config, the strategy's full parameters, a hash of the strategy's source file, the harness's
git commit) in ``parts/<run_id>/provenance.json``, and :func:`stale_reasons` compares it with
what the same run would be now. ``implicit-bench run`` reports stale runs and reruns or keeps
them only when told to (``--rerun-stale`` / ``--keep-stale``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import subprocess
from functools import cache
from pathlib import Path

from strategies import parse_spec

from . import results
from .config import RunConfig

FILE = "provenance.json"


@cache
def harness_commit() -> str:
    """The git commit of the harness's checkout ("" outside a git checkout)."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def strategy_code_hash(spec: str) -> str:
    """sha256 (12 hex digits) of the source file defining the strategy of ``spec``."""
    cls = type(parse_spec(spec))
    try:
        source = Path(inspect.getsourcefile(cls) or "").read_bytes()
    except (OSError, TypeError):  # defined in a string, or the file is gone
        source = inspect.getsource(cls).encode() if _has_source(cls) else cls.__qualname__.encode()
    return hashlib.sha256(source).hexdigest()[:12]


def _has_source(cls) -> bool:
    try:
        inspect.getsource(cls)
    except (OSError, TypeError):
        return False
    return True


def record(run: RunConfig) -> dict:
    """The provenance of ``run`` as it would be trained now."""
    return {
        "config": run.to_dict(),
        "params": parse_spec(run.strategy).params,
        "strategy_code": strategy_code_hash(run.strategy),
        "git_commit": harness_commit(),
    }


def write(out: Path, run: RunConfig) -> None:
    """Store ``run``'s provenance in its part folder (atomically)."""
    text = json.dumps(record(run), indent=1, sort_keys=True, default=str)
    results.atomic_write_bytes(Path(out) / "parts" / run.run_id / FILE, text.encode())


def stored(out: Path, run_id: str) -> dict | None:
    try:
        return json.loads((Path(out) / "parts" / run_id / FILE).read_text())
    except (OSError, ValueError):
        return None


def stale_reasons(out: Path, run: RunConfig) -> list[str]:
    """Why the completed run ``run.run_id`` in ``out`` no longer is ``run`` (empty: it is)."""
    old = stored(out, run.run_id)
    if old is None:
        return ["no provenance recorded (written by an older version of implicit-bench)"]
    now = record(run)
    reasons = []
    if old.get("strategy_code") != now["strategy_code"]:
        reasons.append(f"the code of strategy {run.strategy.split(':')[0]!r} changed")
    if old.get("params") != json.loads(json.dumps(now["params"])):
        reasons.append(f"strategy parameters changed: {old.get('params')} -> {now['params']}")
    old_cfg, new_cfg = old.get("config", {}), json.loads(json.dumps(now["config"], default=str))
    changed = sorted(
        f"{section}.{key}"
        for section, values in new_cfg.items()
        if isinstance(values, dict)
        for key, value in values.items()
        # a field the old run did not know has its default here (else the id would differ)
        if key in old_cfg.get(section, {}) and old_cfg[section][key] != value and key != "device"
    )
    if changed:
        reasons.append(f"default settings changed: {', '.join(changed)}")
    return reasons


def stale_runs(out: Path, runs: list[RunConfig], done: dict[str, str]) -> dict[str, list[str]]:
    """run_id -> reasons, for the completed (``done``) runs among ``runs`` that are stale."""
    stale = {}
    for run in runs:
        if done.get(run.run_id) in results.COMPLETE:
            reasons = stale_reasons(out, run)
            if reasons:
                stale[run.run_id] = reasons
    return stale


def other_commits(out: Path, runs: list[RunConfig], done: dict[str, str]) -> dict[str, int]:
    """Harness commits (other than the current one) that completed runs were made at -> count."""
    now, counts = harness_commit(), {}
    for run in runs:
        if done.get(run.run_id) in results.COMPLETE:
            commit = (stored(out, run.run_id) or {}).get("git_commit", "")
            if commit and commit != now:
                counts[commit] = counts.get(commit, 0) + 1
    return counts
