"""The students' chat over the teacher's lessons: `streamlit run ui/app.py`."""
from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

# `streamlit run ui/app.py` puts ui/ on sys.path, not the project root that holds the rag and ui packages.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402
from streamlit.delta_generator import DeltaGenerator  # noqa: E402

from rag.answering import Answer, AnswerStatus, Turn  # noqa: E402
from rag.conversation_log import ConversationLog  # noqa: E402
from rag.index import Hit  # noqa: E402
from rag.llm import PROVIDERS, Failure  # noqa: E402
from rag.retrieval import Filters  # noqa: E402
from rag.settings import Settings  # noqa: E402
from ui.common import (  # noqa: E402
    LOG_UNAVAILABLE_FOR_STUDENTS,
    IndexResources,
    conversation_log,
    current_settings,
    llm_state,
    log_problem,
    markdown,
    render_chunk,
    stream_into,
    try_open_resources,
    tutor,
)
from ui.formatting import latex_to_markdown  # noqa: E402

SOURCES_LABEL = "Nguồn"
CLOSEST_LABEL = "Các đoạn tài liệu liên quan nhất"
SHOW_ALL_LABEL = "Hiện tất cả đoạn đã truy xuất"
_TOP_K_MAX = 20
GRADE_LABEL = "Lớp của em"
ALL_GRADES = "Tất cả"
GRADE_CHOICES = (None, 10, 11, 12)  # None: every grade
BOOK_LABEL = "Bộ sách"
ALL_BOOKS = "Tất cả"
WELCOME = ("Chào em! Mình là gia sư Toán, trả lời dựa trên tài liệu bài học của thầy cô và luôn ghi rõ nguồn. "
           "Em hãy đặt câu hỏi về bài học ở ô bên dưới nhé.")


@dataclass
class ChatEntry:
    """One question of the conversation, its answer and where the log keeps it."""

    question: str
    answer: Answer
    exchange_id: int | None


def new_conversation() -> None:
    """Start afresh: a new conversation id and no history."""
    st.session_state.conversation_id = uuid.uuid4().hex
    st.session_state.entries = []


def entries() -> list[ChatEntry]:
    if "entries" not in st.session_state:
        new_conversation()
    return st.session_state.entries


def history(chat: list[ChatEntry]) -> list[Turn]:
    """Earlier turns the tutor may use: only real answers, not notices."""
    return [Turn(e.question, e.answer.text) for e in chat if e.answer.status == AnswerStatus.OK and e.answer.text]


def open_log(settings: Settings) -> ConversationLog | None:
    try:
        return conversation_log(settings.database_url)
    except Exception as exc:  # the chat works without a log; students are told in the sidebar, the details go to the server log
        log_problem(exc)
        st.session_state.log_error = LOG_UNAVAILABLE_FOR_STUDENTS
        return None


def sidebar_index(settings: Settings, resources: IndexResources | None) -> None:
    st.subheader("Chỉ mục tài liệu")
    if resources is None:
        st.error("Chưa mở được chỉ mục tài liệu (xem thông báo ở trang chính).")
        return
    st.markdown(f"- Bộ sưu tập: `{settings.collection}`\n- Số đoạn: **{resources.index.count()}**\n"
                f"- Mô hình nhúng: {resources.embeddings.identity.describe()}")


def sidebar_llm(settings: Settings) -> None:
    st.subheader("Mô hình ngôn ngữ")
    status = llm_state(settings)
    provider = PROVIDERS[settings.llm_provider]
    label, model = provider.label, settings.effective_model()
    st.markdown(f"Mô hình: `{model}` · {label}")
    if not status.reachable:
        why = "không trả lời kịp" if status.failure is Failure.TIMEOUT else "không trả lời"
        st.warning(f"{label[0].upper()}{label[1:]} {why} tại {status.url}. Gia sư chỉ hiển thị các đoạn tài liệu liên quan.")
    elif not status.has_model(model):
        st.warning(f"{label[0].upper()}{label[1:]} đang chạy nhưng chưa có mô hình `{model}`. "
                   + provider.hints[Failure.MODEL_MISSING].format(url=status.url, model=model))
    else:
        st.success(f"{label[0].upper()}{label[1:]} đang chạy tại {status.url}.")
    if status.models:
        st.caption("Mô hình có trên máy chủ: " + ", ".join(f"`{m}`" for m in status.models))


def known_llm_failure(settings: Settings) -> Failure | None:
    """What the sidebar's status check already knows: a server that does not answer is not asked again (and the
    student does not wait for its timeout). A missing model is left to the call itself: it fails at once, and some
    servers (llama-server) answer under any model name."""
    status = llm_state(settings)
    return None if status.reachable else (status.failure or Failure.UNREACHABLE)


def sidebar(settings: Settings, resources: IndexResources | None) -> tuple[int, bool]:
    """Index and LLM status, top-k, the teachers' toggle and a new conversation; returns (k, show all chunks)."""
    with st.sidebar:
        sidebar_index(settings, resources)
        sidebar_llm(settings)
        st.subheader("Tuỳ chọn")
        st.selectbox(GRADE_LABEL, GRADE_CHOICES, key="grade", format_func=lambda g: ALL_GRADES if g is None else f"Lớp {g}",
                     help="Chỉ tìm trong tài liệu của lớp này (và tài liệu chung không ghi lớp).")
        books = index_books(resources)
        if books:  # only when the teacher's material names a book: otherwise there is nothing to choose
            st.selectbox(BOOK_LABEL, (None, *books), key="book", format_func=lambda b: ALL_BOOKS if b is None else b,
                         help="Chỉ tìm trong tài liệu của bộ sách này (và tài liệu chung không ghi bộ sách).")
        k = st.slider("Số đoạn tài liệu truy xuất (top-k)", 1, max(_TOP_K_MAX, settings.top_k), settings.top_k, key="top_k")
        show_all = st.toggle(SHOW_ALL_LABEL, key="show_all", help="Dành cho giáo viên: mọi đoạn tìm được, kể cả đoạn không được trích dẫn.")
        st.button("Cuộc trò chuyện mới", on_click=new_conversation, icon=":material/add_comment:", width="stretch")
        if st.session_state.get("log_error"):
            st.caption(st.session_state.log_error)
    return k, show_all


def chosen_grade() -> int | None:
    """The grade the student picked in the sidebar (remembered for the session); None for every grade."""
    grade = st.session_state.get("grade")
    return grade if grade in GRADE_CHOICES else None


def index_books(resources: IndexResources | None) -> list[str]:
    """The books of the index's material (the index remembers them until it changes)."""
    return resources.searcher.books() if resources is not None else []


def chosen_book(resources: IndexResources | None) -> str | None:
    """The book the student picked in the sidebar (remembered for the session); None for every book, and when the
    picked book is no longer in the index."""
    book = st.session_state.get("book")
    return book if book is not None and book in index_books(resources) else None


def render_hits(hits: list[Hit], numbers: list[int]) -> None:
    for number, hit in zip(numbers, hits):
        render_chunk(hit, number)


def render_sources(answer: Answer, show_all: bool) -> None:
    """The cited chunks under an answer; the closest chunks when the model did not answer."""
    if answer.status == AnswerStatus.OK:
        with st.expander(SOURCES_LABEL):
            if answer.cited:
                render_hits(answer.cited_chunks, answer.cited)
            else:
                st.caption("Câu trả lời không ghi số trích dẫn; đây là các đoạn tài liệu đã đưa cho mô hình.")
                render_hits(answer.retrieved[: answer.context_size], list(range(1, answer.context_size + 1)))
            if answer.invalid_citations:
                st.caption("Đã bỏ trích dẫn không trỏ tới đoạn nào: " + ", ".join(f"[{n}]" for n in answer.invalid_citations))
    elif answer.retrieved:
        with st.expander(CLOSEST_LABEL, expanded=True):
            render_hits(answer.retrieved, list(range(1, len(answer.retrieved) + 1)))
    if show_all and answer.retrieved:
        with st.expander(f"Tất cả đoạn đã truy xuất ({len(answer.retrieved)})"):
            cited = set(answer.cited)
            for rank, hit in enumerate(answer.retrieved, start=1):
                note = "được trích dẫn" if rank in cited else ("trong ngữ cảnh" if rank <= answer.context_size else "không đưa cho mô hình")
                render_chunk(hit, rank, note)


def render_notice(answer: Answer) -> None:
    """The system's own message: not covered, or why the model did not (fully) answer."""
    if not answer.notice:
        return
    if answer.status == AnswerStatus.NOT_COVERED:
        st.info(answer.notice, icon=":material/menu_book:")
    elif AnswerStatus(answer.status).blocking:
        st.error(answer.notice, icon=":material/power_off:")
    else:
        st.warning(answer.notice, icon=":material/warning:")


def save_feedback(log: ConversationLog, exchange_id: int) -> None:
    """Store the thumbs (and the comment typed so far) of an answer."""
    choice = st.session_state.get(f"feedback-{exchange_id}")
    if choice is None:
        return
    try:
        log.feedback(exchange_id, 1 if choice == 1 else -1, st.session_state.get(f"comment-{exchange_id}", ""))
        st.session_state[f"feedback-saved-{exchange_id}"] = True
    except Exception as exc:  # a lost vote must not break the chat; the details go to the server log
        log_problem(exc)
        st.session_state[f"feedback-saved-{exchange_id}"] = "Tạm thời không lưu được phản hồi, em thử lại sau nhé."


def render_feedback(log: ConversationLog | None, exchange_id: int | None) -> None:
    if log is None or exchange_id is None:
        return
    choice = st.feedback("thumbs", key=f"feedback-{exchange_id}", on_change=save_feedback, args=(log, exchange_id))
    if choice is None:
        return
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.text_input("Góp ý thêm (không bắt buộc)", key=f"comment-{exchange_id}", max_chars=1000,
                      placeholder="Câu trả lời đúng/sai ở đâu, còn thiếu gì…")
        st.button("Gửi góp ý", key=f"send-{exchange_id}", on_click=save_feedback, args=(log, exchange_id))
    saved = st.session_state.get(f"feedback-saved-{exchange_id}")
    if isinstance(saved, str):
        st.caption(saved)
    elif saved:
        st.caption("Đã ghi nhận phản hồi, cảm ơn em!")


def render_timings(answer: Answer) -> None:
    t = answer.timings
    first = f" · chữ đầu tiên sau {t.first_token_s:.1f} s" if t.first_token_s is not None else ""
    st.caption(f"Truy xuất {t.retrieval_s:.2f} s{first} · tổng {t.total_s:.1f} s · `{answer.model}`")


def render_answer(entry: ChatEntry, show_all: bool, log: ConversationLog | None, slot: DeltaGenerator | None = None) -> None:
    """An answer with its notice, sources and feedback; `slot` is where its text was streamed."""
    answer = entry.answer
    if slot is not None and answer.text:
        slot.markdown(latex_to_markdown(answer.text))
    elif slot is not None:
        slot.empty()
    elif answer.text:
        markdown(answer.text)
    render_notice(answer)
    render_sources(answer, show_all)
    if answer.status == AnswerStatus.OK:
        render_timings(answer)
    render_feedback(log, entry.exchange_id)


def record(log: ConversationLog | None, answer: Answer) -> int | None:
    if log is None:
        return None
    try:
        exchange_id = log.record(st.session_state.conversation_id, answer)
        st.session_state.pop("log_error", None)  # writing works (again)
        return exchange_id
    except Exception as exc:  # the student still gets the answer; the details go to the server log
        log_problem(exc)
        st.session_state.log_error = LOG_UNAVAILABLE_FOR_STUDENTS
        return None


def scope(resources: IndexResources) -> Filters:
    """The grade and book the student picked."""
    return Filters(grade=chosen_grade(), book=chosen_book(resources))


def answer_question(question: str, settings: Settings, resources: IndexResources, k: int, show_all: bool,
                    log: ConversationLog | None) -> None:
    """Stream the answer to a new question, then show and log it."""
    chat = entries()
    with st.chat_message("user"):
        markdown(question)
    with st.chat_message("assistant"):
        slot = st.empty()
        slot.markdown("_Đang tìm trong tài liệu…_")
        early = st.empty()

        def show_retrieved(answer: Answer) -> None:
            # The chunks are known before the model writes a word (which may take long, or never come): show them now.
            if answer.retrieved:
                slot.markdown("_Đang viết câu trả lời…_")
                with early.container(), st.expander(CLOSEST_LABEL, expanded=False):
                    render_hits(answer.retrieved, list(range(1, len(answer.retrieved) + 1)))

        stream = tutor(settings, resources).stream(question, history(chat), k=k, filters=scope(resources), on_retrieved=show_retrieved,
                                                   llm_failure=known_llm_failure(settings))
        try:
            stream_into(slot, stream)
        except Exception as exc:  # retrieval itself failed (the tutor handles every LLM failure)
            slot.empty()
            early.empty()
            st.error(f"Không trả lời được câu hỏi do lỗi: {type(exc).__name__}: {exc}")
            return
        early.empty()
        entry = ChatEntry(question, stream.answer, record(log, stream.answer))
        chat.append(entry)
        render_answer(entry, show_all, log, slot)


def chat_page() -> None:
    """The chat: earlier exchanges, then the input, then the answer being written."""
    settings = current_settings()
    resources, problem = try_open_resources(settings)
    log = open_log(settings)
    k, show_all = sidebar(settings, resources)
    st.title("Gia sư Toán THPT")
    if problem:
        st.error(problem)
        st.chat_input("Chưa có tài liệu để hỏi", disabled=True)
        return
    with st.chat_message("assistant"):
        st.markdown(WELCOME)
    for entry in entries():
        with st.chat_message("user"):
            markdown(entry.question)
        with st.chat_message("assistant"):
            render_answer(entry, show_all, log)
    question = st.chat_input("Nhập câu hỏi về bài học…", max_chars=2000)
    if question and question.strip():
        answer_question(question, settings, resources, k, show_all, log)


def main() -> None:
    # An emoji icon is drawn in the page itself; a :material/…: one is fetched from fonts.gstatic.com by every browser.
    st.set_page_config(page_title="Gia sư Toán THPT", page_icon="🧮")
    st.navigation([
        st.Page(chat_page, title="Hỏi đáp", icon=":material/forum:", default=True),
        st.Page("teacher.py", title="Giáo viên", icon=":material/school:", url_path="giao-vien"),
    ]).run()


main()
