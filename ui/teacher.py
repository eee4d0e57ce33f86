"""The teachers' page: browse and search the indexed material, see which questions cited a chunk, read and export the log."""
from __future__ import annotations

import sys
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

# Run on its own (or by AppTest) the page needs the project root on sys.path, as ui/app.py does.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from rag.answering import status_label  # noqa: E402
from rag.conversation_log import ConversationLog, ExchangeRow, LogUnavailable  # noqa: E402
from rag.index import Hit  # noqa: E402
from rag.normalize import nfc  # noqa: E402
from rag.retrieval import Filters  # noqa: E402
from rag.settings import Settings  # noqa: E402
from ui.common import (  # noqa: E402
    LOGIN_THROTTLE,
    IndexResources,
    chunk_title,
    conversation_log,
    current_settings,
    log_problem,
    login_keys,
    markdown,
    password_matches,
    password_tag,
    reload_resources,
    render_chunk,
    teacher_password,
    try_open_resources,
    wait_text,
)

ALL = "Tất cả"
FEEDBACK_CHOICES: dict[str, Any] = {ALL: None, "👍 Hài lòng": "up", "👎 Chưa hài lòng": "down",
                                    "Có phản hồi": "any", "Chưa có phản hồi": "none"}
RATING_MARK = {1: "👍", -1: "👎", None: ""}
_PREVIEW_CHARS = 160


NO_PASSWORD = """Trang giáo viên chưa được bật vì chưa đặt mật khẩu giáo viên. Tài liệu đã nạp và nhật ký hỏi đáp \
của học sinh chỉ hiện ra sau khi đặt mật khẩu bằng **một** trong ba cách sau:

- biến môi trường `VIMATH_TEACHER_PASSWORD` (ví dụ `VIMATH_TEACHER_PASSWORD='mật-khẩu' bash scripts/run.sh`), \
cần khởi động lại ứng dụng;
- dòng `teacher_password = "mật-khẩu"` trong tệp `vimath.toml` ở thư mục chạy ứng dụng;
- dòng `teacher_password = "mật-khẩu"` trong tệp `.streamlit/secrets.toml`.

Sau đó tải lại trang này."""


def require_teacher(settings: Settings) -> bool:
    """True when this session logged in with the teacher password; otherwise the login form (or how to set a password).

    With no password set the page shows nothing of the material or the log: they are private by default.
    """
    expected = teacher_password(settings)
    if expected is None:
        st.warning(NO_PASSWORD, icon=":material/lock:")
        return False
    if st.session_state.get("teacher_auth") == password_tag(expected):
        return True
    st.info("Trang này dành cho giáo viên. Vui lòng nhập mật khẩu.", icon=":material/lock:")
    given = st.text_input("Mật khẩu giáo viên", type="password", key="teacher_password_input")
    if st.button("Đăng nhập", type="primary"):
        keys = login_keys()
        # While a wait applies the password is not even compared: nothing can be learnt by guessing meanwhile.
        wait = LOGIN_THROTTLE.wait_s(keys)
        if wait > 0:
            st.error(f"Đã nhập sai mật khẩu nhiều lần. Vui lòng đợi {wait_text(wait)} rồi thử lại.")
        elif password_matches(given, expected):
            LOGIN_THROTTLE.succeeded(keys)
            st.session_state.teacher_auth = password_tag(expected)
            st.rerun()
        else:
            wait = LOGIN_THROTTLE.failed(keys)
            st.error("Mật khẩu không đúng." + (f" Vui lòng đợi {wait_text(wait)} trước khi thử lại." if wait > 0 else ""))
    return False


def logout() -> None:
    st.session_state.pop("teacher_auth", None)


def local_time(moment: datetime) -> str:
    """A logged (naive UTC) time in the server's local time."""
    return moment.replace(tzinfo=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M")


def day_bounds(period: Any) -> tuple[datetime | None, datetime | None]:
    """[start of the first day, start of the day after the last) in local time; open ends while a range is half chosen."""
    days = list(period) if isinstance(period, (tuple, list)) else [period]
    days = [d for d in days if isinstance(d, date)]
    if not days:
        return None, None
    start = datetime.combine(days[0], time.min).astimezone()
    end = datetime.combine(days[-1] + timedelta(days=1), time.min).astimezone() if len(days) > 1 else None
    return start, end


def preview(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _PREVIEW_CHARS else flat[:_PREVIEW_CHARS] + "…"


def find_chunks(resources: IndexResources, filters: Filters, query: str, semantic: bool, k: int) -> list[Hit]:
    """Chunks by semantic search through the Searcher, or all under the filters whose text contains the query."""
    query = nfc(query).strip()
    if semantic and query:
        return resources.searcher.search(query, k, filters=filters)
    hits = resources.index.chunks(filters.where())
    if not query:
        return hits
    needle = query.casefold()
    return [h for h in hits if needle in nfc(h.text).casefold() or needle in nfc(chunk_title(h.metadata)).casefold()]


def sources_overview(metas: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Chunks per source file and lesson."""
    counts: dict[tuple[str, str], int] = {}
    for _, meta in metas:
        key = (str(meta.get("source", "")), str(meta.get("lesson", "")))
        counts[key] = counts.get(key, 0) + 1
    return [{"Tệp": s, "Bài học": lesson, "Số đoạn": n} for (s, lesson), n in sorted(counts.items())]


def chunk_rows(hits: list[Hit], scored: bool) -> list[dict[str, Any]]:
    return [{"Tệp": h.metadata.get("source", ""), "Bài › mục": chunk_title(h.metadata), "Đoạn": h.metadata.get("chunk_index"),
             "Trang": h.metadata.get("page", ""), **({"Điểm": round(h.score, 3)} if scored else {}), "Nội dung": preview(h.text)}
            for h in hits]


def exchange_rows(rows: list[ExchangeRow]) -> list[dict[str, Any]]:
    return [{"Thời gian": local_time(r.created_at), "Câu hỏi": r.question, "Trạng thái": status_label(r.status),
             "Điểm cao nhất": None if r.best_score is None else round(r.best_score, 3), "Phản hồi": RATING_MARK.get(r.rating, ""),
             "Góp ý": r.comment or "", "Nguồn trích dẫn": " | ".join(r.cited_sources), "Câu trả lời": preview(r.answer_text),
             "Kênh": channel(r.client)}
            for r in rows]


def channel(client: str | None) -> str:
    """Where a question came from: the chat, or the HTTP API under the name of its key (the log's `client`)."""
    return f"API ({client})" if client else "Trò chuyện"


def citing_questions(log: ConversationLog | None, hit: Hit) -> None:
    """The questions whose answers cited this chunk."""
    st.markdown("**Câu hỏi có câu trả lời trích dẫn đoạn này**")
    if log is None:
        st.caption("Không mở được nhật ký hội thoại.")
        return
    try:
        rows = log.questions_citing(hit.id)
    except LogUnavailable as exc:
        st.caption(log_problem(exc))
        return
    if not rows:
        st.caption("Chưa có câu trả lời nào trích dẫn đoạn này.")
        return
    st.dataframe([{"Thời gian": local_time(r.created_at), "Câu hỏi": r.question, "Phản hồi": RATING_MARK.get(r.rating, ""),
                   "Góp ý": r.comment or ""} for r in rows], hide_index=True, width="stretch")


def material_tab(settings: Settings, resources: IndexResources, log: ConversationLog | None) -> None:
    """Browse by source and lesson, filter or search, and open a chunk."""
    metas = resources.index.metadatas()
    st.caption(f"{len(metas)} đoạn trong bộ sưu tập `{settings.collection}` · mô hình nhúng "
               f"{resources.embeddings.identity.describe()}")
    with st.expander("Tổng quan theo tệp và bài học"):
        st.dataframe(sources_overview(metas), hide_index=True, width="stretch")
    left, right = st.columns(2)
    source = left.selectbox("Tệp nguồn", [ALL, *sorted({str(m.get("source", "")) for _, m in metas})], key="browse_source")
    lessons = sorted({str(m.get("lesson", "")) for _, m in metas if source in (ALL, m.get("source"))} - {""})
    lesson = right.selectbox("Bài học", [ALL, *lessons], key="browse_lesson")
    query = st.text_input("Tìm đoạn tài liệu", key="chunk_query", placeholder="ví dụ: tiệm cận đứng")
    semantic = st.toggle("Tìm theo ngữ nghĩa (dùng mô hình nhúng, như gia sư tìm)", key="chunk_semantic")
    k = st.slider("Số kết quả tìm theo ngữ nghĩa", 1, 50, settings.top_k, key="chunk_k") if semantic else settings.top_k
    filters = Filters(source=None if source == ALL else source, lesson=None if lesson == ALL else lesson)
    hits = find_chunks(resources, filters, query, semantic, k)
    scored = semantic and bool(query.strip())
    st.caption(f"{len(hits)} đoạn phù hợp.")
    if not hits:
        return
    st.dataframe(chunk_rows(hits, scored), hide_index=True, width="stretch")
    by_id = {h.id: (n, h) for n, h in enumerate(hits, start=1)}
    chosen = st.selectbox("Mở một đoạn", list(by_id), key="open_chunk",
                          format_func=lambda i: f"{by_id[i][0]}. {by_id[i][1].metadata.get('source', '')} — {chunk_title(by_id[i][1].metadata)}")
    if chosen in by_id:
        number, hit = by_id[chosen]
        render_chunk(hit, number, note=f"mã `{hit.id}`", scored=scored)
        citing_questions(log, hit)


def exchange_detail(row: ExchangeRow) -> None:
    """One logged exchange in full."""
    with st.container(border=True):
        st.caption(f"{local_time(row.created_at)} · {status_label(row.status)} · `{row.model}` · {row.prompt_version}")
        st.markdown("**Câu hỏi**")
        markdown(row.question)
        if row.standalone_question != row.question:
            st.caption("Câu hỏi dùng để tìm:")
            markdown(row.standalone_question)
        st.markdown("**Câu trả lời**")
        markdown(row.answer_text or "_(không có)_")
        st.dataframe([{"Hạng": c.rank, "Tệp": c.source, "Mục": c.heading, "Điểm": round(c.score, 3), "Trích dẫn": c.cited}
                      for c in row.chunks], hide_index=True, width="stretch")


def log_tab(settings: Settings, log: ConversationLog | None, problem: str | None) -> None:
    """The logged exchanges with filters, details and CSV export."""
    if log is None:
        st.error(problem or "Không mở được nhật ký hội thoại.")
        return
    today = date.today()
    first, second, third = st.columns(3)
    period = first.date_input("Khoảng thời gian", (today - timedelta(days=30), today), key="log_period", format="DD/MM/YYYY")
    feedback = second.selectbox("Phản hồi", list(FEEDBACK_CHOICES), key="log_feedback")
    low = third.toggle("Chỉ câu điểm thấp", key="log_low",
                       help="Câu hỏi mà tài liệu chưa bao quát tốt: đoạn gần nhất có điểm không quá ngưỡng.")
    threshold = st.slider("Ngưỡng điểm cao nhất", 0.0, 1.0, float(settings.min_score), 0.01, key="log_threshold") if low else None
    since, until = day_bounds(period)
    try:
        rows = log.exchanges(since=since, until=until, feedback=FEEDBACK_CHOICES[feedback], max_best_score=threshold)
    except LogUnavailable as exc:
        st.error(log_problem(exc))
        return
    counts = st.columns(3)
    counts[0].metric("Lượt hỏi", len(rows))
    counts[1].metric("Hài lòng", sum(r.rating == 1 for r in rows))
    counts[2].metric("Chưa hài lòng", sum(r.rating == -1 for r in rows))
    st.download_button("Tải CSV", ("\ufeff" + ConversationLog.to_csv(rows)).encode("utf-8"),  # the BOM makes Excel read it as UTF-8
                       file_name=f"vimath_nhat_ky_{today.isoformat()}.csv", mime="text/csv", icon=":material/download:")
    if not rows:
        st.caption("Không có lượt hỏi đáp nào khớp bộ lọc.")
        return
    st.dataframe(exchange_rows(rows), hide_index=True, width="stretch")
    by_id = {r.id: r for r in rows}
    chosen = st.selectbox("Xem chi tiết một lượt", list(by_id), key="log_open",
                          format_func=lambda i: f"{local_time(by_id[i].created_at)} — {preview(by_id[i].question)}")
    if chosen in by_id:
        exchange_detail(by_id[chosen])


def open_log(settings: Settings) -> tuple[ConversationLog | None, str | None]:
    """The log, or the Vietnamese message saying why it cannot be used (the material tab works without it)."""
    try:
        return conversation_log(settings.database_url), None
    except Exception as exc:  # any failure to open the log is explained on its tab, never a crash of the page
        return None, log_problem(exc)


def teacher_page() -> None:
    settings = current_settings()
    st.title("Trang giáo viên")
    if not require_teacher(settings):
        return
    with st.sidebar:
        if st.button("Nạp lại chỉ mục", help="Sau khi nạp lại hoặc xây lại tài liệu bằng python -m ingest."):
            reload_resources()
        st.button("Đăng xuất", on_click=logout)
    log, log_error = open_log(settings)
    material, history = st.tabs([":material/menu_book: Tài liệu", ":material/history: Nhật ký hỏi đáp"])
    with material:
        resources, problem = try_open_resources(settings)
        if problem:
            st.error(problem)
        else:
            material_tab(settings, resources, log)
    with history:
        log_tab(settings, log, log_error)


teacher_page()
