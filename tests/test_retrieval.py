"""Retrieval: cosine scores from a real Chroma collection, threshold, metadata filters, near-duplicate removal."""
from __future__ import annotations

import numpy as np
import pytest

from rag.embeddings import EmbedderIdentity
from rag.index import Hit, LessonIndex
from rag.ranking.dense import DenseRanker
from rag.retrieval import Filters, LessonRetriever, Searcher, dedupe
from rag.settings import Settings

IDENTITY = EmbedderIdentity(spec="test", name="unit-vectors", revision="1", dimension=3)


class FixedQuery:
    """Embeddings stand-in whose query vector is set by the test (vectors here are hand-made)."""

    identity = IDENTITY

    def __init__(self, vector: list[float]) -> None:
        self.vector = vector

    def embed_query(self, text: str) -> list[float]:
        return self.vector


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def index(tmp_path) -> LessonIndex:
    idx = LessonIndex.open(Settings(index_dir=tmp_path / "ix"), IDENTITY)
    rows = [
        ("a", unit(1, 0, 0), "Định nghĩa hàm số đồng biến trên khoảng K.", "a.md", "Bài 1", "h1"),
        ("a-copy", unit(1, 0.01, 0), "Định nghĩa hàm số đồng biến trên khoảng K.", "copy/a.md", "Bài 1", "h1"),
        ("b", unit(1, 1, 0), "Định lí về dấu của đạo hàm và tính đơn điệu.", "a.md", "Bài 1", "h2"),
        ("c", unit(0, 1, 1), "Công thức nguyên hàm của lũy thừa.", "c.md", "Bài 7", "h3"),
    ]
    idx.upsert([r[0] for r in rows], np.vstack([r[1] for r in rows]), [r[2] for r in rows],
               [{"source": r[3], "lesson": r[4], "chunk_hash": r[5], "file_hash": "f", "file_chunks": 1} for r in rows])
    return idx


def test_scores_are_cosine_and_descending(index):
    hits = Searcher(DenseRanker(index, FixedQuery([1.0, 0.0, 0.0]))).search("x", 3)
    assert [h.id for h in hits] == ["a", "b", "c"]  # "a-copy" is the same chunk re-ingested: shown once
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[1].score == pytest.approx(float(unit(1, 1, 0)[0]), abs=1e-4)
    assert hits[2].score == pytest.approx(0.0, abs=1e-4)


def test_threshold_and_filters(index):
    searcher = Searcher(DenseRanker(index, FixedQuery([1.0, 0.0, 0.0])))
    assert [h.id for h in searcher.search("x", 5, min_score=0.5)] == ["a", "b"]
    assert [h.id for h in searcher.search("x", 5, filters=Filters(source="c.md"))] == ["c"]
    assert [h.id for h in searcher.search("x", 5, filters=Filters(source="a.md", lesson="Bài 1"))] == ["a", "b"]
    assert searcher.search("x", 5, filters=Filters(lesson="Bài 99")) == []
    assert searcher.search("   ", 5) == []


def test_near_duplicates_by_overlap():
    long = "Cho hàm số y = f(x) có đạo hàm trên khoảng K thì hàm số đồng biến khi đạo hàm dương"
    hits = [Hit("1", long, {"chunk_hash": "x"}, 0.9), Hit("2", long + " trên K.", {"chunk_hash": "y"}, 0.8),
            Hit("3", "Một đoạn khác hẳn về tích phân", {"chunk_hash": "z"}, 0.7)]
    assert [h.id for h in dedupe(hits)] == ["1", "3"]


def test_langchain_retriever_returns_documents_with_scores(index):
    retriever = LessonRetriever(searcher=Searcher(DenseRanker(index, FixedQuery([0.0, 1.0, 1.0]))), k=2)
    docs = retriever.invoke("nguyên hàm")
    assert [d.metadata["id"] for d in docs] == ["c", "b"]
    assert docs[0].metadata["score"] == pytest.approx(1.0, abs=1e-4) and docs[0].metadata["source"] == "c.md"
