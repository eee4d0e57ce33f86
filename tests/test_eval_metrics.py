"""Metric values on hand-computed rankings, and the hard-negative rate."""
from __future__ import annotations

import math

import pytest

from rag.eval.metrics import HARD_NEGATIVE, METRICS, per_query, related_first, summarize

# Four queries with known ranks (n* are irrelevant chunks):
#   q1: correct at rank 1.
#   q2: correct at rank 3, the related chunk r2 at rank 2 (a hard negative above it).
#   q3: two correct chunks, only c3a retrieved, at rank 7.
#   q4: three correct chunks at ranks 2 and 5 (c4c missing); related r4 at rank 1.
RANKINGS = {
    "q1": ["c1", "n1", "n2"],
    "q2": ["n1", "r2", "c2", "n3"],
    "q3": ["n1", "n2", "n3", "n4", "n5", "n6", "c3a", "n7", "n8", "n9"],
    "q4": ["r4", "c4a", "n1", "n2", "c4b"],
}
CORRECT = {"q1": {"c1"}, "q2": {"c2"}, "q3": {"c3a", "c3b"}, "q4": {"c4a", "c4b", "c4c"}}
RELATED = {"q1": {"n9"}, "q2": {"r2"}, "q3": set(), "q4": {"r4"}}


def log2(x: float) -> float:
    return math.log2(x)


# Per query, computed by hand from the definitions.
EXPECTED = {
    "q1": {"MRR@10": 1.0, "Accuracy@1": 1.0, "Hit@1": 1.0, "Hit@3": 1.0, "Hit@5": 1.0, "nDCG@10": 1.0, "Recall@5": 1.0},
    "q2": {"MRR@10": 1 / 3, "Accuracy@1": 0.0, "Hit@1": 0.0, "Hit@3": 1.0, "Hit@5": 1.0,
           "nDCG@10": (1 / log2(4)) / 1.0, "Recall@5": 1.0},
    "q3": {"MRR@10": 1 / 7, "Accuracy@1": 0.0, "Hit@1": 0.0, "Hit@3": 0.0, "Hit@5": 0.0,
           "nDCG@10": (1 / log2(8)) / (1 + 1 / log2(3)), "Recall@5": 0.0},
    "q4": {"MRR@10": 1 / 2, "Accuracy@1": 0.0, "Hit@1": 0.0, "Hit@3": 1.0, "Hit@5": 1.0,
           "nDCG@10": (1 / log2(3) + 1 / log2(6)) / (1 + 1 / log2(3) + 1 / log2(4)), "Recall@5": 2 / 3},
}


def test_per_query_values_match_hand_computation() -> None:
    values = per_query(RANKINGS, CORRECT)
    for qid, expected in EXPECTED.items():
        for name, value in expected.items():
            assert values[qid][name] == pytest.approx(value), (qid, name)


def test_means_match_hand_computation() -> None:
    summary = summarize(RANKINGS, CORRECT, RELATED)
    assert set(summary) == set(METRICS)
    assert summary["MRR@10"] == pytest.approx((1 + 1 / 3 + 1 / 7 + 1 / 2) / 4)
    assert summary["Accuracy@1"] == pytest.approx(1 / 4)
    assert summary["Hit@1"] == pytest.approx(1 / 4)
    assert summary["Hit@3"] == pytest.approx(3 / 4)
    assert summary["Hit@5"] == pytest.approx(3 / 4)
    assert summary["Recall@5"] == pytest.approx((1 + 1 + 0 + 2 / 3) / 4)
    assert summary["nDCG@10"] == pytest.approx(sum(EXPECTED[q]["nDCG@10"] for q in EXPECTED) / 4)
    # q2 and q4 have a related chunk above every correct one; q1's related chunk is not retrieved; q3 has none.
    assert summary[HARD_NEGATIVE] == pytest.approx(2 / 4)


def test_empty_ranking_scores_zero() -> None:
    summary = summarize({"q": []}, {"q": {"c"}}, {"q": {"r"}})
    assert all(summary[name] == 0.0 for name in METRICS)


def test_order_is_kept_exactly_not_re_sorted() -> None:
    # ranx sorts by score; the pseudo-scores must reproduce our order (here: correct chunk second).
    values = per_query({"q": ["z", "a"]}, {"q": {"a"}})
    assert values["q"]["MRR@10"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("ranking", "expected"),
    [
        (["r", "c"], True),  # related first
        (["c", "r"], False),  # correct first
        (["n", "n2"], False),  # neither
        (["n"] * 10 + ["r"], False),  # related only beyond the top 10
        (["n", "r"], True),  # related in the top 10 and no correct at all
    ],
)
def test_related_first(ranking: list[str], expected: bool) -> None:
    assert related_first(ranking, {"c"}, {"r"}) is expected
