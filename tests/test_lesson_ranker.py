"""The `lesson` ranker: weighted RRF, kind prior, lesson/section evidence, MCQ stem and options apart."""
from __future__ import annotations

import pytest

from rag.ranking.lesson import Params, chunk_scores, combine, final_scores, group_evidence, split_mcq

P = Params(rrf_k=60, w_dense=1.0, w_bm25=1.0, decay=0.5, lesson_weight=0.0, section_weight=0.0, kind_prior=())


def test_chunk_scores_are_weighted_reciprocal_ranks() -> None:
    p = Params(rrf_k=60, w_dense=1.0, w_bm25=2.0)
    scores = chunk_scores(["a", "b"], ["b", "c"], p)
    assert scores["a"] == pytest.approx(1 / 61)
    assert scores["b"] == pytest.approx(1 / 62 + 2 / 61)
    assert scores["c"] == pytest.approx(2 / 62)


def test_group_evidence_is_a_decayed_sum_best_first() -> None:
    scores = {"a": 0.1, "b": 0.3, "c": 0.2, "d": 0.05}
    groups = {"a": "L1", "b": "L1", "c": "L1", "d": "L2"}
    evidence = group_evidence(scores, groups, decay=0.5)
    assert evidence["L1"] == pytest.approx(0.3 + 0.5 * 0.2 + 0.25 * 0.1)
    assert evidence["L2"] == pytest.approx(0.05)


def meta(source: str, heading: str = "h", kind: str = "theory") -> dict[str, str]:
    return {"source": source, "heading_path": heading, "kind": kind}


def test_a_lesson_with_several_matching_chunks_beats_one_lucky_chunk() -> None:
    metas = {"lucky": meta("other.md"), "a1": meta("right.md"), "a2": meta("right.md"), "a3": meta("right.md")}
    dense, lexical = ["lucky", "a1", "a2", "a3"], ["lucky", "a2", "a1", "a3"]
    plain = final_scores(dense, lexical, metas, P)
    assert max(plain, key=plain.__getitem__) == "lucky"  # without lesson evidence
    p = Params(rrf_k=60, w_dense=1.0, w_bm25=1.0, decay=0.5, lesson_weight=0.5, section_weight=0.0, kind_prior=())
    s = chunk_scores(dense, lexical, p)
    scores = final_scores(dense, lexical, metas, p)
    right = sorted((s["a1"], s["a2"], s["a3"]), reverse=True)
    evidence = right[0] + 0.5 * right[1] + 0.25 * right[2]
    assert scores["a1"] == pytest.approx(s["a1"] + 0.5 * (evidence - s["a1"]))
    assert scores["lucky"] == pytest.approx(s["lucky"])  # alone in its lesson: E = s, nothing added
    assert max(scores, key=scores.__getitem__) == "a1"


def test_section_evidence_counts_chunks_under_the_same_heading() -> None:
    metas = {"x": meta("l.md", "A"), "y": meta("l.md", "A"), "z": meta("l.md", "B")}
    p = Params(rrf_k=60, w_dense=1.0, w_bm25=1.0, decay=0.5, lesson_weight=0.0, section_weight=1.0, kind_prior=())
    s = chunk_scores(["x", "y", "z"], [], p)
    scores = final_scores(["x", "y", "z"], [], metas, p)
    assert scores["x"] == pytest.approx(s["x"] + (s["x"] + 0.5 * s["y"] - s["x"]))
    assert scores["y"] == pytest.approx(s["y"] + (s["x"] + 0.5 * s["y"] - s["y"]))
    assert scores["z"] == pytest.approx(s["z"])


def test_kind_prior_puts_theory_before_a_bare_exercise() -> None:
    metas = {"ex": meta("a.md", kind="exercise"), "th": meta("b.md", kind="definition")}
    p = Params(rrf_k=60, w_dense=1.0, w_bm25=1.0, lesson_weight=0.0, section_weight=0.0, kind_prior=(("exercise", 0.9),))
    scores = final_scores(["ex", "th"], ["ex", "th"], metas, p)
    assert scores["ex"] == pytest.approx(0.9 * 2 / 61)
    assert scores["th"] == pytest.approx(2 / 62)
    assert scores["th"] > scores["ex"]  # 2/62 > 0.9·2/61


def test_combine_adds_the_weighted_option_scores() -> None:
    assert combine({"a": 1.0}, None, 0.5) == {"a": 1.0}
    assert combine({"a": 1.0, "b": 0.2}, {"b": 0.4, "c": 0.6}, 0.5) == pytest.approx({"a": 1.0, "b": 0.4, "c": 0.3})


@pytest.mark.parametrize(("question", "stem", "options"), [
    ("Giá trị của log_2 8 là A. 3 B. 4 C. 1/3 D. 2", "Giá trị của log_2 8 là", "3 ; 4 ; 1/3 ; 2"),
    ("Hàm số nào nghịch biến?\nA. y = 2^x\nB. y = (1/3)^x\nC. y = e^x\nD. y = 3^x",
     "Hàm số nào nghịch biến?", "y = 2^x ; y = (1/3)^x ; y = e^x ; y = 3^x"),
    ("Chọn đáp án đúng: A) 1 B) 2 C) 3", "Chọn đáp án đúng:", "1 ; 2 ; 3"),
])
def test_split_mcq(question: str, stem: str, options: str) -> None:
    assert split_mcq(question) == (stem, options)


@pytest.mark.parametrize("question", [
    "Cho tam giác ABC. Tính góc A. biết B. cạnh",  # letters, but not options A–C in order
    "điểm A. và điểm B. nằm trên trục",
    "A. 1 B. 2 C. 3",  # no stem
    "đạo hàm của x^2 là gì",
])
def test_not_an_mcq(question: str) -> None:
    assert split_mcq(question) == (question, None)
