"""OpenAI-compatible `GET /v1/models` and `POST /v1/chat/completions`: any OpenAI client, and Open WebUI as a
connection, talks to the tutor as the model `vimath-tutor` (setting api_model_name)."""
from __future__ import annotations

from typing import AsyncIterator

from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse, StreamingResponse

from rag.api.deps import caller, check_question, service
from rag.api.errors import ApiError
from rag.api.jobs import answer_job, failure_error, raise_for_failure
from rag.api.openai_format import CompletionIds, conversation, tail_text, usage, vimath_extra
from rag.api.schemas import ChatCompletionRequest
from rag.api.service import TutorService
from rag.api.sse import committed_stream, event
from rag.retrieval import Filters

router = APIRouter(tags=["openai-compatible"])
CREATED = 1_735_689_600  # a fixed date: the model does not change between restarts

DOC = """The last user message is the question; earlier user/assistant messages are the history (system messages are
ignored: the tutor has its own prompt). The sources come twice: appended to the text as a "Nguồn" section, and in the
extra field `vimath` — on the completion, or on the last chunk of a stream (the one with `finish_reason`):
`{status, notice, text, citations: [{number, rank, id, source, heading_path, page, score, text, …}], retrieved,
standalone_question, conversation_id, exchange_id}`. Send `X-Conversation-Id` to group requests in the teacher's log."""


@router.get("/v1/models", summary="The tutor as the one model of this server")
async def models(svc: TutorService = Depends(service), _: str = Depends(caller)) -> dict[str, object]:
    return {"object": "list", "data": [{"id": svc.settings.api_model_name, "object": "model", "created": CREATED,
                                        "owned_by": "vimath-tutor"}]}


def _check_model(svc: TutorService, model: str) -> None:
    if model != svc.settings.api_model_name:
        raise ApiError(404, "model_not_found", f"The model {model!r} does not exist here; use "
                                               f"{svc.settings.api_model_name!r} (GET /v1/models).")


async def _frames(svc: TutorService, body: ChatCompletionRequest, client: str, conversation_id: str | None) -> AsyncIterator[bytes]:
    question, history = conversation(body.messages)
    check_question(svc.settings, question, len(history))
    ids = CompletionIds(svc.settings.api_model_name)
    async with answer_job(svc, question, history, None, Filters(), client, conversation_id) as job:
        await job.prepare()
        deltas = job.deltas()
        count = 0
        try:
            first: str | None = await deltas.__anext__()
        except StopAsyncIteration:
            first = None
        if first is None:
            # Nothing written: before committing to a 200 stream, a failed LLM is a plain HTTP error.
            await job.record()
            raise_for_failure(job.answer, {"vimath": vimath_extra(job.answer, job.conversation_id, job.exchange_id)})
        yield event(None, ids.chunk({"role": "assistant", "content": ""}))
        if first is not None:
            count = 1
            yield event(None, ids.chunk({"content": first}))
            async for delta in deltas:
                count += 1
                yield event(None, ids.chunk({"content": delta}))
        await job.record()
        answer = job.answer
        tail = tail_text(answer)
        if tail:
            yield event(None, ids.chunk({"content": tail.lstrip("\n") if first is None else tail}))
        failed = failure_error(answer)
        if failed is not None:  # broke off midway: OpenAI clients raise on an `error` event
            yield event(None, failed.body())
            return
        yield event(None, ids.chunk({}, "stop", vimath=vimath_extra(answer, job.conversation_id, job.exchange_id)))
        if body.stream_options is not None and body.stream_options.include_usage:
            yield event(None, ids.usage_chunk(usage(answer, count)))
        yield event(None, "[DONE]")


@router.post("/v1/chat/completions", summary="Chat completion by the tutor (OpenAI format)", description=DOC, response_model=None,
             responses={200: {"content": {"text/event-stream": {}}}})
async def chat_completions(body: ChatCompletionRequest, svc: TutorService = Depends(service),
                           client: str = Depends(caller),
                           conversation_id: str | None = Header(None, alias="X-Conversation-Id", max_length=64,
                                                                pattern=r"^[\w.:-]+$")) -> JSONResponse | StreamingResponse:
    _check_model(svc, body.model)
    if body.stream:
        return await committed_stream(_frames(svc, body, client, conversation_id))
    question, history = conversation(body.messages)
    check_question(svc.settings, question, len(history))
    async with answer_job(svc, question, history, None, Filters(), client, conversation_id) as job:
        await job.prepare()
        count = 0
        async for _ in job.deltas():
            count += 1
        await job.record()
    answer = job.answer
    extra = vimath_extra(answer, job.conversation_id, job.exchange_id)
    raise_for_failure(answer, {"vimath": extra})
    content = (answer.text + tail_text(answer)) if answer.text else tail_text(answer).lstrip("\n")
    ids = CompletionIds(svc.settings.api_model_name)
    return JSONResponse(ids.completion(content, usage(answer, count), vimath=extra))
