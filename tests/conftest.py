"""Shared fixtures. The README's "Adding a strategy" example is executed here, before collection,
so every conformance test (parametrised over ``list_strategies()``) also runs it."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_strategy_example() -> str:
    """The first ```python block after the "Adding a strategy" heading of the README."""
    text = README.read_text()
    section = text.split("## Adding a strategy", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


exec(compile(readme_strategy_example(), "README.md:adding-a-strategy", "exec"), {})
