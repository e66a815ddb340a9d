"""The documentation's text as tests read it: README.md and every docs page.

The README is a short landing page; the guides (and the code blocks and commands that tests run) live in
``docs/*.md``. Tests that check what the documentation shows read the two together, so a block or a command
counts wherever a reader finds it. A page that includes a file (``--8<-- "RESULTS.md"``, pymdownx.snippets)
is read with that file in its place, as the site shows it. The pages that ``scripts/docs_examples.py``
writes from ``examples/*.py`` when the site is built (ignored by git) are left out: the text does not depend
on whether the site was built.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def pages() -> list[Path]:
    """README.md, then every docs page under docs/, generated example pages left out."""
    generated = {p for p in (ROOT / "docs" / "examples").glob("*.md") if p.name != "index.md"}
    return [README, *sorted(p for p in (ROOT / "docs").rglob("*.md") if p not in generated)]


def page_text(path: Path) -> str:
    """One page's Markdown with its ``--8<-- "FILE"`` includes replaced by the files' text."""
    return re.sub(r'^--8<-- "([^"]+)"$', lambda m: (ROOT / m[1]).read_text(), path.read_text(), flags=re.M)


def documentation_text() -> str:
    """README.md and every docs page, one after another."""
    return "\n\n".join(page_text(path) for path in pages())
