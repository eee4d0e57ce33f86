"""Markdown for st.markdown: the LaTeX delimiters \\( \\) and \\[ \\] become the $ and $$ that Streamlit renders."""
from __future__ import annotations

import re

# A delimiter preceded by another backslash is not one: `\\[2pt]` is a LaTeX line break with spacing.
_DISPLAY = re.compile(r"(?<!\\)\\\[(.+?)(?<!\\)\\\]", re.DOTALL)
_INLINE = re.compile(r"(?<!\\)\\\((.+?)(?<!\\)\\\)", re.DOTALL)


def latex_to_markdown(text: str) -> str:
    """`\\(x\\)` → `$x$`, `\\[x\\]` → `$$x$$`; a delimiter not closed yet (text still streaming) is left as written."""
    text = _DISPLAY.sub(lambda m: f"$${m.group(1).strip()}$$", text)
    return _INLINE.sub(lambda m: f"${m.group(1).strip()}$", text)
