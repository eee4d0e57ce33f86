"""The Streamlit chat and teacher page, run headless by AppTest against a small index and the fake Ollama."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import chromadb
import pytest
from chromadb.config import Settings as ChromaSettings
from fake_ollama import FakeOllama, free_port
from streamlit.testing.v1 import AppTest
from test_conversation_log import locked  # another connection holding the SQLite log
from ui_testing import COLLECTION, LESSONS, ROOT, build_test_index, ui_env

import ui.common
from rag.answering import NOT_COVERED, Answer
from rag.books import CANH_DIEU, KET_NOI
from rag.conversation_log import ConversationLog
from rag.index import Hit
from rag.ingestion import IngestJob, discover
from rag.settings import Settings
from rag.workspace import open_index
from ui.formatting import latex_to_markdown
from ui.login_throttle import LoginThrottle

APP = str(ROOT / "ui" / "app.py")
TEACHER = str(ROOT / "ui" / "teacher.py")
QUESTION = "Khi nào hàm số đồng biến trên một khoảng?"
REPLY = r"Hàm số đồng biến trên khoảng \(K\) khi \(f'(x) > 0\) với mọi \(x \in K\) [1]."
TIMEOUT = 120
SOURCES = {"01-tinh-don-dieu.md", "04-tiem-can.md", "08-tich-phan.md"}
TEACHER_PASSWORD = "mật-khẩu đúng"


@pytest.fixture(scope="session")
def lesson_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_index(tmp_path_factory.getbasetemp() / "ui-index")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(reply=lambda messages, options: REPLY) as server:
        yield server


def point_app_at(index: Path, fake: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the app at `index`, a fresh log and the fake Ollama; nothing else from the outer environment."""
    for name in [n for n in os.environ if n.startswith("VIMATH_")] + ["OLLAMA_HOST"]:
        monkeypatch.delenv(name, raising=False)
    values = ui_env(index, f"sqlite:///{tmp_path / 'log.db'}", fake.url)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def env(lesson_index: Path, fake: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The app on the test index."""
    return point_app_at(lesson_index, fake, tmp_path, monkeypatch)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A fresh login throttle per test (it is process-wide) on a clock the test controls."""
    clock = Clock()
    monkeypatch.setattr(ui.common, "LOGIN_THROTTLE", LoginThrottle(clock=clock))
    return clock


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


def teacher(password: str = TEACHER_PASSWORD) -> AppTest:
    """The teacher page with a password set (in st.secrets), logged in."""
    at = AppTest.from_file(TEACHER, default_timeout=TIMEOUT)
    at.secrets["teacher_password"] = password
    at.run()
    login(at, password)
    assert not at.exception, at.exception
    assert "teacher_password_input" not in [t.key for t in at.text_input], [e.value for e in at.error]
    return at


def login(at: AppTest, password: str) -> AppTest:
    at.text_input(key="teacher_password_input").input(password)
    at.button[0].click().run()
    return at


def test_teacher_page_without_a_password_shows_only_how_to_set_one(env: dict[str, str], lesson_index: Path) -> None:
    record_citing(env, first_chunk_id(lesson_index), "Câu hỏi riêng tư của học sinh")
    at = AppTest.from_file(TEACHER, default_timeout=TIMEOUT).run()
    assert not at.exception
    [warning] = at.warning
    for place in ("VIMATH_TEACHER_PASSWORD", "vimath.toml", ".streamlit/secrets.toml", "mật khẩu"):
        assert place in warning.value
    assert not (at.tabs or at.selectbox or at.dataframe or at.text_input or at.get("download_button") or at.sidebar.button)
    shown = "\n".join(str(e.value) for e in (*at.markdown, *at.caption, *at.error, *at.info) if hasattr(e, "value"))
    assert "Câu hỏi riêng tư" not in shown and "tiem-can" not in shown


def test_teacher_page_logged_in_browses_and_searches_the_index(env: dict[str, str]) -> None:
    at = teacher()
    assert "teacher_password_input" not in [t.key for t in at.text_input]
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
    monkeypatch.setenv("VIMATH_TEACHER_PASSWORD", TEACHER_PASSWORD)
    at = AppTest.from_file(TEACHER, default_timeout=TIMEOUT).run()
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


def throttled(at: AppTest) -> bool:
    return any("Vui lòng đợi" in e.value for e in at.error)


def test_wrong_passwords_make_a_session_wait_longer_and_longer(env: dict[str, str], clock: Clock) -> None:
    at = AppTest.from_file(TEACHER, default_timeout=TIMEOUT)
    at.secrets["teacher_password"] = TEACHER_PASSWORD
    at.run()
    for _ in range(2):  # a couple of typos cost nothing
        assert [e.value for e in login(at, "sai").error] == ["Mật khẩu không đúng."]
    assert "Vui lòng đợi 8 giây" in login(at, "sai").error[0].value  # the third: 2^3 s
    assert throttled(login(at, TEACHER_PASSWORD)) and len(at.selectbox) == 0  # even the right one waits
    clock.now += 7
    assert throttled(login(at, TEACHER_PASSWORD)) and len(at.selectbox) == 0
    clock.now += 2
    assert "Vui lòng đợi 16 giây" in login(at, "sai").error[0].value  # the fourth wrong one: 2^4 s
    clock.now += 16
    login(at, TEACHER_PASSWORD)
    assert not at.error and at.selectbox(key="browse_source").label == "Tệp nguồn"


def test_the_wait_follows_the_client_into_a_new_session(env: dict[str, str], clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    def session(address: str) -> AppTest:
        monkeypatch.setattr(ui.common, "client_address", lambda: address)
        at = AppTest.from_file(TEACHER, default_timeout=TIMEOUT)
        at.secrets["teacher_password"] = TEACHER_PASSWORD
        return at.run()

    guesser = session("203.0.113.7")
    for _ in range(3):
        login(guesser, "đoán mò")
    second = login(session("203.0.113.7"), TEACHER_PASSWORD)  # a new browser session from the same client
    assert throttled(second) and len(second.selectbox) == 0
    other = login(session("198.51.100.2"), TEACHER_PASSWORD)
    assert not other.error and other.selectbox(key="browse_source").label == "Tệp nguồn"


def test_password_check_compares_fixed_length_digests_and_not_at_all_while_waiting(
        env: dict[str, str], clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = ui.common.hmac.compare_digest
    monkeypatch.setattr(ui.common.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    at = AppTest.from_file(TEACHER, default_timeout=TIMEOUT)
    at.secrets["teacher_password"] = TEACHER_PASSWORD
    at.run()
    for guess in ("a", "một mật khẩu dài hơn nhiều so với mật khẩu thật"):
        login(at, guess)
    assert [tuple(map(len, pair)) for pair in compared] == [(32, 32), (32, 32)]  # the length of a guess changes nothing
    login(at, "sai")  # the third: now a wait applies
    login(at, TEACHER_PASSWORD)
    assert throttled(at) and len(compared) == 3  # refused without being compared


def no_sql(texts: list[str]) -> None:
    joined = "\n".join(texts)
    assert not any(word in joined for word in ("SELECT", "INSERT", "OperationalError", "sqlite3.", "[SQL")), joined


def all_texts(at: AppTest) -> list[str]:
    return [str(e.value) for kind in ("markdown", "caption", "error", "warning", "info", "exception")
            for e in at.get(kind) if isinstance(getattr(e, "value", None), str)]


def test_a_locked_log_keeps_the_teacher_page_working_and_says_so(env: dict[str, str], lesson_index: Path,
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.db"
    monkeypatch.setenv("VIMATH_DATABASE_URL", f"sqlite:///{path}?timeout=0.1")
    record_citing({"VIMATH_DATABASE_URL": f"sqlite:///{path}"}, first_chunk_id(lesson_index), "Câu hỏi đã ghi")
    at = teacher()  # the log opens while it is free...
    with locked(path):  # ...then another program locks it
        at.selectbox(key="open_chunk").set_value(first_chunk_id(lesson_index)).run()
        assert not at.exception, at.exception
        errors = [e.value for e in at.error]
        assert any("Không dùng được nhật ký hội thoại" in e and "khoá" in e for e in errors), errors
        assert any("Không dùng được nhật ký hội thoại" in c.value for c in at.caption)  # "questions citing this chunk"
        assert at.selectbox(key="browse_source").label == "Tệp nguồn"  # the material tab still works
        no_sql(all_texts(at))
    at.run()
    assert not at.error and any("Câu hỏi đã ghi" in set(d.value.get("Câu hỏi", [])) for d in at.dataframe)


def test_a_locked_log_does_not_show_sql_in_the_chat(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.db"
    ConversationLog(f"sqlite:///{path}").close()
    monkeypatch.setenv("VIMATH_DATABASE_URL", f"sqlite:///{path}?timeout=0.1")
    with locked(path):
        at = ask(QUESTION)
        assert markdowns(at.chat_message[-1])[0] == latex_to_markdown(REPLY)  # the student still gets the answer
        assert any("không ghi được nhật ký" in c.value for c in at.sidebar.caption)
        no_sql(all_texts(at))


def test_a_damaged_index_says_how_to_rebuild_it_on_every_run(env: dict[str, str], lesson_index: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    damaged = tmp_path / "damaged-index"
    shutil.copytree(lesson_index, damaged)
    (damaged / "chroma.sqlite3").write_bytes(b"not a database\n" * 512)
    monkeypatch.setenv("VIMATH_INDEX_DIR", str(damaged))
    for _ in range(2):  # the second run must not meet chromadb's half-started store ("no attribute 'bindings'")
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
        assert not at.exception
        [error] = at.main.error
        assert "bị hỏng" in error.value and f"python -m ingest data/lessons --rebuild --index {damaged}" in error.value
        assert "bindings" not in error.value and "\n" not in error.value
    at = teacher()
    assert any("bị hỏng" in e.value for e in at.error)


def test_a_degenerate_answer_is_stopped_and_the_student_gets_the_sources(env: dict[str, str], fake: FakeOllama) -> None:
    fake.reply = lambda messages, options: "Hàm số đồng biến khi $f'(x) > 0$ [1]. " + "Ta xét dấu của đạo hàm trên từng khoảng một. " * 12
    try:
        at = ask(QUESTION)
    finally:
        fake.reply = lambda messages, options: REPLY
    assert any("dừng lại" in w.value for w in at.warning)
    written = markdowns(at.chat_message[-1])[0]
    assert written.count("Ta xét dấu của đạo hàm") == 1
    assert any(m.startswith("**[1]**") for m in markdowns(expander(at, "Các đoạn tài liệu liên quan nhất")))
    assert log_of(env).exchanges()[0].status == "degenerate"


def test_a_hanging_server_shows_the_chunks_first_and_times_out_on_the_first_token(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    shown_before_asking: list[int] = []
    real_render_chunk = ui.common.render_chunk
    with FakeOllama(first_token_delay_s=60) as hanging:
        def spy(*args: Any, **kwargs: Any) -> None:
            shown_before_asking.append(sum(1 for path, _ in hanging.requests if path == "/api/chat"))
            real_render_chunk(*args, **kwargs)

        monkeypatch.setattr(ui.common, "render_chunk", spy)
        monkeypatch.setenv("VIMATH_OLLAMA_URL", hanging.url)
        monkeypatch.setenv("VIMATH_LLM_FIRST_TOKEN_TIMEOUT_S", "1")
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
        at.chat_input[0].set_value(QUESTION)
        started = __import__("time").perf_counter()
        at.run()
        elapsed = __import__("time").perf_counter() - started
    assert shown_before_asking and shown_before_asking[0] == 0  # the chunks were on screen before the LLM was asked
    assert any("không trả lời kịp" in w.value for w in at.warning) and elapsed < 30
    assert any(m.startswith("**[1]**") for m in markdowns(expander(at, "Các đoạn tài liệu liên quan nhất")))


def test_an_openai_compatible_server_answers_and_shows_in_the_sidebar(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from fake_openai import FakeOpenAI

    with FakeOpenAI(models=["qwen-1.5b"], reply=lambda messages, options: REPLY) as server:
        monkeypatch.setenv("VIMATH_LLM_PROVIDER", "openai")
        monkeypatch.setenv("VIMATH_LLM_BASE_URL", server.url)
        monkeypatch.setenv("VIMATH_LLM_MODEL", "qwen-1.5b")
        at = ask(QUESTION)
        assert server.chat_requests()[-1]["stream"] is True
        url = server.url
    assert markdowns(at.chat_message[-1])[0] == latex_to_markdown(REPLY)
    assert any("đang chạy" in s.value and url in s.value for s in at.sidebar.success)
    assert any("qwen-1.5b" in c.value for c in at.sidebar.caption)


def test_an_unreachable_openai_server_is_named_in_the_sidebar(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("VIMATH_LLM_PROVIDER", "openai")
    monkeypatch.setenv("VIMATH_LLM_BASE_URL", url)
    at = ask(QUESTION)
    assert any("không trả lời" in w.value and url in w.value for w in at.sidebar.warning)
    assert any("VIMATH_LLM_BASE_URL" in e.value for e in at.error)
    assert log_of(env).exchanges()[0].status == "llm_unreachable"


@pytest.fixture(scope="module")
def book_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two lessons in two textbook series' folders and one of shared material, with the bundled embedder."""
    folder = tmp_path_factory.mktemp("ui-book-index")
    placed = {"lop12/01-tinh-don-dieu.md": "KNTT_lop12", "lop12/04-tiem-can.md": "canh-dieu", "lop12/08-tich-phan.md": "chung"}
    for name, book_folder in placed.items():
        (folder / "lessons" / book_folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(LESSONS / name, folder / "lessons" / book_folder / Path(name).name)
    settings = Settings(index_dir=folder / "index", embedder="bundled", collection=COLLECTION, chroma_host=None)
    index, embeddings = open_index(settings, announce=False)
    assert IngestJob(index, embeddings).run(discover([folder / "lessons"])[0]).counts()["added"] == 3
    return folder / "index"


@pytest.fixture
def book_env(book_index: Path, fake: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The app on an index whose material names books."""
    return point_app_at(book_index, fake, tmp_path, monkeypatch)


def test_no_book_picker_when_the_material_names_no_book(env: dict[str, str]) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert "Bộ sách" not in [s.label for s in at.sidebar.selectbox]


def test_the_book_picker_keeps_the_search_within_the_book_for_the_session(book_env: dict[str, str]) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    picker = at.selectbox(key="book")
    assert picker.label == "Bộ sách" and picker.options == ["Tất cả", CANH_DIEU, KET_NOI] and picker.value is None
    picker.set_value(KET_NOI).run()
    at = ask("Đường tiệm cận ngang của đồ thị hàm số là gì?", at)  # canh-dieu's lesson: out of the chosen book
    assert at.selectbox(key="book").value == KET_NOI  # remembered across reruns
    [row] = log_of(book_env).exchanges()
    assert row.chunks and {c.source for c in row.chunks} <= {"KNTT_lop12/01-tinh-don-dieu.md", "chung/08-tich-phan.md"}
