"""The test tiers (a plugin that tests/conftest.py loads).

Two tiers, by one marker. A test is in the fast tier (`make test-fast`, `pytest -m "not slow"`:
the unit tests of every module, the loop under a minute) unless it is marked
`@pytest.mark.slow` (trains real runs, starts a Python process: `make test` runs both tiers).
A new test is fast by default, so two guards keep a slow one out of the fast tier, in
every run, with a message saying what to do. Neither measures wall time, which other processes
on a loaded machine inflate: one refuses a Python subprocess outright (importing torch takes
seconds), the other counts the CPU time that the test's own process and the children it waited
for used, with a limit many times what any fast test takes (the slowest use 1-2 s). CPU time is
not immune to load either: torch's OpenMP threads spin while they wait for a core, and beside
another heavy process a fast test used 30 s of CPU (1 s alone). So the CPU guard judges only
when the machine was not overloaded (1-minute load average at most its cores + 1, the rule of
``bench.summary.timing_verdict``); CI runs alone, where it always judges.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FAST_TEST_CPU_LIMIT_S = 10.0
MARK_IT_SLOW = "mark it @pytest.mark.slow (it then runs in `make test`, not `make test-fast`)"
_CPU_AT_SETUP = pytest.StashKey[float]()


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _overloaded() -> bool:
    """Whether other processes competed for the cores (spinning threads then burn CPU time)."""
    return os.getloadavg()[0] > (os.cpu_count() or 1) + 1


def _starts_python(args) -> bool:
    program = args if isinstance(args, str | os.PathLike) else args[0]
    program = os.fspath(program).split()[0] if program else ""
    return program == sys.executable or bool(re.fullmatch(r"python[0-9.]*", Path(program).name))


class _FastTierPopen(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        if _starts_python(args):
            pytest.fail(
                "a fast-tier test starts a Python process (seconds to import torch): call "
                f"bench.cli.main in-process (helpers.cli_in_process), or {MARK_IT_SLOW}",
                pytrace=False,
            )
        super().__init__(args, *rest, **kwargs)


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_python(request, monkeypatch):
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setattr(subprocess, "Popen", _FastTierPopen)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    item.stash[_CPU_AT_SETUP] = _cpu_seconds()  # fixtures count: a module's shared run too
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.passed or item.get_closest_marker("slow"):
        return
    used = _cpu_seconds() - item.stash.get(_CPU_AT_SETUP, _cpu_seconds())
    if used > FAST_TEST_CPU_LIMIT_S and not _overloaded():
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} used {used:.0f} s of CPU (with its fixtures), over the fast tier's "
            f"{FAST_TEST_CPU_LIMIT_S:.0f} s per test (tests/conftest.py): {MARK_IT_SLOW}"
        )
