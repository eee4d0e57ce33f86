"""Reciprocal rank fusion on constructed rankings; BM25 with pyvi over the index's chunks; hybrid keeps cosine scores."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from word_backend import WordBackend

from rag.embeddings import E5Embeddings, Role
from rag.index import Hit, LessonIndex, StoredChunk
from rag.ranking.base import QueryVectorCache
from rag.ranking.bm25 import BM25Ranker, LexicalIndex, analyze, strip_diacritics
from rag.ranking.dense import DenseRanker
from rag.ranking.hybrid import HybridRanker, reciprocal_rank_fusion
from rag.retrieval import Searcher
from rag.settings import load_settings

CHUNKS = {
    "ham": "Bài 1. Hàm số › 1. Đạo hàm\n\nĐạo hàm của hàm hợp: $(u(v(x)))' = u'(v(x)) \\cdot v'(x)$.",
    "tich": "Bài 2. Tích phân › 2. Phương pháp\n\nCông thức tích phân từng phần: $\\int_a^b u\\,dv = uv\\big|_a^b - \\int_a^b v\\,du$.",
    "csc": "Bài 3. Dãy số › 1. Cấp số cộng\n\nCấp số cộng có số hạng tổng quát $u_n = u_1 + (n-1)d$ với công sai $d$.",
    "xs": "Bài 4. Xác suất › 1. Định nghĩa\n\nXác suất của biến cố $A$ là $P(A) = \\frac{n(A)}{n(\\Omega)}$.",
}


def test_rrf_scores_and_order() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d"]], k=60)
    assert [item for item, _ in fused] == ["b", "a", "d", "c"]
    scores = dict(fused)
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["a"] == pytest.approx(1 / 61)
    assert scores["d"] == pytest.approx(1 / 62)  # only in the second list: one term
    assert scores["c"] == pytest.approx(1 / 63)


def test_rrf_ties_go_to_the_first_appearance_round_robin() -> None:
    assert [i for i, _ in reciprocal_rank_fusion([["x"], ["y"]])] == ["x", "y"]
    assert [i for i, _ in reciprocal_rank_fusion([["y"], ["x"]])] == ["y", "x"]
    # a and b both at ranks 1 and 2: equal scores, a appears first
    fused = reciprocal_rank_fusion([["a", "b"], ["b", "a"]])
    assert fused[0][1] == fused[1][1] and [i for i, _ in fused] == ["a", "b"]


def test_rrf_ignores_repeats_within_one_list_and_empty_lists() -> None:
    assert dict(reciprocal_rank_fusion([["a", "a", "b"], []])) == pytest.approx({"a": 1 / 61, "b": 1 / 62})


def test_analyzer_segments_words_and_folds_diacritics() -> None:
    terms = analyze("Đạo hàm của hàm hợp")
    assert "đạo_hàm" in terms and {"dao", "ham", "hop"} <= set(terms)
    assert strip_diacritics("Đường thẳng") == "Duong thang"


def lexical() -> LexicalIndex:
    chunks = [StoredChunk(i, t, {"chunk_hash": i}) for i, t in CHUNKS.items()]
    return LexicalIndex.build(chunks, "key")


@pytest.mark.parametrize(("query", "expected"), [
    ("công thức tích phân từng phần", "tich"),
    ("cong thuc tich phan tung phan", "tich"),  # typed without diacritics
    ("số hạng tổng quát của cấp số cộng", "csc"),
    ("đạo hàm hàm hợp", "ham"),
])
def test_bm25_finds_the_obvious_lexical_match(query: str, expected: str) -> None:
    top = lexical().top(query, 3)
    assert top[0][0] == expected and top[0][1] > 0


def test_bm25_returns_nothing_without_shared_words() -> None:
    assert lexical().top("zzz qqq", 3) == []


def test_bm25_over_no_terms_at_all() -> None:
    assert LexicalIndex.build([], "empty").top("hàm số", 3) == []
    assert LexicalIndex.build([StoredChunk("p", "$$ $$", {})], "punct").top("hàm số", 3) == []


@pytest.fixture
def index(tmp_path: Path) -> tuple[LessonIndex, E5Embeddings]:
    embeddings = E5Embeddings(WordBackend())
    idx = LessonIndex.open(load_settings(index_dir=tmp_path / "idx", collection="lessons"), embeddings.identity)
    ids = list(CHUNKS)
    metas = [{"source": f"{i}.md", "heading_path": CHUNKS[i].split("\n")[0], "chunk_hash": f"h-{i}"} for i in ids]
    idx.upsert(ids, embeddings.encode([CHUNKS[i] for i in ids], "passage"), [CHUNKS[i] for i in ids], metas)
    return idx, embeddings


def cosine(embeddings: E5Embeddings, query: str, text: str) -> float:
    q, p = embeddings.encode([query], "query")[0], embeddings.encode([text], "passage")[0]
    return float(q @ p / (np.linalg.norm(q) * np.linalg.norm(p)))


def test_bm25_ranker_scores_hits_by_dense_cosine(index: tuple[LessonIndex, E5Embeddings]) -> None:
    idx, embeddings = index
    hits = BM25Ranker(idx, embeddings).rank("tích phân từng phần", 2, None)
    assert hits[0].id == "tich"
    assert hits[0].score == pytest.approx(cosine(embeddings, "tích phân từng phần", CHUNKS["tich"]), abs=1e-5)
    assert hits[0].metadata["bm25"] > 0 and hits[0].metadata["source"] == "tich.md"


def test_bm25_ranker_applies_filters(index: tuple[LessonIndex, E5Embeddings]) -> None:
    idx, embeddings = index
    hits = BM25Ranker(idx, embeddings).rank("công thức tích phân, cấp số cộng", 5, {"source": "csc.md"})
    assert [h.id for h in hits] == ["csc"]


def test_bm25_follows_the_index_after_an_ingest(index: tuple[LessonIndex, E5Embeddings], monkeypatch: pytest.MonkeyPatch) -> None:
    import rag.ranking.bm25

    monkeypatch.setattr(rag.ranking.bm25, "FRESHNESS_S", 0.0)  # check on every question, as after FRESHNESS_S seconds
    idx, embeddings = index
    ranker = BM25Ranker(idx, embeddings)
    assert ranker.rank("lượng giác", 3, None) == []
    text = "Bài 5. Lượng giác › 1. Công thức\n\nCông thức lượng giác cơ bản: $\\sin^2 x + \\cos^2 x = 1$."
    idx.upsert(["lg"], embeddings.encode([text], "passage"), [text], [{"source": "lg.md", "chunk_hash": "h-lg"}])
    assert [h.id for h in ranker.rank("lượng giác", 3, None)] == ["lg"]
    idx.delete_ids(["lg"])
    assert ranker.rank("lượng giác", 3, None) == []


class StubDense:
    """A dense ranker with a fixed answer."""

    def __init__(self, hits: list[Hit]) -> None:
        self.hits = hits

    def rank(self, query: str, k: int, where: dict[str, Any] | None) -> list[Hit]:
        return self.hits[:k]


def test_hybrid_fuses_and_keeps_the_dense_cosine(index: tuple[LessonIndex, E5Embeddings]) -> None:
    idx, embeddings = index
    query = "công thức tích phân từng phần"
    dense = StubDense([Hit("xs", CHUNKS["xs"], {"source": "xs.md"}, 0.5), Hit("tich", CHUNKS["tich"], {"source": "tich.md"}, 0.4)])
    hybrid = HybridRanker(dense, BM25Ranker(idx, embeddings))  # type: ignore[arg-type]
    hits = hybrid.rank(query, 3, None)
    by_id = {h.id: h for h in hits}
    assert hits[0].id == "tich"  # second in dense, first in BM25
    assert by_id["tich"].score == 0.4 and by_id["xs"].score == 0.5  # dense hits keep their cosine
    assert by_id["tich"].metadata["rrf"] == pytest.approx(1 / 62 + 1 / 61) and "bm25" in by_id["tich"].metadata
    only_bm25 = [h for h in hits if h.id not in {"xs", "tich"}]
    for hit in only_bm25:  # came from BM25 alone: cosine computed from the stored embedding
        assert hit.score == pytest.approx(cosine(embeddings, query, CHUNKS[hit.id]), abs=1e-5)


def test_hybrid_embeds_each_question_once(index: tuple[LessonIndex, E5Embeddings]) -> None:
    idx, embeddings = index
    calls: list[str] = []
    original = embeddings.encode

    def counting(texts: Sequence[str], role: Role) -> np.ndarray:
        calls.extend(role for _ in texts)
        return original(texts, role)

    shared = QueryVectorCache.wrap(embeddings)
    shared.encode = counting  # type: ignore[method-assign]
    searcher = Searcher(HybridRanker(DenseRanker(idx, shared), BM25Ranker(idx, shared)))
    assert searcher.search("xác suất của biến cố, cấp số cộng", 4)
    assert calls.count("query") == 1
