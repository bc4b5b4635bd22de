"""The README and docs/ as a reader meets them: short enough to read, every relative link and
every file they name leading somewhere, every example run (the examples themselves are executed
in conftest.py)."""

import re
from pathlib import Path

import pytest
from conftest import ROOT, documents, python_examples

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text outside fenced blocks and code spans, where a link or heading can be."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
    hyphens, a repeated heading numbered -1, -2, ..."""
    anchors: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def broken_links(path: Path) -> list[str]:
    """Each relative link of ``path`` whose file, or heading anchor, does not exist."""
    broken = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.is_file():
            broken.append(f"{target}: no file {linked}")
        elif anchor and anchor not in heading_anchors(linked.read_text()):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    return broken


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# A title: with `code`\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#a-title-with-code) [ok](other.md#twice-1) [ok](#local)\n"
        "[bad](missing.md) [bad](other.md#no-such-heading) ![bad](figures/none.png)\n"
        "`[not a link](missing.md)` [web](https://example.org/missing.md)\n\n## Local\n"
        "```sh\n[not a link either](missing.md)\n```\n"
    )
    assert [line.split(":")[0] for line in broken_links(page)] == [
        "missing.md",
        "other.md#no-such-heading",
        "figures/none.png",
    ]


# Paths the docs name in code spans (`bench/model.py`): each must exist, so that moving a module
# fails here until the page that names it is updated.
CODE_PATH = re.compile(r"`((?:bench|strategies|perf|tests|reports|docs)/[^`\s]*)`")
TO_BE_CREATED = {"strategies/damped.py"}  # the README asks the reader to save its example there


def missing_paths(path: Path) -> list[str]:
    """Each repository path named in a code span of ``path`` that matches no file or folder."""
    named = set(CODE_PATH.findall(FENCE.sub("", path.read_text()))) - TO_BE_CREATED
    return sorted(name for name in named if not any(ROOT.glob(name.rstrip("/"))))


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_path_exists(path):
    assert missing_paths(path) == []


def test_a_missing_path_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("`bench/model.py`, `bench/suites/*.toml`, `bench/`, `bench/no_such_module.py`")
    assert missing_paths(page) == ["bench/no_such_module.py"]


def test_readme_is_short():
    """The README is the page a newcomer reads whole; the rest lives in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_docs_examples_are_found_and_registered():
    """Every executed example is found where it is shown: the README's usage and first strategy,
    docs/strategies.md's exact strategy (conftest.py ran them all before collection)."""
    from strategies import list_strategies, strategy_class

    found = {path.relative_to(ROOT).as_posix() for path, _, _ in python_examples()}
    assert {"README.md", "docs/strategies.md"} <= found
    assert "damped" in list_strategies()
    assert strategy_class("adjoint-iteration").exact
