"""Shared fixtures. The README's "Adding a strategy" examples are executed here, before
collection, so every conformance test (parametrised over ``list_strategies()``) also runs them."""

import re
from pathlib import Path

import pytest

# tiers.py: which tests `make test-fast` runs and how a slow one is kept out of it; pytester:
# to test that in a session of its own
pytest_plugins = ("tiers", "pytester")

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_strategy_examples() -> list[str]:
    """Every ```python block of the README's "Adding a strategy" section (up to the next
    top-level heading)."""
    text = README.read_text()
    section = text.split("## Adding a strategy", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


for _number, _example in enumerate(readme_strategy_examples()):
    exec(compile(_example, f"README.md:adding-a-strategy:{_number}", "exec"), {})


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
