"""One answer served over HTTP: a place in the generation queue, retrieval on the retrieval pool, generation on a
generation thread whose deltas reach the event loop through a queue, and the exchange written to the log."""
from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator, Sequence

from rag.answering import Answer, AnswerStatus, AnswerStream, Turn
from rag.api.errors import ApiError
from rag.api.service import TutorService
from rag.retrieval import Filters

log = logging.getLogger("rag.api")
CLIENT_GONE = "Kết nối bị ngắt trước khi câu trả lời hoàn tất; phần đã viết được lưu lại."
_END = object()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class AnswerJob:
    """Prepare (retrieve), then generate, then record; `finish` makes sure the slot is freed and the exchange logged
    even when the client goes away in the middle."""

    def __init__(self, service: TutorService, stream: AnswerStream, conversation_id: str, client: str) -> None:
        self.service, self.stream = service, stream
        self.conversation_id, self.client = conversation_id, client
        self.exchange_id: int | None = None
        self._generate = False
        self._holds_slot = False
        self._producer: asyncio.Future[None] | None = None
        self._cancelled = threading.Event()
        self._recorded = False
        self.refused = False  # no generation slot freed up: nothing was answered, nothing is logged

    @property
    def answer(self) -> Answer:
        return self.stream.answer

    async def _take_slot(self) -> None:
        try:
            await self.service.gate.acquire()
        except ApiError:
            self.refused = True
            raise
        self._holds_slot = True

    def _hand_over_slot(self, future: asyncio.Future[object]) -> None:
        """The slot is freed when the thread ends, not when the request does: it measures the LLM's real load."""
        self._holds_slot = False
        future.add_done_callback(lambda _: self.service.gate.release())

    async def prepare(self) -> bool:
        """Condense, retrieve and guard; True when the LLM has an answer to write."""
        service, loop = self.service, asyncio.get_running_loop()
        if not self.stream.needs_llm_to_prepare:
            self._generate = await service.in_pool(service.retrieval_pool, self.stream.prepare)
            return self._generate
        # A follow-up is condensed by the LLM first: that call, too, happens only while holding a slot.
        await self._take_slot()
        future = loop.run_in_executor(service.generation_pool, self.stream.prepare)
        try:
            self._generate = await asyncio.shield(future)
        except asyncio.CancelledError:
            self._hand_over_slot(future)
            raise
        return self._generate

    async def deltas(self) -> AsyncIterator[str]:
        """The answer's text as the LLM writes it (nothing when there is nothing to generate)."""
        if not self._generate:
            return
        if not self._holds_slot:
            await self._take_slot()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (server shutting down): nobody is listening any more
                pass

        def produce() -> None:
            iterator = iter(self.stream)
            parts: list[str] = []
            try:
                for delta in iterator:
                    parts.append(delta)
                    put(delta)
                    if self._cancelled.is_set():
                        break
                else:
                    return
                # The client left: stop the LLM and keep what was written, marked as interrupted.
                iterator.close()
                self.answer.text = "".join(parts)
                self.answer.status, self.answer.notice = AnswerStatus.INTERRUPTED, CLIENT_GONE
            except BaseException as exc:  # handed to the event loop, which turns it into a JSON error
                put(_Raised(exc))
            finally:
                put(_END)

        self._producer = loop.run_in_executor(self.service.generation_pool, produce)
        self._hand_over_slot(self._producer)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, _Raised):
                    raise item.exc
                yield str(item)
        finally:
            self._cancelled.set()

    async def record(self) -> int | None:
        """Write the exchange to the conversation log (once); a log that fails is reported, not fatal."""
        if not self._recorded:
            self._recorded = True
            self.exchange_id = await self.service.in_pool(self.service.log_pool, self._record_now)
        return self.exchange_id

    def _record_now(self) -> int | None:
        try:
            return self.service.log.record(self.conversation_id, self.answer, client=self.client)
        except Exception:
            log.exception("could not write exchange of conversation %s to the log", self.conversation_id)
            return None

    def finish(self) -> None:
        """Free what the job holds; when the request ended early, log the exchange once the generation stops."""
        self._cancelled.set()
        if self._holds_slot:
            self._holds_slot = False
            self.service.gate.release()
        if self._recorded or self.refused or not self.answer.retrieved and not self.answer.text:
            return
        self._recorded = True
        pool = self.service.log_pool
        if self._producer is not None and not self._producer.done():
            self._producer.add_done_callback(lambda _: pool.submit(self._record_now))
        else:
            pool.submit(self._record_now)


@asynccontextmanager
async def answer_job(service: TutorService, question: str, history: Sequence[Turn], k: int | None, filters: Filters,
                     client: str, conversation_id: str | None = None) -> AsyncIterator[AnswerJob]:
    """An answer job holding a place in the generation queue (503 when the queue is full)."""
    async with service.gate.admission():
        stream = service.tutor.stream(question, history, k=k, filters=filters)
        job = AnswerJob(service, stream, conversation_id or uuid.uuid4().hex, client)
        try:
            yield job
        finally:
            job.finish()


_FAILURES = {AnswerStatus.LLM_UNREACHABLE: (503, "The LLM server cannot be reached"),
             AnswerStatus.MODEL_MISSING: (503, "The LLM server does not have the configured model"),
             AnswerStatus.TIMEOUT: (504, "The LLM did not answer in time"),
             AnswerStatus.INTERRUPTED: (502, "The answer stopped in the middle"),
             AnswerStatus.LLM_ERROR: (502, "The LLM failed")}


def failure_error(answer: Answer, extra: dict[str, object] | None = None) -> ApiError | None:
    """The error of an answer whose LLM failed (what was retrieved can travel in `extra`), None for a normal answer."""
    status = AnswerStatus(answer.status)
    if status not in _FAILURES:
        return None
    code, summary = _FAILURES[status]
    return ApiError(code, status.value, f"{summary}. {answer.notice}".strip(), extra=extra)


def raise_for_failure(answer: Answer, extra: dict[str, object]) -> None:
    error = failure_error(answer, extra)
    if error is not None:
        raise error
