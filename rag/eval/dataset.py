"""The evaluation set (docs/eval-format.md): loading, validation, and resolving labels against an index's chunks."""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import product
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from rag.errors import VimathError
from rag.grades import grade_from_name
from rag.index import LessonIndex, StoredChunk
from rag.normalize import nfc
from rag.schema import HEADING_PATH, SOURCE, split_headings

SPLITS = ("train", "validation", "test")


def _nfc_text(value: str) -> str:
    """NFC, stripped; an empty string is refused."""
    value = nfc(value).strip()
    if not value:
        raise ValueError("must be a non-empty string")
    return value


Text = Annotated[str, AfterValidator(_nfc_text)]


class LabelRecord(BaseModel):
    """A label as written in the JSONL file: which chunks count (docs/eval-format.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Text | list[Text] | None = None
    heading: Text | None = None
    span: Text | None = None

    @model_validator(mode="after")
    def _selects_something(self) -> LabelRecord:
        if self.source == []:
            raise ValueError("'source' must be a path or a non-empty list of paths")
        if self.heading is not None and not self.source:
            raise ValueError("'heading' needs 'source' (the same heading recurs across lessons)")
        if not self.source and self.span is None:
            raise ValueError("a label needs 'source' or 'span'")
        return self


class QuestionRecord(BaseModel):
    """One line of an evaluation file (docs/eval-format.md); also what data/eval/build_splits.py checks."""

    model_config = ConfigDict(extra="forbid")

    id: Text
    question: Text
    split: Text
    correct: list[LabelRecord] = Field(min_length=1)
    related: list[LabelRecord] = []
    type: str | None = None
    grade: Literal[10, 11, 12] | None = None  # the grade whose material answers it
    book: Text | None = None  # the textbook series whose material answers it (rag/books.py), for --book-scope
    style: str | None = None  # how it is written: plain_math, mcq, word_problem, table, no_topic, no_diacritics


def _validated(model: type[_Record], raw: Any) -> _Record:
    """`raw` as `model`, or a ValueError saying, in one line, what is wrong with it."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ValueError("; ".join(_problem(e) for e in exc.errors())) from None


def _problem(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] == "missing":
        return f"missing field {where!r}"
    if error["type"] == "extra_forbidden":
        hint = " (labels name files, headings or spans, never chunk ids)" if error["loc"][-1] in {"id", "chunk_id"} or len(error["loc"]) > 1 else ""
        return f"unknown field {where!r}{hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


_Record = TypeVar("_Record", bound=BaseModel)


class DatasetError(VimathError, ValueError):
    """The evaluation file is malformed; the message names the file, line and problem."""


def normalized(text: str) -> str:
    """NFC with runs of whitespace collapsed to one space: how spans and headings are compared."""
    return " ".join(nfc(text).split())


def split_heading_path(path: str) -> tuple[str, ...]:
    """"Bài 1. … › 2. …" as its normalized titles."""
    return tuple(normalized(h) for h in split_headings(path) if normalized(h))


@dataclass(frozen=True)
class Label:
    """Which chunks count: by file(s), by heading under a file, or by a verbatim span (optionally within files)."""

    sources: tuple[str, ...] = ()
    heading: str | None = None
    span: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> Label:
        """A label from its JSON object (raises ValueError)."""
        record = _validated(LabelRecord, raw)
        sources = (record.source,) if isinstance(record.source, str) else tuple(record.source or ())
        return cls(sources, record.heading, record.span)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.sources:
            out["source"] = self.sources[0] if len(self.sources) == 1 else list(self.sources)
        if self.heading is not None:
            out["heading"] = self.heading
        if self.span is not None:
            out["span"] = self.span
        return out

    def matches(self, chunk: ChunkView) -> bool:
        if self.sources and chunk.source not in self.sources:
            return False
        if self.heading is not None and chunk.headings[: len(self.headings)] != self.headings:
            return False
        return self.span is None or self.normalized_span in chunk.normalized_text

    @cached_property
    def headings(self) -> tuple[str, ...]:
        """The heading label's path, one normalized title per level."""
        return split_heading_path(self.heading or "")

    @cached_property
    def normalized_span(self) -> str:
        return normalized(self.span or "")


@dataclass(frozen=True)
class Question:
    """One evaluation question and its labels."""

    id: str
    question: str
    split: str
    correct: tuple[Label, ...]
    related: tuple[Label, ...] = ()
    type: str | None = None
    grade: int | None = None  # the student's grade: given, else that of the correct labels' folders
    style: str | None = None  # how it is written (STYLES), for the per-style report
    book: str | None = None  # the student's textbook series, NFC, when given


def label_grade(labels: Sequence[Label]) -> int | None:
    """The grade the correct labels' files lie in ("lop10/…" → 10), when they all agree on one."""
    grades = {grade_from_name(part) for label in labels for source in label.sources for part in source.split("/")[:-1]}
    grades.discard(None)
    return grades.pop() if len(grades) == 1 else None


@dataclass(frozen=True)
class ChunkView:
    """A stored chunk with what labels are matched against."""

    id: str
    text: str
    source: str
    heading_path: str
    headings: tuple[str, ...]
    normalized_text: str

    @classmethod
    def of(cls, chunk: StoredChunk) -> ChunkView:
        heading_path = str(chunk.metadata.get(HEADING_PATH, ""))
        return cls(chunk.id, chunk.text, str(chunk.metadata.get(SOURCE, "")), heading_path,
                   split_heading_path(heading_path), normalized(chunk.text))


@dataclass(frozen=True)
class Unmatched:
    """A label that matches no chunk of the index."""

    question_id: str
    role: str  # "correct" or "related"
    label: Label

    def to_json(self) -> dict[str, Any]:
        return {"id": self.question_id, "role": self.role, "label": self.label.to_json()}

    def describe(self) -> str:
        return f"{self.question_id} {self.role}: {json.dumps(self.label.to_json(), ensure_ascii=False)}"


@dataclass(frozen=True)
class ResolvedQuestion:
    """A question with its labels turned into chunk ids of one index."""

    question: Question
    correct: frozenset[str]
    related: frozenset[str]  # hard negatives; a chunk that is also correct counts as correct only
    unmatched: tuple[Unmatched, ...]

    @property
    def scorable(self) -> bool:
        return bool(self.correct)


@dataclass(frozen=True)
class Triplet:
    """(question, a correct chunk, a related chunk) for contrastive fine-tuning."""

    question: str
    positive: str
    negative: str


@dataclass
class EvalSet:
    """Questions resolved against an index, with the chunk texts."""

    questions: list[ResolvedQuestion]
    chunks: dict[str, ChunkView] = field(default_factory=dict)

    @property
    def unmatched(self) -> list[Unmatched]:
        return [u for q in self.questions for u in q.unmatched]

    @property
    def scorable(self) -> list[ResolvedQuestion]:
        return [q for q in self.questions if q.scorable]

    @property
    def unscorable(self) -> list[ResolvedQuestion]:
        """Questions none of whose correct labels match a chunk: they cannot be scored and are reported."""
        return [q for q in self.questions if not q.scorable]

    def text(self, chunk_id: str) -> str:
        return self.chunks[chunk_id].text

    def triplets(self) -> Iterator[Triplet]:
        """Every (question, correct chunk, related chunk) combination, in a stable order."""
        for q in self.questions:
            for pos, neg in product(sorted(q.correct), sorted(q.related)):
                yield Triplet(q.question.question, self.text(pos), self.text(neg))


def parse_question(raw: Any) -> Question:
    """A question from its JSON object (raises ValueError)."""
    record = _validated(QuestionRecord, raw)
    correct = tuple(Label.parse(x.model_dump(exclude_none=True)) for x in record.correct)
    return Question(record.id, record.question, record.split, correct,
                    tuple(Label.parse(x.model_dump(exclude_none=True)) for x in record.related), record.type,
                    record.grade if record.grade is not None else label_grade(correct), record.style, record.book)


def load_questions(path: Path, split: str | None = None) -> list[Question]:
    """Questions of a JSONL file, validated (ids unique), optionally only those of one split."""
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            question = parse_question(json.loads(line))
        except (json.JSONDecodeError, ValueError) as exc:
            raise DatasetError(f"{path}:{number}: {exc}") from exc
        if question.id in seen:
            raise DatasetError(f"{path}:{number}: id {question.id!r} already used on line {seen[question.id]}")
        seen[question.id] = number
        questions.append(question)
    return [q for q in questions if split is None or q.split == split]


def matching(label: Label, chunks: Iterable[ChunkView]) -> frozenset[str]:
    return frozenset(c.id for c in chunks if label.matches(c))


def resolve(questions: Sequence[Question], chunks: Sequence[ChunkView]) -> EvalSet:
    """Each question's labels as chunk ids; labels that match nothing are kept as `unmatched`."""
    resolved: list[ResolvedQuestion] = []
    for q in questions:
        unmatched: list[Unmatched] = []
        ids: dict[str, set[str]] = {"correct": set(), "related": set()}
        for role, labels in (("correct", q.correct), ("related", q.related)):
            for label in labels:
                found = matching(label, chunks)
                ids[role] |= found
                if not found:
                    unmatched.append(Unmatched(q.id, role, label))
        correct = frozenset(ids["correct"])
        resolved.append(ResolvedQuestion(q, correct, frozenset(ids["related"]) - correct, tuple(unmatched)))
    return EvalSet(resolved, {c.id: c for c in chunks})


def index_chunks(index: LessonIndex) -> list[ChunkView]:
    """The index's chunks as labels see them."""
    return [ChunkView.of(c) for c in index.stored_chunks()]


def resolve_against(index: LessonIndex, questions: Sequence[Question]) -> EvalSet:
    """Resolve questions against the chunks an index holds."""
    return resolve(questions, index_chunks(index))
