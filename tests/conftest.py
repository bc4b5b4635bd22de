"""Shared fixtures. Every ```python example of the README and docs/*.md is executed here, before
collection, so every conformance test (parametrised over ``list_strategies()``) also runs the
strategies they register."""

import re
from pathlib import Path

import pytest

# tiers.py: which tests `make test-fast` runs and how a slow one is kept out of it; pytester:
# to test that in a session of its own
pytest_plugins = ("tiers", "pytester")

ROOT = Path(__file__).resolve().parents[1]


def documents() -> list[Path]:
    """The README and every page of docs/: what a reader arrives at."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_examples() -> list[tuple[Path, int, str]]:
    """Every ```python block of the documents as (file, line of its first code line, code). Each
    is a complete program: the docs show only code that runs."""
    examples = []
    for path in documents():
        text = path.read_text()
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            examples.append((path, text.count("\n", 0, match.start(1)) + 1, match.group(1)))
    return examples


for _path, _line, _example in python_examples():
    # padded so that a traceback names the line of the Markdown file
    _code = "\n" * (_line - 1) + _example
    exec(compile(_code, str(_path.relative_to(ROOT)), "exec"), {})


@pytest.fixture(scope="session")
def mini_run(tmp_path_factory) -> Path:
    """The results folder of one real run of ``helpers.MINI_RUN`` (jfb and unrolled:k=2, two seeds
    each), trained once per session for every test that reads one: read it, or copy it
    (``shutil.copytree``) to change it."""
    import tomllib

    from helpers import MINI_RUN

    from bench.config import suite_from_dict
    from bench.sweep import run_suite

    out = tmp_path_factory.mktemp("mini_run") / "results"
    suite = suite_from_dict(tomllib.loads(MINI_RUN), "mini_run", "helpers.MINI_RUN")
    assert run_suite(suite, out, progress=False)["ok"] == len(suite.runs())
    return out
