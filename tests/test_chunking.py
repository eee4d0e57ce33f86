"""The chunker on the sample lessons and on generated Markdown: token window, formulas, headings, example + solution."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.chunking import Chunk, ChunkerConfig, ChunkingWarning, chunk_document, fit_header, math_spans, split_to_fit
from rag.embeddings import E5Embeddings
from rag.loaders import LoadedDocument, LoadError, Page, load
from rag.schema import body_of, join_headings, with_header

LESSONS = Path(__file__).resolve().parents[1] / "data" / "lessons"
LESSON_FILES = sorted(LESSONS.rglob("*.md"))
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


@pytest.fixture(scope="module")
def chunked(bundled: E5Embeddings) -> dict[Path, tuple[LoadedDocument, list[Chunk]]]:
    """Every sample lesson with its chunks (bundled embedder's token counts, its 256-token window)."""
    out = {}
    for path in LESSON_FILES:
        doc = load(path)
        out[path] = (doc, chunk_document(doc, path.stem, lambda t: bundled.count_tokens(t, "passage")))
    return out


def body(chunk: Chunk) -> str:
    header = with_header(chunk.heading_path, "")
    assert chunk.text.startswith(header), chunk.text[:80]
    return chunk.text[len(header):]


def test_the_sample_material_is_there() -> None:
    assert len(LESSON_FILES) == 40  # 30 lessons, 2 statistics lessons, 8 end-of-chapter review pages


def test_every_chunk_of_every_lesson_fits_the_window(chunked, bundled: E5Embeddings) -> None:
    for path, (_, chunks) in chunked.items():
        assert chunks, path
        assert [c.ordinal for c in chunks] == list(range(len(chunks)))
        for chunk in chunks:
            assert chunk.text.strip()
            assert bundled.count_tokens(chunk.text, "passage") <= 256, (path.name, chunk.ordinal)


def test_every_formula_of_a_lesson_is_intact_in_some_chunk(chunked) -> None:
    total = 0
    for path, (doc, chunks) in chunked.items():
        for start, end in math_spans(doc.text):
            formula = doc.text[start:end]
            total += 1
            assert any(formula in c.text for c in chunks), (path.name, formula)
    assert total > 500  # the lessons are full of formulas; a broken math_spans would find few


def _sections(text: str) -> list[tuple[tuple[str, ...], str]]:
    """(heading path, text under it) in document order, from the '#'/'##' lines."""
    sections: list[tuple[tuple[str, ...], list[str]]] = []
    stack: list[tuple[int, str]] = []
    for line in text.split("\n"):
        match = HEADING.match(line)
        if match:
            level = len(match.group(1))
            stack = [(lvl, name) for lvl, name in stack if lvl < level] + [(level, match.group(2).strip("*_ "))]
            sections.append((tuple(name for _, name in stack), []))
        elif sections:
            sections[-1][1].append(line)
    return [(path, "\n".join(lines)) for path, lines in sections]


def test_heading_paths_follow_the_heading_structure(chunked) -> None:
    for path, (doc, chunks) in chunked.items():
        sections = _sections(doc.text)
        order = [p for p, _ in sections]
        assert len(order[0]) == 1 and all(len(p) == 2 and p[0] == order[0][0] for p in order[1:]), path
        last = 0
        for chunk in chunks:
            assert chunk.heading_path in order, (path.name, chunk.heading_path)
            position = order.index(chunk.heading_path)
            assert position >= last, f"{path.name}: chunks out of reading order"
            last = position
            section_text = sections[position][1]
            for paragraph in body(chunk).split("\n\n"):
                assert paragraph.strip() in section_text, (path.name, chunk.heading_path, paragraph[:60])
        # Every section with text has at least one chunk.
        assert {p for p, t in sections if t.strip()} <= {c.heading_path for c in chunks}, path


def test_lesson_heading_path_example(chunked) -> None:
    _, chunks = chunked[LESSONS / "lop12" / "01-tinh-don-dieu.md"]
    assert chunks[0].heading_path == ("Bài 1. Tính đơn điệu của hàm số",)
    assert chunks[0].text.startswith("Bài 1. Tính đơn điệu của hàm số\n\nKhi vẽ đồ thị")
    exercises = [c for c in chunks if "**Bài 5.**" in c.text]
    assert [c.heading_path for c in exercises] == [("Bài 1. Tính đơn điệu của hàm số", "Bài tập")]
    assert exercises[0].text.startswith("Bài 1. Tính đơn điệu của hàm số › Bài tập\n\n")


def test_an_example_and_its_solution_share_a_chunk_when_they_fit(chunked, bundled: E5Embeddings) -> None:
    example = re.compile(r"^\*\*Ví dụ \d+\.\*\*")
    solution = re.compile(r"^\*\*(Lời giải|Giải)\.\*\*")
    checked = 0
    for path, (doc, chunks) in chunked.items():
        for heading_path, text in _sections(doc.text):
            paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
            for first, second in zip(paragraphs, paragraphs[1:]):
                if example.match(first) and solution.match(second):
                    if bundled.count_tokens(with_header(heading_path, first + "\n\n" + second)) <= 256:
                        checked += 1
                        assert any(first in c.text and second in c.text for c in chunks), (path.name, first[:50])
    assert checked >= 60


def _doc(text: str) -> LoadedDocument:
    return LoadedDocument(path=Path("gen.md"), kind="md", pages=(Page(text),))


def test_example_and_solution_stay_together_even_when_the_section_is_full(bundled: E5Embeddings) -> None:
    count = lambda t: bundled.count_tokens(t, "passage")  # noqa: E731
    intro = "Ta nhắc lại định nghĩa đạo hàm của hàm số tại một điểm và ý nghĩa hình học của nó. " * 6
    example = "**Ví dụ 1.** Tính đạo hàm của hàm số $y = x^3 - 3x^2 + 2$ tại điểm $x_0 = 1$ và viết phương trình tiếp tuyến."
    answer = "**Giải.** Ta có $y' = 3x^2 - 6x$ nên $y'(1) = -3$ và $y(1) = 0$. Tiếp tuyến là $y = -3(x - 1)$."
    text = f"# Bài 8. Đạo hàm\n\n## 1. Định nghĩa\n\n{intro}\n\n{example}\n\n{answer}\n\n**Ví dụ 2.** Tính $\\lim_{{x \\to 0}} \\dfrac{{\\sin x}}{{x}}$."
    chunks = chunk_document(_doc(text), "gen", count)
    assert any(example in c.text and answer in c.text for c in chunks)
    assert not any(intro.strip() in c.text and answer in c.text for c in chunks)  # the section did not fit the target
    assert all(count(c.text) <= 256 for c in chunks)


def test_an_oversized_paragraph_is_split_without_cutting_a_formula(bundled: E5Embeddings) -> None:
    count = lambda t: bundled.count_tokens(t, "passage")  # noqa: E731
    sentences = [
        f"Với $n = {i}$ ta có $\\sum_{{k=1}}^{{{i}}} k = \\dfrac{{{i}({i} + 1)}}{{2}}$ và $\\int_0^{{{i}}} x\\,dx = \\dfrac{{{i}^2}}{{2}}$, "
        f"đồng thời \\(\\sqrt{{{i}^2 + 1}} > {i}\\) nên ước lượng đúng"
        for i in range(1, 40)
    ]
    paragraph = "**Nhận xét.** " + " ".join(sentences) + ". $$\\lim_{n \\to +\\infty} \\dfrac{1}{n} = 0$$ Kết thúc."
    text = "# Bài 6. Giới hạn\n\n## 2. Tổng\n\n" + paragraph
    assert count(with_header(("Bài 6. Giới hạn", "2. Tổng"), paragraph)) > 3 * 256
    chunks = chunk_document(_doc(text), "gen", count)
    assert len(chunks) >= 4
    assert all(count(c.text) <= 256 for c in chunks)
    formulas = [paragraph[s:e] for s, e in math_spans(paragraph)]
    assert len(formulas) == 4 * 39 + 1
    for formula in formulas:
        assert any(formula in c.text for c in chunks), formula
    for chunk in chunks:  # no chunk starts or ends inside a formula: every '$' pairs up within the chunk
        assert body(chunk).count("$") % 2 == 0 and body(chunk).count("\\(") == body(chunk).count("\\)")
    assert " ".join(body(c) for c in chunks).split() == paragraph.split()


def test_split_to_fit_prefers_paragraph_then_sentence_boundaries() -> None:
    count = lambda t: len(t.split())  # noqa: E731
    text = "a b c. d e f.\n\ng h i. j k l."
    assert split_to_fit(text, count, 6) == ["a b c. d e f.", "g h i. j k l."]
    assert split_to_fit(text, count, 3) == ["a b c.", "d e f.", "g h i.", "j k l."]
    # The spaces inside a formula are no boundaries, as long as the formula itself fits.
    assert split_to_fit("x $a + b$ y", count, 3) == ["x", "$a + b$", "y"]
    assert split_to_fit("p q \\(u + v\\) r", count, 3) == ["p q", "\\(u + v\\)", "r"]


# --- property-based ---------------------------------------------------------------------------------------------------

WORDS = ["hàm", "số", "đồng", "biến", "nghịch", "khoảng", "đạo", "tích", "phân", "xác", "suất", "Ước", "lượng",
         "tiệm", "cận", "đường", "thẳng", "mặt", "phẳng", "vectơ", "nghiệm", "phương", "trình", "giới", "hạn", "dãy",
         "cấp", "nhân", "cộng", "logarit", "tập", "hợp", "điểm", "cực", "trị", "(theo", "định", "lí)", "x,", "y.",
         "khi", "và", "chỉ", "thì", "ta", "có:", "nên", "vậy;", "là", "giá", "trị", "lớn", "nhất", "nhỏ", "bằng"]
MARKERS = ["**Định nghĩa {n}.**", "**Định lí {n}.**", "**Ví dụ {n}.**", "**Giải.**", "**Chú ý.**", "**Bài {n}.**",
           "**Nhận xét.**", "**Hệ quả.**", "**Tính chất.**", "Lời giải:"]
INLINE = ["$x^{n}$", "$f'(x) > {n}$", "$\\dfrac{{a}}{{b + {n}}}$", "$y = {n}x + 1$", "$\\sqrt{{{n}}}$",
          "\\(\\sin x = {n}\\)", "$\\{{1; {n}\\}}$", "$a_{{n}} = a_1 + (n - 1)d$"]
DISPLAY = ["$$\\int_0^{n} x^2\\,dx = \\dfrac{{{n}^3}}{{3}}$$", "\\[\n\\lim_{{x \\to {n}}} f(x) = L\n\\]",
           "$$\nS_n = \\dfrac{{n(u_1 + u_n)}}{{2}}, \\quad n = {n}\n$$"]

word = st.sampled_from(WORDS)
number = st.integers(min_value=0, max_value=99)
inline = st.builds(lambda f, n: f.format(n=n), st.sampled_from(INLINE), number)
sentence = st.lists(st.one_of(word, word, word, inline), min_size=1, max_size=25).map(" ".join)
plain = st.lists(sentence, min_size=1, max_size=12).map(" ".join)
marker_block = st.builds(lambda m, n, s: m.format(n=n) + " " + s, st.sampled_from(MARKERS), number, plain)
display = st.builds(lambda f, n: f.format(n=n), st.sampled_from(DISPLAY), number)
heading = st.builds(lambda level, words: "#" * level + " " + " ".join(words),
                    st.integers(min_value=1, max_value=3), st.lists(word, min_size=1, max_size=4))
block = st.one_of(plain, marker_block, marker_block, display, heading, heading)
separator = st.sampled_from(["\n\n", "\n\n", "\n\n\n", "\n"])


@st.composite
def markdown(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A lesson-like Markdown text, and its non-heading lines (what the chunk bodies must hold)."""
    blocks = draw(st.lists(block, min_size=1, max_size=14))
    parts, body_lines = [], []
    for i, text in enumerate(blocks):
        is_heading = text.startswith("#")
        # A heading or a marker line starts a paragraph even without a blank line before it.
        sep = draw(separator) if i else ""
        parts.append(sep + text)
        if not is_heading:
            body_lines.append(text)
    return "".join(parts), body_lines


@pytest.mark.parametrize("config", [ChunkerConfig(), ChunkerConfig(max_tokens=96, target_tokens=64)], ids=["256", "96"])
def test_generated_markdown_property(bundled: E5Embeddings, config: ChunkerConfig) -> None:
    cache: dict[str, int] = {}

    def count(text: str) -> int:
        if text not in cache:
            cache[text] = bundled.count_tokens(text, "passage")
        return cache[text]

    @settings(max_examples=int(os.environ.get("CHUNKER_EXAMPLES", "50")), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(markdown())
    def check(generated: tuple[str, list[str]]) -> None:
        text, body_lines = generated
        chunks = chunk_document(_doc(text), "Bài sinh tự động", count, config)
        # The window holds.
        for chunk in chunks:
            assert count(chunk.text) <= config.max_tokens, chunk.text
        # No formula is cut.
        for start, end in math_spans(text):
            formula = text[start:end]
            assert any(formula in c.text for c in chunks), formula
        # Nothing is lost, duplicated or reordered: the bodies hold exactly the non-heading words, in order.
        expected = " ".join(body_lines).split()
        assert " ".join(body(c) for c in chunks).split() == expected
        # Headers name only headings of the document (or its title before the first heading).
        headings = {line.lstrip("#").strip() for line in text.split("\n") if HEADING.match(line)}
        for chunk in chunks:
            assert set(chunk.heading_path) <= headings | {"Bài sinh tự động"}
        assert [c.ordinal for c in chunks] == list(range(len(chunks)))

    check()


# --- headers too long for the window, unclosed display math (issue 10) -------------------------------------------------

PARAGRAPH_AS_HEADING = ("Trong mục này ta nghiên cứu kĩ tính đơn điệu của hàm số, mối liên hệ giữa dấu của đạo hàm và "
                        "chiều biến thiên, cùng các ví dụ minh hoạ chi tiết cho từng trường hợp có thể xảy ra. ") * 8


def test_a_heading_longer_than_the_window_shortens_the_header_not_the_body(bundled: E5Embeddings) -> None:
    count = lambda t: bundled.count_tokens(t, "passage")  # noqa: E731
    body_text = "\n\n".join(f"**Ví dụ {i}.** Xét hàm số $y = x^3 - {i}x$ trên khoảng $(0; {i})$ và tìm các khoảng đồng biến." for i in range(1, 9))
    text = f"# Bài 1. Tính đơn điệu\n\n## 1. Định nghĩa\n\n### {PARAGRAPH_AS_HEADING}\n\n{body_text}"
    path = ("Bài 1. Tính đơn điệu", "1. Định nghĩa", PARAGRAPH_AS_HEADING.strip())
    assert count(join_headings(path)) > 256
    chunks = chunk_document(_doc(text), "gen", count)
    under = [c for c in chunks if c.heading_path == path]  # the full path stays the chunk's heading path (metadata)
    assert under and all(count(c.text) <= 256 for c in chunks)
    for chunk in under:
        header = chunk.text.split("\n\n")[0]
        assert header.startswith("Bài 1. Tính đơn điệu › … › Trong mục này ta nghiên cứu") and header.endswith("…")
        assert count(header) <= 128
    bodies = [body_of(c.text, {"heading_path": join_headings(c.heading_path)}) for c in under]
    assert all(len(b) >= 60 for b in bodies)  # whole examples, never shreds
    assert "\n\n".join(bodies).split() == body_text.split()


def test_fit_header_keeps_title_and_nearest_heading() -> None:
    words = lambda t: len(t.split())  # noqa: E731
    path = ("Bài 8. Đạo hàm", "2. Quy tắc", "2.1 Hàm hợp", "Ví dụ")
    assert fit_header(path, words, 20) == join_headings(path)
    assert fit_header(path, words, 9) == "Bài 8. Đạo hàm › … › Ví dụ"
    long_title = ("Bài 8. " + "rất dài " * 30, "Ví dụ 3 về đạo hàm")
    short = fit_header(long_title, words, 12)
    assert words(short) <= 12 and short.startswith("Bài 8. rất") and short.endswith(" › Ví dụ 3 về đạo hàm")
    assert body_of(f"{short}\n\nthân", {"heading_path": join_headings(long_title)}) == "thân"


def test_a_window_too_small_for_any_text_is_an_error_not_shreds() -> None:
    count = lambda t: 40 + len(t)  # noqa: E731 (a prefix that alone nearly fills the window)
    with pytest.raises(LoadError, match="no room for the text"):
        chunk_document(_doc("# Bài 1\n\nNội dung bài học."), "gen", count, ChunkerConfig(max_tokens=41, target_tokens=41))


def test_an_unclosed_dollar_dollar_does_not_swallow_the_headings(bundled: E5Embeddings) -> None:
    count = lambda t: bundled.count_tokens(t, "passage")  # noqa: E731
    text = ("# Bài 2. Cực trị\n\n## 1. Định nghĩa\n\nĐiểm cực đại là $$x_0 nếu f(x) < f(x_0).\n\n"
            "## 2. Điều kiện cần\n\nNếu hàm số đạt cực trị tại $x_0$ thì $f'(x_0) = 0$.\n\n"
            "$$\nf'(x) = 3x^2 - 3\n$$\n\n## 3. Điều kiện đủ\n\nXét dấu đạo hàm.")
    with pytest.warns(ChunkingWarning, match=r"^line 5: display math opened here is not closed before line 6") as caught:
        chunks = chunk_document(_doc(text), "gen", count)
    assert len(caught) == 1  # the well-formed display formula further down is no warning
    assert [c.heading_path[-1] for c in chunks] == ["1. Định nghĩa", "2. Điều kiện cần", "3. Điều kiện đủ"]
    assert "$$\nf'(x) = 3x^2 - 3\n$$" in chunks[1].text
