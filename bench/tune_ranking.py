"""Tune the `lesson` ranker's constants (rag/ranking/lesson.py) on the validation split — never on test.

Retrieves each question's dense and BM25 candidates once (with and without its grade scope, with the raw and the
LaTeX-styled query), then scores every configuration offline, by coordinate ascent from the current constants.
Objective: the mean of chunk MRR@10 without and with grade scope.

    python bench/tune_ranking.py [--split validation] [--embedder bundled] [--passes 2]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from rag.cli_args import add_settings_args, settings_from_args
from rag.eval.__main__ import built_index
from rag.eval.dataset import load_questions, resolve_against
from rag.mathnorm import for_embedding
from rag.ranking.base import QueryVectorCache
from rag.ranking.bm25 import BM25Ranker
from rag.ranking.lesson import Params, combine, final_scores, split_mcq
from rag.retrieval import Filters

ROOT = Path(__file__).resolve().parents[1]
DEPTH = 10
GRID = {
    "pool": [30, 40, 60],
    "w_bm25": [0.5, 0.75, 1.0, 1.25, 1.5],
    "rrf_k": [10, 30, 60],
    "lesson_weight": [0.0, 0.1, 0.2, 0.3, 0.5, 0.8],
    "section_weight": [0.0, 0.1, 0.3, 0.5],
    "decay": [0.3, 0.5, 0.7, 0.9],
    "options_weight": [0.0, 0.25, 0.5, 1.0],
    "exercise": [1.0, 0.95, 0.9, 0.8, 0.7],
    "review": [1.0, 0.95, 0.9, 0.8, 0.7, 0.6],
    "split_options": [False, True],
    "latex_query": [False, True],
}


def collect(index, embeddings, lexical, questions, pool):
    """Per (question, scope): for each query part, dense ids (raw and LaTeX-styled) and BM25 ids; plus metadata."""
    meta: dict[str, dict] = {}
    data = []
    for q in questions:
        for scope in (False, True):
            where = Filters(grade=q.question.grade).where() if scope and q.question.grade else None
            parts = {}
            for split in (False, True):
                stem, options = split_mcq(q.question.question) if split else (q.question.question, None)
                texts = [stem] if options is None else [stem, options]
                runs = []
                for text in texts:
                    run = {}
                    for latex in (False, True):
                        hits = index.search(embeddings.embed_query(for_embedding(text) if latex else text), pool, where)
                        meta.update({h.id: h.metadata for h in hits})
                        run[latex] = [h.id for h in hits]
                    run["bm25"] = [i for i, _ in lexical.top(text, pool, where)]
                    runs.append(run)
                parts[split] = runs
            data.append((q, scope, parts))
    missing = sorted({i for _, _, parts in data for runs in parts.values() for r in runs for i in r["bm25"]} - set(meta))
    if missing:
        page = index.collection.get(ids=missing, include=["metadatas"])
        meta.update(dict(zip(page["ids"], page["metadatas"])))
    return data, meta


def score(data, meta, p: Params) -> dict[str, float]:
    totals = {False: [0.0, 0.0, 0], True: [0.0, 0.0, 0]}
    for q, scope, parts in data:
        runs = parts[p.split_options]
        scored = [final_scores(r[p.latex_query][: p.pool], r["bm25"][: p.pool], meta, p) for r in runs]
        fused = combine(scored[0], scored[1] if len(scored) > 1 else None, p.options_weight)
        order = sorted(fused, key=lambda c: (-fused[c], c))[:DEPTH]
        rank = next((n for n, c in enumerate(order, start=1) if c in q.correct), None)
        t = totals[scope]
        t[0] += 1 / rank if rank else 0.0
        t[1] += 1.0 if rank and rank <= 5 else 0.0
        t[2] += 1
    out = {}
    for scope, (mrr, hit5, n) in totals.items():
        name = "scoped" if scope else "all"
        out[f"MRR@10 {name}"], out[f"Hit@5 {name}"] = mrr / n, hit5 / n
    out["objective"] = (out["MRR@10 all"] + out["MRR@10 scoped"]) / 2
    return out


def with_value(p: Params, name: str, value) -> Params:
    if name in {"exercise", "review"}:
        prior = dict(p.kind_prior)
        prior[name] = value
        return replace(p, kind_prior=tuple(sorted(prior.items())))
    return replace(p, **{name: value})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--lessons", type=Path, default=ROOT / "data/lessons")
    parser.add_argument("--passes", type=int, default=2)
    add_settings_args(parser)
    args = parser.parse_args()
    settings = settings_from_args(args)
    index, embeddings, _ = built_index(settings, settings.embedder, args.lessons)
    questions = load_questions(ROOT / f"data/eval/{args.split}.jsonl", args.split)
    eval_set = resolve_against(index, questions)
    embeddings = QueryVectorCache(embeddings, size=100_000)  # each distinct text embedded once across scopes
    lexical = BM25Ranker(index, embeddings)
    data, meta = collect(index, embeddings, lexical, eval_set.scorable, max(GRID["pool"]))
    baseline = Params(pool=30, lesson_weight=0.0, section_weight=0.0, kind_prior=(), split_options=False, latex_query=False)
    print("hybrid-equivalent baseline:", json.dumps(score(data, meta, baseline)), file=sys.stderr)
    best = Params()
    best_score = score(data, meta, best)
    print("current constants:", json.dumps(best_score), file=sys.stderr)
    for _ in range(args.passes):
        for name, values in GRID.items():
            for value in values:
                candidate = with_value(best, name, value)
                result = score(data, meta, candidate)
                if result["objective"] > best_score["objective"] + 1e-9:
                    best, best_score = candidate, result
                    print(f"  {name}={value}: {json.dumps(result)}", file=sys.stderr)
    print(json.dumps({"params": asdict(best), "validation": best_score}, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
