"""Chunk kinds (definition, theorem, theory, example, exercise, review) from the structure the chunker detects."""
from __future__ import annotations

from pathlib import Path

import pytest

from rag.chunking import KINDS, chunk_document, unit_kind
from rag.loaders import LoadedDocument, Page, load

LESSONS = Path(__file__).resolve().parents[1] / "data" / "lessons"


def words(text: str) -> int:
    return len(text.split()) + 3


def kinds_of(markdown: str) -> list[tuple[str, str]]:
    """(first words of the body, kind) of each chunk, with a tiny target so every block is its own chunk."""
    from rag.chunking import ChunkerConfig

    doc = LoadedDocument(path=Path("x.md"), kind="md", pages=[Page(markdown, None)])
    chunks = chunk_document(doc, "x", words, ChunkerConfig(max_tokens=200, target_tokens=1))
    return [(c.text.split("\n\n", 1)[1].split(".")[0].strip("* "), c.kind) for c in chunks]


LESSON = """# Bài 3. Hàm số bậc hai

Mở đầu về hàm số bậc hai.

## 1. Định nghĩa

**Định nghĩa 1.** Hàm số bậc hai là hàm số cho bởi công thức $y = ax^2 + bx + c$.

**Định lí 1.** Đồ thị là một parabol.

**Ví dụ 1.** Tìm đỉnh của parabol $y = x^2 - 4x + 5$.

**Giải.** Đỉnh $I(2; 1)$.

## Bài tập

**Bài 1.** Tìm đỉnh của parabol $y = x^2 + 2x$.

**Bài 2.** Vẽ đồ thị $y = -x^2$.

**Giải.** Parabol quay bề lõm xuống.
"""


def test_kinds_of_a_lesson() -> None:
    assert kinds_of(LESSON) == [
        ("Mở đầu về hàm số bậc hai", "theory"),
        ("Định nghĩa 1", "definition"),
        ("Định lí 1", "theorem"),
        ("Ví dụ 1", "example"),  # with its solution
        ("Bài 1", "exercise"),
        ("Bài 2", "example"),  # an exercise with its solution shows the method: a worked example
    ]


def test_review_pages_by_their_title() -> None:
    review = "# Bài tập cuối chương: Hàm số\n\n## A. Trắc nghiệm\n\n**Câu 1.** Đỉnh của parabol là\nA. $1$.\nB. $2$.\n"
    assert {kind for _, kind in kinds_of(review)} == {"review"}
    assert unit_kind(("Ôn tập chương II", "Phần 1"), ["định nghĩa"]) == "review"


@pytest.mark.parametrize(("headings", "markers", "kind"), [
    (("Bài 1",), ["tính chất"], "theorem"),
    (("Bài 1",), ["hệ quả", None], "theorem"),
    (("Bài 1",), [None], "theory"),
    (("Bài 1", "Luyện tập"), [None], "exercise"),  # unmarked text under an exercise heading
    (("Bài 1", "Bài tập"), ["định nghĩa"], "definition"),  # a recalled definition stays one
    (("Bài 1",), ["hđ"], "example"),
])
def test_unit_kind(headings: tuple[str, ...], markers: list[str | None], kind: str) -> None:
    assert unit_kind(headings, markers) == kind


def test_every_chunk_of_the_sample_lessons_has_a_kind_and_review_pages_are_review() -> None:
    for path in sorted(LESSONS.rglob("*.md")):
        chunks = chunk_document(load(path), path.stem, words)
        assert all(c.kind in KINDS for c in chunks), path
        if "bai-tap-cuoi-chuong" in path.name:
            assert {c.kind for c in chunks} == {"review"}, path
        else:
            assert {"definition", "theorem", "example"} & {c.kind for c in chunks}, path
