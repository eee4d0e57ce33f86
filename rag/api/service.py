"""The shared resources behind every request: the index, the embedder, the tutor, the log and the thread pools.

One process serves many requests at once. Ranking is serialised by a lock (the embedder's fast tokenizer raises
"Already borrowed" when two threads use it, and the query-vector cache is a plain dict); it runs on its own pool,
so a search never waits behind a generation, which runs on the generation pool behind the `GenerationGate`.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from rag.answering import ChatFactory, Tutor
from rag.api.errors import ApiError
from rag.api.limits import GenerationGate
from rag.books import BookError, resolve_book
from rag.conversation_log import ConversationLog
from rag.embeddings import E5Embeddings
from rag.index import Hit, IndexMissing, LessonIndex, describe_location, make_client, recorded_identity
from rag.llm import OllamaStatus, ollama_status
from rag.ranking.base import Ranker
from rag.retrieval import Filters, Searcher
from rag.settings import Settings
from rag.workspace import make_ranker, open_index

log = logging.getLogger("rag.api")
T = TypeVar("T")
_LLM_STATUS_TTL_S = 5.0


class LockedRanker:
    """A ranker that ranks for one query at a time."""

    def __init__(self, inner: Ranker) -> None:
        self.inner = inner
        self.lock = threading.Lock()

    def rank(self, query: str, k: int, where: dict[str, Any] | None) -> list[Hit]:
        with self.lock:
            return self.inner.rank(query, k, where)


@dataclass
class TutorService:
    """Everything a request needs, opened once per process."""

    settings: Settings
    searcher: Searcher
    tutor: Tutor
    log: ConversationLog
    index: LessonIndex | None = None
    embeddings: E5Embeddings | None = None
    ranker: LockedRanker = field(init=False)
    gate: GenerationGate = field(init=False)
    retrieval_pool: ThreadPoolExecutor = field(init=False)
    generation_pool: ThreadPoolExecutor = field(init=False)
    log_pool: ThreadPoolExecutor = field(init=False)
    _llm_status: tuple[float, OllamaStatus] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        s = self.settings
        assert isinstance(self.searcher.ranker, LockedRanker), "build the service with open() or over()"
        self.ranker = self.searcher.ranker
        self.gate = GenerationGate(s.api_generation_slots, s.api_generation_queue, s.api_queue_timeout_s)
        self.retrieval_pool = ThreadPoolExecutor(s.api_retrieval_workers, thread_name_prefix="vimath-retrieval")
        # One thread per slot: the gate never lets more generations start than there are threads.
        self.generation_pool = ThreadPoolExecutor(s.api_generation_slots, thread_name_prefix="vimath-generation")
        self.log_pool = ThreadPoolExecutor(2, thread_name_prefix="vimath-log")

    @classmethod
    def open(cls, settings: Settings, chat_factory: ChatFactory | None = None) -> "TutorService":
        """Open the index (embedded or on a Chroma server), its embedder and the log, or raise a clear error."""
        # Checked first so that a missing index is reported without loading an embedder for nothing.
        if recorded_identity(make_client(settings), settings.collection) is None:
            raise IndexMissing(f"No index at {describe_location(settings)}. Build it first: python -m ingest data/lessons")
        index, embeddings = open_index(settings, create=False, announce=False)
        searcher = Searcher(LockedRanker(make_ranker(settings, index, embeddings)))
        return cls(settings, searcher, Tutor(searcher, settings, chat_factory), ConversationLog(settings.database_url),
                   index, embeddings)

    @classmethod
    def over(cls, settings: Settings, ranker: Ranker, log: ConversationLog,
             chat_factory: ChatFactory | None = None) -> "TutorService":
        """A service over any ranker (tests, other stores)."""
        searcher = Searcher(LockedRanker(ranker))
        return cls(settings, searcher, Tutor(searcher, settings, chat_factory), log)

    async def in_pool(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def scope(self, filters: dict[str, Any]) -> Filters:
        """The request's filters (FiltersIn as a dict), its book resolved against the index's books (any case, or a
        series' abbreviation); an unknown book is a 422 that lists the books the index has."""
        book, index = filters.get("book"), self.index if self.index is not None else Searcher(self.ranker.inner).index
        if book is not None and index is not None:  # over a bare ranker there is no list to check it against
            with self.ranker.lock:  # the same Chroma client the rankers use
                books = index.books()
            try:
                filters = {**filters, "book": resolve_book(book, books)}
            except BookError as exc:
                raise ApiError(422, "unknown_book", str(exc)) from None
        return Filters(**filters)

    async def search(self, query: str, k: int, filters: Filters) -> list[Hit]:
        return await self.in_pool(self.retrieval_pool, lambda: self.searcher.search(query, k, filters=filters))

    def llm_status(self) -> OllamaStatus:
        """Whether the LLM answers, asked at most every few seconds (readiness probes come often)."""
        cached = self._llm_status
        if cached is None or time.monotonic() - cached[0] > _LLM_STATUS_TTL_S:
            cached = (time.monotonic(), ollama_status(self.settings))
            self._llm_status = cached
        return cached[1]

    def index_size(self) -> int | None:
        """How many chunks the index holds (None when the service was built over a bare ranker)."""
        if self.index is None:
            return None
        with self.ranker.lock:  # the same Chroma client the rankers use
            return self.index.count()

    def close(self) -> None:
        for pool in (self.retrieval_pool, self.generation_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        self.log_pool.shutdown(wait=True)  # exchanges still being written are kept
        self.log.close()
