"""Dense retrieval: cosine similarity between the E5 query vector and the stored passage vectors."""
from __future__ import annotations

from typing import Any

from rag.embeddings import E5Embeddings
from rag.index import Hit, LessonIndex


class DenseRanker:
    """Cosine similarity between the E5 query vector and the stored passage vectors."""

    def __init__(self, index: LessonIndex, embeddings: E5Embeddings) -> None:
        self.index = index
        self.embeddings = embeddings

    def rank(self, query: str, k: int, where: dict[str, Any] | None) -> list[Hit]:
        return self.index.search(self.embeddings.embed_query(query), k, where)


def build(index: LessonIndex, embeddings: E5Embeddings) -> DenseRanker:
    return DenseRanker(index, embeddings)
