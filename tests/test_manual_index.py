"""Every page of the manual is listed in README.md's "The manual" and in the manual's own index."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

PAGES = sorted(path.name for path in (REPO / "docs").glob("*.md"))


def section(text: str, heading: str) -> str:
    """The text under a `## heading`, up to the next `## ` heading."""
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def links(text: str, prefix: str) -> set[str]:
    return set(re.findall(rf"\]\({re.escape(prefix)}([\w-]+\.md)(?:#[^)]*)?\)", text))


@pytest.mark.parametrize("page", PAGES)
def test_readme_manual_list_has_every_page(page):
    # Links elsewhere in the README (an example's "see also") do not count: the list is the map.
    listed = links(section((REPO / "README.md").read_text(encoding="utf-8"), "The manual"), "docs/")
    assert page in listed, f"README.md's 'The manual' list lacks docs/{page}"


@pytest.mark.parametrize("page", [page for page in PAGES if page != "index.md"])
def test_the_manual_index_lists_every_page(page):
    listed = links(section((REPO / "docs" / "index.md").read_text(encoding="utf-8"), "Where to go next"), "")
    assert page in listed, f"docs/index.md's 'Where to go next' lacks {page}"
