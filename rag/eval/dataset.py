"""The evaluation set (docs/eval-format.md): loading, validation, and resolving labels against an index's chunks."""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import product
from pathlib import Path
from typing import Any

from rag.errors import VimathError
from rag.index import LessonIndex, StoredChunk
from rag.normalize import nfc
from rag.schema import HEADING_PATH, SOURCE, split_headings

SPLITS = ("train", "validation", "test")
LABEL_KEYS = {"source", "heading", "span"}
QUESTION_KEYS = {"id", "question", "split", "correct", "related", "type"}


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
        if not isinstance(raw, dict):
            raise ValueError(f"a label must be an object, not {raw!r}")
        unknown = set(raw) - LABEL_KEYS
        if unknown:
            raise ValueError(f"unknown label keys {sorted(unknown)} (labels name files, headings or spans, never chunk ids)")
        source = raw.get("source")
        sources = (source,) if isinstance(source, str) else tuple(source) if isinstance(source, list) else ()
        if source is not None and (not sources or not all(isinstance(s, str) and s.strip() for s in sources)):
            raise ValueError(f"'source' must be a path or a non-empty list of paths: {source!r}")
        heading, span = raw.get("heading"), raw.get("span")
        for name, value in (("heading", heading), ("span", span)):
            if value is not None and (not isinstance(value, str) or not normalized(value)):
                raise ValueError(f"{name!r} must be a non-empty string: {value!r}")
        if heading is not None and not sources:
            raise ValueError("'heading' needs 'source' (the same heading recurs across lessons)")
        if not sources and span is None:
            raise ValueError("a label needs 'source' or 'span'")
        return cls(tuple(nfc(s) for s in sources), nfc(heading) if heading else None, nfc(span) if span else None)

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
    if not isinstance(raw, dict):
        raise ValueError("each line must be a JSON object")
    missing = {"id", "question", "split", "correct"} - set(raw)
    if missing:
        raise ValueError(f"missing fields {sorted(missing)}")
    unknown = set(raw) - QUESTION_KEYS
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    for name in ("id", "question", "split"):
        if not isinstance(raw[name], str) or not raw[name].strip():
            raise ValueError(f"{name!r} must be a non-empty string")
    if raw.get("type") is not None and not isinstance(raw["type"], str):
        raise ValueError("'type' must be a string")
    correct, related = raw["correct"], raw.get("related", [])
    if not isinstance(correct, list) or not correct:
        raise ValueError("'correct' must be a non-empty list of labels")
    if not isinstance(related, list):
        raise ValueError("'related' must be a list of labels")
    return Question(nfc(raw["id"]).strip(), nfc(raw["question"]).strip(), raw["split"].strip(),
                    tuple(Label.parse(x) for x in correct), tuple(Label.parse(x) for x in related), raw.get("type"))


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
