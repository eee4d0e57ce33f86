"""The Streamlit chat and teacher page, run headless by AppTest against a small index and the fake Ollama."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import chromadb
import pytest
from chromadb.config import Settings as ChromaSettings
from fake_ollama import FakeOllama, free_port
from streamlit.testing.v1 import AppTest
from ui_testing import COLLECTION, ROOT, build_test_index, ui_env

import ui.common
from rag.answering import NOT_COVERED, Answer
from rag.conversation_log import ConversationLog
from rag.index import Hit
from ui.formatting import latex_to_markdown

APP = str(ROOT / "ui" / "app.py")
TEACHER = str(ROOT / "ui" / "teacher.py")
QUESTION = "Khi nào hàm số đồng biến trên một khoảng?"
REPLY = r"Hàm số đồng biến trên khoảng \(K\) khi \(f'(x) > 0\) với mọi \(x \in K\) [1]."
TIMEOUT = 120
SOURCES = {"01-tinh-don-dieu.md", "04-tiem-can.md", "08-tich-phan.md"}


@pytest.fixture(scope="session")
def lesson_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_index(tmp_path_factory.getbasetemp() / "ui-index")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(reply=lambda messages, options: REPLY) as server:
        yield server


@pytest.fixture
def env(lesson_index: Path, fake: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the app at the test index, a fresh log and the fake Ollama; nothing else from the outer environment."""
    for name in [n for n in os.environ if n.startswith("VIMATH_")] + ["OLLAMA_HOST"]:
        monkeypatch.delenv(name, raising=False)
    values = ui_env(lesson_index, f"sqlite:///{tmp_path / 'log.db'}", fake.url)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def chunk_body(index_dir: Path, chunk_id: str) -> str:
    """The chunk as a card shows it: its text below the heading path that the card has as title."""
    client = chromadb.PersistentClient(path=str(index_dir), settings=ChromaSettings(anonymized_telemetry=False))
    got = client.get_collection(COLLECTION).get(ids=[chunk_id], include=["documents", "metadatas"])
    return got["documents"][0].removeprefix(f"{got['metadatas'][0]['heading_path']}\n\n")


def first_chunk_id(index_dir: Path) -> str:
    client = chromadb.PersistentClient(path=str(index_dir), settings=ChromaSettings(anonymized_telemetry=False))
    return client.get_collection(COLLECTION).get(limit=1)["ids"][0]


def ask(question: str, at: AppTest | None = None) -> AppTest:
    """Run the chat (or go on with `at`) and submit a question."""
    at = at or AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    at.chat_input[0].set_value(question).run()
    assert not at.exception, at.exception
    return at


def markdowns(block: Any) -> list[str]:
    return [m.value for m in block.markdown]


def expander(at: AppTest, label: str) -> Any:
    found = [e for e in at.expander if e.label == label]
    assert found, f"no expander {label!r} among {[e.label for e in at.expander]}"
    return found[-1]


def log_of(env: dict[str, str]) -> ConversationLog:
    return ConversationLog(env["VIMATH_DATABASE_URL"])


def test_question_gets_a_streamed_answer_with_its_cited_source(env: dict[str, str], fake: FakeOllama,
                                                               lesson_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rendered: list[str] = []

    def spy(text: str) -> str:
        rendered.append(text)
        return latex_to_markdown(text)

    monkeypatch.setattr(ui.common, "latex_to_markdown", spy)
    at = ask(QUESTION)
    user, assistant = at.chat_message[-2], at.chat_message[-1]
    assert (user.name, assistant.name) == ("user", "assistant")
    assert markdowns(user) == [QUESTION]
    assert markdowns(assistant)[0] == latex_to_markdown(REPLY)
    assert "$f'(x) > 0$" in markdowns(assistant)[0]
    assert fake.last("/api/chat")["stream"] is True
    # Written as it came: growing prefixes of the reply were rendered before the whole of it.
    partial = [t for t in rendered if REPLY.startswith(t) and t != REPLY]
    assert len(partial) >= 5 and partial == sorted(partial, key=len)

    [row] = log_of(env).exchanges()
    cited = [c for c in row.chunks if c.cited]
    assert [c.rank for c in cited] == [1]
    sources = expander(at, "Nguồn")
    shown = markdowns(sources)
    assert shown[0].startswith("**[1]** **") and cited[0].heading in shown[0]
    body = chunk_body(lesson_index, cited[0].chunk_id)
    assert latex_to_markdown(body) in shown and len(body) > 100
    assert any(cited[0].source in c.value and "điểm" in c.value for c in sources.caption)


def test_stream_into_renders_the_accumulated_text_so_split_delimiters_convert() -> None:
    class Slot:
        def __init__(self) -> None:
            self.shown: list[str] = []

        def markdown(self, body: str) -> None:
            self.shown.append(body)

    slot = Slot()
    text = ui.common.stream_into(slot, ["Ta có \\", "(x", "^2\\", ") và \\[\\int", "_0^1 x\\,dx\\]"])
    assert text == "Ta có \\(x^2\\) và \\[\\int_0^1 x\\,dx\\]"
    assert slot.shown[1].startswith("Ta có \\(x")  # not closed yet: left as written
    assert slot.shown[3].startswith("Ta có $x^2$ và \\[\\int")
    assert slot.shown[-1].startswith("Ta có $x^2$ và $$\\int_0^1 x\\,dx$$")


def test_ollama_unreachable_shows_the_banner_and_still_the_chunks(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIMATH_OLLAMA_URL", f"http://127.0.0.1:{free_port()}")
    at = ask(QUESTION)
    assert any("Không kết nối được tới Ollama" in e.value for e in at.error)
    assert any("Ollama không trả lời" in w.value for w in at.sidebar.warning)
    closest = expander(at, "Các đoạn tài liệu liên quan nhất")
    assert sum(m.startswith("**[") for m in markdowns(closest)) == 5
    assert [e.label for e in at.expander if e.label == "Nguồn"] == []
    assert log_of(env).exchanges()[0].status == "llm_unreachable"


def test_an_interrupted_answer_keeps_its_text_and_warns(env: dict[str, str], fake: FakeOllama) -> None:
    fake.break_after_chunks = 4
    try:
        at = ask(QUESTION)
    finally:
        fake.break_after_chunks = None
    assert any("gián đoạn" in w.value for w in at.warning)
    written = markdowns(at.chat_message[-1])[0]
    assert written and latex_to_markdown(REPLY).startswith(written)
    assert any(m.startswith("**[1]**") for m in markdowns(expander(at, "Các đoạn tài liệu liên quan nhất")))
    assert log_of(env).exchanges()[0].status == "interrupted"


def test_not_covered_shows_the_notice_and_the_closest_chunks(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIMATH_MIN_SCORE", "0.999")
    at = ask("Thủ đô của nước Pháp là thành phố nào?")
    assert [i.value for i in at.info] == [NOT_COVERED]
    assert any(m.startswith("**[1]**") for m in markdowns(expander(at, "Các đoạn tài liệu liên quan nhất")))


def test_feedback_and_comment_are_stored_in_the_log(env: dict[str, str]) -> None:
    at = ask(QUESTION)
    [exchange] = log_of(env).exchanges()
    at.feedback(key=f"feedback-{exchange.id}").set_value(0).run()  # 0 is 👎
    assert log_of(env).exchanges()[0].rating == -1
    at.text_input(key=f"comment-{exchange.id}").input("Thiếu ví dụ minh hoạ")
    at.button(key=f"send-{exchange.id}").click().run()
    row = log_of(env).exchanges()[0]
    assert (row.rating, row.comment) == (-1, "Thiếu ví dụ minh hoạ")
    at.feedback(key=f"feedback-{exchange.id}").set_value(1).run()
    assert log_of(env).exchanges(feedback="up")[0].comment == "Thiếu ví dụ minh hoạ"
    assert any("cảm ơn" in c.value for c in at.caption)


def test_html_in_a_question_is_shown_as_text(env: dict[str, str]) -> None:
    question = '<script>alert("xss")</script><img src=x onerror="alert(1)"> hàm số đồng biến khi nào?'
    at = ask(question)
    assert markdowns(at.chat_message[-2]) == [question]
    assert all(not m.proto.allow_html for m in at.markdown)
    assert all(not m.proto.allow_html for message in at.chat_message for m in message.markdown)
    assert len(at.get("html")) == 0
    assert log_of(env).exchanges()[0].question == question


def test_no_ui_code_allows_raw_html() -> None:
    for path in (ROOT / "ui").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "unsafe_allow_html" not in source and "st.html" not in source, path


def test_sidebar_shows_index_and_llm_status_and_a_new_conversation_starts_afresh(env: dict[str, str]) -> None:
    at = ask(QUESTION)
    status = "\n".join(markdowns(at.sidebar))
    assert COLLECTION in status and "multilingual-e5-small" in status and "Số đoạn" in status
    assert any("Ollama đang chạy" in s.value for s in at.sidebar.success)
    assert any("qwen2.5:7b-instruct" in c.value for c in at.sidebar.caption)
    conversation = at.session_state.conversation_id
    at.sidebar.button[0].click().run()
    assert [m.name for m in at.chat_message] == ["assistant"]  # only the welcome
    assert at.session_state.conversation_id != conversation


def test_top_k_slider_and_teacher_toggle_show_all_retrieved_chunks(env: dict[str, str]) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.slider(key="top_k").set_value(3).run()
    at.toggle(key="show_all").set_value(True).run()
    at = ask(QUESTION, at)
    every = expander(at, "Tất cả đoạn đã truy xuất (3)")
    assert sum(m.startswith("**[") for m in markdowns(every)) == 3
    assert any("được trích dẫn" in c.value for c in every.caption)


def test_a_new_question_reloads_no_model(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Any] = []
    real_open_index = ui.common.open_index

    def counting_open_index(*args: Any, **kwargs: Any) -> Any:
        opened.append(args)
        return real_open_index(*args, **kwargs)

    monkeypatch.setattr(ui.common, "open_index", counting_open_index)
    ui.common.reload_resources()
    at = ask(QUESTION)
    ask("Tiệm cận đứng của đồ thị hàm số là gì?", at)
    ask(QUESTION)  # a second browser session of the same process
    assert len(opened) == 1
    assert len([m for m in at.chat_message if m.name == "user"]) == 2


def test_missing_index_shows_the_ingest_command(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIMATH_INDEX_DIR", str(tmp_path / "no-index"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("python -m ingest data/lessons" in e.value for e in at.error)
    assert at.chat_input[0].proto.disabled


def record_citing(env: dict[str, str], chunk_id: str, question: str, score: float = 0.9) -> int:
    hit = Hit(chunk_id, "…", {"source": "01-tinh-don-dieu.md", "heading_path": "Bài 1"}, score)
    answer = Answer(question=question, standalone_question=question, text="Trả lời [1]", retrieved=[hit], context_size=1, cited=[1])
    return log_of(env).record("conv", answer)


def teacher() -> AppTest:
    at = AppTest.from_file(TEACHER, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def test_teacher_page_without_password_browses_and_searches_the_index(env: dict[str, str]) -> None:
    at = teacher()
    assert "teacher_password_input" not in [t.key for t in at.text_input]
    sources = at.selectbox(key="browse_source")
    assert sources.label == "Tệp nguồn" and set(sources.options) == {"Tất cả", *SOURCES}
    sources.set_value("04-tiem-can.md").run()
    assert at.selectbox(key="browse_lesson").options[1].startswith("Bài")
    table = at.dataframe[1].value
    assert set(table["Tệp"]) == {"04-tiem-can.md"}
    at.text_input(key="chunk_query").input("tiệm cận đứng").run()
    assert 0 < len(at.dataframe[1].value) < len(table)
    at.toggle(key="chunk_semantic").set_value(True).run()
    assert not at.exception
    assert "Điểm" in at.dataframe[1].value.columns
    assert any("điểm 0." in c.value for c in at.caption)


def test_teacher_opens_a_chunk_and_sees_the_questions_citing_it(env: dict[str, str], lesson_index: Path) -> None:
    chunk_id = first_chunk_id(lesson_index)
    record_citing(env, chunk_id, "Câu hỏi trích dẫn đoạn này?")
    at = teacher()
    at.selectbox(key="open_chunk").set_value(chunk_id).run()
    assert latex_to_markdown(chunk_body(lesson_index, chunk_id)) in markdowns(at)
    citing = [d.value for d in at.dataframe if "Câu hỏi" in d.value.columns and "Trạng thái" not in d.value.columns]
    assert list(citing[0]["Câu hỏi"]) == ["Câu hỏi trích dẫn đoạn này?"]


def test_teacher_log_filters_low_scores_and_exports_csv(env: dict[str, str], lesson_index: Path) -> None:
    chunk_id = first_chunk_id(lesson_index)
    record_citing(env, chunk_id, "Được bao quát tốt", 0.93)
    record_citing(env, chunk_id, "Tài liệu chưa nói tới", 0.61)
    at = teacher()
    log_table = lambda: next(d.value for d in at.dataframe if "Câu trả lời" in d.value.columns)  # noqa: E731
    assert set(log_table()["Câu hỏi"]) == {"Được bao quát tốt", "Tài liệu chưa nói tới"}
    at.toggle(key="log_low").set_value(True).run()
    assert list(log_table()["Câu hỏi"]) == ["Tài liệu chưa nói tới"]
    assert [b.label for b in at.get("download_button")] == ["Tải CSV"]


def test_teacher_page_with_a_password_asks_for_it_and_rejects_a_wrong_one(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIMATH_TEACHER_PASSWORD", "mật-khẩu đúng")
    at = teacher()
    password = at.text_input(key="teacher_password_input")
    assert password.label == "Mật khẩu giáo viên" and password.proto.type == password.proto.PASSWORD
    assert len(at.selectbox) == 0 and len(at.dataframe) == 0
    password.input("sai rồi")
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["Mật khẩu không đúng."]
    assert len(at.selectbox) == 0
    at.text_input(key="teacher_password_input").input("mật-khẩu đúng")
    at.button[0].click().run()
    assert not at.error and at.selectbox(key="browse_source").label == "Tệp nguồn"


def test_teacher_password_may_come_from_streamlit_secrets(env: dict[str, str]) -> None:
    at = AppTest.from_file(TEACHER, default_timeout=TIMEOUT)
    at.secrets["teacher_password"] = "bí mật"
    at.run()
    assert at.text_input(key="teacher_password_input").label == "Mật khẩu giáo viên"
    assert len(at.selectbox) == 0
