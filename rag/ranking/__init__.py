"""Ranking methods: one module per method, one registry that names each (like sentence-transformers' backend/load.py).

A new method is one module with a `build(index, embeddings) -> Ranker` and one entry in `RANKERS`; the settings,
the CLIs, the evaluation and the model card all read the names from here. Modules are imported only when their
method is asked for, so the dense path never loads pyvi or bm25s.
"""
from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rag.embeddings import E5Embeddings
    from rag.index import LessonIndex
    from rag.ranking.base import Ranker

# name → module holding its `build`; the order is the order reports list them in
RANKERS: dict[str, str] = {
    "dense": "rag.ranking.dense",
    "bm25": "rag.ranking.bm25",
    "hybrid": "rag.ranking.hybrid",
    "lesson": "rag.ranking.lesson",  # hybrid + lesson evidence + kind prior + MCQ stem/options
}
METHODS: tuple[str, ...] = tuple(RANKERS)
# lesson beat hybrid (and hybrid dense) on the validation split (python -m rag.eval --split validation --all-methods)
DEFAULT_METHOD = "lesson"


def check_method(name: str) -> str:
    """The name if it is a known method, else a ValueError listing the valid ones."""
    if name not in RANKERS:
        raise ValueError(f"unknown retrieval method {name!r}; choose one of: {', '.join(METHODS)}")
    return name


def make_ranker(method: str, index: LessonIndex, embeddings: E5Embeddings) -> Ranker:
    """The ranker of that method over the index (every method scores hits by dense cosine)."""
    return import_module(RANKERS[check_method(method)]).build(index, embeddings)


# Modules keeping data derived from the index's chunks (BM25's persisted terms and snapshot) in step with it: the
# ingest job (rag.ingestion, a layer below the rankers) reaches them by name here, as make_ranker reaches rankers.
FOLLOWERS: tuple[str, ...] = ("rag.ranking.bm25",)


class IndexFollower(Protocol):
    """Told by the ingest job of the chunks it is about to write, and when its run is over."""

    def before_write(self, texts: Mapping[str, str]) -> None:
        """{chunk hash: text} of chunks about to be written (before they become visible to readers)."""

    def after_run(self) -> None:
        """The run's writes are done (made live, for a rebuild that succeeded)."""


def index_followers(index: LessonIndex) -> list[IndexFollower]:
    """A follower per module in FOLLOWERS, for this index (each module has `follow(index)`)."""
    return [import_module(name).follow(index) for name in FOLLOWERS]
