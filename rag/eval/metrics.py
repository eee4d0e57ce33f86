"""Retrieval metrics with ranx (binary relevance: the correct chunks), plus the hard-negative rate."""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

# Our names → ranx metric names. Accuracy@1 (top-1 correct) is precision@1 under binary relevance.
RANX_METRICS: dict[str, str] = {
    "MRR@10": "mrr@10",
    "Accuracy@1": "precision@1",
    "Hit@1": "hit_rate@1",
    "Hit@3": "hit_rate@3",
    "Hit@5": "hit_rate@5",
    "nDCG@10": "ndcg@10",
    "Recall@5": "recall@5",
}
HARD_NEGATIVE = "HardNegativeAbove@10"
METRICS = (*RANX_METRICS, HARD_NEGATIVE)
LOWER_IS_BETTER = frozenset({HARD_NEGATIVE})
DEPTH = 10

Rankings = Mapping[str, Sequence[str]]  # query id → chunk ids, best first
Labels = Mapping[str, frozenset[str] | set[str]]  # query id → chunk ids


def _ranx(rankings: Rankings, correct: Labels) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """ranx's mean of every metric, and its per-query values (ranx name → query id → value)."""
    from numba.core.errors import NumbaTypeSafetyWarning
    from ranx import (  # numba-compiled: imported only when evaluating
        Qrels,
        Run,
        evaluate,
    )

    # ranx orders by score: decreasing pseudo-scores keep our order exactly (no ties for ranx to break)
    retrieved = {q: {c: float(DEPTH - r) for r, c in enumerate(list(dict.fromkeys(rankings.get(q, ())))[:DEPTH])}
                 for q in correct}
    if not any(retrieved.values()):  # ranx cannot build a run without a single document; every metric is 0
        return {m: 0.0 for m in RANX_METRICS.values()}, {m: {q: 0.0 for q in correct} for m in RANX_METRICS.values()}
    qrels = Qrels({q: {c: 1 for c in correct[q]} for q in correct})
    run = Run({q: docs for q, docs in retrieved.items() if docs})  # make_comparable adds the empty ones back
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaTypeSafetyWarning)  # ranx's own uint64→int64 cast, harmless
        means = evaluate(qrels, run, list(RANX_METRICS.values()), make_comparable=True)
    return ({m: float(v) for m, v in means.items()},  # type: ignore[union-attr]
            {m: {q: float(run.scores[m].get(q, 0.0)) for q in correct} for m in RANX_METRICS.values()})


def per_query(rankings: Rankings, correct: Labels) -> dict[str, dict[str, float]]:
    """Each metric for each query of `correct` (every one needs at least one correct chunk)."""
    if not correct:
        return {}
    _, values = _ranx(rankings, correct)
    return {q: {name: values[ranx_name][q] for name, ranx_name in RANX_METRICS.items()} for q in correct}


def related_first(ranking: Sequence[str], correct: frozenset[str] | set[str], related: frozenset[str] | set[str], depth: int = DEPTH) -> bool:
    """Whether a related chunk (hard negative) comes before every correct chunk within the top `depth`."""
    for chunk_id in ranking[:depth]:
        if chunk_id in correct:
            return False
        if chunk_id in related:
            return True
    return False


def summarize(rankings: Rankings, correct: Labels, related: Labels) -> dict[str, float]:
    """Every metric averaged over the queries of `correct`, and the hard-negative rate."""
    if not correct:
        return {name: 0.0 for name in METRICS}
    means, _ = _ranx(rankings, correct)
    summary = {name: means[ranx_name] for name, ranx_name in RANX_METRICS.items()}
    above = [related_first(rankings.get(q, ()), correct[q], related.get(q, frozenset())) for q in correct]
    summary[HARD_NEGATIVE] = float(np.mean(above))
    return summary
