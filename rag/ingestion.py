"""The ingestion job (the library side of `python -m ingest`): lesson files → chunks → vectors in the index, incremental, idempotent and crash-safe.

Each file's new version is written with one upsert and only then are its old chunks deleted, so an interrupt
leaves every file either as it was or complete (at worst with its old chunks beside the new until the next run,
which finds the mixed state in the index and finishes the replacement). LangChain's `index()` cleans up per batch
of documents, which can split one file across batches; this job keeps the unit of atomicity the file.
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from rag.chunking import CHUNKER_VERSION, Chunk, ChunkerConfig, chunk_document
from rag.embeddings import E5Embeddings
from rag.index import LessonIndex
from rag.loaders import SUFFIXES, LoadError, load
from rag.normalize import nfc
from rag.schema import ChunkMeta, join_headings

STATUSES = ("added", "updated", "unchanged", "removed", "failed", "skipped")


@dataclass(frozen=True)
class SourceFile:
    """A file to ingest and the name it is stored under (relative to the folder given)."""

    path: Path
    source: str


@dataclass(frozen=True)
class Outcome:
    source: str
    status: str
    chunks: int = 0
    error: str | None = None


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


def discover(paths: Iterable[Path]) -> tuple[list[SourceFile], list[Outcome]]:
    """Files to ingest under the given folders and files; unsupported files in folders are reported as skipped."""
    files: list[SourceFile] = []
    skipped: list[Outcome] = []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"No such file or folder: {root}")
        if root.is_file():
            files.append(SourceFile(root, nfc(root.name)))
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p.relative_to(root))):
            source = nfc(path.relative_to(root).as_posix())
            if path.suffix.lower() in SUFFIXES:
                files.append(SourceFile(path, source))
            else:
                skipped.append(Outcome(source, "skipped", error=f"unsupported type {path.suffix or '(none)'}"))
    return files, skipped


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def fingerprint(text: str, config: ChunkerConfig) -> str:
    """Identifies a file version as chunked: its NFC text and the chunker's version and sizes."""
    key = f"{CHUNKER_VERSION}\0{config.max_tokens}\0{config.target_tokens}\0{nfc(text)}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def chunk_id(source: str, file_hash: str, ordinal: int) -> str:
    """Deterministic id of a chunk of one file version."""
    return hashlib.sha256(f"{source}\0{file_hash}\0{ordinal}".encode()).hexdigest()[:32]


def chunk_metadata(source: str, file_hash: str, chunk: Chunk, total: int) -> ChunkMeta:
    """The one place chunk metadata is written (its fields: rag.schema.ChunkMeta)."""
    meta = ChunkMeta(
        source=source,
        lesson=chunk.heading_path[0] if chunk.heading_path else source,
        heading_path=join_headings(chunk.heading_path),
        chunk_index=chunk.ordinal,
        chunk_hash=chunk.content_hash,
        file_hash=file_hash,
        file_chunks=total,
    )
    if chunk.page is not None:
        meta["page"] = chunk.page
    return meta


def prepare_file(file: SourceFile, embeddings: E5Embeddings, config: ChunkerConfig) -> PreparedFile:
    """Load and chunk one file (raises LoadError)."""
    doc = load(file.path)
    chunks = chunk_document(doc, Path(file.source).stem, lambda t: embeddings.count_tokens(t, "passage"), config)
    if not chunks:
        raise LoadError("no text to index")
    return PreparedFile(file, fingerprint(doc.text, config), chunks)


class IngestJob:
    """Brings the index in line with a set of lesson files."""

    def __init__(self, index: LessonIndex, embeddings: E5Embeddings, config: ChunkerConfig | None = None) -> None:
        self.index = index
        self.embeddings = embeddings
        self.config = config or ChunkerConfig(max_tokens=embeddings.identity.max_tokens)

    def run(self, files: list[SourceFile], *, prune: bool = False, skipped: Iterable[Outcome] = (),
            progress: Callable[[int], None] | None = None, on_plan: Callable[[int], None] | None = None) -> IngestReport:
        """Ingest `files`; `on_plan` gets the number of chunks to embed, `progress` each embedded batch size."""
        started = time.perf_counter()
        report = IngestReport(outcomes=list(skipped))
        states = self.index.source_states()
        work: list[PreparedFile] = []
        for file in files:
            try:
                prepared = prepare_file(file, self.embeddings, self.config)
            except LoadError as exc:
                report.outcomes.append(Outcome(file.source, "failed", error=str(exc)))
                continue
            state = states.get(file.source)
            if state is not None and state.complete(prepared.fingerprint):
                report.outcomes.append(Outcome(file.source, "unchanged", len(prepared.chunks)))
            else:
                work.append(prepared)
        if on_plan:
            on_plan(sum(len(p.chunks) for p in work))
        for prepared in work:
            existed = prepared.file.source in states
            try:
                report.embedded += self._replace(prepared, progress)
            except Exception as exc:  # one bad file must not stop the rest; its old version stays intact
                report.outcomes.append(Outcome(prepared.file.source, "failed", error=f"{type(exc).__name__}: {exc}"))
                continue
            report.outcomes.append(Outcome(prepared.file.source, "updated" if existed else "added", len(prepared.chunks)))
        if prune:
            seen = {f.source for f in files}
            for source in sorted(set(states) - seen):
                self.index.delete_ids(self.index.ids_of(source))
                report.outcomes.append(Outcome(source, "removed"))
        if not report.counts()["failed"]:
            self.index.commit()  # a rebuild replaces the live index only when every file made it
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
        metas = [chunk_metadata(source, file_hash, c, len(chunks)) for c in chunks]
        old = set(self.index.ids_of(source))
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
