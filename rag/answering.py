"""Grounded answers: condense a follow-up, retrieve, guard, fit the context, stream from the LLM, parse citations."""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any, Callable, Iterator, Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from rag.degenerate import DegenerateGuard, Verdict, degenerate_notice
from rag.index import Hit
from rag.llm import Failure, FirstTokenTimeout, TotalTimeout, chat_model, classify, failure_message, first_token_timeout
from rag.normalize import nfc
from rag.prompts import TUTOR_SYSTEM, TUTOR_USER, condense_template, format_chunk, load_prompt, tutor_template, tutor_version
from rag.retrieval import Filters, Searcher
from rag.schema import split_headings, with_header
from rag.settings import Settings

_CITATION = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
# Measured by bench/answer_eval.py (Qwen2.5 tokenizer, 34 real prompts): 2.25-2.95 characters per token, so 2.0
# overestimates every prompt by 14-49 %: the budget never exceeds num_ctx, and other tokenizers get a margin too.
_CHARS_PER_TOKEN = 2.0
_MESSAGE_OVERHEAD = 8
_CTX_STEP = 1024
NOT_COVERED = ("Tài liệu của giáo viên hiện chưa đề cập rõ đến câu hỏi này, nên mình không trả lời để tránh đoán sai. "
               "Em xem thử các đoạn gần nhất bên dưới hoặc hỏi thầy cô nhé.")
NOT_IN_GRADE = ("Tài liệu lớp {grade} chưa có nội dung đủ sát với câu hỏi này, nên mình không trả lời để tránh đoán sai.")
OTHER_GRADES = (" Mình thấy nội dung liên quan trong tài liệu {grades}: nếu câu hỏi thuộc lớp khác, em chọn lớp đó "
                "(hoặc \"Tất cả\") ở thanh bên rồi hỏi lại nhé.")
NO_OTHER_GRADE = " Các lớp khác cũng chưa có nội dung phù hợp; em hỏi thầy cô nhé."
NOT_IN_BOOK = ("Tài liệu bộ sách “{book}” chưa có nội dung đủ sát với câu hỏi này, nên mình không trả lời để tránh đoán sai.")
NOT_IN_GRADE_AND_BOOK = ("Tài liệu lớp {grade} của bộ sách “{book}” chưa có nội dung đủ sát với câu hỏi này, nên mình "
                         "không trả lời để tránh đoán sai.")
OTHER_BOOKS = (" Mình thấy nội dung liên quan trong {books}: nếu em học theo bộ sách khác, em chọn bộ sách đó "
               "(hoặc \"Tất cả\") ở thanh bên rồi hỏi lại nhé.")
NO_OTHER_BOOK = " Các bộ sách khác cũng chưa có nội dung phù hợp; em hỏi thầy cô nhé."
NO_OTHER_GRADE_OR_BOOK = " Các lớp và bộ sách khác cũng chưa có nội dung phù hợp; em hỏi thầy cô nhé."
CONTEXT_TOO_SMALL = ("Ngữ cảnh của mô hình quá nhỏ cho dù chỉ một đoạn tài liệu; hãy tăng VIMATH_NUM_CTX "
                     "(hiện là {num_ctx}).")

ChatFactory = Callable[[Settings, int, int | None], BaseChatModel]


class AnswerStatus(str, Enum):
    """How an answer ended. A str, so records, logs and JSON keep the plain value ("ok")."""

    OK = "ok"
    NOT_COVERED = "not_covered"  # the grounding guard: the material does not cover the question
    LLM_UNREACHABLE = Failure.UNREACHABLE.value
    MODEL_MISSING = Failure.MODEL_MISSING.value
    TIMEOUT = Failure.TIMEOUT.value
    INTERRUPTED = Failure.INTERRUPTED.value
    LLM_ERROR = Failure.ERROR.value
    DEGENERATE = "degenerate"  # the guard stopped an answer that copied the material, repeated itself or echoed the prompt

    @classmethod
    def of(cls, failure: Failure) -> AnswerStatus:
        return cls(failure.value)

    @property
    def label(self) -> str:
        """The status in Vietnamese, as the teacher page shows it."""
        return _STATUS_LABELS[self]

    @property
    def llm_ok(self) -> bool:
        """The LLM did what was asked (answered, or was rightly not asked)."""
        return self in {AnswerStatus.OK, AnswerStatus.NOT_COVERED}

    @property
    def blocking(self) -> bool:
        """No answer can come until someone fixes the LLM server (not a passing failure)."""
        return self in {AnswerStatus.LLM_UNREACHABLE, AnswerStatus.MODEL_MISSING}


_STATUS_LABELS = {
    AnswerStatus.OK: "đã trả lời", AnswerStatus.NOT_COVERED: "tài liệu chưa đề cập",
    AnswerStatus.LLM_UNREACHABLE: "Ollama không chạy", AnswerStatus.MODEL_MISSING: "thiếu mô hình",
    AnswerStatus.TIMEOUT: "quá thời gian", AnswerStatus.INTERRUPTED: "bị gián đoạn", AnswerStatus.LLM_ERROR: "lỗi mô hình",
    AnswerStatus.DEGENERATE: "bị dừng (chép/lặp)",
}


def status_label(value: str) -> str:
    """The Vietnamese label of a status value as stored in the log (an unknown value is shown as it is)."""
    try:
        return AnswerStatus(value).label
    except ValueError:
        return value


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of the conversation."""

    question: str
    answer: str


@dataclass
class Timings:
    retrieval_s: float = 0.0
    first_token_s: float | None = None
    total_s: float = 0.0


@dataclass
class Answer:
    """Everything about one answer: what was retrieved, what was cited, how and how fast it was made."""

    question: str
    standalone_question: str
    status: AnswerStatus = AnswerStatus.OK
    text: str = ""
    notice: str = ""  # what the system (not the model) tells the student, in Vietnamese
    retrieved: list[Hit] = field(default_factory=list)
    context_size: int = 0  # how many of the retrieved chunks went into the prompt (numbered 1..context_size)
    other_grades: list[int] = field(default_factory=list)  # grades whose material clears the guard when the chosen one did not
    other_books: list[str] = field(default_factory=list)  # likewise for the chosen book
    cited: list[int] = field(default_factory=list)
    invalid_citations: list[int] = field(default_factory=list)
    model: str = ""
    prompt_version: str = ""
    num_ctx: int = 0
    prompt_tokens: int | None = None  # as the server counted them, when it says
    prompt_tokens_estimate: int = 0  # our upper estimate, what the budget was made with
    completion_tokens: int | None = None
    prompt_chars: int = 0
    finish_reason: str | None = None  # the server's: stop, or length when answer_tokens cut it short
    degenerate: str = ""  # when the guard stopped the answer: copy | repeat | echo, and what it saw
    history_turns_used: int = 0
    timings: Timings = field(default_factory=Timings)

    @property
    def cited_chunks(self) -> list[Hit]:
        return [self.retrieved[n - 1] for n in self.cited]

    @property
    def llm_ok(self) -> bool:
        return AnswerStatus(self.status).llm_ok

    def to_record(self) -> dict[str, Any]:
        record = {k: v for k, v in asdict(self).items() if k != "retrieved"}
        record["retrieved"] = [h.to_record(rank) for rank, h in enumerate(self.retrieved, start=1)]
        record["cited_ids"] = [h.id for h in self.cited_chunks]
        return record


# A small model often names the chunk in words ("theo đoạn tài liệu số 1") instead of writing [1]: the benchmark
# (Qwen2.5-1.5B) did so in most answers. Such a reference gets its marker, so it counts and links like [1].
_SPELLED = re.compile(r"(?:đoạn\s+tài\s+liệu|đoạn|tài\s+liệu)\s+số\s+(\d+)|đoạn\s+tài\s+liệu\s+(\d+)(?!\s*[.,]\d)", re.IGNORECASE)


def mark_spelled_citations(text: str) -> str:
    """"đoạn tài liệu số 2" → "đoạn tài liệu số 2 [2]" (unless a marker follows already)."""
    def mark(match: re.Match[str]) -> str:
        number = match.group(1) or match.group(2)
        following = text[match.end(): match.end() + 8]
        return match.group(0) if re.match(rf"\s*\[{number}\]", following) else f"{match.group(0)} [{number}]"
    return _SPELLED.sub(mark, text)


# Formulas, where "[1; 3]" is an interval, not a citation: markers are read and dropped only outside them.
_MATH_SPAN = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<![\\$])\$(?!\$).+?(?<![\\$])\$", re.S)


def _outside_math(text: str) -> list[tuple[int, int]]:
    """(start, end) of the stretches of `text` outside formulas."""
    spans, at = [], 0
    for m in _MATH_SPAN.finditer(text):
        spans.append((at, m.start()))
        at = m.end()
    return [*spans, (at, len(text))]


def _citation_matches(text: str) -> list[re.Match[str]]:
    return [m for start, end in _outside_math(text) for m in _CITATION.finditer(text, start, end)]


def parse_citations(text: str, available: int) -> tuple[list[int], list[int]]:
    """Cited chunk numbers in order of first mention, and markers pointing at no chunk (formulas aside)."""
    valid: list[int] = []
    invalid: list[int] = []
    for match in _citation_matches(text):
        for number in (int(n) for n in re.split(r"\s*[,;]\s*", match.group(1))):
            bucket = valid if 1 <= number <= available else invalid
            if number not in bucket:
                bucket.append(number)
    return valid, invalid


def drop_invalid_markers(text: str, available: int) -> str:
    """The text without citation numbers that point at no chunk (a marker left empty disappears)."""
    def keep(match: re.Match[str]) -> str:
        numbers = [n for n in re.split(r"\s*[,;]\s*", match.group(1)) if 1 <= int(n) <= available]
        return f"[{', '.join(numbers)}]" if numbers else ""
    out, at = [], 0
    for match in _citation_matches(text):
        out += [text[at: match.start()], keep(match)]
        at = match.end()
    return "".join([*out, text[at:]])


def estimate_tokens(text: str) -> int:
    """An upper estimate of the LLM tokens of `text`; the model's tokenizer is not available here."""
    return math.ceil(len(text) / _CHARS_PER_TOKEN) + _MESSAGE_OVERHEAD


def instructions() -> list[str]:
    """The prompt's own words (rules and template, without the material or the question): what an echo repeats."""
    return [load_prompt(TUTOR_SYSTEM).text, load_prompt(TUTOR_USER).text]


def history_messages(turns: Sequence[Turn]) -> list[BaseMessage]:
    return [m for t in turns for m in (HumanMessage(t.question), AIMessage(t.answer))]


@dataclass(frozen=True)
class Budget:
    """What fits: how many chunks, how many recent turns, and the context size to ask for."""

    chunks: int
    turns: int
    num_ctx: int
    context: tuple[Hit, ...] = ()  # the chunks as the prompt shows them (widened with their neighbours when room is left)


Neighbours = Callable[[Hit], Sequence[Hit]]


def widen(context: Sequence[Hit], neighbours: Neighbours, used: int, limit: int) -> tuple[list[Hit], int]:
    """Each chunk with the adjacent chunks of its section around it, best chunk first, while they fit; a chunk
    already shown is not repeated. The number and order of chunks (the citations) stay the same."""
    shown = {h.id for h in context}
    out: list[Hit] = []
    for hit in context:
        before: list[str] = []
        after: list[str] = []
        for other in neighbours(hit):
            cost = estimate_tokens(other.body)
            if other.id in shown or used + cost > limit:
                continue
            used += cost
            shown.add(other.id)
            (before if (other.chunk_index or 0) < (hit.chunk_index or 0) else after).append(other.body)
        body = "\n\n".join([*before, hit.body, *after])
        text = with_header(split_headings(hit.heading_path), body) if before or after else hit.text
        out.append(Hit(hit.id, text, hit.metadata, hit.score))
    return out, used


def fit_budget(question: str, hits: Sequence[Hit], history: Sequence[Turn], settings: Settings,
               neighbours: Neighbours | None = None) -> Budget:
    """Keep the best chunks and the most recent turns that fit in num_ctx beside the answer; drop, never truncate.
    With `neighbours`, the room still left then goes to the kept chunks' adjacent chunks (`widen`)."""
    limit = settings.num_ctx - settings.answer_tokens
    fixed = estimate_tokens(load_prompt(TUTOR_SYSTEM).text) + estimate_tokens(load_prompt(TUTOR_USER).text) + estimate_tokens(question)
    used, chunks = fixed, 0
    for number, hit in enumerate(hits[: settings.context_chunks], start=1):
        cost = estimate_tokens(format_chunk(number, hit))
        if used + cost > limit:
            break
        used, chunks = used + cost, chunks + 1
    turns = 0
    for turn in reversed(history[-settings.history_turns:] if settings.history_turns else []):
        cost = estimate_tokens(turn.question) + estimate_tokens(turn.answer)
        if used + cost > limit:
            break
        used, turns = used + cost, turns + 1
    context = list(hits[:chunks])
    if neighbours is not None and chunks:
        context, used = widen(context, neighbours, used, limit)
    needed = used + settings.answer_tokens
    return Budget(chunks, turns, min(settings.num_ctx, math.ceil(needed / _CTX_STEP) * _CTX_STEP), tuple(context))


def fallback_standalone(question: str, history: Sequence[Turn]) -> str:
    """Without an LLM, a follow-up is searched together with the previous question, which names its topic."""
    return f"{history[-1].question} {question}" if history else question


def covered(hits: Sequence[Hit], min_score: float) -> bool:
    """Whether the material covers the question: some hit clears the guard. max, not the first: hybrid and BM25
    order by their own scores, while `score` is always the dense cosine."""
    return bool(hits) and max(h.score for h in hits) >= min_score


def _other_scopes(searcher: Searcher, question: str, k: int, filters: Filters, min_score: float, key: str) -> list:
    """The values of `key` (grade, book) other than the filter's whose material clears the guard for the question,
    searched with that one scope widened (the other kept), sorted."""
    wider = searcher.search(question, k, min_score=min_score, filters=replace(filters, **{key: None}))
    return sorted({h.metadata[key] for h in wider if h.metadata.get(key) not in (None, getattr(filters, key))})


def other_grades(searcher: Searcher, question: str, k: int, filters: Filters, min_score: float) -> list[int]:
    """The grades (other than the filter's) whose material clears the guard for the question, in order."""
    return [int(g) for g in _other_scopes(searcher, question, k, filters, min_score, "grade")]


def other_books(searcher: Searcher, question: str, k: int, filters: Filters, min_score: float) -> list[str]:
    """The books (other than the filter's) whose material clears the guard for the question, by name."""
    return [str(b) for b in _other_scopes(searcher, question, k, filters, min_score, "book")]


def not_in_grade_notice(grade: int, others: Sequence[int]) -> str:
    """What the student reads when their grade's material does not cover the question (Vietnamese)."""
    if not others:
        return NOT_IN_GRADE.format(grade=grade) + NO_OTHER_GRADE
    return NOT_IN_GRADE.format(grade=grade) + OTHER_GRADES.format(grades=_grades_named(others))


def not_in_book_notice(book: str, others: Sequence[str]) -> str:
    """What the student reads when their book's material does not cover the question (Vietnamese)."""
    if not others:
        return NOT_IN_BOOK.format(book=book) + NO_OTHER_BOOK
    return NOT_IN_BOOK.format(book=book) + OTHER_BOOKS.format(books=_books_named(others))


def _grades_named(grades: Sequence[int]) -> str:
    return ", ".join(f"lớp {g}" for g in grades)


def _books_named(books: Sequence[str]) -> str:
    return ", ".join(f"bộ sách “{b}”" for b in books)


def not_in_scope_notice(filters: Filters, grades: Sequence[int], books: Sequence[str]) -> str:
    """The notice for a grade, a book, or both that do not cover the question, offering what does."""
    if filters.book is None:
        return not_in_grade_notice(filters.grade or 0, grades)
    if filters.grade is None:
        return not_in_book_notice(filters.book, books)
    text = NOT_IN_GRADE_AND_BOOK.format(grade=filters.grade, book=filters.book)
    if grades:
        text += OTHER_GRADES.format(grades=_grades_named(grades))
    if books:
        text += OTHER_BOOKS.format(books=_books_named(books))
    return text if grades or books else text + NO_OTHER_GRADE_OR_BOOK


class Tutor:
    """Answers a student's question from the indexed material through the configured LLM, streaming."""

    def __init__(self, searcher: Searcher, settings: Settings, chat_factory: ChatFactory | None = None) -> None:
        self.searcher = searcher
        self.settings = settings
        self.chat_factory = chat_factory or chat_model
        self._models: dict[tuple[int, int | None], BaseChatModel] = {}

    def chat(self, num_ctx: int, num_predict: int | None = None) -> BaseChatModel:
        """One chat model per context size, reused: ChatOllama keeps an HTTP client that it never closes."""
        key = (num_ctx, num_predict)
        if key not in self._models:
            self._models[key] = self.chat_factory(self.settings, num_ctx, num_predict)
        return self._models[key]

    def condense(self, question: str, history: Sequence[Turn]) -> tuple[str, Failure | None]:
        """A standalone rewrite of a follow-up for retrieval; the fallback and the failure when the LLM cannot."""
        if not history:
            return question, None
        recent = history[-max(self.settings.history_turns, 1):]
        prompt = condense_template().format(history="\n".join(f"Học sinh: {t.question}\nGia sư: {t.answer}" for t in recent), question=question)
        try:
            reply = self.chat(self.settings.num_ctx, 128).invoke(prompt)
        except Exception as exc:  # every LLM failure has the same remedy here: search without the rewrite
            return fallback_standalone(question, history), classify(exc, settings=self.settings)
        lines = [line.strip().strip('"“”') for line in str(reply.content).splitlines() if line.strip()]
        if not lines or len(lines[0]) > 3 * len(question) + 300:
            return fallback_standalone(question, history), None
        return nfc(lines[0]), None

    def stream(self, question: str, history: Sequence[Turn] = (), *, k: int | None = None, filters: Filters = Filters(),
               on_retrieved: Callable[[Answer], None] | None = None, llm_failure: Failure | None = None) -> "AnswerStream":
        """The answer as a stream. `on_retrieved` sees the record as soon as the chunks are known (before any
        generation), so a UI can show them at once; `llm_failure` is what a status check already knows is wrong
        with the LLM: then it is not asked at all and the answer is retrieval-only at once."""
        return AnswerStream(self, nfc(question).strip(), list(history), k or self.settings.top_k, filters,
                            on_retrieved=on_retrieved, llm_failure=llm_failure)


# Failures after which asking the LLM again for the same question would only make the student wait again.
_NO_SECOND_CALL = {Failure.UNREACHABLE, Failure.MODEL_MISSING, Failure.TIMEOUT}


class AnswerStream:
    """Iterate for the answer's text as it is written; `answer` holds the full record once iteration ends."""

    def __init__(self, tutor: Tutor, question: str, history: list[Turn], k: int, filters: Filters, *,
                 on_retrieved: Callable[[Answer], None] | None = None, llm_failure: Failure | None = None) -> None:
        self.tutor, self.history, self.k, self.filters = tutor, history, k, filters
        self.on_retrieved, self.llm_failure = on_retrieved, llm_failure
        settings = tutor.settings
        self.answer = Answer(question=question, standalone_question=question, model=settings.effective_model(), prompt_version=tutor_version())
        self._started: float | None = None
        self._budget: Budget | None = None

    @property
    def needs_llm_to_prepare(self) -> bool:
        """Whether `prepare` asks the LLM too (a follow-up is condensed first), so a server can run it where LLM calls are bounded."""
        return bool(self.history) and self.llm_failure is None

    def prepare(self) -> bool:
        """Condense, retrieve, guard and fit the context, once; True when the LLM has an answer to write.

        Separate from the iteration so that a server can show the retrieved chunks at once and retrieve on other
        threads than those that wait for generation; iterating calls it when nobody did."""
        if self._started is None:
            self._started = time.perf_counter()
            self._budget = self._prepare(self._started)
        return self._budget is not None

    def __iter__(self) -> Iterator[str]:
        try:
            if self.prepare():
                assert self._budget is not None and self._started is not None
                yield from self._generate(self._started, self._budget)
        finally:
            if self._started is not None:
                self.answer.timings.total_s = time.perf_counter() - self._started

    def _prepare(self, started: float) -> Budget | None:
        tutor, answer, settings = self.tutor, self.answer, self.tutor.settings
        if self.llm_failure is not None:  # known down: no condensing either, the fallback query finds the topic
            answer.standalone_question, failure = fallback_standalone(answer.question, self.history), self.llm_failure
        else:
            answer.standalone_question, failure = tutor.condense(answer.question, self.history)
        answer.retrieved = tutor.searcher.search(answer.standalone_question, self.k, filters=self.filters)
        answer.timings.retrieval_s = time.perf_counter() - started
        if self.on_retrieved is not None:
            self.on_retrieved(answer)
        if not covered(answer.retrieved, settings.min_score):
            answer.status, answer.notice = AnswerStatus.NOT_COVERED, NOT_COVERED
            question, filters = answer.standalone_question, self.filters
            if filters.grade is not None:  # say so and offer the other grades; never widen silently
                answer.other_grades = other_grades(tutor.searcher, question, self.k, filters, settings.min_score)
            if filters.book is not None:  # the same for the book
                answer.other_books = other_books(tutor.searcher, question, self.k, filters, settings.min_score)
            if filters.grade is not None or filters.book is not None:
                answer.notice = not_in_scope_notice(filters, answer.other_grades, answer.other_books)
            return None
        if failure in _NO_SECOND_CALL:  # one question never pays the timeout twice
            answer.status, answer.notice = AnswerStatus.of(failure), failure_message(failure, settings)
            return None
        budget = fit_budget(answer.question, answer.retrieved, self.history, settings, getattr(tutor.searcher, "neighbours", None))
        if budget.chunks == 0:
            answer.status, answer.notice = AnswerStatus.LLM_ERROR, CONTEXT_TOO_SMALL.format(num_ctx=settings.num_ctx)
            return None
        answer.context_size, answer.num_ctx, answer.history_turns_used = budget.chunks, budget.num_ctx, budget.turns
        return budget

    def _generate(self, started: float, budget: Budget) -> Iterator[str]:
        answer, settings = self.answer, self.tutor.settings
        recent = self.history[len(self.history) - budget.turns:] if budget.turns else []
        question = answer.question if recent or not self.history else answer.standalone_question
        context = list(budget.context or answer.retrieved[: budget.chunks])
        messages = tutor_template().format_messages(history=history_messages(recent), question=question,
                                                    context="\n\n".join(format_chunk(n, h) for n, h in enumerate(context, start=1)))
        answer.prompt_tokens_estimate = sum(estimate_tokens(str(m.content)) for m in messages)
        answer.prompt_chars = sum(len(str(m.content)) for m in messages)
        guard = DegenerateGuard([h.text for h in context], instructions(), question=question) if settings.degenerate_guard else None
        chat = self.tutor.chat(budget.num_ctx)  # made (and its client imported) before the clock starts
        asked = time.perf_counter()
        first_deadline, total_deadline = asked + first_token_timeout(settings), asked + settings.llm_timeout_s
        parts: list[str] = []
        verdict: Verdict | None = None
        finish: str | None = None
        chunks = chat.stream(messages)
        try:
            for chunk in chunks:
                now = time.perf_counter()
                if chunk.usage_metadata:
                    answer.prompt_tokens = chunk.usage_metadata.get("input_tokens")
                    answer.completion_tokens = chunk.usage_metadata.get("output_tokens")
                finish = finish or _finish_reason(chunk.response_metadata)
                delta = str(chunk.content)
                if not delta:
                    # a server may send empty keep-alive chunks before the first token: still bounded by the deadline
                    if not parts and now > first_deadline:
                        raise FirstTokenTimeout(f"no token after {first_token_timeout(settings):g} s")
                    continue
                if answer.timings.first_token_s is None:
                    answer.timings.first_token_s = now - started
                parts.append(delta)
                if guard is not None and (verdict := guard.feed("".join(parts))) is not None:
                    break  # stop generating: closing the stream below tells the server to stop
                yield delta
                if now > total_deadline:
                    raise TotalTimeout(f"answer not finished after {settings.llm_timeout_s:g} s")
            if finish is None and verdict is None:
                # An SSE stream cut by a dying server can end like a normal one; only the missing finish says so.
                raise StreamCut("the stream ended without a finish reason")
        except Exception as exc:  # whatever broke, the partial answer and the retrieved chunks are kept
            failure = classify(exc, midway=bool(parts), settings=settings)
            answer.status, answer.notice = AnswerStatus.of(failure), failure_message(failure, settings, str(exc))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        answer.finish_reason = finish
        raw = "".join(parts)
        if verdict is not None:
            raw = verdict.keep
            answer.status, answer.notice = AnswerStatus.DEGENERATE, degenerate_notice(verdict)
            answer.degenerate = f"{verdict.kind}: {verdict.detail}"
        raw = mark_spelled_citations(raw)
        answer.cited, answer.invalid_citations = parse_citations(raw, budget.chunks)
        answer.text = drop_invalid_markers(raw, budget.chunks)


class StreamCut(ConnectionError):
    """The server closed the stream before saying the answer was finished."""


def _finish_reason(meta: dict[str, Any]) -> str | None:
    """OpenAI servers say finish_reason, Ollama done_reason (with done)."""
    reason = meta.get("finish_reason") or meta.get("done_reason")
    return str(reason) if reason else ("stop" if meta.get("done") else None)


def ask(tutor: Tutor, question: str, history: Sequence[Turn] = ()) -> Answer:
    """The whole answer at once."""
    stream = tutor.stream(question, history)
    for _ in stream:
        pass
    return stream.answer
