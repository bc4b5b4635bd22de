"""Helpers shared by several test modules (kept here, not imported from one test module into
another)."""

from __future__ import annotations


def markdown_tables(markdown: str) -> list[list[list[str]]]:
    """Every Markdown table of a report as rows of cells (header first, rule dropped)."""
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|- "):
                current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables
