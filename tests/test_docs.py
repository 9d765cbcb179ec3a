"""The docs: the MkDocs manual builds with --strict, and the README stays a short front page."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
# The README is the front page: what it is, the two commands, one example per tool, links.
# A manual's worth of text belongs under docs/.
README_MAX_LINES = 200


def build(config_dir, site_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=config_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_manual_builds_with_strict(tmp_path):
    done = build(REPO, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    # Every page in the nav was written, including the first and the last one.
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "development" / "index.html").is_file()


@pytest.mark.parametrize(
    "target",
    ["no_such_page.md", "output.md#no-such-heading", "../README.md"],
    ids=["missing page", "missing anchor", "outside docs"],
)
def test_a_broken_link_fails_the_build(tmp_path, target):
    # The guard above is only worth something if --strict really refuses these: MkDocs
    # reports a missing anchor at INFO level unless mkdocs.yml raises it to a warning.
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text(encoding="utf-8") + f"\n[broken]({target})\n", encoding="utf-8")
    done = build(tmp_path, tmp_path / "site")
    assert done.returncode != 0, done.stdout + done.stderr
    # Refused for this link, not for something else in the copy.
    assert f"contains a link '{target}'" in done.stderr, done.stderr


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move details into docs/"


def test_quick_start_opens_the_readme_with_exactly_the_two_commands():
    text = README.read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert sections[0] == "Quick start", sections  # right after the title and the intro
    quick_start = text.split("## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", quick_start, flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, blocks
    assert blocks[0].split() == ["./run_local.sh", "./run_tests.sh"]


def test_readme_links_point_at_files_that_exist():
    # The manual's build checks links inside docs/; the README's links into it are
    # relative paths from the repository root, which MkDocs never sees.
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8"))
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into the manual"
    missing = [t for t in local if not (REPO / t).is_file()]
    assert not missing, missing
