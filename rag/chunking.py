"""A chunker for Vietnamese math lessons: follows headings and Định nghĩa/Ví dụ/Giải… blocks, never cuts a formula,
and fits every chunk, with its E5 prefix, in the embedder's token window."""
from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from rag.loaders import LoadedDocument, LoadError
from rag.normalize import nfc
from rag.schema import ELLIPSIS, join_headings

CHUNKER_VERSION = "3"  # part of every file fingerprint: a new chunker re-chunks everything once (3: chunk kinds)

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
# What a chunk is, from its markers and headings (stored as metadata "kind"; the ranking prefers theory for how/why).
KINDS = ("definition", "theorem", "theory", "example", "exercise", "review")
_MARKER_KIND = (
    (re.compile(r"^định nghĩa"), "definition"),
    (re.compile(r"^(định lí|định lý|tính chất|hệ quả|quy tắc|công thức|phương pháp|chú ý|nhận xét)"), "theorem"),
    (re.compile(r"^(ví dụ|hđ|hoạt động|lời giải|giải)"), "example"),
    (re.compile(r"^(bài tập|bài \d+)"), "exercise"),
)
_REVIEW_HEADING = re.compile(r"bài tập cuối chương|ôn tập|ôn chương|kiểm tra|đề thi|tổng ôn", re.IGNORECASE)
_EXERCISE_HEADING = re.compile(r"^(bài tập|luyện tập|câu hỏi|trắc nghiệm)|\bbài tập\b|\btrắc nghiệm\b", re.IGNORECASE)
# Boundaries to split an oversized block at, from the most to the least natural.
_SPLIT_LEVELS = (re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"(?<=[.!?;:])\s+"), re.compile(r"\s+"))
# The heading header may take at most this share of the window (the sample lessons' longest takes 15 %); a longer one,
# e.g. a paragraph styled as a heading in Word, is shortened so that the body always keeps the rest.
HEADER_SHARE = 0.5


class ChunkingWarning(UserWarning):
    """Something in a lesson the chunker worked around; the message starts with the line it is about."""


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
    kind: str = "theory"  # one of KINDS

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
    headers = _Headers(count_tokens, int(config.max_tokens * HEADER_SHARE))
    chunks: list[Chunk] = []
    for headings, page, body, kind in _pack(units, headers, config):
        chunks.append(Chunk(text=headers.put(headings, body), heading_path=headings, ordinal=len(chunks), page=page, kind=kind))
    return chunks


def unit_kind(headings: tuple[str, ...], markers: list[str | None]) -> str:
    """The kind of a piece of a lesson: review and exercise sections by their heading, else by its first marker.

    A worked exercise ("Bài 1." followed by "Giải.") counts as an example: it shows the method, as an example does.
    """
    if any(_REVIEW_HEADING.search(h) for h in headings):
        return "review"
    named = [m for m in markers if m]
    first = next((kind for pattern, kind in _MARKER_KIND if named and pattern.match(named[0])), None)
    solved = any(m in _SOLUTION for m in named)
    if first == "exercise" and solved:
        return "example"
    if headings and _EXERCISE_HEADING.search(headings[-1]) and first not in {"definition", "theorem"}:
        return "example" if solved else "exercise"
    return first or "theory"


class _Headers:
    """The text header of each heading path, fitted to its token budget once (the full path is kept in metadata)."""

    def __init__(self, count: TokenCounter, budget: int) -> None:
        self.count, self.budget = count, budget
        self._cache: dict[tuple[str, ...], str] = {}

    def put(self, headings: tuple[str, ...], body: str) -> str:
        """`body` with its header above it, as `rag.schema.with_header` writes it when the path fits."""
        header = self.header(headings)
        return f"{header}\n\n{body}" if header else body

    def header(self, headings: tuple[str, ...]) -> str:
        if headings not in self._cache:
            self._cache[headings] = fit_header(headings, self.count, self.budget)
        return self._cache[headings]


def fit_header(headings: tuple[str, ...], count: TokenCounter, budget: int) -> str:
    """The heading path within `budget` tokens: whole when it fits, else the lesson title and the nearest heading
    with "…" for the headings between, each cut short (with "…") if still too long. The body is never cut for it."""
    full = join_headings(headings)
    if not headings or count(full) <= budget:
        return full
    title, nearest = headings[0], headings[-1]
    gap = [ELLIPSIS] if len(headings) > 2 else []
    if len(headings) == 1:
        return _cut(title, lambda t: count(t) <= budget)
    if count(join_headings([title, *gap, nearest])) <= budget:
        return join_headings([title, *gap, nearest])
    # The title gets at most a third of the budget, the nearest heading (what the chunk is about) the rest.
    if count(title) > budget // 3:
        title = _cut(title, lambda t: count(t) <= budget // 3)
    return join_headings([title, *gap, _cut(nearest, lambda t: count(join_headings([title, *gap, t])) <= budget)])


def _cut(text: str, fits: Callable[[str], bool]) -> str:
    """The longest start of `text` (at a space if possible) that, with "…" after it, still fits."""
    if fits(text):
        return text
    for stops in ([m.start() for m in re.finditer(r"\s+", text)], list(range(1, len(text)))):
        low, high, best = 0, len(stops) - 1, None
        while low <= high:  # binary search: fitting is monotone in the length
            middle = (low + high) // 2
            candidate = text[: stops[middle]].rstrip() + ELLIPSIS
            if fits(candidate):
                best, low = candidate, middle + 1
            else:
                high = middle - 1
        if best is not None:
            return best
    return ELLIPSIS


def _blocks(doc: LoadedDocument, title: str) -> Iterator[_Block]:
    stack: list[tuple[int, str]] = []
    for page in doc.pages:
        for raw in _paragraphs(nfc(page.text), f"page {page.page}, " if page.page is not None else ""):
            heading = _HEADING.match(raw) if "\n" not in raw else None
            if heading:
                level = len(heading.group(1))
                stack = [(lvl, name) for lvl, name in stack if lvl < level] + [(level, heading.group(2).strip("*_ "))]
                continue
            headings = tuple(name for _, name in stack) or (title,)
            marker = _MARKER.match(raw)
            yield _Block(raw, headings, page.page, marker.group("name").lower() if marker else None)


def _paragraphs(text: str, where: str = "") -> Iterator[str]:
    """Blank-line separated paragraphs; a heading or a marker line also starts one; display math is never split.

    Display math cannot hold a blank line or a heading (LaTeX refuses a blank line in math), so a `$$` or `\\[` still
    open there was never closed: it is read as text, with a warning, rather than swallowing every later heading."""
    current: list[str] = []
    in_display = False
    opened = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if in_display and (not line.strip() or _HEADING.match(line)):
            warnings.warn(f"{where}line {opened}: display math opened here is not closed before line {number}; it is "
                          "read as text and the headings after it are kept. Close it with $$ (or \\]).", ChunkingWarning, stacklevel=2)
            in_display = False
        if not in_display and (not line.strip() or _HEADING.match(line) or _MARKER.match(line)):
            if "\n".join(current).strip():
                yield "\n".join(current).strip()
            current = []
            if _HEADING.match(line):
                yield line.strip()
                continue
        if line.strip() or current:
            current.append(line)
        was_in_display, in_display = in_display, _toggles_display(line, in_display)
        if in_display and not was_in_display:
            opened = number
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


def _pack(units: list[_Unit], headers: _Headers, config: ChunkerConfig) -> Iterator[tuple[tuple[str, ...], int | None, str, str]]:
    """Merge small units of one section up to the target; split big ones without cutting a formula.

    A merged chunk takes the kind of its first unit (the block it starts with is what it is about)."""
    count = headers.count
    pending: list[str] = []
    key: tuple[tuple[str, ...], int | None, str] | None = None
    for unit in units:
        headings, page = unit.blocks[0].headings, unit.blocks[0].page
        kind = unit_kind(headings, [b.marker for b in unit.blocks])
        fits_alone = count(headers.put(headings, unit.text)) <= config.max_tokens
        merged = "\n\n".join(pending + [unit.text])
        if pending and key is not None and key[0] == headings and fits_alone and count(headers.put(headings, merged)) <= config.target_tokens:
            pending.append(unit.text)
            continue
        if pending and key is not None:
            yield key[0], key[1], "\n\n".join(pending), key[2]
        pending, key = [], (headings, page, kind)
        if fits_alone:
            pending = [unit.text]
        else:
            for piece in split_to_fit(unit.text, lambda body: count(headers.put(headings, body)), config.max_tokens):  # noqa: B023 (used at once, inside the loop)
                yield headings, page, piece, kind
    if pending and key is not None:
        yield key[0], key[1], "\n\n".join(pending), key[2]


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
    if count(text[:1]) > limit:  # not even one character fits beside the header: never store a shredded lesson
        raise LoadError(f"the chunk window ({limit} tokens) leaves no room for the text beside its heading header")
    if len(text) <= 1:
        return [text]
    warnings.warn(f"a formula or word longer than {limit} tokens was split: {text[:60]}…", ChunkingWarning, stacklevel=2)
    middle = len(text) // 2
    return [p for half in (text[:middle], text[middle:]) for p in (split_to_fit(half, count, limit, len(_SPLIT_LEVELS)) if count(half) > limit else [half])]


def _split_outside_math(text: str, boundary: re.Pattern[str]) -> list[str]:
    """Split after each boundary that is not inside a formula; the pieces concatenate back to `text`."""
    spans = math_spans(text)
    cuts = [m.end() for m in boundary.finditer(text) if not any(s < m.start() < e or s < m.end() < e for s, e in spans)]
    edges = [0] + [c for c in cuts if 0 < c < len(text)] + [len(text)]
    return [text[a:b] for a, b in zip(edges, edges[1:]) if a < b]
