"""The conversation log on SQLite: recording, feedback, the teacher page's filters, questions citing a chunk, CSV."""
from __future__ import annotations

import csv
import io
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from rag.answering import Answer, Timings
from rag.conversation_log import ConversationLog, ExchangeRecord, LogUnavailable
from rag.index import Hit


def hit(chunk_id: str, score: float, source: str = "lop12/08-tich-phan.md") -> Hit:
    meta = {"source": source, "lesson": "Bài 8. Tích phân", "heading_path": "Bài 8. Tích phân › 1. Định nghĩa", "chunk_index": 0}
    return Hit(chunk_id, f"Nội dung {chunk_id}", meta, score)


def answer(question: str, scores: tuple[float, ...] = (0.9, 0.85), cited: tuple[int, ...] = (1,), status: str = "ok") -> Answer:
    retrieved = [hit(f"c{n}", s) for n, s in enumerate(scores, start=1)]
    return Answer(question=question, standalone_question=question, status=status, text=f"Trả lời: {question} [1]",
                  retrieved=retrieved, context_size=len(retrieved), cited=list(cited), model="qwen2.5:7b-instruct",
                  prompt_version="tutor@abc", timings=Timings(0.1, 0.5, 2.0))


@pytest.fixture
def log(tmp_path: Path) -> Iterator[ConversationLog]:
    conversation_log = ConversationLog(f"sqlite:///{tmp_path / 'log.db'}")
    yield conversation_log
    conversation_log.close()


def test_record_stores_the_exchange_and_its_chunks(log: ConversationLog) -> None:
    exchange_id = log.record("conv-1", answer("Tích phân là gì?", scores=(0.91, 0.87, 0.8), cited=(1, 3)))
    [row] = log.exchanges()
    assert row.id == exchange_id and row.conversation_id == "conv-1"
    assert (row.question, row.status, row.model, row.prompt_version) == ("Tích phân là gì?", "ok", "qwen2.5:7b-instruct", "tutor@abc")
    assert row.answer_text == "Trả lời: Tích phân là gì? [1]"
    assert row.best_score == pytest.approx(0.91)
    assert row.timings == {"retrieval_s": 0.1, "first_token_s": 0.5, "total_s": 2.0}
    assert [(c.rank, c.chunk_id, c.cited) for c in row.chunks] == [(1, "c1", True), (2, "c2", False), (3, "c3", True)]
    assert row.chunks[0].heading == "Bài 8. Tích phân › 1. Định nghĩa" and row.chunks[0].source == "lop12/08-tich-phan.md"
    assert row.rating is None and row.comment is None
    assert abs(row.created_at - datetime.now(timezone.utc).replace(tzinfo=None)) < timedelta(minutes=1)


def test_an_exchange_with_nothing_retrieved_has_no_best_score(log: ConversationLog) -> None:
    log.record("c", answer("Thủ đô của Pháp?", scores=(), cited=(), status="not_covered"))
    assert log.exchanges()[0].best_score is None
    assert log.exchanges(max_best_score=0.5)[0].question == "Thủ đô của Pháp?"


def test_feedback_is_stored_and_replaced(log: ConversationLog) -> None:
    exchange_id = log.record("c", answer("Câu 1"))
    log.feedback(exchange_id, 1, "  ")
    assert (log.exchanges()[0].rating, log.exchanges()[0].comment) == (1, None)
    log.feedback(exchange_id, -1, "Sai dấu ở bước 2")
    assert (log.exchanges()[0].rating, log.exchanges()[0].comment) == (-1, "Sai dấu ở bước 2")


def test_feedback_rejects_bad_rating_and_unknown_exchange(log: ConversationLog) -> None:
    exchange_id = log.record("c", answer("Câu 1"))
    with pytest.raises(ValueError):
        log.feedback(exchange_id, 0, None)
    with pytest.raises(KeyError):
        log.feedback(exchange_id + 100, 1, None)


def test_filters_by_feedback_and_best_score(log: ConversationLog) -> None:
    up = log.record("c", answer("tốt", scores=(0.92,)))
    down = log.record("c", answer("kém", scores=(0.78,)))
    log.record("c", answer("chưa đánh giá", scores=(0.83,)))
    log.feedback(up, 1, None)
    log.feedback(down, -1, "không liên quan")
    questions = lambda **kw: [r.question for r in log.exchanges(**kw)]  # noqa: E731
    assert questions() == ["chưa đánh giá", "kém", "tốt"]  # newest first
    assert questions(feedback="up") == ["tốt"]
    assert questions(feedback="down") == ["kém"]
    assert questions(feedback="any") == ["kém", "tốt"]
    assert questions(feedback="none") == ["chưa đánh giá"]
    assert questions(max_best_score=0.8) == ["kém"]
    assert questions(max_best_score=0.85, feedback="none") == ["chưa đánh giá"]


def test_filters_by_time_range(log: ConversationLog) -> None:
    old, new = log.record("c", answer("cũ")), log.record("c", answer("mới"))
    with log.engine.begin() as connection:
        connection.execute(sa.update(ExchangeRecord).where(ExchangeRecord.id == old).values(created_at=datetime(2024, 1, 10, 12)))
        connection.execute(sa.update(ExchangeRecord).where(ExchangeRecord.id == new).values(created_at=datetime(2024, 3, 1, 8)))
    assert [r.question for r in log.exchanges(since=datetime(2024, 2, 1))] == ["mới"]
    assert [r.question for r in log.exchanges(until=datetime(2024, 2, 1))] == ["cũ"]
    assert [r.question for r in log.exchanges(since=datetime(2024, 1, 10, 12), until=datetime(2024, 3, 1, 8))] == ["cũ"]
    # An aware bound is converted to UTC: 15:00 in Vietnam (UTC+7) is 08:00 UTC.
    vietnam = timezone(timedelta(hours=7))
    assert [r.question for r in log.exchanges(since=datetime(2024, 3, 1, 15, tzinfo=vietnam))] == ["mới"]
    assert log.exchanges(since=datetime(2024, 3, 1, 15, 1, tzinfo=vietnam)) == []


def test_questions_citing_a_chunk(log: ConversationLog) -> None:
    log.record("c", answer("cites c1", cited=(1,)))
    log.record("c", answer("cites c2", cited=(2,)))
    log.record("c", answer("cites both", cited=(2, 1)))
    log.record("c", answer("cites none", cited=()))
    assert [r.question for r in log.questions_citing("c1")] == ["cites both", "cites c1"]
    assert [r.question for r in log.questions_citing("c2")] == ["cites both", "cites c2"]
    assert log.questions_citing("c9") == []


def test_csv_has_a_row_per_exchange_and_defuses_formulas(log: ConversationLog) -> None:
    first = log.record("c", answer("Tích phân của x^2, \"từ 0 đến 1\"?"))
    log.record("c", answer("=HYPERLINK(\"http://x\")"))
    log.feedback(first, 1, "Rõ ràng")
    text = ConversationLog.to_csv(log.exchanges())
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2
    by_id = {int(r["id"]): r for r in rows}
    assert by_id[first]["question"] == "Tích phân của x^2, \"từ 0 đến 1\"?"
    assert (by_id[first]["rating"], by_id[first]["comment"]) == ("1", "Rõ ràng")
    assert by_id[first]["cited_sources"] == "lop12/08-tich-phan.md › Bài 8. Tích phân › 1. Định nghĩa"
    assert '"total_s": 2.0' in by_id[first]["timings"]
    formula = next(r for r in rows if int(r["id"]) != first)
    assert formula["question"].startswith("'=")  # a spreadsheet shows it, never runs it
    assert formula["rating"] == "" and formula["comment"] == ""


def test_csv_of_no_rows_is_just_the_header() -> None:
    assert ConversationLog.to_csv([]).splitlines()[0].startswith("id,conversation_id,created_at,question")


def test_a_second_log_on_the_same_database_sees_the_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    exchange_id = ConversationLog(url).record("c", answer("Câu hỏi"))
    ConversationLog(url).feedback(exchange_id, -1, None)
    assert ConversationLog(url).exchanges(feedback="down")[0].id == exchange_id


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another connection holds the SQLite file with an exclusive lock: nobody else may read or write it."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_locked_database_raises_log_unavailable_without_sql(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    log = ConversationLog(f"sqlite:///{path}?timeout=0.1")
    with locked(path):
        for call in (lambda: log.record("conv", answer("Câu hỏi?")), lambda: log.exchanges(),
                     lambda: log.questions_citing("c1"), lambda: ConversationLog(f"sqlite:///{path}?timeout=0.1")):
            with pytest.raises(LogUnavailable) as caught:
                call()
            message = str(caught.value)
            assert "database is locked" in message and str(path) in message
            assert not any(word in message for word in ("SELECT", "INSERT", "PRAGMA", "[SQL")), message
    log.record("conv", answer("Sau khi mở khoá"))  # nothing is broken once the lock is gone
    assert [r.question for r in log.exchanges()] == ["Sau khi mở khoá"]
    log.close()


def test_log_unavailable_hides_the_database_password() -> None:
    with pytest.raises(LogUnavailable) as caught:
        ConversationLog("postgresql+nosuchdriver://vimath:s3cret@db.example/log")
    assert "s3cret" not in str(caught.value) and "db.example" in str(caught.value)


def test_the_teacher_page_says_which_channel_asked(log: ConversationLog) -> None:
    """The API records its key's name (`client`); the teacher's table showed nothing of it before."""
    from ui.teacher import exchange_rows

    log.record("c1", answer("hỏi trong lớp"))
    log.record("c2", answer("hỏi qua zalo"), client="zalo-bot")
    rows = {r["Câu hỏi"]: r["Kênh"] for r in exchange_rows(log.exchanges())}
    assert rows == {"hỏi trong lớp": "Trò chuyện", "hỏi qua zalo": "API (zalo-bot)"}
