"""Training pairs from the teacher's own material, with no hand-written label.

The chunker already sees the structure of a lesson: headings, and blocks that start with Định nghĩa/Định lí/Ví dụ/
Giải/Bài… This module reads that structure back from the chunks (as ingest makes them, or as an index stores them)
and turns it into (question-like anchor, chunk that answers it, hard negative) pairs:

- `example→theory`: a worked example's or an exercise's statement → the theory chunks (definition, theorem, method,
  remark) of its own section; negative: a theory chunk of another section of the same lesson.
- `example→solution`: a worked example's statement → the chunk that holds its solution; negative: another example
  of the same lesson.
- `exercise→theory`: an exercise of a "Bài tập" section or a review page (no theory around it) → the theory chunk of
  the same lesson (review pages: the same grade) that shares the most words with it (BM25), when the match is clear.
- `heading→body`: a section's title → the first chunk of that section; negative: the first chunk of another section.
- `subject→theory`: a definition's or theorem's subject ("đường tiệm cận ngang là gì") → its chunk; negative: an
  exercise chunk of the same section (it names the subject but does not explain it), else another section's theory.

Each anchor also gets, for a share of the pairs, the forms students type (`rag.finetune.styles`): without diacritics
and with plain-text math instead of LaTeX. Held-out evaluation questions are never read here.
"""
from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from rag.index import StoredChunk
from rag.normalize import nfc
from rag.schema import CHUNK_INDEX, HEADING_PATH, SOURCE, body_of, split_headings

THEORY, EXAMPLE, SOLUTION, EXERCISE, TEXT = "theory", "example", "solution", "exercise", "text"

# Block markers as the lessons write them (bold or not); the chunker's list plus "Câu N" of review pages.
_MARKER = re.compile(
    r"^[>*_\s]*(?P<name>Định nghĩa|Định lí|Định lý|Tính chất|Hệ quả|Chú ý|Nhận xét|Ví dụ|Lời giải|Giải|Bài tập"
    r"|Bài \d+|Câu \d+|HĐ|Hoạt động|Quy tắc|Công thức|Phương pháp)(?:\s+\d+(?:\.\d+)*)?"
    r"(?:\s*\((?P<title>[^()\n]{1,80})\))?\s*(?:[.:]|\*\*|__|$)[*_\s]*",
    re.IGNORECASE,
)
_KIND_OF_MARKER = {
    "định nghĩa": THEORY, "định lí": THEORY, "định lý": THEORY, "tính chất": THEORY, "hệ quả": THEORY,
    "chú ý": THEORY, "nhận xét": THEORY, "quy tắc": THEORY, "công thức": THEORY, "phương pháp": THEORY,
    "ví dụ": EXAMPLE, "hđ": EXAMPLE, "hoạt động": EXAMPLE, "giải": SOLUTION, "lời giải": SOLUTION,
}
# Markers whose subject is worth a "what is X" anchor.
_NAMED_THEORY = ("định nghĩa", "định lí", "định lý", "tính chất", "quy tắc", "công thức", "phương pháp", "hệ quả")
_EXERCISE_SECTION = re.compile(r"bài tập|luyện tập|trắc nghiệm|tự luận|ôn tập", re.IGNORECASE)
_REVIEW_FILE = re.compile(r"bai-tap|on-tap", re.IGNORECASE)
_NUMBERING = re.compile(r"^\s*(?:Bài\s+\d+\s*[.:]|[IVX]+\s*[.:]|[A-Z]\s*\.|\d+(?:\.\d+)*\s*[.:)]?)\s*", re.IGNORECASE)
# "X là …" / "… gọi là X" in a definition's first sentence: the subject a student asks about.
_CALLED = re.compile(r"(?:gọi là|được gọi là)\s+(?P<subject>[^,.;:$()]{3,60}?)(?:\s+(?:của|nếu|khi)\b|[,.;:(]|$)")
_FIRST_SENTENCE = re.compile(r"^(?P<sentence>[^.]{0,240}?[^\d])\.(?:\s|$)")

KINDS = ("example→theory", "example→solution", "exercise→theory", "heading→body", "subject→theory", "llm")


@dataclass(frozen=True)
class Block:
    """One marked block of a chunk's body (a marker-less paragraph continues the block before it)."""

    kind: str
    marker: str | None  # the marker's name, lower-case ("định nghĩa", "bài 3", …), None for plain text
    text: str  # the block as written, marker included
    statement: str  # the text after the marker: what a student would ask
    title: str | None = None  # "(…)" after the marker: "Định lí 1 (Vi-ét)" → "Vi-ét"


@dataclass(frozen=True)
class ChunkInfo:
    """A chunk with what its structure says about it."""

    id: str
    text: str
    source: str
    headings: tuple[str, ...]
    ordinal: int
    blocks: tuple[Block, ...]

    @property
    def section(self) -> tuple[str, ...]:
        return self.headings

    @property
    def review(self) -> bool:
        """A chapter review page (MCQ/exercises across several lessons)."""
        return bool(_REVIEW_FILE.search(PurePosixPath(self.source).name))

    @property
    def in_exercise_section(self) -> bool:
        return self.review or any(_EXERCISE_SECTION.search(h) for h in self.headings[1:])

    @property
    def has_theory(self) -> bool:
        """Explains something: a theory block, or plain prose outside exercise sections."""
        return any(b.kind == THEORY or (b.kind == TEXT and not self.in_exercise_section) for b in self.blocks)

    @property
    def has_exercise(self) -> bool:
        return any(b.kind in (EXERCISE, EXAMPLE) for b in self.blocks)

    @property
    def grade(self) -> str:
        return PurePosixPath(self.source).parts[0] if len(PurePosixPath(self.source).parts) > 1 else ""


@dataclass(frozen=True)
class Pair:
    """An anchor, the chunk text that answers it, and a hard negative chunk text (None: in-batch negatives only)."""

    anchor: str
    positive: str
    negative: str | None
    kind: str
    style: str = "original"  # original | no_diacritics | plain_math (the anchor's form)
    positive_id: str = ""


@dataclass
class PairSet:
    """The pairs made from one set of chunks, and how many of each kind."""

    pairs: list[Pair] = field(default_factory=list)
    chunks: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # why anchors were left out

    def counts(self) -> dict[str, int]:
        by_kind = Counter(p.kind for p in self.pairs)
        by_style = Counter(f"style:{p.style}" for p in self.pairs)
        return {**dict(sorted(by_kind.items())), **dict(sorted(by_style.items())),
                "with_hard_negative": sum(p.negative is not None for p in self.pairs), "total": len(self.pairs)}

    def summary(self) -> dict[str, object]:
        return {"chunks": self.chunks, "pairs": self.counts(), "skipped": dict(sorted(self.skipped.items()))}


def marker_kind(name: str) -> str:
    name = name.lower()
    if name in _KIND_OF_MARKER:
        return _KIND_OF_MARKER[name]
    return EXERCISE  # Bài N, Câu N, Bài tập


def parse_blocks(body: str) -> tuple[Block, ...]:
    """The blocks of a chunk's body, in order: a paragraph that starts with a marker starts a block."""
    blocks: list[Block] = []
    for paragraph in re.split(r"\n\s*\n", nfc(body).strip()):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        found = _MARKER.match(paragraph)
        if found:
            name = re.sub(r"\s+\d+$", "", found.group("name").lower())
            name = "bài n" if re.fullmatch(r"bài \d+", found.group("name").lower()) else name
            name = "câu n" if re.fullmatch(r"câu \d+", found.group("name").lower()) else name
            blocks.append(Block(marker_kind(name), name, paragraph, paragraph[found.end():].strip(), found.group("title")))
        elif blocks:
            last = blocks[-1]
            blocks[-1] = Block(last.kind, last.marker, f"{last.text}\n\n{paragraph}", f"{last.statement}\n\n{paragraph}",
                               last.title)
        else:
            blocks.append(Block(TEXT, None, paragraph, paragraph))
    return tuple(blocks)


def chunk_infos(chunks: Iterable[StoredChunk]) -> list[ChunkInfo]:
    """The chunks with their blocks, in reading order per lesson."""
    infos = []
    for c in chunks:
        meta = c.metadata
        infos.append(ChunkInfo(c.id, c.text, str(meta.get(SOURCE, "")), split_headings(str(meta.get(HEADING_PATH, ""))),
                               int(meta.get(CHUNK_INDEX, 0)), parse_blocks(body_of(c.text, meta))))
    return sorted(infos, key=lambda i: (i.source, i.ordinal))


def section_title(heading: str) -> str:
    """A heading without its numbering ("2. Đường tiệm cận đứng" → "Đường tiệm cận đứng")."""
    return _NUMBERING.sub("", heading).strip(" *_")


def definition_subject(block: Block) -> str | None:
    """What a definition or theorem is about: its "(title)", the X of "… gọi là X", or the subject of "X là …"."""
    if block.title:
        return block.title.strip()
    statement = block.statement.replace("\n", " ")
    called = _CALLED.search(statement)
    if called and "$" not in called.group("subject"):
        return called.group("subject").strip()
    first = _FIRST_SENTENCE.match(statement)
    sentence = first.group("sentence") if first else statement[:200]
    head, sep, _ = sentence.partition(" là ")
    if sep and 2 <= len(head.split()) <= 8 and "$" not in head and not head.lower().startswith(("cho ", "nếu ", "với ")):
        return head.strip()
    return None


@dataclass
class _Material:
    """The chunks grouped the ways pair generation needs them."""

    infos: list[ChunkInfo]
    by_section: dict[tuple[str, tuple[str, ...]], list[ChunkInfo]] = field(default_factory=dict)
    by_source: dict[str, list[ChunkInfo]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sections: dict[tuple[str, tuple[str, ...]], list[ChunkInfo]] = defaultdict(list)
        sources: dict[str, list[ChunkInfo]] = defaultdict(list)
        for info in self.infos:
            sections[(info.source, info.section)].append(info)
            sources[info.source].append(info)
        self.by_section, self.by_source = dict(sections), dict(sources)

    def section_of(self, info: ChunkInfo) -> list[ChunkInfo]:
        return self.by_section[(info.source, info.section)]

    def other_sections(self, info: ChunkInfo, want: str) -> list[ChunkInfo]:
        """Chunks of the same lesson in another section (not a parent of this one) with theory / exercises."""
        out = []
        for other in self.by_source[info.source]:
            if other.section == info.section or info.section[:len(other.section)] == other.section:
                continue
            if (want == THEORY and other.has_theory) or (want == EXERCISE and other.has_exercise and not other.has_theory):
                out.append(other)
        return out


def _pick(pool: Sequence[ChunkInfo], rng: random.Random, exclude: Iterable[str] = ()) -> str | None:
    banned = set(exclude)
    choices = [c for c in pool if c.id not in banned]
    return rng.choice(choices).text if choices else None


class _Lexical:
    """BM25 over theory chunks (the project's analyzer), to attach exercises that have no theory around them."""

    def __init__(self, theory: Sequence[ChunkInfo]) -> None:
        from rag.ranking.bm25 import LexicalIndex

        self.theory = {c.id: c for c in theory}
        self.index = LexicalIndex.build([StoredChunk(c.id, c.text, {}) for c in theory], key="pairs")

    def best(self, query: str, allowed: set[str], margin: float) -> ChunkInfo | None:
        """The best theory chunk among `allowed`, when it beats the runner-up by `margin` (× its score)."""
        top = self.index.top(query, 2, allowed=allowed)
        if not top or (len(top) > 1 and top[0][1] < (1 + margin) * top[1][1]):
            return None
        return self.theory[top[0][0]]


def material_pairs(chunks: Sequence[StoredChunk], seed: int = 42, lexical_margin: float = 0.15) -> PairSet:
    """Every structural pair the chunks offer (styles not applied: see `with_styles`)."""
    rng = random.Random(seed)
    material = _Material(chunk_infos(chunks))
    result = PairSet(chunks=len(material.infos))
    lexical: _Lexical | None = None

    def add(anchor: str, positive: ChunkInfo, negative: str | None, kind: str) -> None:
        anchor = anchor.strip()
        if len(anchor) < 8:
            result.skipped["anchor too short"] += 1
            return
        if negative == positive.text:
            negative = None
        result.pairs.append(Pair(anchor, positive.text, negative, kind, positive_id=positive.id))

    for info in material.infos:
        section = material.section_of(info)
        theory_here = [c for c in section if c.has_theory and not info.in_exercise_section]
        for i, block in enumerate(info.blocks):
            if block.kind in (EXAMPLE, EXERCISE) and theory_here:
                # Theory read before the example first: lessons explain, then illustrate.
                ranked = sorted(theory_here, key=lambda c: (c.ordinal > info.ordinal, abs(c.ordinal - info.ordinal)))
                negative = _pick(material.other_sections(info, THEORY), rng)
                for positive in ranked[:2]:
                    add(block.statement, positive, negative, "example→theory")
            if block.kind == EXAMPLE:
                solved_here = any(b.kind == SOLUTION for b in info.blocks[i + 1:])
                holder = info if solved_here else _next_solution(material, info)
                if holder is not None:
                    negative = _pick([c for c in material.by_source[info.source] if c.has_exercise], rng,
                                     exclude=(info.id, holder.id))
                    add(block.statement, holder, negative, "example→solution")
            if block.kind == EXERCISE and not theory_here:
                lexical = lexical or _Lexical([c for c in material.infos if c.has_theory and not c.in_exercise_section])
                if info.review:
                    allowed = {c for c, t in lexical.theory.items() if t.grade == info.grade}
                else:
                    allowed = {c.id for c in material.by_source[info.source] if c.id in lexical.theory}
                positive = lexical.best(block.statement, allowed, lexical_margin) if allowed else None
                if positive is None:
                    result.skipped["exercise without a clear theory match"] += 1
                    continue
                negative = _pick(material.other_sections(positive, THEORY), rng)
                add(block.statement, positive, negative, "exercise→theory")
            if block.kind == THEORY and block.marker in _NAMED_THEORY:
                subject = definition_subject(block)
                if subject is None:
                    result.skipped["theory without a subject"] += 1
                    continue
                exercises = [c for c in section if c.has_exercise and not c.has_theory]
                negative = _pick(exercises, rng) or _pick(material.other_sections(info, THEORY), rng)
                add(_subject_question(subject, block.marker or "", rng), info, negative, "subject→theory")
    for (_source, headings), section in material.by_section.items():
        if len(headings) < 2 or section[0].in_exercise_section:
            continue
        title = section_title(headings[-1])
        first = section[0]
        others = [c for c in material.other_sections(first, THEORY) if c.section != first.section]
        firsts = {c.section: c for c in reversed(others)}
        add(title, first, _pick(list(firsts.values()), rng), "heading→body")
    return result


def _next_solution(material: _Material, info: ChunkInfo) -> ChunkInfo | None:
    """The next chunk of the same section, when it starts with the solution (the chunker split example and solution)."""
    for other in material.section_of(info):
        if other.ordinal > info.ordinal:
            return other if other.blocks and other.blocks[0].kind == SOLUTION else None
    return None


_SUBJECT_TEMPLATES = {
    "định nghĩa": ("{s} là gì", "định nghĩa {s}", "thế nào là {s}"),
    "công thức": ("công thức {s}", "{s} tính thế nào"),
    "quy tắc": ("quy tắc {s}", "{s} làm thế nào"),
    "phương pháp": ("phương pháp {s}", "cách {s}"),
}


def _subject_question(subject: str, marker: str, rng: random.Random) -> str:
    templates = _SUBJECT_TEMPLATES.get(marker, ("{s}", "{s} là gì", "nội dung {s}"))
    return rng.choice(templates).format(s=subject[0].lower() + subject[1:] if subject[:2].istitle() else subject)


def with_styles(pairs: Sequence[Pair], share: float, seed: int = 42) -> list[Pair]:
    """The pairs plus, for a `share` of them each, the anchor without diacritics and with plain-text math."""
    from rag.finetune.styles import plain_math, without_diacritics

    rng = random.Random(f"{seed}:styles")
    out = list(pairs)
    for pair in pairs:
        if pair.style != "original":
            continue
        if rng.random() < share:
            out.append(Pair(without_diacritics(plain_math(pair.anchor)), pair.positive, pair.negative, pair.kind,
                            "no_diacritics", pair.positive_id))
        if "$" in pair.anchor and rng.random() < share:
            out.append(Pair(plain_math(pair.anchor), pair.positive, pair.negative, pair.kind, "plain_math", pair.positive_id))
    return out


def sample(pairs: Sequence[Pair], limit: int | None, seed: int = 42) -> list[Pair]:
    """At most `limit` pairs, drawn reproducibly with every kind kept in proportion."""
    if limit is None or len(pairs) <= limit:
        return list(pairs)
    by_kind: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        by_kind[p.kind].append(p)
    rng = random.Random(f"{seed}:sample")
    out: list[Pair] = []
    for kind in sorted(by_kind):
        group = by_kind[kind]
        out += rng.sample(group, max(1, round(limit * len(group) / len(pairs))))
    return out[:limit]


def question_pairs(chunks: Sequence[StoredChunk], questions: dict[str, list[str]], seed: int = 42) -> list[Pair]:
    """Generated questions → the chunk they were written from; negative: a chunk of another section of its lesson."""
    rng = random.Random(f"{seed}:llm")
    material = _Material(chunk_infos(chunks))
    by_id = {i.id: i for i in material.infos}
    out = []
    for chunk_id, texts in sorted(questions.items()):
        info = by_id.get(chunk_id)
        if info is None:
            continue
        others = material.other_sections(info, THEORY) or [c for c in material.by_source[info.source] if c.id != info.id]
        for text in texts:
            out.append(Pair(nfc(text), info.text, _pick(others, rng), "llm", positive_id=info.id))
    return out
