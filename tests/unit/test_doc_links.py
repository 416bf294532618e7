"""Links in README.md and docs/*.md lead somewhere: every relative link names a file that exists,
every `#anchor` names a heading of that file, and every docs page is reachable from the README.

A reader who follows a link to a moved or renamed page would otherwise land on GitHub's 404.
Links to other sites (http, https, mailto) are not fetched: these tests touch no network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
EXTERNAL = ("http://", "https://", "mailto:")
# [text](target) or ![alt](target), with an optional "title" after the target.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def doc_files() -> list[Path]:
    """README.md and every markdown page in docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def without_code_blocks(text: str) -> str:
    """The markdown without fenced code blocks, where `#` starts a comment, not a heading."""
    return FENCE.sub("", text)


def prose(text: str) -> str:
    """The markdown without code blocks and code spans, where brackets are code, not links."""
    return INLINE_CODE.sub("", without_code_blocks(text))


def links(path: Path) -> list[str]:
    """The targets of the markdown links in `path`, in order."""
    return LINK.findall(prose(path.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of the headings in `path`; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    for heading in HEADING.findall(without_code_blocks(path.read_text(encoding="utf-8"))):
        base = slug(heading)
        name, count = base, 0
        while name in found:
            count += 1
            name = f"{base}-{count}"
        found.add(name)
    return found


def broken_links(path: Path) -> list[str]:
    """Each relative link of `path` whose file or heading does not exist, with the reason."""
    broken = []
    for target in links(path):
        if not target or target.startswith(EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target} (no file {os.path.relpath(linked, ROOT)})")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no heading #{anchor} in {os.path.relpath(linked, ROOT)})")
    return broken


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_an_existing_file_and_heading(path: Path) -> None:
    """A reader who follows any link in the README or the docs finds the page and the section."""
    broken = broken_links(path)
    assert not broken, f"{path.relative_to(ROOT)} has broken links: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    """No page in docs/ is left where a reader starting at the README cannot find it."""
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    orphans = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not orphans, f"README.md links to no docs page named {', '.join(orphans)}"
