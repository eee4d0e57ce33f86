"""Math-aware normalisation: the same expression typed by a student and written in a lesson's LaTeX meets."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rag.mathnorm import canonical, for_embedding, math_terms
from rag.ranking.bm25 import analyze

SAME = [  # (typed by a student, as a lesson writes it, canonical form of both)
    ("x3 – 6x2 + 11x – 6", "$x^3 - 6x^2 + 11x - 6$", "x^3 - 6x^2 + 11x - 6"),
    ("x³ − 6x² + 11x − 6", "$x^{3} - 6x^{2} + 11x - 6$", "x^3 - 6x^2 + 11x - 6"),
    ("sqrt(x+1)", "$\\sqrt{x+1}$", "sqrt(x+1)"),
    ("√(x+1)", "\\(\\sqrt{x+1}\\)", "sqrt(x+1)"),
    ("(1/3)^(x+1) >= 1/9", "$\\left(\\dfrac{1}{3}\\right)^{x+1} \\geq \\dfrac{1}{9}$", "(1/3)^(x+1) >= 1/9"),
    ("x^2 ≤ 4", "$x^2 \\le 4$", "x^2 <= 4"),
    ("x^2 ⩽ 4", "$x^2 \\leqslant 4$", "x^2 <= 4"),
    ("2 × 3 ≠ 5", "$2 \\times 3 \\neq 5$", "2 * 3 != 5"),
    ("(x+1)/(x-2)", "$\\frac{x+1}{x-2}$", "(x+1)/(x-2)"),
    ("log_2(x)", "$\\log_{2}(x)$", "log_2(x)"),
    ("x**2 + 1", "$x^2 + 1$", "x^2 + 1"),
]


@pytest.mark.parametrize(("typed", "latex", "expected"), SAME)
def test_typed_and_latex_math_have_one_canonical_form(typed: str, latex: str, expected: str) -> None:
    assert canonical(typed) == expected
    assert canonical(latex) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("x2 + 1", "x^2 + 1"),  # an operator beside it: a power
    ("6x2", "6x^2"),  # a coefficient before it: a power
    ("(x2)", "(x^2)"),
    ("cạnh x2 của hình", "cạnh x2 của hình"),  # a name in prose: left alone
    ("2x", "2x"),  # a coefficient, not a power
    ("các số a1, a2, a3", "các số a1, a2, a3"),  # names in a list: left alone
    ("a2 + b2 = c2", "a^2 + b^2 = c^2"),
    ("x12 + 1", "x12 + 1"),  # two digits: an index, not a power students type this way
    ("A2 + 1", "A2 + 1"),  # capitals are points (A1, A2), never powers
    ("lop10 và bài2", "lop10 và bài2"),  # inside a longer word
])
def test_a_letter_followed_by_a_digit_is_a_power_only_in_a_math_context(text: str, expected: str) -> None:
    assert canonical(text) == expected


def test_markdown_is_not_read_as_math() -> None:
    text = "> **Định nghĩa 1.** Cho hàm số"
    assert canonical(text) == text  # bold is not a power, a quote is not "greater than"
    assert math_terms(canonical(text)) == []


def test_root_word_only_before_an_argument() -> None:
    assert canonical("căn bậc hai của 4") == "căn bậc hai của 4"
    assert canonical("căn x + 1") == "sqrt(x) + 1"
    assert canonical("căn(x+1)") == "sqrt(x+1)"


def test_math_terms_keep_powers_comparisons_and_fractions_whole() -> None:
    assert math_terms(canonical("x3 – 6x2 >= 1/9")) == ["x^3", "6x^2", ">=", "1/9"]


def test_bm25_terms_of_typed_and_latex_math_meet() -> None:
    typed, latex = set(analyze("x3 – 6x2 + 11x – 6 = 0")), set(analyze("$x^3 - 6x^2 + 11x - 6 = 0$"))
    assert {"x^3", "6x^2"} <= typed & latex
    assert "x3" not in typed  # before the normalisation the typed form was the single term "x3"


def test_for_embedding_writes_typed_math_as_the_lessons_latex() -> None:
    assert for_embedding("giải x2 – 5x + 6 ≥ 0") == "giải x^2 - 5x + 6 \\geq 0"
    assert for_embedding("tính sqrt(x+1) <= 2") == "tính \\sqrt{x+1} \\leq 2"
    assert for_embedding("cạnh x2") == "cạnh x2"
    assert for_embedding("tính $\\int_0^1 x^2\\,dx$") == "tính $\\int_0^1 x^2\\,dx$"  # already LaTeX: untouched


@given(st.sampled_from("xyzabtmn"), st.integers(2, 9), st.sampled_from(["+ 1", "- 3", "= 0", "> 2"]))
def test_latex_and_typed_powers_agree(variable: str, exponent: int, rest: str) -> None:
    expected = f"{variable}^{exponent} {rest.replace('> ', '> ')}"
    assert canonical(f"${variable}^{{{exponent}}} {rest}$") == canonical(f"{variable}{exponent} {rest}") == expected


PROSE = st.text(alphabet="aăâbcdđeêghiklmnoôơpqrstuưvxyàáảãạếềểễệóòỏõọ ,.", max_size=60)


@given(PROSE)
def test_prose_without_math_keeps_its_words(text: str) -> None:
    if "căn" in text or "sqrt" in text or "pi" in text:
        return
    assert canonical(text).split() == text.split()


@given(st.text(max_size=80))
def test_canonical_never_fails_and_is_stable(text: str) -> None:
    once = canonical(text)
    assert canonical(once) == once
