"""The ingestion job (the library side of `python -m ingest`): lesson files → chunks → vectors in the index, incremental, idempotent and crash-safe.

Files are taken one at a time (read, chunk, embed, write), so the index has each finished file at once and one huge
file holds up nothing else; which files, and under which names, is `rag.discovery`'s job.

Each file's new version is written with one upsert and only then are its old chunks deleted, so an interrupt
leaves every file either as it was or complete (at worst with its old chunks beside the new until the next run,
which finds the mixed state in the index and finishes the replacement). LangChain's `index()` cleans up per batch
of documents, which can split one file across batches; this job keeps the unit of atomicity the file.
"""
from __future__ import annotations

import hashlib
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

import numpy as np

from rag.books import infer_book
from rag.chunking import CHUNKER_VERSION, Chunk, ChunkerConfig, ChunkingWarning, chunk_document
from rag.discovery import Outcome, SourceFile, covers
from rag.discovery import discover as discover  # callers import it from here
from rag.embeddings import E5Embeddings
from rag.grades import SidecarError, infer_grade
from rag.index import LessonIndex
from rag.loaders import LoadError, load
from rag.normalize import nfc
from rag.ranking import index_followers
from rag.schema import BOOK, GRADE, HAS_BOOK, PAGE, ChunkMeta, join_headings
from rag.settings import Settings

DEFAULT_MAX_FILE_MB: float = Settings.model_fields["max_file_mb"].default

STATUSES = ("added", "updated", "unchanged", "removed", "failed", "skipped")


@dataclass
class IngestReport:
    """What a run did, file by file."""

    outcomes: list[Outcome] = field(default_factory=list)
    embedded: int = 0
    elapsed_s: float = 0.0
    rebuild_pending: bool = False  # a rebuild that was not made live because files failed

    def counts(self) -> Counter[str]:
        return Counter(o.status for o in self.outcomes)

    @property
    def chunks(self) -> int:
        return sum(o.chunks for o in self.outcomes if o.status in {"added", "updated", "unchanged"})

    def summary(self) -> str:
        counts = self.counts()
        files = ", ".join(f"{counts[s]} {s}" for s in STATUSES)
        rate = f", {self.embedded / self.elapsed_s:.1f} chunks/s" if self.embedded and self.elapsed_s else ""
        return f"Files: {files}. Chunks: {self.chunks} in index for these files, {self.embedded} embedded. Time: {self.elapsed_s:.1f} s{rate}."


@dataclass(frozen=True)
class PreparedFile:
    file: SourceFile
    fingerprint: str
    chunks: list[Chunk]
    notes: tuple[str, ...] = ()
    grade: int | None = None
    book: str | None = None


def fingerprint(text: str, config: ChunkerConfig, grade: int | None = None, book: str | None = None) -> str:
    """Identifies a file version as chunked: its NFC text and the chunker's version and sizes."""
    # the grade too, so that a teacher's new .vimath.toml re-ingests the files it covers (their vectors are reused)
    # and the book likewise, but only when there is one: the files of an index made before books keep their
    # fingerprint and are not re-written
    scope = f"{grade}\0" if book is None else f"{grade}\0book={nfc(book)}\0"
    key = f"{CHUNKER_VERSION}\0{config.max_tokens}\0{config.target_tokens}\0{scope}{nfc(text)}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def chunk_id(source: str, file_hash: str, ordinal: int) -> str:
    """Deterministic id of a chunk of one file version."""
    return hashlib.sha256(f"{source}\0{file_hash}\0{ordinal}".encode()).hexdigest()[:32]


def chunk_metadata(source: str, file_hash: str, chunk: Chunk, total: int, grade: int | None = None,
                   book: str | None = None) -> ChunkMeta:
    """The one place chunk metadata is written (its fields: rag.schema.ChunkMeta)."""
    meta = ChunkMeta(
        source=source,
        lesson=chunk.heading_path[0] if chunk.heading_path else source,
        heading_path=join_headings(chunk.heading_path),
        chunk_index=chunk.ordinal,
        chunk_hash=chunk.content_hash,
        file_hash=file_hash,
        file_chunks=total,
        kind=chunk.kind,
    )
    if chunk.page is not None:
        meta[PAGE] = chunk.page
    if grade is not None:  # absent when unknown: such material is searched with every grade
        meta[GRADE] = grade
    if book is not None:  # likewise; the flag is what a filter can test (rag.retrieval.Filters.where)
        meta[BOOK], meta[HAS_BOOK] = nfc(book), True
    return meta


def prepare_file(file: SourceFile, embeddings: E5Embeddings, config: ChunkerConfig, *,
                 max_file_mb: float | None = None) -> PreparedFile:
    """Load and chunk one file (raises LoadError); the chunker's warnings come back as the file's notes."""
    if max_file_mb is not None:
        check_size(file.path, max_file_mb)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ChunkingWarning)
        doc = load(file.path)
        chunks = chunk_document(doc, Path(file.source).stem, lambda t: embeddings.count_tokens(t, "passage"), config)
    for other in (w for w in caught if not issubclass(w.category, ChunkingWarning)):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)  # not ours: pass it on
    if not chunks:
        raise LoadError("no text to index")
    notes = tuple(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, ChunkingWarning)))
    try:
        grade, book = infer_grade(file.path, file.source), infer_book(file.path, file.source)
    except SidecarError as exc:
        raise LoadError(str(exc)) from exc
    return PreparedFile(file, fingerprint(doc.text, config, grade, book), chunks, notes, grade, book)


def check_size(path: Path, max_file_mb: float) -> None:
    """Refuse a file over the size limit before reading it (one huge file must not hold up the others)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise LoadError(f"cannot read file: {exc.strerror or exc}") from exc
    if size > max_file_mb * 1024 * 1024:
        raise LoadError(f"file is {size / 1024 / 1024:.1f} MB, over the {max_file_mb:g} MB limit (setting max_file_mb); "
                        "split it into lessons, or raise the limit with --max-file-mb or VIMATH_MAX_FILE_MB")


FileStarted = Callable[[int, str, "int | None"], None]


class FileProgressBar:
    """A tqdm bar for `IngestJob.run`: the file at hand ("[3/30] lop10/bai1.md") and its chunks embedded so far."""

    def __init__(self, files: int, *, disable: bool | None = False, file: TextIO = sys.stderr) -> None:
        from tqdm import tqdm

        self.files = files
        self.bar = tqdm(total=0, unit="chunk", desc="Reading", disable=disable, file=file)

    def on_file(self, number: int, source: str, chunks: int | None) -> None:
        self.bar.set_description(f"[{number}/{self.files}] {source}" + (" (reading)" if chunks is None else ""), refresh=False)
        self.bar.reset(total=chunks or 0)

    def update(self, chunks: int) -> None:
        self.bar.update(chunks)

    def close(self) -> None:
        self.bar.close()


class IngestJob:
    """Brings the index in line with a set of lesson files, one file at a time: each file is read, chunked, embedded
    and written before the next is read, so the index has every finished file at once and memory holds one file."""

    def __init__(self, index: LessonIndex, embeddings: E5Embeddings, config: ChunkerConfig | None = None, *,
                 max_file_mb: float | None = DEFAULT_MAX_FILE_MB) -> None:
        self.index = index
        self.embeddings = embeddings
        self.config = config or ChunkerConfig(max_tokens=embeddings.identity.max_tokens)
        self.max_file_mb = max_file_mb
        self.followers = index_followers(index)  # data derived from the chunks, kept in step (rag.ranking.FOLLOWERS)

    def run(self, files: list[SourceFile], *, prune: bool = False, skipped: Iterable[Outcome] = (),
            progress: Callable[[int], None] | None = None, on_file: FileStarted | None = None) -> IngestReport:
        """Ingest `files`, with `skipped` the outcomes `discover` reported (failed paths there are kept by prune).

        `on_file(number, source, chunks)` is called as file `number` (from 1) is read (chunks None) and, if it must
        be written, again with its chunk count; `progress` then gets each batch of chunks done."""
        started = time.perf_counter()
        report = IngestReport(outcomes=list(skipped))
        states = self.index.source_states()
        seen: set[str] = set()
        for number, file in enumerate(files, start=1):
            if file.source in seen:  # two files under one name would overwrite each other in the index
                report.outcomes.append(Outcome(file.source, "failed", error=f"another file has the same name ({file.path})"))
                continue
            seen.add(file.source)
            if on_file:
                on_file(number, file.source, None)
            try:
                prepared = prepare_file(file, self.embeddings, self.config, max_file_mb=self.max_file_mb)
            except LoadError as exc:
                report.outcomes.append(Outcome(file.source, "failed", error=str(exc)))
                continue
            state = states.get(file.source)
            if state is not None and state.complete(prepared.fingerprint):
                report.outcomes.append(Outcome(file.source, "unchanged", len(prepared.chunks), notes=prepared.notes))
                continue
            if on_file:
                on_file(number, file.source, len(prepared.chunks))
            try:
                report.embedded += self._replace(prepared, progress)
            except Exception as exc:  # one bad file must not stop the rest; its old version stays intact
                report.outcomes.append(Outcome(file.source, "failed", error=f"{type(exc).__name__}: {exc}", notes=prepared.notes))
                continue
            status = "updated" if file.source in states else "added"
            report.outcomes.append(Outcome(file.source, status, len(prepared.chunks), notes=prepared.notes))
        if prune:
            failed = [o for o in report.outcomes if o.status == "failed"]
            for source in sorted(set(states) - seen):
                if any(covers(f, source) for f in failed):
                    continue  # not seen because it could not be read: removing it would lose a lesson
                self.index.delete_ids(self.index.ids_of(source))
                report.outcomes.append(Outcome(source, "removed"))
        if not report.counts()["failed"]:
            self.index.commit()  # a rebuild replaces the live index only when every file made it
        for follower in self.followers:
            follower.after_run()  # e.g. the BM25 snapshot of what the run left, so no reader segments a chunk
        report.rebuild_pending = self.index.staging
        report.elapsed_s = time.perf_counter() - started
        return report

    def _replace(self, prepared: PreparedFile, progress: Callable[[int], None] | None) -> int:
        """Write a file's new version in one upsert, then drop its old chunks; returns chunks embedded."""
        source, file_hash, chunks = prepared.file.source, prepared.fingerprint, prepared.chunks
        reusable = self.index.stored_vectors(source)
        missing = [c for c in chunks if c.content_hash not in reusable]
        fresh = dict(zip((c.content_hash for c in missing), self._embed([c.text for c in missing], progress)))
        if progress and len(chunks) > len(missing):
            progress(len(chunks) - len(missing))
        vectors = np.vstack([fresh.get(c.content_hash, reusable.get(c.content_hash)) for c in chunks])
        ids = [chunk_id(source, file_hash, c.ordinal) for c in chunks]
        metas = [chunk_metadata(source, file_hash, c, len(chunks), prepared.grade, prepared.book) for c in chunks]
        old = set(self.index.ids_of(source))
        for follower in self.followers:  # e.g. BM25 stores the new chunks' terms, before readers can see them
            follower.before_write({c.content_hash: c.text for c in chunks})
        self.index.upsert(ids, vectors, [c.text for c in chunks], metas)
        self.index.delete_ids(sorted(old - set(ids)))
        return len(missing)

    def _embed(self, texts: list[str], progress: Callable[[int], None] | None) -> Iterator[np.ndarray]:
        step = self.embeddings.batch_size
        for start in range(0, len(texts), step):
            batch = self.embeddings.encode(texts[start : start + step], "passage")
            if progress:
                progress(len(batch))
            yield from batch
