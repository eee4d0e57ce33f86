"""Calibrate the grounding guard (settings.min_score) on the sample material.

Best cosine among the retrieved chunks of in-scope questions (validation + sanity splits; never test) against out-of-scope
questions (data/eval/out_of_scope.jsonl); prints both distributions and the threshold that separates them best
while refusing at most 3 % of in-scope questions.

    python bench/calibrate_guard.py [--index DIR]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rag.settings import Settings
from rag.workspace import open_searcher

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path, splits: set[str] | None = None) -> list[str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["question"] for r in rows if splits is None or r.get("split") in splits]


MAX_IN_SCOPE_REFUSED = 0.03  # refusing a real question costs more than answering an off-topic one: the prompt also says "not covered"


def best_threshold(inside: np.ndarray, outside: np.ndarray) -> tuple[float, float]:
    """The cut maximising balanced accuracy while refusing at most 3 % of in-scope questions; ties go lower."""
    candidates = [t for t in np.unique(np.concatenate([inside, outside])) if np.mean(inside < t) <= MAX_IN_SCOPE_REFUSED]
    scored = [((np.mean(inside >= t) + np.mean(outside < t)) / 2, -t) for t in candidates]
    accuracy, neg_t = max(scored)
    return float(-neg_t), float(accuracy)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=Path, default=Path("vimath_index"))
    args = parser.parse_args()
    settings = Settings(index_dir=args.index)
    searcher = open_searcher(settings, announce=False)
    inside_q = [q for f in sorted((ROOT / "data/eval/parts").glob("*.jsonl")) for q in load(f, {"validation", "sanity"})]
    outside_q = load(ROOT / "data/eval/out_of_scope.jsonl")
    # What the guard sees: the best cosine among the chunks the configured retrieval returns.
    best = lambda qs: np.array([max(h.score for h in searcher.search(q, settings.top_k)) for q in qs])
    inside, outside = best(inside_q), best(outside_q)
    threshold, accuracy = best_threshold(inside, outside)
    report = {
        "in_scope": {"n": len(inside), "min": inside.min(), "p5": np.percentile(inside, 5), "median": np.median(inside)},
        "out_of_scope": {"n": len(outside), "median": np.median(outside), "p95": np.percentile(outside, 95), "max": outside.max()},
        "threshold": threshold, "balanced_accuracy": accuracy,
        "in_scope_refused": int(np.sum(inside < threshold)), "out_of_scope_answered": int(np.sum(outside >= threshold)),
    }
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
