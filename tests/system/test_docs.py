"""The documentation's links to files of the repository lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
DOCUMENTS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "benchmarks").glob("*.md")]
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def local_links(document: Path) -> list[str]:
    """The targets of the document's Markdown links that are files of the repository."""
    text = document.read_text(encoding="utf-8")
    # Code is not prose: `Callable[[int]](None)` is no link.
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor of the same page
        targets.append(target.split("#", 1)[0])
    return targets


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_local_links_resolve(document: Path) -> None:
    missing = [
        target for target in local_links(document) if not (document.parent / target).exists()
    ]
    assert missing == []


def test_every_document_is_checked() -> None:
    # The parametrization above found the documents it should.
    names = {path.name for path in DOCUMENTS}
    assert {"README.md", "performance.md", "security.md", "api.md"} <= names
