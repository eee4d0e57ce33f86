"""LaTeX delimiters become the $ / $$ that st.markdown renders, also on text still being streamed."""
from __future__ import annotations

import pytest

from ui.formatting import latex_to_markdown


@pytest.mark.parametrize(("text", "expected"), [
    (r"Ta có \(x^2 \ge 0\) với mọi x.", r"Ta có $x^2 \ge 0$ với mọi x."),
    (r"\[\int_0^1 x^2\,dx = \frac{1}{3}\]", r"$$\int_0^1 x^2\,dx = \frac{1}{3}$$"),
    ("Công thức:\n\\[\n  a^2 + b^2 = c^2\n\\]\nxong.", "Công thức:\n$$a^2 + b^2 = c^2$$\nxong."),
    (r"\(a\) và \(b\), rồi \[c\]", r"$a$ và $b$, rồi $$c$$"),
    (r"$x$ và $$y$$ giữ nguyên", r"$x$ và $$y$$ giữ nguyên"),
    (r"\[\begin{pmatrix} 1 \\[2pt] 2 \end{pmatrix}\]", r"$$\begin{pmatrix} 1 \\[2pt] 2 \end{pmatrix}$$"),
    ("không có công thức", "không có công thức"),
    ("", ""),
])
def test_converts_complete_text(text: str, expected: str) -> None:
    assert latex_to_markdown(text) == expected


@pytest.mark.parametrize("partial", [
    "Ta có \\",
    r"Ta có \(",
    r"Ta có \(x^2",
    "Ta có \\(x^2 \\ge 0\\",
    r"Tích phân \[\int_0^1",
    "Tích phân \\[\\int_0^1 x\\,dx \\",
])
def test_unclosed_delimiters_are_left_as_written(partial: str) -> None:
    assert latex_to_markdown(partial) == partial


def test_closed_part_converts_while_the_rest_streams() -> None:
    assert latex_to_markdown(r"\(a\) rồi \(b") == r"$a$ rồi \(b"
    assert latex_to_markdown(r"\[a\] rồi \[b") == r"$$a$$ rồi \[b"


def test_every_prefix_of_a_stream_is_safe_and_the_whole_converts() -> None:
    text = r"Vì \(f'(x) > 0\) nên \[\int_0^1 f(x)\,dx > 0\] [1]."
    for end in range(len(text) + 1):
        shown = latex_to_markdown(text[:end])
        assert shown.count("$") % 2 == 0, (end, shown)
    assert latex_to_markdown(text) == r"Vì $f'(x) > 0$ nên $$\int_0^1 f(x)\,dx > 0$$ [1]."


def test_escaped_backslash_is_not_a_delimiter() -> None:
    assert latex_to_markdown(r"a \\(b\\) c") == r"a \\(b\\) c"
