"""What a stored chunk carries: one typed schema for its metadata, and the heading-path helpers.

Every chunk in the index has these metadata fields (Chroma stores flat str/int values). They are written in one
place (`rag.ingestion.chunk_metadata`) and read through `ChunkMeta` or the `Hit` properties, never as bare strings.
"""
from __future__ import annotations

from typing import Any, Mapping, TypedDict

# Joins the headings of a chunk's path ("Bài 8. Đạo hàm › 2. Quy tắc tính"), in its metadata and its text header.
HEADING_SEPARATOR = " › "
# Stands for headings (or the end of a heading) left out of a text header too long for the token window.
ELLIPSIS = "…"


class ChunkMeta(TypedDict, total=False):
    """The metadata of one stored chunk."""

    source: str  # the file's name as stored: its path relative to the folder ingested, NFC, with "/"
    lesson: str  # the lesson title (the first heading), else the source
    heading_path: str  # the headings above the chunk, joined with HEADING_SEPARATOR
    chunk_index: int  # position of the chunk in its file, from 0
    chunk_hash: str  # SHA-256 of the chunk's NFC text: unchanged chunks keep their vectors
    file_hash: str  # fingerprint of the file version the chunk belongs to
    file_chunks: int  # how many chunks that file version has (a version is complete when all are stored)
    page: int  # PDF page, when known
    grade: int  # school grade (rag.grades.infer_grade), absent when unknown: such chunks are searched with every grade
    book: str  # textbook series, NFC (rag.books.infer_book), absent when unknown: such chunks are searched with every book
    has_book: bool  # True exactly when `book` is present: Chroma cannot test for an absent field, but "$ne" True admits it
    kind: str  # definition, theorem, theory, example, exercise or review (rag.chunking.unit_kind)


# Field names, for code that must name them (Chroma `where` filters, the eval's label keys).
SOURCE, LESSON, HEADING_PATH, CHUNK_INDEX = "source", "lesson", "heading_path", "chunk_index"
CHUNK_HASH, FILE_HASH, FILE_CHUNKS, PAGE = "chunk_hash", "file_hash", "file_chunks", "page"
GRADE, KIND = "grade", "kind"
BOOK, HAS_BOOK = "book", "has_book"


def join_headings(headings: tuple[str, ...] | list[str]) -> str:
    """The heading path as stored and as written above the chunk's text."""
    return HEADING_SEPARATOR.join(headings)


def split_headings(path: str) -> tuple[str, ...]:
    """The headings of a stored heading path, stripped, empty ones dropped."""
    return tuple(h.strip() for h in path.split(HEADING_SEPARATOR.strip()) if h.strip())


def with_header(headings: tuple[str, ...], body: str) -> str:
    """A chunk's text: its heading path, a blank line, then the body (the header helps retrieval)."""
    return f"{join_headings(headings)}\n\n{body}" if headings else body


def body_of(text: str, meta: Mapping[str, Any]) -> str:
    """A chunk's text without the heading header above it (the full path, or the chunker's shortened form of it)."""
    path = meta.get(HEADING_PATH, "")
    if text.startswith(f"{path}\n\n"):
        return text.removeprefix(f"{path}\n\n")
    header, blank, body = text.partition("\n\n")
    return body if blank and path and _shortened(header, split_headings(path)) else text


def _shortened(header: str, headings: tuple[str, ...]) -> bool:
    """Whether `header` is `headings` shortened: the title and the nearest heading, each possibly cut with "…"."""
    parts = header.split(HEADING_SEPARATOR)
    if not headings or ELLIPSIS not in header or len(parts) > 3:
        return False

    def same(part: str, heading: str) -> bool:
        return part == heading or (part.endswith(ELLIPSIS) and heading.startswith(part[: -len(ELLIPSIS)]))

    return same(parts[0], headings[0]) and same(parts[-1], headings[-1])
