"""The BM25 of an index kept on disk, so that a new process never re-segments the chunks.

Two things live in the index's lexical folder (rag.index.lexical_folder: inside the index folder, or a local cache
folder for a Chroma server):

- `terms.sqlite3`: every chunk's analyzed terms by (analyzer version, chunk hash). The ingest job adds the terms of
  the chunks it writes, so only new text is ever segmented; a chunk whose terms are missing (an index built before
  this store, another analyzer version) is segmented once by whoever needs it and stored.
- `snapshots/<content key>/`: the BM25 score matrix (CSC arrays, as bm25s computes them), the vocabulary and the
  chunk ids, for one content of the collection. The key is `rag.ranking.bm25.content_key` of the chunks the
  collection actually holds, recomputed by the reader from Chroma, so a snapshot is used only for exactly that
  content: a stale, missing or unreadable one is rebuilt from the stored terms, never trusted. A snapshot is
  written into a temporary folder and renamed into place whole, so a reader (or an ingest killed half-way) never
  sees half of one. The arrays are memory-mapped when loaded.

Scoring reads the matrix with numpy alone (the sum over the query's terms of their precomputed per-chunk scores,
as `bm25s.BM25.get_scores` does), so a process that only searches never imports bm25s (and its numba, ~1 s).
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TERMS_DB = "terms.sqlite3"
SNAPSHOTS = "snapshots"
KEEP_SNAPSHOTS = 3  # the newest few stay: readers may still have an older one mapped (Linux keeps unlinked maps valid)
FORMAT = 1
_ARRAYS = ("data", "indices", "indptr")
_BATCH = 500  # hashes per SQL `IN (...)`, well under SQLite's variable limit
_TIMEOUT_S = 30.0
_LEFTOVER_S = 3600.0


@dataclass
class BM25Matrix:
    """BM25 over a list of chunks: per term, the chunks it occurs in and its BM25 weight there (CSC by term)."""

    ids: list[str]
    vocab: dict[str, int]
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray

    @classmethod
    def build(cls, ids: Sequence[str], corpus: Sequence[Sequence[str]]) -> BM25Matrix:
        """Index token lists with bm25s (imported only here: building is the writer's or a stale reader's job)."""
        if not any(corpus):  # bm25s cannot index a corpus without a single term
            empty = np.zeros(0, dtype=np.float32)
            return cls(list(ids), {}, empty, np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int32))
        import bm25s

        bm25 = bm25s.BM25()
        bm25.index([list(terms) for terms in corpus], show_progress=False)
        scores = bm25.scores
        indptr = np.asarray(scores["indptr"])
        # bm25s lists an empty-string term without a column of its own: keep only terms with one
        vocab = {term: column for term, column in bm25.vocab_dict.items() if column < len(indptr) - 1}
        return cls(list(ids), vocab, np.asarray(scores["data"]), np.asarray(scores["indices"]), indptr)

    def scores(self, terms: Sequence[str]) -> np.ndarray:
        """BM25 of every chunk for the query terms (unknown terms add nothing; a repeated term counts again)."""
        scores = np.zeros(len(self.ids), dtype=np.float32)
        for term in terms:
            column = self.vocab.get(term)
            if column is not None:
                start, end = int(self.indptr[column]), int(self.indptr[column + 1])
                scores[self.indices[start:end]] += self.data[start:end]  # a chunk appears once per term
        return scores

    def save(self, folder: Path, key: str) -> None:
        """Write into a temporary folder beside `folder`, then rename it into place (a no-op if one is already there)."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        temp = folder.parent / f".tmp-{uuid.uuid4().hex}"
        temp.mkdir()
        try:
            for name in _ARRAYS:
                np.save(temp / f"{name}.npy", getattr(self, name))
            (temp / "ids.json").write_text(json.dumps(self.ids), encoding="utf-8")
            (temp / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")
            manifest = {"format": FORMAT, "key": key, "chunks": len(self.ids), "terms": len(self.vocab)}
            (temp / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")  # last: marks it complete
            os.rename(temp, folder)  # atomic; fails if another process put the same snapshot there first
        except OSError:
            if not (folder / "manifest.json").exists():
                raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path, key: str) -> BM25Matrix:
        """The snapshot in `folder`, arrays memory-mapped; raises ValueError/OSError if it is not a whole one for `key`."""
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or manifest.get("key") != key:
            raise ValueError(f"snapshot {folder} is not for this content")
        ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        matrix = cls(ids, vocab, **arrays)
        matrix.check(manifest)
        return matrix

    def check(self, manifest: dict[str, object]) -> None:
        """Refuse a snapshot whose parts do not fit together (a truncated or mixed-up file)."""
        if len(self.ids) != manifest.get("chunks") or len(self.vocab) != manifest.get("terms"):
            raise ValueError("snapshot counts do not match its manifest")
        columns = len(self.indptr) - 1
        if max(self.vocab.values(), default=-1) >= columns or len(self.data) != len(self.indices) or int(self.indptr[-1]) != len(self.data):
            raise ValueError("snapshot arrays are inconsistent")
        if len(self.indices) and int(self.indices.max()) >= len(self.ids):
            raise ValueError("snapshot refers to chunks it does not list")


class LexicalStore:
    """The lexical folder of one index: stored terms and BM25 snapshots."""

    def __init__(self, folder: Path, analyzer_version: str) -> None:
        self.folder = folder
        self.analyzer_version = analyzer_version

    # -- terms --------------------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.folder.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.folder / TERMS_DB, timeout=_TIMEOUT_S)
        connection.execute("PRAGMA journal_mode=WAL")  # readers never wait for the ingest writing new terms
        connection.execute("CREATE TABLE IF NOT EXISTS terms (analyzer TEXT NOT NULL, chunk_hash TEXT NOT NULL, "
                           "terms TEXT NOT NULL, PRIMARY KEY (analyzer, chunk_hash))")
        return connection

    def stored_terms(self, hashes: Iterable[str]) -> dict[str, list[str]]:
        """Terms already stored for these chunk hashes (for this analyzer version)."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, list[str]] = {}
        if not wanted or not (self.folder / TERMS_DB).exists():
            return found
        connection = self._connect()
        try:
            for start in range(0, len(wanted), _BATCH):
                batch = wanted[start:start + _BATCH]
                rows = connection.execute(f"SELECT chunk_hash, terms FROM terms WHERE analyzer = ? AND chunk_hash IN "
                                          f"({','.join('?' * len(batch))})", [self.analyzer_version, *batch])
                found.update((chunk_hash, json.loads(terms)) for chunk_hash, terms in rows)
        finally:
            connection.close()
        return found

    def store_terms(self, terms: dict[str, list[str]]) -> None:
        """Add terms by chunk hash, in one transaction (a killed writer leaves all of them or none)."""
        if not terms:
            return
        connection = self._connect()
        try:
            with connection:
                connection.executemany("INSERT OR REPLACE INTO terms VALUES (?, ?, ?)",
                                       [(self.analyzer_version, h, json.dumps(t, ensure_ascii=False)) for h, t in terms.items()])
        finally:
            connection.close()

    def terms_for(self, texts: dict[str, str], analyze: Callable[[str], list[str]]) -> dict[str, list[str]]:
        """Terms of chunks given as {chunk hash: text}: stored ones read, only the others analyzed (and stored)."""
        known = self.stored_terms(texts)
        fresh = {h: analyze(text) for h, text in texts.items() if h not in known}
        try:
            self.store_terms(fresh)
        except sqlite3.Error:  # a reader that cannot write the cache (read-only folder, busy) still has the terms
            pass
        return {**known, **fresh}

    # -- snapshots -----------------------------------------------------------------------------------------------

    def snapshot_folder(self, key: str) -> Path:
        return self.folder / SNAPSHOTS / key

    def load(self, key: str) -> BM25Matrix | None:
        """The snapshot for exactly this content key, or None when there is none or it cannot be read whole."""
        folder = self.snapshot_folder(key)
        if not folder.exists():
            return None
        try:
            return BM25Matrix.load(folder, key)
        except (OSError, ValueError, KeyError, TypeError):  # truncated, corrupt or foreign: rebuilt by the caller
            return None

    def save(self, matrix: BM25Matrix, key: str) -> None:
        """Store a snapshot (replacing an unreadable one) and drop all but the newest few."""
        folder = self.snapshot_folder(key)
        if folder.exists() and self.load(key) is None:
            shutil.rmtree(folder, ignore_errors=True)
        matrix.save(folder, key)
        self.prune()

    def prune(self) -> None:
        """Keep the newest snapshots; drop temporary folders a killed writer left (older than an hour)."""
        root = self.folder / SNAPSHOTS
        entries = list(root.iterdir()) if root.exists() else []
        snapshots = sorted((p for p in entries if not p.name.startswith(".")), key=_mtime, reverse=True)
        leftovers = [p for p in entries if p.name.startswith(".tmp-") and time.time() - _mtime(p) > _LEFTOVER_S]
        for old in snapshots[KEEP_SNAPSHOTS:] + leftovers:
            shutil.rmtree(old, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
