"""Every link between the docs lands: its file exists, and its `#anchor` is a heading there.

Anchors are GitHub's: the heading in lower case, punctuation other than `-` and `_`
dropped, spaces as `-`, and `-1`, `-2`, ... after a repeated heading.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]*)#([^)\s]+)\)")


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """The anchors of a Markdown file's headings (outside code fences) and HTML anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    text = doc.read_text()
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        heading = None if fenced else re.match(r"#{1,6} (.*)", line)
        if heading:
            name = slug(heading[1])
            count = seen.get(name, 0)
            seen[name] = count + 1
            found.add(name if count == 0 else f"{name}-{count}")
    return found | set(re.findall(r'<a (?:name|id)="([^"]+)"', text))


def test_the_docs_link_to_each_other() -> None:
    """The test reads something: the docs do link to each other's sections."""
    assert sum(len(LINK.findall(doc.read_text())) for doc in DOCS) > 20


def test_every_link_to_a_section_lands_on_one() -> None:
    broken = []
    for doc in DOCS:
        for target, anchor in LINK.findall(doc.read_text()):
            path = (doc.parent / target) if target else doc
            if not path.exists():
                broken.append(f"{doc.name}: {target} does not exist")
            elif path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{doc.name}: {target}#{anchor} is no heading there")
    assert not broken, broken
