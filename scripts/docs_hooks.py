"""MkDocs hook: render the Sphinx cross-reference roles of gmnn's docstrings in the API pages.

gmnn's docstrings are Google style with Sphinx roles (:class:`MoEModule`, :func:`~gmnn.nn.from_hf`);
mkdocstrings renders the role as text before the code span. This drops the role and, for a ``~`` name,
keeps its last component, as Sphinx does.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|const|py:\w+):(<code>)(~)?([\w.]+)(</code>)")


def _name(match: re.Match) -> str:
    name = match.group(3).rsplit(".", 1)[-1] if match.group(2) else match.group(3)
    return f"{match.group(1)}{name}{match.group(4)}"


def on_page_content(html: str, **kwargs) -> str:
    return ROLE.sub(_name, html)
