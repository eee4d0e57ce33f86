"""Book scope: a file's textbook series from its names or the teacher's .vimath.toml, stored at ingest, and retrieval
kept within the student's book (plus material without a book) by every ranker, alone or with the grade; the CLI's
--book, the eval's `book` field, the API's filter, and the not-in-book message."""
from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

import pytest
from test_grades import NoChat, ingested, make
from test_ingest import chroma_server  # noqa: F401  (a real `chroma run`)
from word_backend import WordBackend

from rag.answering import AnswerStatus, Tutor, not_in_book_notice
from rag.books import CANH_DIEU, CHAN_TROI, KET_NOI, BookError, book_from_name, canonical_book, infer_book, resolve_book, same_book
from rag.chunking import CHUNKER_VERSION, ChunkerConfig
from rag.embeddings import E5Embeddings
from rag.grades import SIDECAR
from rag.index import LessonIndex
from rag.ingestion import IngestJob, discover, fingerprint
from rag.ranking import METHODS, make_ranker
from rag.retrieval import Filters, Searcher
from rag.settings import Settings


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


@pytest.mark.parametrize(("name", "book"), [
    ("Kết nối tri thức với cuộc sống", KET_NOI), ("Kết-nối-tri-thức", KET_NOI), ("ket_noi_tri_thuc", KET_NOI),
    ("KNTT_lop10", KET_NOI), ("toan-10-kntt.pdf", KET_NOI), ("kntt10", KET_NOI), (nfd("Kết Nối Tri Thức"), KET_NOI),
    ("Chân trời sáng tạo", CHAN_TROI), ("chan-troi-sang-tao", CHAN_TROI), ("CTST lớp 11", CHAN_TROI),
    ("Cánh diều", CANH_DIEU), ("canh-dieu.md", CANH_DIEU), ("CANH DIEU", CANH_DIEU), (nfd("Cánh Diều"), CANH_DIEU),
    # "kntt"/"ctst" inside another word, a lone half of a name, and plain folders are no book
    ("akntt", None), ("knttx", None), ("bai-knttoan", None), ("actst", None), ("canh", None), ("dieu-kien.md", None),
    ("ket-noi", None), ("lop10", None), ("", None),
])
def test_book_from_a_name(name: str, book: str | None) -> None:
    assert book_from_name(name) == book


def test_infer_book_deepest_name_first_and_sidecars_override(tmp_path: Path) -> None:
    root = tmp_path / "tai-lieu"
    assert infer_book(make(root, "KNTT/lop10/a.md"), "KNTT/lop10/a.md") == KET_NOI
    assert infer_book(make(root, "kntt/canh-dieu/b.md"), "kntt/canh-dieu/b.md") == CANH_DIEU  # the deepest wins
    assert infer_book(make(root, "chung/c.md"), "chung/c.md") is None
    own = tmp_path / "Chân trời sáng tạo"  # the folder ingested is itself named for its book
    assert infer_book(make(own, "d.md"), "d.md") == CHAN_TROI
    (root / "chung" / SIDECAR).write_text('book = "Cánh diều"\n', encoding="utf-8")
    assert infer_book(root / "chung" / "c.md", "chung/c.md") == CANH_DIEU  # the teacher's word
    (root / "KNTT" / SIDECAR).write_text('book = ""\n', encoding="utf-8")
    assert infer_book(root / "KNTT" / "lop10" / "a.md", "KNTT/lop10/a.md") is None  # shared material despite the name
    (root / "kntt" / "canh-dieu" / SIDECAR).write_text("grade = 10\n", encoding="utf-8")  # speaks of the grade only
    assert infer_book(root / "kntt" / "canh-dieu" / "b.md", "kntt/canh-dieu/b.md") == CANH_DIEU
    (root / SIDECAR).write_text(f'grade = 12\nbook = "  {nfd("Sách riêng của trường")}  "\n', encoding="utf-8")
    assert infer_book(make(root, "x/e.md"), "x/e.md") == "Sách riêng của trường"  # NFC, stripped, up to the root
    assert infer_book(root / "chung" / "c.md", "chung/c.md") == CANH_DIEU  # the nearest sidecar


@pytest.mark.parametrize(("value", "book"), [
    ("kntt", KET_NOI), ("Kết nối tri thức", KET_NOI), ("cánh DIỀU", CANH_DIEU), ("ctst", CHAN_TROI),
    ("Cánh diều nâng cao", "Cánh diều nâng cao"),  # a name of its own, not the series
    ("  ", None),
])
def test_a_sidecar_book_naming_a_series_is_stored_under_its_full_name(value: str, book: str | None) -> None:
    assert canonical_book(value) == book


@pytest.mark.parametrize("content", ["book = 10\n", "book = true\n", 'book = ["Cánh diều"]\n'])
def test_a_bad_sidecar_book_is_a_clear_error(tmp_path: Path, content: str) -> None:
    make(tmp_path, "a.md")
    (tmp_path / SIDECAR).write_text(content, encoding="utf-8")
    with pytest.raises(BookError, match=r"\.vimath\.toml: book must be text in quotes"):
        infer_book(tmp_path / "a.md", "a.md")


def test_ingest_reports_a_bad_sidecar_book_as_the_files_failure(tmp_path: Path) -> None:
    make(tmp_path / "lessons", "a.md")
    (tmp_path / "lessons" / SIDECAR).write_text("book = 1\n", encoding="utf-8")
    embeddings = E5Embeddings(WordBackend())
    index = LessonIndex.open(Settings(index_dir=tmp_path / "index"), embeddings.identity)
    report = IngestJob(index, embeddings).run(discover([tmp_path / "lessons"])[0])
    [outcome] = report.outcomes
    assert outcome.status == "failed" and "book must be text" in (outcome.error or "")


STATS = "**Định nghĩa 1.** Số trung bình cộng của mẫu số liệu"
DOCS = {
    "ket-noi-tri-thuc/lop10/thong-ke.md": f"# Bài 13. Thống kê\n\n{STATS} theo sách kết nối.\n",
    "canh-dieu/lop10/thong-ke.md": f"# Bài 3. Thống kê\n\n{STATS} theo sách cánh diều lớp mười.\n",
    "canh-dieu/lop11/ghep-nhom.md": f"# Bài 1. Mẫu số liệu ghép nhóm\n\n{STATS} ghép nhóm lớp mười một.\n",
    "canh-dieu/lop12/toa-do.md": "# Bài 1. Toạ độ\n\n**Định nghĩa 1.** Hệ toạ độ Oxyz gồm ba trục vuông góc.\n",
    "chung/ky-hieu.md": "# Kí hiệu\n\nBảng kí hiệu toán học chung cho mọi lớp: số trung bình cộng.\n",
}
KNTT10, CD10, CD11, CD12, COMMON = DOCS


@pytest.fixture
def book_index(tmp_path: Path) -> tuple[LessonIndex, E5Embeddings]:
    return ingested(tmp_path, DOCS)


def test_ingest_stores_the_book_and_its_flag_only_when_known(book_index) -> None:
    index, _ = book_index
    metas = {m["source"]: m for _, m in index.metadatas()}
    assert {s: m.get("book") for s, m in metas.items()} == {
        KNTT10: KET_NOI, CD10: CANH_DIEU, CD11: CANH_DIEU, CD12: CANH_DIEU, COMMON: None}
    assert all(m["has_book"] is True for s, m in metas.items() if s != COMMON)
    assert "book" not in metas[COMMON] and "has_book" not in metas[COMMON]  # absent, not a sentinel
    assert metas[CD11]["grade"] == 11  # the grade still comes from the inner folder
    assert index.books() == [CANH_DIEU, KET_NOI]


def test_the_filter_admits_the_book_and_the_material_without_one_in_chroma_itself(book_index) -> None:
    """Chroma (1.5) has no "field absent" test: this checks that "$ne" True admits the chunks lacking the flag."""
    index, _ = book_index
    source = {i: m["source"] for i, m in index.metadatas()}
    admitted = {source[i] for i in index.ids_where(Filters(book=CANH_DIEU).where())}
    assert admitted == {CD10, CD11, CD12, COMMON}
    assert {source[i] for i in index.ids_where(Filters(book=KET_NOI).where())} == {KNTT10, COMMON}
    assert {source[i] for i in index.ids_where(Filters(book="Sách khác").where())} == {COMMON}
    both = Filters(grade=10, book=nfd(CANH_DIEU))  # NFD as typed on some keyboards: the same book
    assert {source[i] for i in index.ids_where(both.where())} == {CD10, COMMON}
    # Chroma's own filtered query (what LessonIndex.search falls back on) agrees
    found = index.collection.query(query_embeddings=[[1.0] + [0.0] * 63], n_results=10, where=both.where())
    assert {m["source"] for m in found["metadatas"][0]} == {CD10, COMMON}


def test_book_filter_where() -> None:
    assert Filters(book="").where() is None and Filters(book="  ").book is None
    assert Filters(book=nfd(CANH_DIEU)).book == CANH_DIEU
    assert Filters(book=CANH_DIEU).where() == {"$or": [{"book": CANH_DIEU}, {"has_book": {"$ne": True}}]}
    combined = Filters(source="a.md", grade=10, book=KET_NOI).where()
    assert combined is not None and len(combined["$and"]) == 3


@pytest.mark.parametrize("method", METHODS)
def test_every_method_stays_within_the_book_and_the_material_without_one(book_index, method: str) -> None:
    index, embeddings = book_index
    searcher = Searcher(make_ranker(method, index, embeddings))
    question = "số trung bình cộng của mẫu số liệu"
    assert {KNTT10, CD10, CD11} <= {h.source for h in searcher.search(question, 10)}
    kntt = {h.source for h in searcher.search(question, 10, filters=Filters(book=KET_NOI))}
    assert KNTT10 in kntt and kntt <= {KNTT10, COMMON}
    cd = {h.source for h in searcher.search(question, 10, filters=Filters(book=CANH_DIEU))}
    assert {CD10, CD11} <= cd and cd <= {CD10, CD11, CD12, COMMON}
    both = {h.source for h in searcher.search(question, 10, filters=Filters(grade=11, book=CANH_DIEU))}
    assert CD11 in both and both <= {CD11, COMMON}
    assert {h.source for h in searcher.search(question, 10, filters=Filters(grade=11, book=KET_NOI))} <= {COMMON}


def test_a_book_name_resolves_in_any_case_or_abbreviation_and_an_unknown_one_lists_the_books() -> None:
    books = [KET_NOI, CANH_DIEU, "Sách riêng"]
    assert resolve_book("cánh DIỀU", books) == CANH_DIEU
    assert resolve_book(nfd("  sách   RIÊNG "), books) == "Sách riêng"
    assert resolve_book("kntt", books) == KET_NOI
    with pytest.raises(BookError, match="it has: Cánh diều; Kết nối tri thức với cuộc sống; Sách riêng"):
        resolve_book("ctst", books)
    with pytest.raises(BookError, match="has no material with a book"):
        resolve_book("Cánh diều", [])
    assert same_book("KNTT", "kết nối tri thức") and not same_book("kntt", None) and same_book(None, None)


def test_search_cli_book_flag(book_index, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import rag.workspace
    from rag.__main__ import main

    index, embeddings = book_index
    monkeypatch.setattr(rag.workspace, "open_searcher", lambda settings: Searcher(make_ranker("hybrid", index, embeddings)))
    question = "số trung bình cộng của mẫu số liệu"
    assert main(["search", question, "--json", "-k", "10", "--book", "KNTT"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert KNTT10 in {h["metadata"]["source"] for h in hits}
    assert {h["metadata"].get("book") for h in hits} <= {KET_NOI, None}
    assert main(["search", question, "--json", "-k", "10", "--book", "cánh diều", "--grade", "10"]) == 0
    assert {h["metadata"]["source"] for h in json.loads(capsys.readouterr().out)} <= {CD10, COMMON}
    assert main(["search", question, "--book", "Chân trời"]) == 1
    err = capsys.readouterr().err
    assert "no book 'Chân trời'" in err and f"it has: {CANH_DIEU}; {KET_NOI}" in err


def test_not_in_book_says_so_and_offers_the_books_that_have_it(book_index) -> None:
    index, embeddings = book_index
    settings = Settings(index_dir=Path("unused"), min_score=0.6)
    tutor = Tutor(Searcher(make_ranker("dense", index, embeddings)), settings, chat_factory=NoChat())
    question = "hệ toạ độ Oxyz gồm ba trục vuông góc"
    stream = tutor.stream(question, filters=Filters(book=KET_NOI))
    for _ in stream:
        pass
    answer = stream.answer
    assert answer.status == AnswerStatus.NOT_COVERED and answer.other_books == [CANH_DIEU]
    assert answer.notice == not_in_book_notice(KET_NOI, [CANH_DIEU])
    assert f"bộ sách “{KET_NOI}”" in answer.notice and CANH_DIEU in answer.notice and "Tất cả" in answer.notice
    assert all(h.metadata.get("book") in (None, KET_NOI) for h in answer.retrieved)  # nothing widened silently
    stream = tutor.stream(question, filters=Filters(grade=12, book=KET_NOI))
    for _ in stream:
        pass
    both = stream.answer
    assert both.other_grades == [] and both.other_books == [CANH_DIEU]  # widening one keeps the other
    assert both.notice.startswith(f"Tài liệu lớp 12 của bộ sách “{KET_NOI}”") and CANH_DIEU in both.notice
    assert "Các bộ sách khác cũng chưa có" in not_in_book_notice(CANH_DIEU, [])


def test_eval_questions_carry_a_book_searched_within_it(book_index, tmp_path: Path) -> None:
    from rag.eval import rank_all
    from rag.eval.__main__ import with_index_books
    from rag.eval.dataset import DatasetError, load_questions, resolve_against

    index, embeddings = book_index
    lines = [{"id": "q1", "question": "số trung bình cộng của mẫu số liệu", "split": "test", "book": "cánh diều",
              "correct": [{"source": CD10}]},
             {"id": "q2", "question": "số trung bình cộng của mẫu số liệu", "split": "test", "correct": [{"source": KNTT10}]}]
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines), encoding="utf-8")
    questions = with_index_books(load_questions(path), index.books())
    assert [q.book for q in questions] == [CANH_DIEU, None]
    eval_set = resolve_against(index, questions)
    searcher = Searcher(make_ranker("lesson", index, embeddings))
    scoped = rank_all(searcher, eval_set.scorable, 10, book_scope=True)
    assert {h.source for h in scoped["q1"]} <= {CD10, CD11, CD12, COMMON} and CD10 in {h.source for h in scoped["q1"]}
    assert KNTT10 in {h.source for h in scoped["q2"]}  # no book: every book searched
    assert KNTT10 in {h.source for h in rank_all(searcher, eval_set.scorable, 10)["q1"]}  # without the scope
    unknown = [questions[1].__class__(**{**questions[0].__dict__, "book": "Chân trời sáng tạo"})]
    with pytest.raises(DatasetError, match="question q1: no book"):
        with_index_books(unknown, index.books())


def test_api_search_resolves_the_book_and_refuses_an_unknown_one(book_index, tmp_path: Path) -> None:
    from api_testing import api_settings, make_app
    from fastapi.testclient import TestClient

    index, embeddings = book_index
    app = make_app(api_settings(tmp_path, "http://127.0.0.1:9"), make_ranker("dense", index, embeddings), auth_required=False)
    client = TestClient(app, raise_server_exceptions=False)
    body = {"question": "số trung bình cộng của mẫu số liệu", "k": 10, "filters": {"book": nfd("CÁNH DIỀU")}}
    results = client.post("/v1/search", json=body).json()["results"]
    assert CD10 in {r["source"] for r in results} and {r["metadata"].get("book") for r in results} <= {CANH_DIEU, None}
    refused = client.post("/v1/search", json={**body, "filters": {"book": "Chân trời"}})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "unknown_book" and KET_NOI in refused.json()["error"]["message"]


def old_fingerprint(text: str, config: ChunkerConfig, grade: int | None) -> str:
    """The fingerprint as it was before books, which every file without a book must keep."""
    key = f"{CHUNKER_VERSION}\0{config.max_tokens}\0{config.target_tokens}\0{grade}\0{text}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def test_files_without_a_book_keep_their_fingerprint_and_a_new_sidecar_reingests_reusing_vectors(tmp_path: Path) -> None:
    config = ChunkerConfig(max_tokens=256)
    for grade in (None, 10):
        assert fingerprint("Nội dung.", config, grade) == fingerprint("Nội dung.", config, grade, None) \
            == old_fingerprint("Nội dung.", config, grade)
    assert fingerprint("Nội dung.", config, 10, CANH_DIEU) != fingerprint("Nội dung.", config, 10)
    root = tmp_path / "lessons"
    for relative in (CD10, COMMON):
        make(root, relative, DOCS[relative])
    embeddings = E5Embeddings(WordBackend())
    index = LessonIndex.open(Settings(index_dir=tmp_path / "index"), embeddings.identity)
    assert IngestJob(index, embeddings).run(discover([root])[0]).counts()["added"] == 2
    again = IngestJob(index, embeddings).run(discover([root])[0])
    assert again.counts()["unchanged"] == 2 and again.embedded == 0
    (root / "chung" / SIDECAR).write_text('book = "kntt"\n', encoding="utf-8")
    changed = IngestJob(index, embeddings).run(discover([root])[0])
    assert changed.counts()["updated"] == 1 and changed.counts()["unchanged"] == 1
    assert changed.embedded == 0  # the same chunks: their vectors are reused
    assert {m["source"]: m.get("book") for _, m in index.metadatas()} == {CD10: CANH_DIEU, COMMON: KET_NOI}
    assert index.books() == [CANH_DIEU, KET_NOI]


def test_book_scope_over_a_chroma_server(chroma_server: int, lessons_copy: Path, tiny_st_model: Path) -> None:  # noqa: F811
    """The has_book `$ne` filter as a Chroma *server* evaluates it (not only the embedded client): a book's chunks and
    the chunks without a book, never another book's."""
    from test_ingest import ingest

    from rag.settings import load_settings
    from rag.workspace import open_searcher

    (lessons_copy / "lop10" / SIDECAR).write_text('book = "kntt"\n', encoding="utf-8")
    (lessons_copy / "lop12" / SIDECAR).write_text('book = "Cánh diều"\n', encoding="utf-8")  # lop11: no book
    server = ("--chroma-host", "127.0.0.1", "--chroma-port", chroma_server)
    assert ingest(lessons_copy, *server, "--embedder", tiny_st_model, "--quiet") == 0
    searcher = open_searcher(load_settings(chroma_host="127.0.0.1", chroma_port=chroma_server, retrieval_method="dense",
                                           embedder=str(tiny_st_model)), announce=False)
    assert searcher.books() == sorted([KET_NOI, CANH_DIEU])
    everything = {h.source for h in searcher.search("hàm số giới hạn tam giác tiệm cận", 50)}
    assert {s.split("/")[0] for s in everything} == {"lop10", "lop11", "lop12"}
    scoped = {h.source for h in searcher.search("hàm số giới hạn tam giác tiệm cận", 50, filters=Filters(book=CANH_DIEU))}
    assert {s.split("/")[0] for s in scoped} == {"lop11", "lop12"}
    both = {h.source for h in searcher.search("hàm số", 50, filters=Filters(book=KET_NOI, grade=11))}
    assert {s.split("/")[0] for s in both} == {"lop11"}  # kntt's lop10 is grade 10; lop12 is another book
