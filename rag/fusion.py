"""Hybrid retrieval: reciprocal rank fusion of the dense and the BM25 rankings."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from itertools import zip_longest
from typing import Any

from rag.embeddings import E5Embeddings
from rag.index import Hit
from rag.lexical import BM25Ranker
from rag.retrieval import DenseRanker

RRF_K = 60
_QUERY_CACHE = 64


class QueryVectorCache(E5Embeddings):
    """The same embedder, remembering recent query vectors, so rankers that share it embed a question once."""

    def __init__(self, inner: E5Embeddings, size: int = _QUERY_CACHE) -> None:
        super().__init__(inner.backend, batch_size=inner.batch_size)
        self.size = size
        self._vectors: OrderedDict[str, list[float]] = OrderedDict()

    @classmethod
    def wrap(cls, embeddings: E5Embeddings) -> QueryVectorCache:
        return embeddings if isinstance(embeddings, QueryVectorCache) else cls(embeddings)

    def embed_query(self, text: str) -> list[float]:
        if text in self._vectors:
            self._vectors.move_to_end(text)
            return self._vectors[text]
        vector = super().embed_query(text)
        self._vectors[text] = vector
        while len(self._vectors) > self.size:
            self._vectors.popitem(last=False)
        return vector


def _round_robin(rankings: Sequence[Sequence[str]]) -> list[str]:
    """Items in order of first appearance when the rankings are read one rank at a time, first ranking first."""
    seen: dict[str, None] = {}
    for row in zip_longest(*rankings):
        for item in row:
            if item is not None:
                seen.setdefault(item, None)
    return list(seen)


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Items by Σ 1/(k + rank) over the rankings; ties go to the item that appears first reading them round-robin."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(dict.fromkeys(ranking), start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    order = {item: n for n, item in enumerate(_round_robin(rankings))}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


class HybridRanker:
    """RRF of DenseRanker and BM25Ranker; `score` stays the dense cosine, metadata gets "rrf" (and "bm25" if found)."""

    def __init__(self, dense: DenseRanker, lexical: BM25Ranker, k: int = RRF_K) -> None:
        self.dense = dense
        self.lexical = lexical
        self.k = k

    def rank(self, query: str, k: int, where: dict[str, Any] | None) -> list[Hit]:
        dense_hits = self.dense.rank(query, k, where)
        lexical_top = self.lexical.top(query, k, where)
        fused = reciprocal_rank_fusion([[h.id for h in dense_hits], [i for i, _ in lexical_top]], self.k)[:k]
        bm25 = dict(lexical_top)
        by_id = {h.id: h for h in dense_hits}
        only_lexical = [(i, bm25[i]) for i, _ in fused if i not in by_id]
        by_id.update({h.id: h for h in self.lexical.hits(query, only_lexical)})
        return [_annotated(by_id[i], rrf, bm25.get(i)) for i, rrf in fused if i in by_id]


def _annotated(hit: Hit, rrf: float, bm25: float | None) -> Hit:
    extra: dict[str, Any] = {"rrf": rrf} if bm25 is None else {"rrf": rrf, "bm25": bm25}
    return Hit(hit.id, hit.text, {**hit.metadata, **extra}, hit.score)
