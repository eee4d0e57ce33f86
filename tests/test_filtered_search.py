"""A filtered search (the student's grade) answered from an unfiltered over-fetch and the remembered ids the filter
admits: the same chunks as Chroma's own filtered query, fresh after every write; BM25 filtered alike; every id read."""
from __future__ import annotations

import numpy as np
import pytest

import rag.index as index_module
from rag.embeddings import EmbedderIdentity
from rag.index import LessonIndex
from rag.ranking.bm25 import LexicalIndex
from rag.ranking.lexical_store import BM25Matrix
from rag.retrieval import Filters
from rag.settings import Settings

IDENTITY = EmbedderIdentity(spec="test", name="random-vectors", revision="1", dimension=8)


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.normal(size=(n, IDENTITY.dimension)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def meta(i: int, grade: int | None) -> dict:
    return {"source": f"f{i % 7}.md", "lesson": "Bài", "chunk_hash": f"h{i}", "file_hash": "f", "file_chunks": 1,
            **({"grade": grade} if grade is not None else {})}


@pytest.fixture
def graded(tmp_path) -> LessonIndex:
    """300 chunks: grades 10 and 11 common, grade 12 only three chunks, some without a grade."""
    index = LessonIndex.open(Settings(index_dir=tmp_path / "ix"), IDENTITY)
    rng = np.random.default_rng(7)
    grades = [12 if i in (5, 150, 299) else None if i % 9 == 0 else 10 + i % 2 for i in range(300)]
    index.upsert([f"c{i}" for i in range(300)], unit_rows(rng, 300), [f"chunk {i}" for i in range(300)],
                 [meta(i, g) for i, g in enumerate(grades)])
    return index


def chroma_filtered(index: LessonIndex, vector: np.ndarray, k: int, where: dict) -> list[str]:
    """What Chroma's own filtered query returns (the reference)."""
    res = index.collection.query(query_embeddings=[vector.tolist()], n_results=k, where=where, include=["distances"])
    return res["ids"][0]


@pytest.mark.parametrize("grade", [10, 11, 12])
@pytest.mark.parametrize("k", [1, 5, 30])
def test_filtered_search_returns_what_chromas_filtered_query_returns(graded, grade: int, k: int) -> None:
    where = Filters(grade=grade).where()
    for vector in unit_rows(np.random.default_rng(grade * 100 + k), 12):
        hits = graded.search(vector, k, where)
        assert [h.id for h in hits] == chroma_filtered(graded, vector, k, where)
        assert all(h.metadata.get("grade") in (grade, None) for h in hits)
        for h in hits:  # scores are the cosine, text and metadata whole, as on the unfiltered path
            stored = graded.collection.get(ids=[h.id], include=["embeddings", "documents"])
            assert h.score == pytest.approx(float(np.dot(stored["embeddings"][0], vector)), abs=1e-4)
            assert h.text == stored["documents"][0]


def test_too_few_in_scope_nearby_falls_back_to_chroma(graded, monkeypatch) -> None:
    """3 chunks of 300 admitted: 8 × k unfiltered neighbours rarely hold k of them, so Chroma's filter answers."""
    where = {"chunk_hash": {"$in": ["h5", "h150", "h299"]}}
    filtered = []
    original = LessonIndex._query
    monkeypatch.setattr(LessonIndex, "_query", staticmethod(lambda c, v, k, w: filtered.append(w) or original(c, v, k, w)))
    for vector in unit_rows(np.random.default_rng(1), 5):
        hits = graded.search(vector, 2, where)
        assert [h.id for h in hits] == chroma_filtered(graded, vector, 2, where)
    assert filtered and all(w == where for w in filtered)
    assert len(graded.search(vector, 10, where)) == 3  # more wanted than admitted: all three


def test_a_chunk_written_after_a_filtered_search_is_found_by_the_next(graded, tmp_path) -> None:
    where = Filters(grade=11).where()
    vector = unit_rows(np.random.default_rng(3), 1)[0]
    graded.search(vector, 5, where)  # remembers grade 11's ids
    graded.upsert(["new-own"], vector[None, :], ["mới"], [meta(1000, 11)])
    assert graded.search(vector, 5, where)[0].id == "new-own"
    # another writer of the same folder (another process's ingest): seen through the generation marker
    other = LessonIndex.open(Settings(index_dir=tmp_path / "ix"), IDENTITY)
    closer = vector + 0.01 * unit_rows(np.random.default_rng(4), 1)[0]
    other.upsert(["new-other"], (closer / np.linalg.norm(closer))[None, :], ["khác"], [meta(1001, 11)])
    other.delete_ids(["new-own"])
    ids = [h.id for h in graded.search(vector, 5, where)]
    assert ids[0] == "new-other" and "new-own" not in ids
    assert ids == chroma_filtered(graded, vector, 5, where)


def test_admitted_ids_are_read_once_per_content(graded, monkeypatch) -> None:
    where = Filters(grade=10).where()
    reads = []
    original = graded._read

    def counting(read):
        reads.append(read)
        return original(read)

    first = graded.ids_where(where)
    monkeypatch.setattr(graded, "_read", counting)
    assert graded.ids_where(where) is first and not reads  # remembered
    graded.delete_ids(["c2"])
    assert "c2" not in graded.ids_where(where) and reads  # an own write: read again


def test_ids_reads_every_page(graded, monkeypatch) -> None:
    monkeypatch.setattr(index_module, "_ID_PAGE", 7)
    ids = graded.ids()
    assert len(ids) == len(set(ids)) == 300


def test_bm25_filter_keeps_exactly_the_admitted_chunks() -> None:
    ids = [f"c{i}" for i in range(40)]
    lexical = LexicalIndex("k", BM25Matrix.build(ids, [["đạo_hàm", f"t{i % 5}"] for i in range(40)]))
    allowed = frozenset(ids[::3])
    every = dict(lexical.top("đạo hàm", 40))
    kept = lexical.top("đạo hàm", 40, allowed)
    assert [i for i, _ in kept] == sorted((i for i in every if i in allowed), key=lambda i: (-every[i], i))
    other = frozenset(ids[1::3])  # another filter's set is not confused with the first (masks are per set)
    assert {i for i, _ in lexical.top("đạo hàm", 40, other)} == set(ids[1::3])
    assert {i for i, _ in lexical.top("đạo hàm", 5, allowed)} <= allowed
