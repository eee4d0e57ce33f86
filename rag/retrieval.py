"""Retrieval over the lesson index: top-k with cosine scores, a score threshold, filters and near-duplicate removal."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rag.grades import GRADES
from rag.index import Hit, LessonIndex
from rag.normalize import nfc
from rag.ranking.base import Ranker
from rag.schema import BOOK, CHUNK_HASH, CHUNK_INDEX, FILE_HASH, GRADE, HAS_BOOK, LESSON, SOURCE

NEAR_DUPLICATE_JACCARD = 0.9
_OVERFETCH = 3  # candidates per wanted result, so that duplicates removed still leave k


@dataclass(frozen=True)
class Filters:
    """Optional metadata filters. `grade` keeps that grade's material and the material that has no grade; `book`
    (a book as stored: rag.books.resolve_book finds it from what a student typed) likewise."""

    source: str | None = None
    lesson: str | None = None
    grade: int | None = None
    book: str | None = None

    def __post_init__(self) -> None:
        if self.grade is not None and self.grade not in GRADES:
            raise ValueError(f"grade must be one of {GRADES.start}–{GRADES.stop - 1}, not {self.grade!r}")
        if self.book is not None:  # stored NFC: a decomposed name must find the same chunks; "" is no filter
            object.__setattr__(self, "book", nfc(self.book).strip() or None)

    def where(self) -> dict[str, Any] | None:
        clauses: list[dict[str, Any]] = [{key: value} for key, value in ((SOURCE, self.source), (LESSON, self.lesson)) if value]
        if self.grade is not None:
            # "$nin" of every other grade, because Chroma has no "field absent" test but $nin admits chunks without
            # the field: this is "grade == N or no grade" (tests/test_grades.py checks it on a real index)
            clauses.append({GRADE: {"$nin": [g for g in GRADES if g != self.grade]}})
        if self.book is not None:
            # books are free text, so no "$nin" of the others: chunks with a book also carry has_book = True, and
            # "$ne" True admits the chunks without the field (Chroma 1.5, checked in tests/test_books.py), so this
            # is "book == B or no book", whatever the index holds and through every path that filters by `where`
            clauses.append({"$or": [{BOOK: self.book}, {HAS_BOOK: {"$ne": True}}]})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+|[^\w\s]", nfc(text).lower()))


def near_duplicate(a: Hit, b: Hit) -> bool:
    """Identical chunks (e.g. a re-ingested copy) or chunks that overlap almost entirely."""
    return _near_duplicate(a, b, _words(a.text), _words(b.text))


def _near_duplicate(a: Hit, b: Hit, wa: set[str], wb: set[str]) -> bool:
    if a.metadata.get(CHUNK_HASH) and a.metadata.get(CHUNK_HASH) == b.metadata.get(CHUNK_HASH):
        return True
    if not wa or not wb:
        return wa == wb
    return len(wa & wb) / len(wa | wb) >= NEAR_DUPLICATE_JACCARD or wa <= wb or wb <= wa


def dedupe(hits: list[Hit]) -> list[Hit]:
    """Hits in order, without those that nearly duplicate a better one (each hit's words read once: comparing every
    pair re-read them and was most of a question's search time, ~14 of 17 ms for 15 hits)."""
    kept: list[tuple[Hit, set[str]]] = []
    for hit in hits:
        words = _words(hit.text)
        if not any(_near_duplicate(hit, other, words, other_words) for other, other_words in kept):
            kept.append((hit, words))
    return [hit for hit, _ in kept]


class Searcher:
    """The one retrieval path used by the CLI, the chat and the evaluation."""

    def __init__(self, ranker: Ranker) -> None:
        self.ranker = ranker

    def search(self, query: str, k: int, *, min_score: float | None = None, filters: Filters = Filters()) -> list[Hit]:
        query = nfc(query).strip()
        if not query:
            return []
        hits = dedupe(self.ranker.rank(query, k * _OVERFETCH, filters.where()))
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score]
        return hits[:k]

    @property
    def index(self) -> LessonIndex | None:
        """The index the ranker searches (None for a ranker without one, e.g. a test's)."""
        return getattr(self.ranker, "index", None) or getattr(getattr(self.ranker, "dense", None), "index", None)

    def books(self) -> list[str]:
        """The books of the index's material, for a book picker and to resolve a book's name."""
        index = self.index
        return index.books() if index is not None else []

    def neighbours(self, hit: Hit) -> list[Hit]:
        """The chunks just before and after a hit in its file, when in the same section (context for the LLM)."""
        index = self.index
        if index is None or hit.chunk_index is None:
            return []
        where = {"$and": [{SOURCE: hit.source}, {CHUNK_INDEX: {"$in": [hit.chunk_index - 1, hit.chunk_index + 1]}}]}
        return [h for h in index.chunks(where)
                if h.heading_path == hit.heading_path and h.metadata.get(FILE_HASH) == hit.metadata.get(FILE_HASH)]


if TYPE_CHECKING:
    from langchain_core.documents import Document


def hit_to_document(hit: Hit) -> Document:
    from langchain_core.documents import Document

    return Document(page_content=hit.text, id=hit.id, metadata={**hit.metadata, "score": hit.score, "id": hit.id})


def _lesson_retriever() -> type:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict

    class LessonRetriever(BaseRetriever):
        """LangChain retriever over the lesson index (documents carry `score` and `id` in metadata)."""

        model_config = ConfigDict(arbitrary_types_allowed=True)

        searcher: Searcher
        k: int = 5
        min_score: float | None = None
        filters: Filters = Filters()

        def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
            hits = self.searcher.search(query, self.k, min_score=self.min_score, filters=self.filters)
            return [hit_to_document(h) for h in hits]

    LessonRetriever.__module__ = __name__
    return LessonRetriever


def __getattr__(name: str) -> Any:
    """`LessonRetriever` is defined on first use: langchain_core.retrievers imports LangSmith's tracing (about a
    second on a cold start here), which a search through `Searcher` never needs."""
    if name == "LessonRetriever":
        globals()[name] = retriever = _lesson_retriever()
        return retriever
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
