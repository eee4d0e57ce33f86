"""Query-path benchmark without the LLM: embed the question, search, build the prompt.

p50/p95 of embedding the question alone, and of the rest of the path with the question already embedded, on the
sample index and on a synthetic index of 10,000 chunks, per ranking method (and within one grade with --grade), in
one run. Target: the time beyond the embedding ≤ 20 ms at p50. `embeddings_per_question` counts the lesson ranker's
second embedding of an MCQ's options.

    python bench/query_bench.py [--index DIR] [--synthetic 10000] [--out bench/results/query.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from rag.answering import fit_budget
from rag.index import LessonIndex
from rag.prompts import format_chunk, tutor_template
from rag.ranking.base import QueryVectorCache
from rag.retrieval import Filters, Searcher
from rag.settings import Settings
from rag.workspace import make_ranker, open_index

ROOT = Path(__file__).resolve().parents[1]


def questions() -> list[str]:
    rows = [json.loads(line) for f in sorted((ROOT / "data/eval/parts").glob("*.jsonl")) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["question"] for r in rows if r.get("split") in {"validation", "sanity"}]  # never test


def build_prompt(question: str, hits, settings: Settings) -> int:
    budget = fit_budget(question, hits, [], settings)
    context = "\n\n".join(format_chunk(n, h) for n, h in enumerate(hits[: budget.chunks], start=1))
    return len(tutor_template().format_messages(history=[], question=question, context=context))


def percentiles(samples: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(samples, n=100)
    return {"p50_ms": 1000 * statistics.median(samples), "p95_ms": 1000 * qs[94]}


def measure(index: LessonIndex, embeddings, settings: Settings, qs: list[str], rounds: int, filters: Filters = Filters()) -> dict:
    """Embedding p50/p95 on its own, and the rest of the path (search, fusion, prompt) timed with every query vector
    already embedded: on a busy machine the difference of two noisy totals said little about a 20 ms budget."""
    embed_only = []
    for q in qs:
        started = time.perf_counter()
        embeddings.embed_query(q)
        embed_only.append(time.perf_counter() - started)
    cached = QueryVectorCache(embeddings, size=4 * len(qs))  # the rankers use it as is (QueryVectorCache.wrap)
    searcher = Searcher(make_ranker(settings, index, cached))
    for q in qs:  # untimed: embeds each question (an MCQ's stem and options apart) into the cache
        searcher.search(q, settings.top_k, filters=filters)
    embeddings_per_question = cached.cached() / len(qs)
    beyond = []
    for _ in range(rounds):
        for q in qs:
            started = time.perf_counter()
            hits = searcher.search(q, settings.top_k, filters=filters)
            build_prompt(q, hits, settings)
            beyond.append(time.perf_counter() - started)
    result = {"method": settings.retrieval_method, "grade": filters.grade, "chunks": index.count(), "queries": len(beyond),
              "embed": percentiles(embed_only), "embeddings_per_question": embeddings_per_question, "beyond": percentiles(beyond)}
    result["beyond_embedding_p50_ms"] = result["beyond"]["p50_ms"]
    result["beyond_embedding_p95_ms"] = result["beyond"]["p95_ms"]
    return result


def synthetic_index(settings: Settings, embeddings, size: int, texts: list[str]) -> LessonIndex:
    """An index of `size` chunks: real chunk texts repeated with random unit vectors (search cost, not quality)."""
    index = LessonIndex.open(settings, embeddings.identity)
    rng = np.random.default_rng(0)
    for start in range(0, size, 1000):
        n = min(1000, size - start)
        vectors = rng.normal(size=(n, embeddings.identity.dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"syn{start + i}" for i in range(n)]
        metas = [{"source": f"syn/{(start + i) // 15}.md", "heading_path": "Bài", "chunk_hash": f"s{start + i}",
                  "file_hash": "syn", "file_chunks": 1, "chunk_index": 0, "lesson": "Bài", "kind": "theory",
                  **({"grade": 10 + (start + i) % 3} if (start + i) % 10 else {})} for i in range(n)]  # 10% without a grade
        index.upsert(ids, vectors, [texts[(start + i) % len(texts)] + f" #{start + i}" for i in range(n)], metas)
    return index


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=Path, default=Path("vimath_index"))
    parser.add_argument("--synthetic", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/query.json")
    parser.add_argument("--methods", default="dense,hybrid,lesson", help="comma-separated ranking methods")
    parser.add_argument("--grade", type=int, default=None, help="also measure each method within this grade")
    args = parser.parse_args()
    settings = Settings(index_dir=args.index)
    index, embeddings = open_index(settings, create=False, announce=False)
    qs = questions()
    texts = index.collection.get(limit=500, include=["documents"])["documents"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        syn_settings = Settings(index_dir=Path(tmp), collection="synthetic_bench")
        synthetic = synthetic_index(syn_settings, embeddings, args.synthetic, texts)
        for method in args.methods.split(","):
            results[f"sample_{method}"] = measure(index, embeddings, settings.model_copy(update={"retrieval_method": method}), qs, args.rounds)
            results[f"synthetic_{method}"] = measure(synthetic, embeddings, syn_settings.model_copy(update={"retrieval_method": method}), qs, args.rounds)
            if args.grade is not None:
                results[f"synthetic_{method}_grade{args.grade}"] = measure(
                    synthetic, embeddings, syn_settings.model_copy(update={"retrieval_method": method}), qs, args.rounds, Filters(grade=args.grade))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
