"""Griffe extension: render the Sphinx markup of hnets' docstrings as Markdown.

The docstrings are Google style (``Args:``, ``Returns:``, ``Shape:``) with Sphinx roles
(``:class:`HConv2d```, ``:math:`b```) and ``.. math::`` blocks. mkdocstrings renders
Markdown, so before it parses them: a role becomes a code span (``:math:`` becomes
``$...$``) and a math block becomes ``$$...$$``, which ``pymdownx.arithmatex`` hands to
MathJax.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|func|meth|attr|data|mod|exc|obj|const):`~?\.?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_BLOCK = re.compile(
    r"^([ \t]*)\.\. math::[ \t]*\n((?:[ \t]*\n)*)((?:\1[ \t]+\S.*\n|[ \t]*\n)+)", re.M
)


def _math_block(match: re.Match[str]) -> str:
    indent, body = match.group(1), textwrap.dedent(match.group(3)).strip("\n")
    lines = [indent + "$$", *(indent + line if line else "" for line in body.splitlines())]
    return "\n".join([*lines, indent + "$$", "", ""])


def render(text: str) -> str:
    """Docstring text with its Sphinx roles and math blocks rewritten as Markdown."""
    text = _MATH_BLOCK.sub(_math_block, text if text.endswith("\n") else text + "\n")
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    text = _ROLE.sub(lambda m: f"`{m.group(2)}`", text)
    return text.rstrip("\n")


class SphinxRoles(griffe.Extension):
    """Rewrite each docstring once the object that carries it exists."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = render(obj.docstring.value)
