"""Hybrid retrieval with section/lesson evidence, a theory-before-exercises prior, and MCQ stems apart from options.

Per chunk, a weighted reciprocal rank fusion of the dense and the BM25 rankings over a deeper candidate pool:

    s(c) = w_dense / (K + rank_dense(c)) + w_bm25 / (K + rank_bm25(c))        (a missing rank adds 0)

then multiplied by the prior of the chunk's kind (`KIND_PRIOR`: exercise and review pages below theory and worked
examples). The evidence of a lesson (and of a section, its heading path) is the sum of its chunks' scores with a
geometric decay, best first:

    E(g) = Σ_i DECAY^i · s(c_i),   c_0, c_1, … the chunks of g in the pool by s, best first

and a chunk's final score adds its group's evidence beyond its own: f(c) = s(c) + LESSON_WEIGHT·(E(lesson) − s(c))
+ SECTION_WEIGHT·(E(section) − s(c)). So a lesson with several matching chunks beats one lucky chunk elsewhere,
while the order inside a lesson stays that of s.

An MCQ question ("… A. … B. … C. … D. …") is ranked twice, the stem and the options apart, and the two final
scores are added with weight OPTIONS_WEIGHT for the options: the options often name what the stem does not.

Every constant was chosen on the validation split (bench/tune_ranking.py prints the grid); test was not looked at.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag.embeddings import E5Embeddings
from rag.index import Hit, LessonIndex
from rag.mathnorm import for_embedding
from rag.ranking.base import QueryVectorCache
from rag.ranking.bm25 import BM25Ranker, allowed_ids, hits_for
from rag.schema import HEADING_PATH, KIND, SOURCE

# Chosen on the validation split (python bench/tune_ranking.py; MRR@10 / Hit@5 without and with grade scope,
# 92 questions): plain RRF (pool 30, K 60, equal weights) 0.623 / 0.793 and 0.643 / 0.804; these constants
# 0.737 / 0.880 and 0.734 / 0.913. Lesson-level evidence (LESSON_WEIGHT > 0) lowered MRR there and is off; section
# evidence helped. Embedding the question in LaTeX style (latex_query) did not help the dense ranking and is off.
RRF_K = 10
POOL = 30  # candidates per ranking
W_DENSE, W_BM25 = 1.0, 1.5
DECAY = 0.5
LESSON_WEIGHT = 0.0
SECTION_WEIGHT = 0.3
OPTIONS_WEIGHT = 0.5
KIND_PRIOR = {"exercise": 0.8, "review": 0.8}  # other kinds 1.0

_OPTION = re.compile(r"(?:^|(?<=\s))\(?([A-D])[.):]\s+", re.MULTILINE)


@dataclass(frozen=True)
class Params:
    """The ranking's constants, one object so the tuning script can vary them."""

    pool: int = POOL
    rrf_k: int = RRF_K
    w_dense: float = W_DENSE
    w_bm25: float = W_BM25
    decay: float = DECAY
    lesson_weight: float = LESSON_WEIGHT
    section_weight: float = SECTION_WEIGHT
    options_weight: float = OPTIONS_WEIGHT
    kind_prior: tuple[tuple[str, float], ...] = tuple(KIND_PRIOR.items())
    split_options: bool = True  # rank an MCQ's stem and options apart
    latex_query: bool = False  # embed the question with its plain-text math in LaTeX style (rag.mathnorm.for_embedding)


def split_mcq(question: str) -> tuple[str, str | None]:
    """(stem, options text) of a multiple-choice question with options A–D in order; (question, None) otherwise."""
    marks = list(_OPTION.finditer(question))
    letters = [m.group(1) for m in marks]
    # the first A … with at least B and C after it, in order
    for start, mark in enumerate(marks):
        if mark.group(1) != "A":
            continue
        sequence, expected = [mark], "B"
        for later in marks[start + 1 :]:
            if later.group(1) == expected:
                sequence.append(later)
                expected = chr(ord(expected) + 1)
        if len(sequence) >= 3 and "C" in letters:
            stem = question[: mark.start()].strip()
            options = " ; ".join(question[a.end() : b.start() if b is not None else len(question)].strip()
                                 for a, b in zip(sequence, [*sequence[1:], None]))
            if stem and options.strip(" ;"):
                return stem, options
    return question, None


def chunk_scores(dense: Sequence[str], lexical: Sequence[str], p: Params) -> dict[str, float]:
    """s(c): weighted RRF of the two rankings (ids, best first)."""
    scores: dict[str, float] = defaultdict(float)
    for weight, ranking in ((p.w_dense, dense), (p.w_bm25, lexical)):
        for rank, item in enumerate(dict.fromkeys(ranking), start=1):
            scores[item] += weight / (p.rrf_k + rank)
    return dict(scores)


def group_evidence(scores: dict[str, float], group_of: dict[str, str], decay: float) -> dict[str, float]:
    """E(g) = Σ_i decay^i · s(c_i) over each group's chunks, best first."""
    members: dict[str, list[float]] = defaultdict(list)
    for item, score in scores.items():
        members[group_of[item]].append(score)
    return {g: sum(s * decay**i for i, s in enumerate(sorted(values, reverse=True))) for g, values in members.items()}


def final_scores(dense: Sequence[str], lexical: Sequence[str], meta: dict[str, dict[str, Any]], p: Params) -> dict[str, float]:
    """f(c) for every candidate (see the module's docstring)."""
    prior = dict(p.kind_prior)
    scores = {c: s * prior.get(str(meta[c].get(KIND, "")), 1.0) for c, s in chunk_scores(dense, lexical, p).items()}
    lesson_of = {c: str(meta[c].get(SOURCE, "")) for c in scores}
    section_of = {c: f"{lesson_of[c]}\0{meta[c].get(HEADING_PATH, '')}" for c in scores}
    lessons = group_evidence(scores, lesson_of, p.decay) if p.lesson_weight else {}
    sections = group_evidence(scores, section_of, p.decay) if p.section_weight else {}
    return {c: s + p.lesson_weight * (lessons.get(lesson_of[c], s) - s) + p.section_weight * (sections.get(section_of[c], s) - s)
            for c, s in scores.items()}


def combine(stem: dict[str, float], options: dict[str, float] | None, weight: float) -> dict[str, float]:
    """The stem's scores plus `weight` × the options' scores."""
    if not options:
        return stem
    out = dict(stem)
    for item, score in options.items():
        out[item] = out.get(item, 0.0) + weight * score
    return out


class LessonRanker:
    """Hybrid (dense + BM25) with lesson evidence, kind prior and MCQ splitting; `score` stays the dense cosine."""

    def __init__(self, index: LessonIndex, embeddings: E5Embeddings, lexical: BM25Ranker, params: Params = Params()) -> None:
        self.index = index
        self.embeddings = embeddings
        self.lexical = lexical
        self.params = params

    def candidates(self, query: str, where: dict[str, Any] | None) -> tuple[list[float], list[Hit], list[tuple[str, float]]]:
        """The query vector (the query in the lessons' LaTeX style), the dense hits and the BM25 (id, score) pairs."""
        pool = self.params.pool
        vector = self.embeddings.embed_query(for_embedding(query) if self.params.latex_query else query)
        return vector, self.index.search(vector, pool, where), self.lexical.current().top(query, pool, allowed_ids(self.index, where))

    def rank(self, query: str, k: int, where: dict[str, Any] | None) -> list[Hit]:
        stem, options = split_mcq(query) if self.params.split_options else (query, None)
        parts = [stem] if options is None else [stem, options]
        hits: dict[str, Hit] = {}
        bm25: dict[str, float] = {}
        meta: dict[str, dict[str, Any]] = {}
        scored: list[dict[str, float]] = []
        vector: list[float] = []
        for part in parts:
            part_vector, dense, lexical = self.candidates(part, where)
            vector = vector or part_vector  # the stem's: hits are scored (for the guard) against the question proper
            hits.update({h.id: h for h in dense})
            # BM25's candidates that the dense search did not return: read whole in one call (text, metadata, and the
            # vector for their cosine), not their metadata now and the winners' text later (one round trip less)
            hits.update({h.id: h for h in hits_for(self.index, [i for i, _ in lexical if i not in hits], vector)})
            meta.update({i: h.metadata for i, h in hits.items() if i not in meta})
            for i, s in lexical:
                bm25.setdefault(i, s)
            scored.append(final_scores([h.id for h in dense], [i for i, _ in lexical], meta, self.params))
        fused = combine(scored[0], scored[1] if len(scored) > 1 else None, self.params.options_weight)
        order = sorted(fused, key=lambda c: (-fused[c], c))[:k]
        return [_annotated(hits[i], fused[i], bm25.get(i)) for i in order if i in hits]


def _annotated(hit: Hit, score: float, bm25: float | None) -> Hit:
    extra: dict[str, Any] = {"lesson_score": score} if bm25 is None else {"lesson_score": score, "bm25": bm25}
    return Hit(hit.id, hit.text, {**hit.metadata, **extra}, hit.score)


def build(index: LessonIndex, embeddings: E5Embeddings) -> LessonRanker:
    shared = QueryVectorCache.wrap(embeddings)
    return LessonRanker(index, shared, BM25Ranker(index, shared))
