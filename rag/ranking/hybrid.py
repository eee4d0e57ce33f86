"""Hybrid retrieval: reciprocal rank fusion of the dense and the BM25 rankings."""
from __future__ import annotations

from collections.abc import Sequence
from itertools import zip_longest
from typing import Any

from rag.embeddings import E5Embeddings
from rag.index import Hit, LessonIndex
from rag.ranking.base import QueryVectorCache
from rag.ranking.bm25 import BM25Ranker
from rag.ranking.dense import DenseRanker

RRF_K = 60


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


def build(index: LessonIndex, embeddings: E5Embeddings) -> HybridRanker:
    shared = QueryVectorCache.wrap(embeddings)  # the two rankers then embed each question once
    return HybridRanker(DenseRanker(index, shared), BM25Ranker(index, shared))
