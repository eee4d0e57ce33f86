"""`POST /v1/ask`: a grounded answer, whole or as Server-Sent Events (retrieval, delta…, done)."""
from __future__ import annotations

from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse

from rag.answering import Turn
from rag.api.deps import caller, check_question, service
from rag.api.errors import ApiError
from rag.api.jobs import AnswerJob, answer_job, failure_error, raise_for_failure
from rag.api.schemas import AskRequest, AskResponse
from rag.api.service import TutorService
from rag.api.sse import committed_stream, event

router = APIRouter(tags=["tutor"])

STREAM_DOC = """With `"stream": true` the answer comes as Server-Sent Events, in this order:

- `retrieval` — `{standalone_question, status, retrieved: [chunk records]}` as soon as the chunks are found;
- `delta` — `{text}`, the answer as the LLM writes it (may carry citation markers later found invalid);
- `error` — `{error: {message, type, code}}`, only when the LLM failed or no slot freed up;
- `done` — the final answer record (validated citations, status, timings, `exchange_id`).
"""


def final_record(job: AnswerJob) -> dict[str, Any]:
    return {**job.answer.to_record(), "conversation_id": job.conversation_id, "exchange_id": job.exchange_id}


def _job(svc: TutorService, body: AskRequest, client: str):
    check_question(svc.settings, body.question, len(body.history))
    history = [Turn(t.question, t.answer) for t in body.history]
    return answer_job(svc, body.question, history, body.k, svc.scope(body.filters.model_dump()), client,
                      body.conversation_id)


async def _events(svc: TutorService, body: AskRequest, client: str) -> AsyncIterator[bytes]:
    async with _job(svc, body, client) as job:
        await job.prepare()
        answer = job.answer
        yield event("retrieval", {"standalone_question": answer.standalone_question, "status": answer.status,
                                  "retrieved": [h.to_record(r) for r, h in enumerate(answer.retrieved, start=1)]})
        try:
            async for delta in job.deltas():
                yield event("delta", {"text": delta})
        except ApiError as exc:  # no slot freed up in time: the retrieval above is still shown, nothing is logged
            yield event("error", exc.body())
            return
        failed = failure_error(answer)
        if failed is not None:
            yield event("error", failed.body())
        await job.record()
        yield event("done", final_record(job))


@router.post("/v1/ask", response_model=AskResponse, summary="A grounded answer with citations", description=STREAM_DOC,
             responses={200: {"content": {"text/event-stream": {}}}})
async def ask(body: AskRequest, svc: TutorService = Depends(service),
              client: str = Depends(caller)) -> JSONResponse | StreamingResponse:
    if body.stream:
        return await committed_stream(_events(svc, body, client))
    async with _job(svc, body, client) as job:
        await job.prepare()
        async for _ in job.deltas():
            pass
        await job.record()
    record = final_record(job)
    raise_for_failure(job.answer, {"answer": record})
    return JSONResponse(record)
