"""Retrieval evaluation: labelled questions (dataset), ranx metrics (metrics), reports (report), the CLI (__main__).

`evaluate` runs questions through a `rag.retrieval.Searcher`, the chat's own retrieval path, and scores the rankings.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from rag.eval.dataset import EvalSet, ResolvedQuestion
from rag.eval.metrics import DEPTH, per_query, related_first, summarize
from rag.eval.report import QueryResult, Shown
from rag.retrieval import Filters, Searcher


def rank_all(searcher: Searcher, questions: Iterable[ResolvedQuestion], k: int = DEPTH,
             progress: Callable[[], None] | None = None, grade_scope: bool = False,
             book_scope: bool = False) -> dict[str, tuple[Shown, ...]]:
    """Each question's top k, no score threshold; with `grade_scope`, within the question's own grade, with
    `book_scope` within its own book (each plus the material without one)."""
    ranked: dict[str, tuple[Shown, ...]] = {}
    for q in questions:
        filters = Filters(grade=q.question.grade if grade_scope else None, book=q.question.book if book_scope else None)
        ranked[q.question.id] = tuple(Shown.of(h) for h in searcher.search(q.question.question, k, filters=filters))
        if progress:
            progress()
    return ranked


def evaluate(searcher: Searcher, eval_set: EvalSet, progress: Callable[[], None] | None = None,
             grade_scope: bool = False, book_scope: bool = False) -> tuple[dict[str, float], list[QueryResult]]:
    """Metrics over the scorable questions, and each question's result."""
    scorable = eval_set.scorable
    ranked = rank_all(searcher, scorable, DEPTH, progress, grade_scope, book_scope)
    rankings = {qid: [h.id for h in hits] for qid, hits in ranked.items()}
    correct = {q.question.id: q.correct for q in scorable}
    related = {q.question.id: q.related for q in scorable}
    values = per_query(rankings, correct)
    results = [QueryResult(q.question.id, q.question.question, q.question.type, q.correct, q.related,
                           ranked[q.question.id], values[q.question.id],
                           related_first(rankings[q.question.id], q.correct, q.related), q.question.grade, q.question.style,
                           q.question.book)
               for q in scorable]
    return summarize(rankings, correct, related), results


__all__ = ["evaluate", "rank_all"]
