"""The README and the guides in docs/ link to each other by file and section: every relative link
resolves to a file, and every `#section` to a heading of that file (GitHub's anchors), so that a
section moved or renamed fails here instead of leaving a dead link."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    """The text outside code blocks and inline code, where a link is a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchors(page: Path) -> Iterator[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens,
    a repeated heading numbered from -1."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", FENCE.sub("", page.read_text()), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        yield slug if count == 0 else f"{slug}-{count}"


def links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text()))
            if not re.match(r"[a-z]+:", target)]


def test_the_pages_link_to_each_other():
    names = {page.name for page in PAGES}
    assert {"README.md", "user-guide.md", "operator-guide.md", "api.md", "developer-guide.md"} <= names
    readme_links = links(REPO / "README.md")
    for guide in ("user-guide.md", "operator-guide.md", "api.md", "developer-guide.md"):
        assert f"docs/{guide}" in readme_links, f"README links no docs/{guide}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_relative_link_resolves_to_a_file_and_a_heading(page):
    dead = []
    for target in links(page):
        path, _, section = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            dead.append(f"{target}: no file {linked.relative_to(REPO)}")
        elif section and linked.suffix == ".md" and section not in set(anchors(linked)):
            dead.append(f"{target}: no heading #{section} in {linked.relative_to(REPO)}")
    assert not dead, f"{page.relative_to(REPO)}: " + "; ".join(dead)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_docs_file_named_in_the_text_exists(page):
    named = set(re.findall(r"\bdocs/[\w.-]+\.(?:md|json)\b", page.read_text()))
    assert not [name for name in named if not (REPO / name).exists()]
