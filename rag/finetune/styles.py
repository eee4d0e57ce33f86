"""The forms students type a question in, made from a lesson's own wording: plain-text math, no diacritics.

Lessons write math in LaTeX ($\\dfrac{2x+1}{x-1}$); students type "(2x+1)/(x-1)", "x^2", "căn x", often without tone
marks. Training anchors in those forms teaches the embedder that both mean the same thing.
"""
from __future__ import annotations

import re

from rag.normalize import nfc
from rag.ranking.bm25 import strip_diacritics

_SYMBOLS = {
    r"\le": "<=", r"\leq": "<=", r"\ge": ">=", r"\geq": ">=", r"\ne": "≠", r"\neq": "≠", r"\in": "∈",
    r"\notin": "∉", r"\cdot": ".", r"\times": "x", r"\infty": "vô cùng", r"\pi": "pi", r"\alpha": "alpha",
    r"\beta": "beta", r"\Delta": "delta", r"\pm": "±", r"\to": "->", r"\Rightarrow": "=>", r"\Leftrightarrow": "<=>",
    r"\cup": "∪", r"\cap": "∩", r"\subset": "⊂", r"\setminus": "\\", r"\forall": "với mọi", r"\exists": "tồn tại",
    r"\varnothing": "rỗng", r"\emptyset": "rỗng", r"\sin": "sin", r"\cos": "cos", r"\tan": "tan", r"\cot": "cot",
    r"\ln": "ln", r"\log": "log", r"\lim": "lim", r"\int": "tích phân", r"\vec": "vecto", r"\overrightarrow": "vecto",
    r"\{": "{", r"\}": "}", r"\%": "%", r"\,": " ", r"\;": " ", r"\quad": " ", r"\circ": "độ",
}
_FRAC = re.compile(r"\\[dt]?frac\s*\{((?:[^{}]|\{[^{}]*\})*)\}\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_SQRT = re.compile(r"\\sqrt\s*(?:\[(\w+)\])?\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_FONT = re.compile(r"\\(?:mathbb|mathrm|text|mathbf|operatorname|overline|left|right|limits|displaystyle)(?![A-Za-z])\s*")
_COMMAND = re.compile(r"\\([A-Za-z]+)")
_BRACED_POWER = re.compile(r"([\^_])\{([^{}]*)\}")


def plain_math(text: str) -> str:
    """LaTeX formulas written the way a student types them; text outside formulas is kept."""
    text = nfc(text)
    for _ in range(3):  # nested fractions and roots, innermost first
        text = _FRAC.sub(lambda m: f"({m.group(1)})/({m.group(2)})", text)
        text = _SQRT.sub(lambda m: (f"căn bậc {m.group(1)} ({m.group(2)})" if m.group(1) else f"căn({m.group(2)})"), text)
    text = _FONT.sub("", text)
    for command in sorted(_SYMBOLS, key=len, reverse=True):
        text = re.sub(re.escape(command) + r"(?![A-Za-z])", lambda _m, c=command: f" {_SYMBOLS[c]} " if c[1:].isalpha() and len(c) > 3 else _SYMBOLS[c], text)
    text = _BRACED_POWER.sub(lambda m: m.group(1) + (m.group(2) if len(m.group(2)) <= 1 else f"({m.group(2)})"), text)
    text = _COMMAND.sub(r"\1", text)
    text = text.replace("$", "").replace("{", "").replace("}", "")
    return re.sub(r"[ \t]+", " ", text).strip()


def without_diacritics(text: str) -> str:
    """Vietnamese without tone marks ("đạo hàm" → "dao ham"), as typed on a keyboard with no Vietnamese input."""
    return strip_diacritics(text)
