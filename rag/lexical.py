"""BM25 over the very chunks of the Chroma index, with Vietnamese word segmentation (pyvi).

Design: nothing lexical is stored beside the index. The BM25 index is built from the chunks the Chroma collection
holds when a ranker opens, and kept in a process-wide cache keyed on the collection's content: every chunk id and
chunk hash. Chunk ids are derived from the file fingerprint (its text and the chunker settings), so every ingest that
changes anything (a file added, updated or pruned, a rebuild) changes the key. The ranker recomputes the key before
each query (one metadata read, a few ms for hundreds of chunks) and rebuilds when it differs, so BM25 and the dense
index never disagree about which chunks exist, even when another process ingested meanwhile. Building takes about
2 s per 400 chunks (pyvi), once per process and content.

Questions typed without diacritics ("dao ham la gi") are matched through a diacritics-free copy of every
syllable, indexed beside the segmented words (see `analyze`).
"""
from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import bm25s
import numpy as np

from rag.embeddings import E5Embeddings
from rag.index import Hit, LessonIndex
from rag.normalize import nfc

ANALYZER_VERSION = "1"  # part of the cache key: a new analyzer must not reuse old token lists
_PAGE = 2000
_CACHE_SIZE = 4
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as the index stores it."""

    id: str
    text: str
    metadata: dict[str, Any]


def stored_chunks(index: LessonIndex) -> list[StoredChunk]:
    """Every chunk of the collection with its text and metadata, in a stable order."""
    chunks: list[StoredChunk] = []
    offset = 0
    while True:
        page = index.collection.get(include=["documents", "metadatas"], limit=_PAGE, offset=offset)
        if not page["ids"]:
            break
        chunks.extend(StoredChunk(i, d or "", m or {}) for i, d, m in zip(page["ids"], page["documents"], page["metadatas"]))
        offset += len(page["ids"])
    return sorted(chunks, key=lambda c: c.id)


def content_key(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Identifies a collection's content from its (chunk id, metadata) rows: ids and chunk hashes (and the analyzer)."""
    digest = hashlib.sha256(ANALYZER_VERSION.encode())
    for chunk_id, meta in sorted(rows, key=lambda row: row[0]):
        digest.update(f"\0{chunk_id}\0{meta.get('chunk_hash', '')}".encode())
    return digest.hexdigest()


def strip_diacritics(text: str) -> str:
    """Vietnamese without tone marks and with đ → d ("đạo hàm" → "dao ham")."""
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    return nfc("".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn"))


def words(text: str) -> list[str]:
    """Lower-cased words as pyvi segments them ("đạo_hàm"), punctuation dropped."""
    from pyvi import ViTokenizer  # slow to import (a CRF model): only when BM25 is used

    segmented = ViTokenizer.tokenize(nfc(text)) if text.strip() else ""
    return _WORD.findall(segmented.lower())


def analyze(text: str) -> list[str]:
    """BM25 terms: the segmented words, plus the diacritics-free syllables of those that have diacritics.

    The folded syllables let "dao ham" (which pyvi does not join into one word) meet "đạo_hàm"; the same analyzer
    runs on questions and chunks, so an accented question also matches at syllable level.
    """
    terms = words(text)
    folded = [syllable for term in terms if strip_diacritics(term) != term for syllable in strip_diacritics(term).split("_")]
    return terms + folded


@dataclass
class LexicalIndex:
    """BM25 over one snapshot of the collection."""

    key: str
    ids: list[str]
    bm25: bm25s.BM25

    @classmethod
    def build(cls, chunks: Sequence[StoredChunk], key: str) -> "LexicalIndex":
        bm25 = bm25s.BM25()
        # bm25s cannot index an empty corpus; one empty document keeps the shapes valid and never scores
        corpus = [analyze(c.text) for c in chunks] or [[]]
        bm25.index(corpus, show_progress=False)
        return cls(key, [c.id for c in chunks], bm25)

    def top(self, query: str, k: int, allowed: set[str] | None = None) -> list[tuple[str, float]]:
        """The k best chunks with a positive BM25 score, best first (ties by chunk id)."""
        terms = analyze(query)
        if not self.ids or not terms:
            return []
        scores = self.bm25.get_scores(terms)[: len(self.ids)]
        candidates = [(self.ids[i], float(scores[i])) for i in np.flatnonzero(scores > 0)
                      if allowed is None or self.ids[i] in allowed]
        return sorted(candidates, key=lambda item: (-item[1], item[0]))[:k]


_cache: OrderedDict[str, LexicalIndex] = OrderedDict()
_lock = threading.Lock()


def lexical_index(index: LessonIndex) -> LexicalIndex:
    """The BM25 index for the collection's current content, built or taken from the cache."""
    key = content_key(index.metadatas())
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        chunks = stored_chunks(index)  # re-read whole: the key is taken from what is actually built
        key = content_key([(c.id, c.metadata) for c in chunks])
        built = LexicalIndex.build(chunks, key)
        _cache[key] = built
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return built


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norms if norms else 0.0


def hits_for(index: LessonIndex, ids: Sequence[str], query_vector: Sequence[float],
             extra: dict[str, dict[str, Any]] | None = None) -> list[Hit]:
    """Hits for chunk ids in the given order, scored by dense cosine with their stored embeddings."""
    if not ids:
        return []
    page = index.collection.get(ids=list(ids), include=["documents", "metadatas", "embeddings"])
    query = np.asarray(query_vector, dtype=np.float32)
    found = {i: (d, m, np.asarray(e, dtype=np.float32)) for i, d, m, e in
             zip(page["ids"], page["documents"], page["metadatas"], page["embeddings"])}
    extra = extra or {}
    return [Hit(i, found[i][0], {**found[i][1], **extra.get(i, {})}, _cosine(query, found[i][2])) for i in ids if i in found]


def allowed_ids(index: LessonIndex, where: dict[str, Any] | None) -> set[str] | None:
    """Ids of the chunks a Chroma filter admits (None: no filter), so BM25 filters exactly as the dense search."""
    if where is None:
        return None
    return set(index.collection.get(where=where, include=[])["ids"])


class BM25Ranker:
    """BM25 (bm25s) over the index's chunks; hits carry the dense cosine as `score` and BM25 in metadata["bm25"]."""

    def __init__(self, index: LessonIndex, embeddings: E5Embeddings) -> None:
        self.index = index
        self.embeddings = embeddings
        self.lexical = lexical_index(index)  # built at open time, not on the first question

    def current(self) -> LexicalIndex:
        """The BM25 index, rebuilt first if the collection changed since it was built."""
        self.lexical = lexical_index(self.index)
        return self.lexical

    def top(self, query: str, k: int, where: dict[str, Any] | None) -> list[tuple[str, float]]:
        """(chunk id, BM25 score) of the k best chunks, without embedding the query."""
        return self.current().top(query, k, allowed_ids(self.index, where))

    def hits(self, query: str, scored: Sequence[tuple[str, float]], extra: dict[str, dict[str, Any]] | None = None) -> list[Hit]:
        """Hits for (id, BM25) pairs, in order, with the dense cosine as score."""
        if not scored:
            return []
        meta = {i: {"bm25": s, **(extra or {}).get(i, {})} for i, s in scored}
        return hits_for(self.index, [i for i, _ in scored], self.embeddings.embed_query(query), meta)

    def rank(self, query: str, k: int, where: dict[str, Any] | None) -> list[Hit]:
        return self.hits(query, self.top(query, k, where))
