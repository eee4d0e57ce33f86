"""The tutor as an OpenAI chat model: messages in, completions and completion chunks out, with the sources.

Citations travel twice: in the documented extra field `vimath` (status, validated citations, every retrieved chunk)
and as a "Nguồn" section at the end of the text, so that clients that ignore extra fields still show them.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Sequence

from rag.answering import Answer, Turn
from rag.api.errors import ApiError
from rag.api.schemas import ChatMessage, Chunk, clean

SOURCES_MARKER = "\n\n---\n**Nguồn:**"
RELATED_MARKER = "\n\n---\n**Các đoạn tài liệu liên quan nhất:**"


def strip_sources(text: str) -> str:
    """An earlier answer without the sources section this API appended (clients send it back as history)."""
    for marker in (SOURCES_MARKER, RELATED_MARKER):
        text = text.split(marker, 1)[0]
    return text


def conversation(messages: Sequence[ChatMessage]) -> tuple[str, list[Turn]]:
    """The question (the last user message) and the earlier user/assistant exchanges; system prompts are ignored,
    because the tutor's own prompt decides how it answers."""
    turns: list[Turn] = []
    pending: list[str] = []
    for message in messages:
        text = clean(message.text())
        if message.role == "user" and text:
            pending.append(text)
        elif message.role == "assistant" and pending:
            turns.append(Turn("\n".join(pending), clean(strip_sources(text))))
            pending = []
    if not pending or messages[-1].role != "user":
        raise ApiError(400, "invalid_messages", "The last message must be the student's question (role \"user\", "
                                                "non-empty text).")
    return "\n".join(pending), turns


def _where(meta: dict[str, Any]) -> str:
    page = f", trang {meta['page']}" if meta.get("page") not in (None, "") else ""
    heading = meta.get("heading_path") or meta.get("lesson") or ""
    return f"{meta.get('source', '?')}{page}" + (f" — {heading}" if heading else "")


def sources_section(answer: Answer) -> str:
    """The cited chunks, or, when nothing was cited (no answer, not covered), the closest chunks."""
    if answer.cited:
        lines = [f"- [{n}] {_where(answer.retrieved[n - 1].metadata)}" for n in answer.cited]
        return SOURCES_MARKER + "\n" + "\n".join(lines)
    if answer.retrieved:
        lines = [f"- [{n}] {_where(h.metadata)}" for n, h in enumerate(answer.retrieved, start=1)]
        return RELATED_MARKER + "\n" + "\n".join(lines)
    return ""


def tail_text(answer: Answer) -> str:
    """What follows the streamed text: the system's notice (LLM down, not covered…) and the sources."""
    notice = f"\n\n_{answer.notice}_" if answer.notice else ""
    return notice + sources_section(answer)


def vimath_extra(answer: Answer, conversation_id: str, exchange_id: int | None) -> dict[str, Any]:
    """The `vimath` field: the validated citations, every retrieved chunk, the status and where the log keeps it."""
    retrieved = [Chunk.of(h, rank).model_dump() for rank, h in enumerate(answer.retrieved, start=1)]
    return {
        "status": answer.status,
        "notice": answer.notice,
        "text": answer.text,  # the answer without citation markers that pointed at no chunk
        "citations": [{"number": n, **retrieved[n - 1]} for n in answer.cited],
        "invalid_citations": answer.invalid_citations,
        "retrieved": retrieved,
        "standalone_question": answer.standalone_question,
        "conversation_id": conversation_id,
        "exchange_id": exchange_id,
    }


class CompletionIds:
    """The id, creation time and model name shared by every chunk of one completion."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": usage}

    def completion(self, content: str, usage: dict[str, int], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                             "logprobs": None}], "usage": usage, **extra}


def usage(answer: Answer, completion_tokens: int) -> dict[str, int]:
    """Token counts as far as they are known: Ollama reports the prompt's; each streamed delta is about one token."""
    prompt = answer.prompt_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}
