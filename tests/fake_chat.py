"""langchain-core's fake chat model behind the Tutor's `chat_factory` seam: prompt, citation and budget tests need
no server (transport and failure tests keep the Ollama- and OpenAI-protocol servers)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk

from rag.settings import Settings


class RecordingFakeChat(GenericFakeChatModel):
    """Replies in turn from `messages` (streamed word by word, as GenericFakeChatModel does) and records each prompt."""

    prompts: list[list[BaseMessage]] = []
    num_ctx: int = 0

    def _stream(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        self.prompts.append(list(messages))
        yield from super()._stream(messages, *args, **kwargs)


class FakeChats:
    """A `chat_factory`: one recording fake per (num_ctx, num_predict), all drawing on one list of replies."""

    def __init__(self, *replies: str) -> None:
        self.replies = iter([AIMessage(r) for r in replies])
        self.made: list[RecordingFakeChat] = []

    def __call__(self, settings: Settings, num_ctx: int, num_predict: int | None = None) -> RecordingFakeChat:
        model = RecordingFakeChat(messages=self.replies, prompts=[], num_ctx=num_ctx)
        self.made.append(model)
        return model

    @property
    def prompts(self) -> list[list[BaseMessage]]:
        return [p for model in self.made for p in model.prompts]
