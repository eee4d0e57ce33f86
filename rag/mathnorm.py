"""Math written two ways meets: students type `x3 – 6x2 + 11x – 6`, `sqrt(x+1)`, `(1/3)^(x+1) >= 1/9`, `≤`, `×`;
the lessons say `$x^3 - 6x^2 + 11x - 6$`, `\\sqrt{x+1}`, `\\left(\\dfrac{1}{3}\\right)^{x+1} \\geq \\dfrac{1}{9}`.

`canonical` rewrites both into one linear ASCII form (`x^3 - 6x^2`, `sqrt(x+1)`, `(1/3)^(x+1) >= 1/9`), and
`math_terms` lists the structured terms of that form (`x^3`, `6x^2`, `>=`, `1/3`, `sqrt`) that a word tokenizer
would break apart, so BM25 can match them as units. `for_embedding` nudges a typed question toward the lessons'
LaTeX for the dense embedder (which was trained on LaTeX passages).

A letter followed by one digit (`x2`) is read as a power only in a math context — a coefficient before it (`6x2`)
or an operator or bracket beside it (`x2 + 1`) — so "cạnh x2" and the name in "a1, a2" stay as they are.
"""
from __future__ import annotations

import re

from rag.normalize import nfc

# Unicode operators → ASCII. Dashes become minus: in prose they only separate, which BM25 ignores anyway.
_UNICODE = {
    "−": "-", "–": "-", "—": "-", "‒": "-", "×": "*", "·": "*", "⋅": "*", "∙": "*", "÷": "/", "∕": "/",
    "≥": ">=", "⩾": ">=", "≤": "<=", "⩽": "<=", "≠": "!=", "＝": "=", "＋": "+", "＜": "<", "＞": ">",
    "²": "^2", "³": "^3", "¹": "^1", "⁴": "^4", "√": "sqrt", "π": "pi", "∞": "infinity", "′": "'",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))

# LaTeX commands that become a symbol or a word; unknown commands lose their backslash.
_COMMANDS = {
    "geq": ">=", "ge": ">=", "geqslant": ">=", "leq": "<=", "le": "<=", "leqslant": "<=", "neq": "!=", "ne": "!=",
    "cdot": "*", "times": "*", "div": "/", "pm": "+-", "infty": "infinity", "to": "->", "rightarrow": "->",
    "Rightarrow": "=>", "Leftrightarrow": "<=>", "in": "∈", "notin": "∉", "subset": "⊂", "cup": "∪", "cap": "∩",
    "emptyset": "∅", "varnothing": "∅", "circ": "°", "degree": "°", "approx": "≈", "perp": "⊥", "parallel": "∥",
    "int": "∫", "left": "", "right": "", "big": "", "Big": "", "bigg": "", "displaystyle": "", "limits": "", "nolimits": "",
    "quad": " ", "qquad": " ", ",": " ", ";": " ", "!": "", ":": " ", " ": " ", "{": "(", "}": ")",
    "(": "", ")": "", "[": "", "]": "",  # the \( \) \[ \] formula delimiters
}
_UNWRAP = {"text", "mathrm", "mathbf", "mathit", "operatorname", "textbf", "textit", "mbox", "mathbb", "boldsymbol"}
_VECTOR = {"overrightarrow", "vec", "overline", "widehat", "hat"}
_FRACTIONS = {"frac", "dfrac", "tfrac", "cfrac"}
_COMMAND_RE = re.compile(r"\\([A-Za-z]+|[,;!: {}()\[\]])")
_ATOM = re.compile(r"^\s*-?[\w.]+\s*$")
_SPACES = re.compile(r"[ \t]+")

# a lowercase letter + one digit, standing alone ("x2", "6x2"), not inside a longer word or after "^"/"_"/"\"
_PLAIN_POWER = re.compile(r"(?<![\w\\^_'])(\d*)([a-z])(\d)(?![\w'])")
_OPERATORS = set("+-*/=<>^()[]|")
_PYTHON_POWER = re.compile(r"(?<=[\w)])\*\*(?=[\w(])")  # x**2, not Markdown bold
_ROOT_WORD = re.compile(r"\b(?:sqrt|căn)\s*(?=\()|\bcăn\s+(?=[a-z\d](?!\w))", re.IGNORECASE)
_BRACED_POWER = re.compile(r"([\^_])\(\s*([\w.]+)\s*\)")  # x^(2) → x^2, log_(2) → log_2 (one atom needs no brackets)
_REDUNDANT = re.compile(r"(?<![\w\]_^])\(\s*([\w.]+)\s*\)(?=\s*(?:/|$|[^\w(^]))")  # "(1)/(3)" → "1/3"

# structured terms of the canonical form, kept whole for BM25
_MATH_TERM = re.compile(
    r"\d*[a-z]\^(?:\d+|[a-z])"  # powers: x^3, 6x^2, e^x
    r"|(?<=[\w)])\s*(?:>=|<=|!=|<|>)(?=\s*[\w(\-])"  # comparisons between operands (not a Markdown quote)
    r"|\b\d+/\d+\b"  # numeric fractions: 1/3
    r"|\bsqrt\b|\blog_\w+|\blim\b|∫|∈|∪|∩|⊥|∥"
)


def _group(text: str, start: int) -> tuple[str, int] | None:
    """The {…} (or one character) argument beginning at `start` (spaces skipped), and the index after it."""
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        if text[i] == "\\":
            match = _COMMAND_RE.match(text, i)
            if match:
                return match.group(0), match.end()
        return text[i], i + 1
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j], j + 1
    return text[i + 1 :], len(text)


def _bracket(inner: str) -> str:
    return inner.strip() if _ATOM.match(inner) else f"({inner.strip()})"


def _latex(text: str) -> str:
    """LaTeX commands rewritten (recursively, so nested fractions and roots come out right)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "$":
            i += 1
            continue
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        match = _COMMAND_RE.match(text, i)
        if not match:
            out.append(ch)
            i += 1
            continue
        name, i = match.group(1), match.end()
        if name in _FRACTIONS:
            num, den = _group(text, i) or ("", i), None
            den = _group(text, num[1]) or ("", num[1])
            out.append(f"{_bracket(_latex(num[0]))}/{_bracket(_latex(den[0]))}")
            i = den[1]
        elif name == "sqrt":
            degree = ""
            j = i
            while j < len(text) and text[j] == " ":
                j += 1
            if j < len(text) and text[j] == "[":
                end = text.find("]", j)
                degree, i = (text[j + 1 : end].strip(), end + 1) if end > 0 else ("", i)
            arg = _group(text, i) or ("", i)
            out.append(f"sqrt{f'[{degree}]' if degree else ''}({_latex(arg[0]).strip()})")
            i = arg[1]
        elif name in _UNWRAP:
            arg = _group(text, i) or ("", i)
            out.append(_latex(arg[0]))
            i = arg[1]
        elif name in _VECTOR:
            arg = _group(text, i) or ("", i)
            out.append(f"vec({_latex(arg[0]).strip()})" if name in {"overrightarrow", "vec"} else _latex(arg[0]))
            i = arg[1]
        elif name in _COMMANDS:
            replacement = _COMMANDS[name]
            out.append(f" {replacement} " if replacement.strip() else replacement)
        else:
            out.append(f" {name}" if out and out[-1][-1:].isalnum() else name)
    return "".join(out)


def _math_context(text: str, start: int, end: int, coefficient: str) -> bool:
    """A letter-digit pair is a power when it has a coefficient or an operator/bracket next to it."""
    if coefficient:
        return True
    before = text[:start].rstrip()[-1:]
    after = text[end:].lstrip()[:1]
    return before in _OPERATORS or after in _OPERATORS


def _plain_powers(text: str) -> str:
    def power(match: re.Match[str]) -> str:
        coefficient, letter, digit = match.groups()
        if _math_context(match.string, match.start(), match.end(), coefficient):
            return f"{coefficient}{letter}^{digit}"
        return match.group(0)
    return _PLAIN_POWER.sub(power, text)


def canonical(text: str) -> str:
    """One linear ASCII form for math however it was written (LaTeX, plain text, Unicode); prose is kept."""
    text = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], nfc(text))
    text = _latex(text)
    text = text.replace("{", "(").replace("}", ")")
    text = _PYTHON_POWER.sub("^", text)
    text = _ROOT_WORD.sub("sqrt", text)
    text = re.sub(r"sqrt(?!\s*[(\[])\s*([\w.]+)", r"sqrt(\1)", text)  # "sqrt x" / "√x" → "sqrt(x)"
    text = _plain_powers(text)
    text = _BRACED_POWER.sub(r"\1\2", text)
    text = _REDUNDANT.sub(r"\1", text)
    text = re.sub(r"\s*(>=|<=|!=|=>|->|<=>)\s*", r" \1 ", text)
    text = re.sub(r"\s*\^\s*", "^", text)
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))


def math_terms(canonical_text: str) -> list[str]:
    """The structured math terms of a canonical text (powers, comparisons, numeric fractions, roots…)."""
    return [m.group(0).strip() for m in _MATH_TERM.finditer(canonical_text.lower())]


_TO_LATEX = {"−": "-", "–": "-", "≥": r" \geq ", "⩾": r" \geq ", "≤": r" \leq ", "⩽": r" \leq ", "≠": r" \neq ",
             ">=": r" \geq ", "<=": r" \leq ", "!=": r" \neq ", "×": r" \cdot ", "·": r" \cdot ", "²": "^2", "³": "^3"}
_TO_LATEX_RE = re.compile("|".join(map(re.escape, sorted(_TO_LATEX, key=len, reverse=True))))
_TYPED_ROOT = re.compile(r"(?:\bsqrt|\bcăn|√)\s*\(([^()]*)\)|√\s*([\w.]+)", re.IGNORECASE)


def for_embedding(question: str) -> str:
    """A typed question with its plain-text math in the lessons' LaTeX style (powers, roots, comparisons)."""
    text = nfc(question)
    if "\\" in text or "$" in text:  # already LaTeX: leave it to the embedder
        return text
    text = _TO_LATEX_RE.sub(lambda m: _TO_LATEX[m.group(0)], text)
    text = _PYTHON_POWER.sub("^", text)
    text = _plain_powers(text)
    text = _TYPED_ROOT.sub(lambda m: "\\sqrt{" + (m.group(1) if m.group(1) is not None else m.group(2)) + "}", text)
    return _SPACES.sub(" ", text).strip()
