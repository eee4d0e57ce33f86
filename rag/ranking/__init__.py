"""Ranking methods: one module per method, one registry that names each (like sentence-transformers' backend/load.py).

A new method is one module with a `build(index, embeddings) -> Ranker` and one entry in `RANKERS`; the settings,
the CLIs, the evaluation and the model card all read the names from here. Modules are imported only when their
method is asked for, so the dense path never loads pyvi or bm25s.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rag.embeddings import E5Embeddings
    from rag.index import LessonIndex
    from rag.ranking.base import Ranker

# name → module holding its `build`; the order is the order reports list them in
RANKERS: dict[str, str] = {
    "dense": "rag.ranking.dense",
    "bm25": "rag.ranking.bm25",
    "hybrid": "rag.ranking.hybrid",
}
METHODS: tuple[str, ...] = tuple(RANKERS)
# hybrid beat dense on every metric of the validation split (python -m rag.eval --split validation --all-methods)
DEFAULT_METHOD = "hybrid"


def check_method(name: str) -> str:
    """The name if it is a known method, else a ValueError listing the valid ones."""
    if name not in RANKERS:
        raise ValueError(f"unknown retrieval method {name!r}; choose one of: {', '.join(METHODS)}")
    return name


def make_ranker(method: str, index: LessonIndex, embeddings: E5Embeddings) -> Ranker:
    """The ranker of that method over the index (every method scores hits by dense cosine)."""
    return import_module(RANKERS[check_method(method)]).build(index, embeddings)
