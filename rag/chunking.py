"""A chunker for Vietnamese math lessons: follows headings and Định nghĩa/Ví dụ/Giải… blocks, never cuts a formula,
and fits every chunk, with its E5 prefix, in the embedder's token window."""
from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from rag.loaders import LoadedDocument
from rag.normalize import nfc
from rag.schema import with_header

CHUNKER_VERSION = "2"  # part of every file fingerprint: a new chunker re-chunks everything once

TokenCounter = Callable[[str], int]

_MATH = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<![\\$])\$(?!\$).+?(?<![\\$])\$", re.S)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_MARKER = re.compile(
    r"^[>*_\s]*(?P<name>Định nghĩa|Định lí|Định lý|Tính chất|Hệ quả|Chú ý|Nhận xét|Ví dụ|Lời giải|Giải|Bài tập"
    r"|Bài \d+|HĐ|Hoạt động|Quy tắc|Công thức|Phương pháp)(?:\s+\d+(?:\.\d+)*)?(?:\s*\([^()\n]{1,80}\))?"
    r"\s*(?:[.:]|\*\*|__|$)",
    re.IGNORECASE,
)
_SOLUTION = {"giải", "lời giải"}
_EXAMPLE = re.compile(r"^(ví dụ|bài \d+|hđ|hoạt động)", re.IGNORECASE)
# Boundaries to split an oversized block at, from the most to the least natural.
_SPLIT_LEVELS = (re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"(?<=[.!?;:])\s+"), re.compile(r"\s+"))


@dataclass(frozen=True)
class ChunkerConfig:
    """Sizes in tokens of the embedder's own tokenizer, prefix and special tokens included."""

    max_tokens: int = 256
    target_tokens: int = 200  # small blocks of one section are merged up to this size


@dataclass(frozen=True)
class Chunk:
    """One piece of a lesson, as stored in the index."""

    text: str
    heading_path: tuple[str, ...]
    ordinal: int
    page: int | None = None

    @property
    def content_hash(self) -> str:
        return content_hash(self.text)


@dataclass
class _Block:
    text: str
    headings: tuple[str, ...]
    page: int | None
    marker: str | None = None


@dataclass
class _Unit:
    blocks: list[_Block] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(b.text for b in self.blocks)


def content_hash(text: str) -> str:
    """SHA-256 of the NFC text."""
    return hashlib.sha256(nfc(text).encode("utf-8")).hexdigest()


def math_spans(text: str) -> list[tuple[int, int]]:
    """Character ranges of LaTeX formulas ($…$, $$…$$, \\(…\\), \\[…\\])."""
    return [m.span() for m in _MATH.finditer(text)]


def chunk_document(doc: LoadedDocument, title: str, count_tokens: TokenCounter, config: ChunkerConfig = ChunkerConfig()) -> list[Chunk]:
    """Chunks of one document, in reading order; `count_tokens` counts the embedded text with its prefix."""
    units = _units(_blocks(doc, title))
    chunks: list[Chunk] = []
    for headings, page, body in _pack(units, count_tokens, config):
        chunks.append(Chunk(text=with_header(headings, body), heading_path=headings, ordinal=len(chunks), page=page))
    return chunks


def _blocks(doc: LoadedDocument, title: str) -> Iterator[_Block]:
    stack: list[tuple[int, str]] = []
    for page in doc.pages:
        for raw in _paragraphs(nfc(page.text)):
            heading = _HEADING.match(raw) if "\n" not in raw else None
            if heading:
                level = len(heading.group(1))
                stack = [(lvl, name) for lvl, name in stack if lvl < level] + [(level, heading.group(2).strip("*_ "))]
                continue
            headings = tuple(name for _, name in stack) or (title,)
            marker = _MARKER.match(raw)
            yield _Block(raw, headings, page.page, marker.group("name").lower() if marker else None)


def _paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated paragraphs; a heading or a marker line also starts one; display math is never split."""
    current: list[str] = []
    in_display = False
    for line in text.split("\n"):
        if not in_display and (not line.strip() or _HEADING.match(line) or _MARKER.match(line)):
            if "\n".join(current).strip():
                yield "\n".join(current).strip()
            current = []
            if _HEADING.match(line):
                yield line.strip()
                continue
        if line.strip() or current:
            current.append(line)
        in_display = _toggles_display(line, in_display)
    if "\n".join(current).strip():
        yield "\n".join(current).strip()


def _toggles_display(line: str, in_display: bool) -> bool:
    for token in re.findall(r"\$\$|\\\[|\\\]", line):
        in_display = (not in_display) if token == "$$" else token == "\\["
    return in_display


def _units(blocks: Iterable[_Block]) -> list[_Unit]:
    """Blocks grouped into structural units: a marker block starts one; a solution stays with its example."""
    units: list[_Unit] = []
    for block in blocks:
        current = units[-1] if units else None
        same_section = current is not None and current.blocks[-1].headings == block.headings
        joins = same_section and (block.marker is None or (block.marker in _SOLUTION and bool(_EXAMPLE.match(current.blocks[0].marker or ""))))
        if joins:
            current.blocks.append(block)
        else:
            units.append(_Unit([block]))
    return units


def _pack(units: list[_Unit], count: TokenCounter, config: ChunkerConfig) -> Iterator[tuple[tuple[str, ...], int | None, str]]:
    """Merge small units of one section up to the target; split big ones without cutting a formula."""
    pending: list[str] = []
    key: tuple[tuple[str, ...], int | None] | None = None
    for unit in units:
        headings, page = unit.blocks[0].headings, unit.blocks[0].page
        fits_alone = count(with_header(headings, unit.text)) <= config.max_tokens
        merged = "\n\n".join(pending + [unit.text])
        if pending and key is not None and key[0] == headings and fits_alone and count(with_header(headings, merged)) <= config.target_tokens:
            pending.append(unit.text)
            continue
        if pending and key is not None:
            yield key[0], key[1], "\n\n".join(pending)
        pending, key = [], (headings, page)
        if fits_alone:
            pending = [unit.text]
        else:
            for piece in split_to_fit(unit.text, lambda body: count(with_header(headings, body)), config.max_tokens):  # noqa: B023 (used at once, inside the loop)
                yield headings, page, piece
    if pending and key is not None:
        yield key[0], key[1], "\n\n".join(pending)


def split_to_fit(text: str, count: TokenCounter, limit: int, level: int = 0) -> list[str]:
    """Pieces of `text` each within `limit`, cut at the most natural boundary outside formulas."""
    if count(text) <= limit:
        return [text]
    if level >= len(_SPLIT_LEVELS):
        return _force_split(text, count, limit)
    pieces = _split_outside_math(text, _SPLIT_LEVELS[level])
    if len(pieces) == 1:
        return split_to_fit(text, count, limit, level + 1)
    out: list[str] = []
    current = ""
    for piece in pieces:
        candidate = current + piece
        if current and count(candidate.strip()) > limit:
            out.append(current.strip())
            current = piece
        else:
            current = candidate
    if current.strip():
        out.append(current.strip())
    return [p for part in out for p in split_to_fit(part, count, limit, level + 1) if p]


def _force_split(text: str, count: TokenCounter, limit: int) -> list[str]:
    """Last resort for one formula or word longer than the window: the window wins, since the embedder would
    otherwise drop the rest silently; a warning says so."""
    warnings.warn(f"a formula or word longer than {limit} tokens was split: {text[:60]}…", stacklevel=2)
    if len(text) <= 1:
        return [text]
    middle = len(text) // 2
    return [p for half in (text[:middle], text[middle:]) for p in (split_to_fit(half, count, limit, len(_SPLIT_LEVELS)) if count(half) > limit else [half])]


def _split_outside_math(text: str, boundary: re.Pattern[str]) -> list[str]:
    """Split after each boundary that is not inside a formula; the pieces concatenate back to `text`."""
    spans = math_spans(text)
    cuts = [m.end() for m in boundary.finditer(text) if not any(s < m.start() < e or s < m.end() < e for s, e in spans)]
    edges = [0] + [c for c in cuts if 0 < c < len(text)] + [len(text)]
    return [text[a:b] for a, b in zip(edges, edges[1:]) if a < b]
