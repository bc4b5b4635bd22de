"""The fast tier keeps slow tests out (tests/tiers.py): a Python subprocess is refused, and a
test over the CPU limit fails, each saying to mark it slow; a test marked slow may do both."""

import subprocess
import sys

import pytest
import tiers


def test_a_fast_test_cannot_start_python_and_is_told_what_to_do():
    with pytest.raises(pytest.fail.Exception, match=r"in-process .* mark it @pytest.mark.slow"):
        subprocess.run([sys.executable, "-c", "pass"])
    with pytest.raises(pytest.fail.Exception, match="starts a Python process"):
        subprocess.Popen(["python3", "-c", "pass"])
    assert subprocess.run(["true"]).returncode == 0  # other programs are allowed


INNER = """
import time
import pytest

def _burn(seconds):
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass

def test_fast_and_cheap():
    pass

def test_fast_but_costly():
    _burn(0.6)

@pytest.mark.slow
def test_slow_and_costly():
    _burn(0.6)
"""


def _inner_run(pytester, overloaded: bool):
    pytester.makepyfile(test_inner=INNER)
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow")
    limit, judge = tiers.FAST_TEST_CPU_LIMIT_S, tiers._overloaded
    tiers.FAST_TEST_CPU_LIMIT_S = 0.3  # not monkeypatch: this test's own check reads it too
    tiers._overloaded = lambda: overloaded  # the machine's load is not this test's to choose
    try:
        return pytester.runpytest_inprocess("-p", "tiers", "-p", "no:cacheprovider")
    finally:
        tiers.FAST_TEST_CPU_LIMIT_S, tiers._overloaded = limit, judge


def test_a_costly_test_fails_the_fast_tier_unless_marked_slow(pytester):
    result = _inner_run(pytester, overloaded=False)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_fast_but_costly used * s of CPU*mark it @pytest.mark.slow*"]
    )


def test_the_cpu_guard_abstains_on_an_overloaded_machine(pytester):
    # spinning threads burn CPU time while they wait for a core: no verdict then
    _inner_run(pytester, overloaded=True).assert_outcomes(passed=3)
