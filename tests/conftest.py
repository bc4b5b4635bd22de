"""Shared fixtures. The README's "Adding a strategy" examples are executed here, before
collection, so every conformance test (parametrised over ``list_strategies()``) also runs them."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_strategy_examples() -> list[str]:
    """Every ```python block of the README's "Adding a strategy" section (up to the next
    top-level heading)."""
    text = README.read_text()
    section = text.split("## Adding a strategy", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


for _number, _example in enumerate(readme_strategy_examples()):
    exec(compile(_example, f"README.md:adding-a-strategy:{_number}", "exec"), {})
