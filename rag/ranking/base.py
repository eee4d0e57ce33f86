"""What every ranker is, and the query-vector cache that lets rankers sharing an embedder embed a question once."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Protocol

from rag.embeddings import E5Embeddings
from rag.index import Hit

_QUERY_CACHE = 64


class Ranker(Protocol):
    """Anything that ranks chunks for a query (dense, BM25, hybrid)."""

    def rank(self, query: str, k: int, where: dict[str, Any] | None) -> list[Hit]: ...


class QueryVectorCache(E5Embeddings):
    """The same embedder, remembering recent query vectors, so rankers that share it embed a question once."""

    def __init__(self, inner: E5Embeddings, size: int = _QUERY_CACHE) -> None:
        super().__init__(inner.backend, batch_size=inner.batch_size)
        self.size = size
        self._vectors: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()  # one searcher serves many threads (the app's sessions, the API's workers)

    @classmethod
    def wrap(cls, embeddings: E5Embeddings) -> QueryVectorCache:
        return embeddings if isinstance(embeddings, QueryVectorCache) else cls(embeddings)

    def cached(self) -> int:
        """How many query vectors are remembered now."""
        with self._lock:
            return len(self._vectors)

    def embed_query(self, text: str) -> list[float]:
        with self._lock:
            if text in self._vectors:
                self._vectors.move_to_end(text)
                return self._vectors[text]
        vector = super().embed_query(text)  # outside the lock: threads embed different questions at once
        with self._lock:
            self._vectors[text] = vector
            while len(self._vectors) > self.size:
                self._vectors.popitem(last=False)
        return vector
