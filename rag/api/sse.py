"""Server-Sent Events framing, and a streaming response that is only committed once its first event is ready."""
from __future__ import annotations

import json
from typing import Any, AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse

from rag.api.errors import ApiError

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the deltas


def event(name: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {name}\n" if name else "").encode() + f"data: {payload}\n\n".encode()


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for frame in rest:
        yield frame


async def committed_stream(frames: AsyncIterator[bytes]) -> StreamingResponse | JSONResponse:
    """Wait for the first frame before sending the 200: a failure before it (queue full, LLM down) is then a proper
    HTTP error with a JSON body instead of an event in a stream that already said 200."""
    try:
        first = await frames.__anext__()
    except ApiError as exc:
        await frames.aclose()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
    except StopAsyncIteration:
        return StreamingResponse(iter(()), media_type="text/event-stream", headers=SSE_HEADERS)
    return StreamingResponse(_prepend(first, frames), media_type="text/event-stream", headers=SSE_HEADERS)
