"""Request and response bodies (pydantic), which FastAPI validates and documents at /docs.

Text that comes in is NFC-normalised here, at the boundary, so that composed and decomposed Vietnamese search alike.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rag.index import Hit
from rag.normalize import nfc

# Ranking scores that rankers put in a hit's metadata beside the dense cosine.
_SCORE_KEYS = ("rrf", "bm25")


def clean(text: str) -> str:
    return nfc(text).strip()


class FiltersIn(BaseModel):
    """Only chunks matching every given field."""

    model_config = ConfigDict(extra="forbid")
    source: str | None = Field(None, description="source file as ingested, e.g. lop12/08-tich-phan.md")
    lesson: str | None = Field(None, description="lesson title")
    grade: int | None = Field(None, ge=1, le=12, description="the student's grade: that grade's material and material without a grade")
    book: str | None = Field(None, description="the student's textbook series, e.g. \"Cánh diều\" (any case; kntt, ctst "
                             "abbreviate): that book's material and material without a book")

    @field_validator("source", "lesson", "book")
    @classmethod
    def _nfc(cls, value: str | None) -> str | None:
        return clean(value) or None if value is not None else None


class QuestionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(..., min_length=1, description="the student's question (Vietnamese)")
    k: int | None = Field(None, ge=1, le=50, description="how many chunks to retrieve (default: top_k setting)")
    filters: FiltersIn = Field(default_factory=FiltersIn)

    @field_validator("question")
    @classmethod
    def _question(cls, value: str) -> str:
        value = clean(value)
        if not value:
            raise ValueError("the question is empty")
        return value


class SearchRequest(QuestionIn):
    pass


class Chunk(BaseModel):
    """A retrieved chunk: where it comes from and how it scored."""

    rank: int
    id: str
    score: float = Field(..., description="cosine similarity of the chunk to the question (whatever ranked it)")
    scores: dict[str, float] = Field(default_factory=dict, description="the ranker's own scores: rrf, bm25")
    source: str
    heading_path: str
    lesson: str | None = None
    page: int | None = None
    text: str
    metadata: dict[str, Any]

    @classmethod
    def of(cls, hit: Hit, rank: int) -> "Chunk":
        meta = hit.metadata
        page = meta.get("page")
        return cls(rank=rank, id=hit.id, score=round(hit.score, 6), text=hit.text, metadata={**meta, "id": hit.id},
                   scores={k: float(meta[k]) for k in _SCORE_KEYS if isinstance(meta.get(k), (int, float))},
                   source=str(meta.get("source", "")), heading_path=str(meta.get("heading_path", "")),
                   lesson=str(meta["lesson"]) if meta.get("lesson") else None,
                   page=int(page) if isinstance(page, (int, float)) or (isinstance(page, str) and page.isdigit()) else None)


class SearchResponse(BaseModel):
    query: str
    k: int
    results: list[Chunk]


class TurnIn(BaseModel):
    """An earlier exchange of the conversation."""

    model_config = ConfigDict(extra="forbid")
    question: str
    answer: str

    @field_validator("question", "answer")
    @classmethod
    def _nfc(cls, value: str) -> str:
        return clean(value)


class AskRequest(QuestionIn):
    history: list[TurnIn] = Field(default_factory=list, description="earlier exchanges, oldest first")
    stream: bool = Field(False, description="Server-Sent Events: retrieval, then delta…, then done")
    conversation_id: str | None = Field(None, max_length=64, pattern=r"^[\w.:-]+$",
                                        description="groups exchanges in the teacher's log; a new one when absent")


class AskResponse(BaseModel):
    """The answer record of `python -m rag ask --json`, plus where the log keeps it."""

    model_config = ConfigDict(extra="allow")
    question: str
    standalone_question: str
    status: str
    text: str
    notice: str
    retrieved: list[dict[str, Any]]
    cited: list[int]
    cited_ids: list[str]
    invalid_citations: list[int]
    conversation_id: str
    exchange_id: int | None


# --- OpenAI-compatible -----------------------------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content if p.type == "text" and p.text)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request; fields the tutor does not use (temperature, tools…) are accepted and ignored:
    the teacher's settings decide how the tutor answers."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=200)
