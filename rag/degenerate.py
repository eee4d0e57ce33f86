"""Notice, while it streams, an answer that has stopped being an answer: it copies the material verbatim over a long
span, repeats itself, or echoes the prompt's own instructions.

Seen with a real 1.5B model on real textbook pages: it pasted the retrieved material back for 1,024 tokens and
began with the prompt's last line, while the record said `ok` with 4 "valid" citations. The guard stops such a
generation early, keeps the useful text before the degenerate part, and says which kind it was.
The thresholds are set by bench/answer_eval.py on real answers (see the README), not by taste.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from rag.normalize import nfc

# A copied run this long (in words) is pasting, not quoting: the longest quotes seen in good answers (a definition or
# a theorem) were shorter (bench/answer_eval.py reports `longest_copy` for every answer).
COPY_WORDS = 45
SHINGLE = 6  # words per shingle: short enough to survive re-spacing, long enough not to match common phrases
REPEAT_WORDS = 8
REPEAT_TIMES = 3
# A phrase of the question or the material comes back naturally: restated in the first line, in a step and in the
# conclusion ("công thức diện tích mặt cầu và thể tích khối cầu"). Counted as a loop only from this many times:
# at 3, the benchmark's guard cut good answers short (bench/answer_eval.py, Qwen2.5-1.5B).
REPEAT_TIMES_KNOWN = 5
# A prompt line this long found in the answer is the model reading its instructions back, not answering.
ECHO_CHARS = 24
MIN_KEPT_CHARS = 20  # less than this before the degenerate part is not worth showing
# The prompt's structure: an answer that writes these is writing the prompt, not an answer.
PROMPT_MARKERS = ("câu hỏi của học sinh:", "<tài_liệu", "</tài_liệu>", "<câu_hỏi>", "</câu_hỏi>")

_WORD = re.compile(r"\S+")
_TRIM = re.compile(r"^[\W_]+|[\W_]+$")
_CHAR_LOOP = re.compile(r"(.{1,40}?)\1{6,}$", re.DOTALL)  # "=====…", "1 1 1 1 …", a phrase without spaces


@dataclass(frozen=True)
class Verdict:
    """Why the answer was stopped and what is worth keeping of it."""

    kind: str  # copy | repeat | echo
    keep: str
    detail: str


def _words(text: str) -> list[tuple[str, int]]:
    """Normalized words with their start offsets: case, NFC and surrounding punctuation/markdown do not matter."""
    out = []
    for m in _WORD.finditer(text):
        word = _TRIM.sub("", nfc(m.group()).lower()) or m.group()
        out.append((word, m.start()))
    return out


def _normalized_line(text: str) -> str:
    return " ".join(nfc(text).lower().split())


def _keep(text: str, end: int) -> str:
    kept = text[:end].rstrip()
    return kept if len(kept.strip()) >= MIN_KEPT_CHARS else ""


class DegenerateGuard:
    """Feed it the answer so far (the whole text each time); it answers a Verdict once the answer degenerates."""

    def __init__(self, material: Sequence[str], instructions: Sequence[str] = (), *, copy_words: int = COPY_WORDS,
                 question: str = "") -> None:
        self.copy_words = copy_words
        self._shingles: set[tuple[str, ...]] = set()
        self._known: set[tuple[str, ...]] = set()  # the question's and the material's REPEAT_WORDS-grams
        for text in [*material, question]:
            words = [w for w, _ in _words(text)]
            if text is not question:
                self._shingles.update(tuple(words[i:i + SHINGLE]) for i in range(len(words) - SHINGLE + 1))
            self._known.update(tuple(words[i:i + REPEAT_WORDS]) for i in range(len(words) - REPEAT_WORDS + 1))
        self._echo = sorted({line for text in instructions for raw in text.splitlines()
                             if len(line := _normalized_line(raw)) >= ECHO_CHARS and "{" not in line}, key=len)
        self._checked_words = -1

    def feed(self, text: str) -> Verdict | None:
        words = _words(text)
        if len(words) == self._checked_words:  # nothing new to judge (the delta was inside a word)
            return self._char_loop(text)
        self._checked_words = len(words)
        return self._echoed(text) or self._copied(text, words) or self._repeated(text, words) or self._char_loop(text)

    def _echoed(self, text: str) -> Verdict | None:
        low = _normalized_line(text)
        for marker in PROMPT_MARKERS:
            if marker in low:
                return Verdict("echo", _keep(text, _find_loose(text, marker)), f"wrote the prompt's marker {marker!r}")
        for line in self._echo:
            if line in low:
                return Verdict("echo", _keep(text, _find_loose(text, line)), f"echoed the prompt line {line[:60]!r}")
        return None

    def _copied(self, text: str, words: list[tuple[str, int]]) -> Verdict | None:
        run_start, run = 0, 0
        for i in range(len(words) - SHINGLE + 1):
            if tuple(w for w, _ in words[i:i + SHINGLE]) in self._shingles:
                if run == 0:
                    run_start = i
                run += 1
                if run + SHINGLE - 1 >= self.copy_words:
                    return Verdict("copy", _keep(text, words[run_start][1]),
                                   f"copied {run + SHINGLE - 1} words of the material verbatim")
            else:
                run = 0
        return None

    def _repeated(self, text: str, words: list[tuple[str, int]]) -> Verdict | None:
        seen: dict[tuple[str, ...], list[int]] = {}
        for i in range(len(words) - REPEAT_WORDS + 1):
            key = tuple(w for w, _ in words[i:i + REPEAT_WORDS])
            starts = seen.setdefault(key, [])
            # overlapping matches are one occurrence ("a a a a …" counts once per period)
            if not starts or i >= starts[-1] + REPEAT_WORDS:
                starts.append(i)
            if len(starts) >= (REPEAT_TIMES_KNOWN if key in self._known else REPEAT_TIMES):
                return Verdict("repeat", _keep(text, words[starts[1]][1]),
                               f"repeated {' '.join(key)!r} {len(starts)} times")
        return None

    def _char_loop(self, text: str) -> Verdict | None:
        tail = text[-400:]
        m = _CHAR_LOOP.search(tail)
        if m is None or len(m.group(0)) < 40:
            return None
        return Verdict("repeat", _keep(text, len(text) - len(tail) + m.start()), f"looped on {m.group(1)[:20]!r}")


def _find_loose(text: str, needle: str) -> int:
    """Offset in `text` where the normalized `needle` starts (whitespace and case ignored); 0 when not found."""
    pattern = r"\s+".join(re.escape(part) for part in needle.split())
    m = re.search(pattern, nfc(text), re.IGNORECASE)
    return m.start() if m else 0


def longest_copy(text: str, material: Sequence[str]) -> int:
    """The longest span of `text` (in words) found verbatim in the material: what the copy threshold is set from."""
    guard = DegenerateGuard(material, copy_words=10**9)
    words = _words(text)
    best = run = 0
    for i in range(len(words) - SHINGLE + 1):
        run = run + 1 if tuple(w for w, _ in words[i:i + SHINGLE]) in guard._shingles else 0
        best = max(best, run + SHINGLE - 1 if run else 0)
    return best


def judge(text: str, material: Sequence[str], instructions: Sequence[str] = (), question: str = "") -> Verdict | None:
    """The verdict on a finished answer (what the benchmark uses for answers made without the guard)."""
    return DegenerateGuard(material, instructions, question=question).feed(text)


_KIND_VI = {
    "copy": "bắt đầu chép nguyên văn tài liệu",
    "repeat": "bắt đầu lặp đi lặp lại",
    "echo": "bắt đầu lặp lại lời dặn của hệ thống thay vì trả lời",
}


def degenerate_notice(verdict: Verdict) -> str:
    """What the student reads, in Vietnamese."""
    kept = " Phần đầu dùng được vẫn được giữ ở trên." if verdict.keep else ""
    return (f"Mô hình {_KIND_VI.get(verdict.kind, 'trả lời không bình thường')} nên câu trả lời đã được dừng lại.{kept} "
            f"Em xem các đoạn tài liệu liên quan nhất bên dưới, hoặc hỏi lại ngắn gọn hơn nhé.")
