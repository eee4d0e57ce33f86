"""What the chat and the teacher page share: resources opened once per process, chunk rendering, the password check."""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import streamlit as st

from rag.answering import Tutor
from rag.conversation_log import ConversationLog, LogUnavailable
from rag.embedder_loading import EmbedderUnavailable
from rag.embeddings import E5Embeddings
from rag.index import (
    REBUILD_COMMAND,
    Hit,
    IndexDamaged,
    IndexMismatch,
    IndexMissing,
    LessonIndex,
    describe_location,
    make_client,
    recorded_identity,
)
from rag.llm import LLMStatus, effective_url, llm_status
from rag.retrieval import Searcher
from rag.settings import Settings, load_settings
from rag.workspace import embedder_chosen, make_ranker, open_index
from ui.formatting import latex_to_markdown, neutralise_images
from ui.login_throttle import LoginThrottle

INGEST_COMMAND = "python -m ingest data/lessons"
LOG_UNAVAILABLE_FOR_STUDENTS = "Tạm thời không ghi được nhật ký hội thoại; câu trả lời vẫn hiển thị bình thường."
_logger = logging.getLogger("vimath.ui")
_OLLAMA_TTL_S = 15


@dataclass(frozen=True)
class IndexResources:
    """The open index, its embedder and the searcher over it."""

    index: LessonIndex
    embeddings: E5Embeddings
    searcher: Searcher


def current_settings() -> Settings:
    """Settings read afresh on each run (cheap), so a changed environment or config file applies."""
    return load_settings()


def index_key(settings: Settings) -> tuple[Any, ...]:
    """The settings that decide which index, embedder and ranker are opened."""
    where = (settings.chroma_host, settings.chroma_port) if settings.chroma_host else (str(settings.index_dir.resolve()),)
    embedder = settings.embedder if embedder_chosen(settings) else None
    return (*where, settings.collection, embedder, settings.embed_backend, settings.embed_batch_size, settings.retrieval_method)


@st.cache_resource(show_spinner="Đang nạp mô hình nhúng và chỉ mục tài liệu…")
def _open_resources(key: tuple[Any, ...], _settings: Settings) -> IndexResources:
    # Checked first so that a missing index is reported without loading an embedder for nothing.
    if recorded_identity(make_client(_settings), _settings.collection) is None:
        raise IndexMissing(f"No index at {describe_location(_settings)}.")
    index, embeddings = open_index(_settings, create=False, announce=False)
    return IndexResources(index, embeddings, Searcher(make_ranker(_settings, index, embeddings)))


def open_resources(settings: Settings) -> IndexResources:
    """The index, embedder and searcher, opened once per process for these settings (failures are not cached).

    They follow another process's ingest by themselves (rag.index: the generation marker); only an index rebuilt
    with another embedder needs them opened again, which happens here, on the next page run.
    """
    resources = _open_resources(index_key(settings), settings)
    if resources.index.embedder_changed():
        reload_resources()
        resources = _open_resources(index_key(settings), settings)
    return resources


@st.cache_resource(max_entries=8)
def _tutor(settings_json: str, key: tuple[Any, ...], _settings: Settings, _searcher: Searcher) -> Tutor:
    return Tutor(_searcher, _settings)


def tutor(settings: Settings, resources: IndexResources) -> Tutor:
    """One tutor per process and settings, so its chat models (and their HTTP clients) are reused across questions."""
    return _tutor(settings.model_dump_json(), index_key(settings), settings, resources.searcher)


def reload_resources() -> None:
    """Forget the open index, e.g. after it was rebuilt."""
    _open_resources.clear()
    _tutor.clear()


def index_problem(exc: Exception, settings: Settings) -> str:
    """What to tell the user, in Vietnamese, when the index cannot be opened."""
    if isinstance(exc, IndexMissing):
        folder = "" if settings.chroma_host else f" --index {settings.index_dir}"
        return (f"Chưa có chỉ mục tài liệu tại {describe_location(settings)}. Hãy nạp bài học trước bằng lệnh:\n\n"
                f"```\n{INGEST_COMMAND}{folder}\n```\n\nrồi tải lại trang.")
    if isinstance(exc, IndexDamaged):
        folder = "" if exc.folder is None or exc.folder == Settings.model_fields["index_dir"].default else f" --index {exc.folder}"
        return (f"Chỉ mục tài liệu tại `{exc.folder}` bị hỏng (không đọc được cơ sở dữ liệu của nó). Hãy xây lại bằng lệnh "
                f"`{REBUILD_COMMAND}{folder}` (chỉ mục cũ được đổi tên và giữ lại), rồi tải lại trang.")
    if isinstance(exc, IndexMismatch):
        return f"Chỉ mục được xây bằng một mô hình nhúng khác với mô hình đang chọn.\n\n```\n{exc}\n```"
    if isinstance(exc, EmbedderUnavailable):
        return f"Không nạp được mô hình nhúng.\n\n```\n{exc}\n```"
    return f"Không mở được chỉ mục tài liệu ({type(exc).__name__}).\n\n```\n{exc}\n```"


def try_open_resources(settings: Settings) -> tuple[IndexResources | None, str | None]:
    """The resources, or the Vietnamese message explaining why there are none."""
    try:
        return open_resources(settings), None
    except Exception as exc:  # the page must explain any failure to open the index, never crash on it
        return None, index_problem(exc, settings)


@st.cache_resource
def conversation_log(url: str) -> ConversationLog:
    """The log for this database URL, one engine per process."""
    return ConversationLog(url)


def log_problem(exc: Exception) -> str:
    """What to tell a teacher, in Vietnamese and without SQL, when the conversation log cannot be used.

    The details go to the server's log for whoever runs it (the database URL there has no password).
    """
    _logger.warning("conversation log unavailable: %s", exc if isinstance(exc, LogUnavailable) else type(exc).__name__)
    if not isinstance(exc, LogUnavailable):
        return f"Không dùng được nhật ký hội thoại (lỗi {type(exc).__name__}). Hãy thử lại sau ít phút."
    if "locked" in exc.reason.lower():
        why = "cơ sở dữ liệu đang bị một chương trình khác khoá"
    else:
        why = f"cơ sở dữ liệu báo lỗi: {exc.reason}"
    return (f"Không dùng được nhật ký hội thoại tại `{exc.where}` ({why}). Hãy thử lại sau ít phút; nếu vẫn lỗi, "
            "kiểm tra xem có chương trình nào khác đang mở cơ sở dữ liệu này không.")


@st.cache_data(ttl=_OLLAMA_TTL_S, show_spinner=False)
def _llm_state(provider: str, url: str, model: str, _settings: Settings) -> LLMStatus:
    return llm_status(_settings)


def llm_state(settings: Settings) -> LLMStatus:
    """Whether the configured LLM server answers and its models, asked at most every few seconds."""
    return _llm_state(settings.llm_provider, effective_url(settings), settings.effective_model(), settings)


ollama_state = llm_state  # the name used before there were providers


def markdown(text: str) -> None:
    """Text from the model, the material or a student: formulas rendered, HTML shown as text, no image fetched from a URL."""
    st.markdown(latex_to_markdown(text))


class Slot(Protocol):
    def markdown(self, body: str) -> Any: ...


def stream_into(slot: Slot, deltas: Iterable[str]) -> str:
    """Show the text as it is written; the whole text is converted each time, so a delimiter split across deltas still renders."""
    text = ""
    for delta in deltas:
        text += delta
        slot.markdown(latex_to_markdown(text) + " ▌")
    return text


def chunk_title(meta: dict[str, Any]) -> str:
    """"Lesson › heading" of a chunk (the heading path usually starts with the lesson already)."""
    lesson, heading = str(meta.get("lesson", "")), str(meta.get("heading_path", ""))
    if lesson and not heading.startswith(lesson):
        heading = f"{lesson} › {heading}" if heading else lesson
    return heading or lesson or "(không có tiêu đề)"


def chunk_caption(meta: dict[str, Any], score: float | None = None) -> str:
    """Source file, page, position and score of a chunk, in one line."""
    parts = [f"Tệp `{meta.get('source', '?')}`"]
    if meta.get("page") not in (None, ""):
        parts.append(f"trang {meta['page']}")
    if meta.get("chunk_index") is not None:
        parts.append(f"đoạn #{meta['chunk_index']}")
    if score is not None:
        parts.append(f"điểm {score:.3f}")
    return " · ".join(parts)


def render_chunk(hit: Hit, number: int | None = None, note: str = "", *, scored: bool = True) -> None:
    """One chunk: number, lesson › heading, source, page, score and the full text with formulas."""
    with st.container(border=True):
        prefix = f"**[{number}]** " if number is not None else ""
        markdown(f"{prefix}**{chunk_title(hit.metadata)}**")
        # The file name and page come from the material too: no image from them either.
        st.caption(neutralise_images(chunk_caption(hit.metadata, hit.score if scored else None) + (f" · {note}" if note else "")))
        markdown(hit.body)  # the card's title already shows the heading path that heads the chunk's text


def teacher_password(settings: Settings) -> str | None:
    """The teacher password from the settings, else from st.secrets; None when neither sets one."""
    if settings.teacher_password is not None and settings.teacher_password.get_secret_value():
        return settings.teacher_password.get_secret_value()
    try:
        secret = st.secrets.get("teacher_password")
    except Exception:  # no secrets file at all is the usual case, and Streamlit raises for it
        return None
    return str(secret) if secret else None


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison of digests, so the time taken says nothing about the password, not even its length."""
    return hmac.compare_digest(hashlib.sha256(given.encode("utf-8")).digest(), hashlib.sha256(expected.encode("utf-8")).digest())


# One store for the whole server process: a new browser session must not start with a clean slate.
LOGIN_THROTTLE = LoginThrottle()


def client_address() -> str:
    """The remote address of this browser session as Streamlit sees it, or "local".

    Streamlit gives no address for 127.0.0.1 and ::1, which is also what every client looks like behind a reverse proxy
    on the same machine: they then share one count, the safe side. Forwarded-for headers are not trusted (anyone can
    send them).
    """
    try:
        return st.context.ip_address or "local"
    except Exception:  # no request context (a bare script run): count it as local
        return "local"


def login_keys() -> list[str]:
    """What wrong passwords are counted against: this browser session and its client address."""
    session = st.session_state.setdefault("login_session", uuid.uuid4().hex)
    return [f"session:{session}", f"client:{client_address()}"]


def wait_text(seconds: float) -> str:
    """A Vietnamese "wait N seconds/minutes" for a throttled login."""
    seconds = max(1, math.ceil(seconds))
    if seconds < 120:
        return f"{seconds} giây"
    return f"{(seconds + 59) // 60} phút"


def password_tag(expected: str) -> str:
    """What the session remembers of a successful login, so that changing the password logs everyone out."""
    return hashlib.sha256(expected.encode("utf-8")).hexdigest()
