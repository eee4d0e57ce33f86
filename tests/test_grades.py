"""Grade scope: a file's grade from its names or the teacher's .vimath.toml, stored at ingest, and retrieval kept
within the student's grade (plus material without a grade) by dense and BM25 alike; the not-in-grade message."""
from __future__ import annotations

from pathlib import Path

import pytest
from word_backend import WordBackend

from rag.answering import AnswerStatus, Tutor, ask, not_in_grade_notice
from rag.embeddings import E5Embeddings
from rag.grades import SIDECAR, GradeError, grade_from_name, infer_grade
from rag.index import LessonIndex
from rag.ingestion import IngestJob, discover
from rag.ranking import METHODS, make_ranker
from rag.retrieval import Filters, Searcher
from rag.settings import Settings


@pytest.mark.parametrize(("name", "grade"), [
    ("lop10", 10), ("Lớp 10", 10), ("lop-10", 10), ("LOP_11", 11), ("khoi10", 10), ("Khối 12", 12),
    ("grade_10", 10), ("toan-10-tap-1.pdf", 10), ("Toán 11", 11), ("10", 10), ("g12", 12), ("lop9", 9),
    ("01-tinh-don-dieu.md", None), ("12-toa-do-khong-gian.md", None),  # a lesson number is not a grade
    ("1", None), ("chuong-1", None), ("bang-12", None), ("", None),
])
def test_grade_from_a_name(name: str, grade: int | None) -> None:
    assert grade_from_name(name) == grade


def make(root: Path, relative: str, text: str = "# Bài 1. A\n\nNội dung.\n") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_infer_grade_from_folders_the_folder_ingested_and_sidecars(tmp_path: Path) -> None:
    root = tmp_path / "tai-lieu"
    assert infer_grade(make(root, "lop10/a.md"), "lop10/a.md") == 10
    assert infer_grade(make(root, "chung/b.md"), "chung/b.md") is None
    assert infer_grade(make(root, "Lớp 11/chuong-1/c.md"), "Lớp 11/chuong-1/c.md") == 11  # a folder above
    own = tmp_path / "lop12"  # the folder ingested is itself named for its grade
    assert infer_grade(make(own, "d.md"), "d.md") == 12
    (root / "chung" / SIDECAR).write_text("grade = 11\n", encoding="utf-8")
    assert infer_grade(root / "chung" / "b.md", "chung/b.md") == 11  # the teacher's word
    (root / "lop10" / SIDECAR).write_text("grade = 0\n", encoding="utf-8")
    assert infer_grade(root / "lop10" / "a.md", "lop10/a.md") is None  # shared material despite the name
    (root / SIDECAR).write_text("grade = 12\n", encoding="utf-8")
    assert infer_grade(make(root, "x/e.md"), "x/e.md") == 12  # the nearest sidecar, up to the folder ingested
    assert infer_grade(root / "chung" / "b.md", "chung/b.md") == 11


@pytest.mark.parametrize("content", ["grade = 13\n", "grade = \"mười\"\n", "grade = [\n"])
def test_a_bad_sidecar_is_a_clear_error(tmp_path: Path, content: str) -> None:
    make(tmp_path, "a.md")
    (tmp_path / SIDECAR).write_text(content, encoding="utf-8")
    with pytest.raises(GradeError, match=r"\.vimath\.toml.*grade"):
        infer_grade(tmp_path / "a.md", "a.md")


DOCS = {
    "lop10/thong-ke.md": "# Bài 10. Thống kê\n\n**Định nghĩa 1.** Số trung bình cộng của mẫu số liệu lớp mười.\n",
    "lop11/ghep-nhom.md": "# Bài 10. Mẫu số liệu ghép nhóm\n\n**Định nghĩa 1.** Số trung bình cộng của mẫu số liệu ghép nhóm lớp mười một.\n",
    "lop12/toa-do.md": "# Bài 12. Toạ độ trong không gian\n\n**Định nghĩa 1.** Hệ toạ độ Oxyz gồm ba trục vuông góc.\n",
    "chung/ky-hieu.md": "# Kí hiệu\n\nBảng kí hiệu toán học chung cho mọi lớp: trung bình cộng.\n",
}


def ingested(tmp_path: Path, docs: dict[str, str]) -> tuple[LessonIndex, E5Embeddings]:
    """A real index of `docs` (stored name → text), ingested with the word-count embedder; every file added."""
    root = tmp_path / "lessons"
    for relative, text in docs.items():
        make(root, relative, text)
    embeddings = E5Embeddings(WordBackend())
    index = LessonIndex.open(Settings(index_dir=tmp_path / "index"), embeddings.identity)
    files, _ = discover([root])
    report = IngestJob(index, embeddings).run(files)
    assert report.counts()["added"] == len(docs)
    return index, embeddings


@pytest.fixture
def graded_index(tmp_path: Path) -> tuple[LessonIndex, E5Embeddings]:
    return ingested(tmp_path, DOCS)


def test_ingest_stores_grade_and_kind(graded_index) -> None:
    index, _ = graded_index
    metas = {m["source"]: m for _, m in index.metadatas()}
    assert {s: m.get("grade") for s, m in metas.items()} == {
        "lop10/thong-ke.md": 10, "lop11/ghep-nhom.md": 11, "lop12/toa-do.md": 12, "chung/ky-hieu.md": None}
    assert "grade" not in metas["chung/ky-hieu.md"]  # absent, not a sentinel
    assert metas["lop10/thong-ke.md"]["kind"] == "definition"


@pytest.mark.parametrize("method", METHODS)
def test_every_method_stays_within_the_grade_and_the_material_without_one(graded_index, method: str) -> None:
    index, embeddings = graded_index
    searcher = Searcher(make_ranker(method, index, embeddings))
    question = "số trung bình cộng của mẫu số liệu"
    everything = {h.source for h in searcher.search(question, 10)}
    assert {"lop10/thong-ke.md", "lop11/ghep-nhom.md"} <= everything
    scoped = {h.source for h in searcher.search(question, 10, filters=Filters(grade=10))}
    assert scoped <= {"lop10/thong-ke.md", "chung/ky-hieu.md"}
    assert "lop10/thong-ke.md" in scoped
    assert {h.source for h in searcher.search(question, 10, filters=Filters(grade=11))} <= {"lop11/ghep-nhom.md", "chung/ky-hieu.md"}


def test_grade_filter_where_and_bad_grade() -> None:
    assert Filters().where() is None
    where = Filters(grade=10).where()
    assert where == {"grade": {"$nin": [g for g in range(1, 13) if g != 10]}}
    with pytest.raises(ValueError, match="grade must be one of 1–12"):
        Filters(grade=13)


class NoChat:
    """The LLM must not be asked when the material does not cover the question."""

    def __call__(self, *args: object) -> object:
        raise AssertionError("the LLM was called")


def test_not_in_grade_says_so_and_offers_the_grades_that_have_it(graded_index) -> None:
    index, embeddings = graded_index
    settings = Settings(index_dir=Path("unused"), min_score=0.6)
    tutor = Tutor(Searcher(make_ranker("dense", index, embeddings)), settings, chat_factory=NoChat())
    question = "hệ toạ độ Oxyz gồm ba trục vuông góc"
    stream = tutor.stream(question, filters=Filters(grade=10))
    for _ in stream:
        pass
    answer = stream.answer
    assert answer.status == AnswerStatus.NOT_COVERED
    assert answer.other_grades == [12]
    assert answer.notice == not_in_grade_notice(10, [12])
    assert "lớp 10" in answer.notice and "lớp 12" in answer.notice and "Tất cả" in answer.notice
    assert all(h.metadata.get("grade") in (None, 10) for h in answer.retrieved)  # nothing widened silently
    unscoped = ask(Tutor(Searcher(make_ranker("dense", index, embeddings)), settings.model_copy(update={"min_score": 2.0}),
                         chat_factory=NoChat()), question)
    assert unscoped.notice != answer.notice and unscoped.other_grades == []  # without a grade: the usual message


def test_not_in_grade_notice_without_other_grades() -> None:
    assert "Các lớp khác cũng chưa có" in not_in_grade_notice(11, [])


def test_the_llm_gets_a_hits_neighbours_when_they_fit(graded_index) -> None:
    from rag.answering import fit_budget
    from rag.index import Hit

    def hit(i: int, body: str, section: str = "Bài 1") -> Hit:
        return Hit(f"c{i}", f"{section}\n\n{body}", {"source": "a.md", "heading_path": section, "chunk_index": i}, 0.9)

    middle, before, after, elsewhere = hit(1, "Giữa " * 20), hit(0, "Trước " * 20), hit(2, "Sau " * 20), hit(3, "Khác " * 20)
    table = {"c1": [before, after], "c3": [after]}

    def neighbours(h: Hit) -> list[Hit]:
        return table.get(h.id, [])

    roomy = Settings(index_dir=Path("unused"), num_ctx=4096)
    budget = fit_budget("câu hỏi", [middle, elsewhere], [], roomy, neighbours)
    assert budget.chunks == 2 and [h.id for h in budget.context] == ["c1", "c3"]
    assert budget.context[0].text == "Bài 1\n\n" + "\n\n".join([before.body, middle.body, after.body])
    assert budget.context[1].text == elsewhere.text  # its neighbour "after" is already shown: not repeated
    plain = fit_budget("câu hỏi", [middle, elsewhere], [], roomy)
    assert plain.context == (middle, elsewhere) and plain.num_ctx <= budget.num_ctx
    # no room beyond the chunks themselves: nothing is added, nothing dropped
    from rag.answering import estimate_tokens
    from rag.prompts import TUTOR_SYSTEM, TUTOR_USER, format_chunk, load_prompt
    fixed = sum(estimate_tokens(t) for t in (load_prompt(TUTOR_SYSTEM).text, load_prompt(TUTOR_USER).text, "câu hỏi"))
    tight = roomy.model_copy(update={"num_ctx": fixed + estimate_tokens(format_chunk(1, middle)) + roomy.answer_tokens + 5})
    assert fit_budget("câu hỏi", [middle], [], tight, neighbours).context == (middle,)


def test_searcher_neighbours_come_from_the_same_file_and_section(graded_index) -> None:
    index, embeddings = graded_index
    searcher = Searcher(make_ranker("lesson", index, embeddings))
    hit = searcher.search("số trung bình cộng của mẫu số liệu ghép nhóm", 1)[0]
    assert searcher.neighbours(hit) == []  # one-chunk files: nothing around
