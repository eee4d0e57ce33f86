"""Evaluation results and their reports: a JSON object per configuration, and Markdown with side-by-side tables."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.eval.dataset import Unmatched
from rag.eval.metrics import DEPTH, HARD_NEGATIVE, LOWER_IS_BETTER, METRICS
from rag.index import Hit

SNIPPET_CHARS = 120


@dataclass(frozen=True)
class Shown:
    """A retrieved chunk as the reports show it."""

    id: str
    source: str
    heading_path: str
    score: float
    text: str

    @classmethod
    def of(cls, hit: Hit) -> Shown:
        return cls(hit.id, str(hit.metadata.get("source", "")), str(hit.metadata.get("heading_path", "")), hit.score, hit.text)

    def snippet(self) -> str:
        """The start of the chunk's body (its heading line is shown apart)."""
        text = self.text[len(self.heading_path):] if self.heading_path and self.text.startswith(self.heading_path) else self.text
        body = " ".join(text.split())
        return body if len(body) <= SNIPPET_CHARS else body[: SNIPPET_CHARS - 1] + "…"


@dataclass(frozen=True)
class QueryResult:
    """One question's ranking and metric values under one configuration."""

    id: str
    question: str
    type: str | None
    correct: frozenset[str]
    related: frozenset[str]
    hits: tuple[Shown, ...]
    values: dict[str, float]
    related_first: bool
    grade: int | None = None
    style: str | None = None
    book: str | None = None

    @property
    def first_correct_rank(self) -> int | None:
        return next((r for r, h in enumerate(self.hits, start=1) if h.id in self.correct), None)

    @property
    def failed(self) -> bool:
        """Top-1 is not a correct chunk."""
        return self.first_correct_rank != 1

    def to_json(self) -> dict[str, Any]:
        top = self.hits[0] if self.hits else None
        return {
            "id": self.id, "question": self.question, "type": self.type, "grade": self.grade, "book": self.book, "style": self.style,
            "first_correct_rank": self.first_correct_rank, "related_first": self.related_first,
            "top1": None if top is None else {"id": top.id, "source": top.source, "heading_path": top.heading_path,
                                              "score": round(top.score, 6), "related": top.id in self.related,
                                              "text": top.snippet()},
            "ranking": [h.id for h in self.hits],
            "metrics": self.values,
        }


@dataclass
class RunResult:
    """One configuration (embedder × method) evaluated on one question set."""

    name: str
    embedder: str
    embedder_spec: str
    method: str
    index: str
    chunks: int
    dataset: str
    split: str | None
    summary: dict[str, float]
    queries: list[QueryResult]
    unmatched: list[Unmatched] = field(default_factory=list)
    unscorable: list[str] = field(default_factory=list)
    grade_scope: bool = False  # each question searched within its own grade (and material without a grade)
    book_scope: bool = False  # likewise within its own book

    @property
    def failed(self) -> list[QueryResult]:
        return [q for q in self.queries if q.failed]

    def to_json(self) -> dict[str, Any]:
        return {
            **{name: self.summary[name] for name in METRICS},
            "queries": len(self.queries),
            "unscorable": self.unscorable,
            "unmatched_labels": [u.to_json() for u in self.unmatched],
            "embedder": self.embedder,
            "embedder_spec": self.embedder_spec,
            "method": self.method,
            "index": self.index,
            "chunks": self.chunks,
            "dataset": self.dataset,
            "split": self.split,
            "k": DEPTH,
            "grade_scope": self.grade_scope,
            "book_scope": self.book_scope,
            "by_grade": breakdown(self.queries, "grade"),
            "by_book": breakdown(self.queries, "book"),
            "by_style": breakdown(self.queries, "style"),
            "failed": [q.to_json() for q in self.failed],
            "per_query": [q.to_json() for q in self.queries],
        }


BREAKDOWN_METRICS = ("MRR@10", "Hit@1", "Hit@5", "nDCG@10")


def breakdown(queries: Sequence[QueryResult], attribute: str) -> dict[str, dict[str, float]]:
    """Mean metrics per value of a question attribute ("grade" or "style"; "none" when a question has none)."""
    groups: dict[str, list[QueryResult]] = {}
    for q in queries:
        groups.setdefault(str(getattr(q, attribute) if getattr(q, attribute) is not None else "none"), []).append(q)
    return {value: {"questions": float(len(members)),
                    **{m: sum(q.values[m] for q in members) / len(members) for m in BREAKDOWN_METRICS}}
            for value, members in sorted(groups.items())}


def breakdown_table(results: Sequence[RunResult], keys: Sequence[str], attribute: str) -> list[str]:
    """MRR@10 and Hit@5 per grade or style, one column pair per configuration."""
    tables = [breakdown(r.queries, attribute) for r in results]
    values = sorted({v for t in tables for v in t})
    if values == ["none"]:
        return [f"No question has a {attribute}.", ""]
    head = [attribute.capitalize(), "Questions", *(f"{k} {m}" for k in keys for m in ("MRR@10", "Hit@5"))]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for value in values:
        count = next(int(t[value]["questions"]) for t in tables if value in t)
        cells = [_fmt(t[value][m]) if value in t else "–" for t in tables for m in ("MRR@10", "Hit@5")]
        lines.append("| " + " | ".join([value, str(count), *cells]) + " |")
    return lines + [""]


def diff(a: RunResult, b: RunResult) -> dict[str, float]:
    """b − a for every metric."""
    return {name: b.summary[name] - a.summary[name] for name in METRICS}


def comparison_json(results: Sequence[RunResult], keys: Sequence[str]) -> dict[str, Any]:
    """One object: the single result itself; for two, {"a", "b", "diff"}; for more, each by key and diffs to the first."""
    if len(results) == 1:
        return results[0].to_json()
    out: dict[str, Any] = {key: r.to_json() for key, r in zip(keys, results)}
    if len(results) == 2:
        out["diff"] = diff(results[0], results[1])
    else:
        out["diff"] = {f"{key} - {keys[0]}": diff(results[0], r) for key, r in zip(keys[1:], results[1:])}
    return out


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def metrics_table(results: Sequence[RunResult], keys: Sequence[str]) -> list[str]:
    """Side by side, with the difference of every configuration to the first."""
    names = [k if k == r.method else f"{k}: {r.name}" for k, r in zip(keys, results)]
    head = ["Metric", *names, *(f"Δ {k} − {keys[0]}" for k in keys[1:])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for name in METRICS:
        label = f"{name} (lower is better)" if name in LOWER_IS_BETTER else name
        values = [_fmt(r.summary[name]) for r in results]
        deltas = [_signed(r.summary[name] - results[0].summary[name]) for r in results[1:]]
        lines.append("| " + " | ".join([label, *values, *deltas]) + " |")
    return lines


def _came_first(q: QueryResult) -> str:
    if not q.hits:
        return "nothing retrieved"
    top = q.hits[0]
    tag = ", a related chunk (hard negative)" if top.id in q.related else ""
    return _cell(f"{top.source} › {top.heading_path} (score {top.score:.3f}{tag}): “{top.snippet()}”")


def failures_section(key: str, result: RunResult) -> list[str]:
    failed = result.failed
    lines = [f"### {key}: {result.name} — {len(failed)} of {len(result.queries)} with a wrong top-1", ""]
    if not failed:
        return lines + ["None.", ""]
    lines += ["| id | question | first correct at | came first instead |", "|---|---|---:|---|"]
    for q in failed:
        rank = str(q.first_correct_rank) if q.first_correct_rank else "not in top 10"
        lines.append(f"| {q.id} | {_cell(q.question)} | {rank} | {_came_first(q)} |")
    return lines + [""]


def markdown(results: Sequence[RunResult], keys: Sequence[str], title: str, command: str) -> str:
    """The whole report."""
    first = results[0]
    split = f", split `{first.split}`" if first.split else ""
    lines = [f"# {title}", "", f"`{command}`", "",
             (f"Questions: `{first.dataset}`{split}; k = {DEPTH} through `rag.retrieval.Searcher` (the chat's retrieval "
              "path); relevance = the correct chunks."), "",
             (f"{HARD_NEGATIVE}: share of questions where a related chunk (hard negative) ranks above every correct "
              f"chunk in the top {DEPTH}."), "",
             "| Configuration | Embedder | Method | Index | Chunks | Scored questions |", "|---|---|---|---|---:|---:|"]
    for key, r in zip(keys, results):
        lines.append(f"| {key} | {_cell(r.embedder)} | {r.method} | `{r.index}` | {r.chunks} | {len(r.queries)} |")
    lines += ["", *metrics_table(results, keys), ""]
    scope = ("each question searched within its own grade and the material without a grade (--grade-scope)"
             if first.grade_scope else "every grade searched")
    lines += [f"Grade scope: {scope}.", ""]
    if first.book_scope:
        lines += ["Book scope: each question searched within its own book and the material without a book (--book-scope).", ""]
    lines += ["## By grade", "", *breakdown_table(results, keys, "grade")]
    lines += ["## By question style", "", *breakdown_table(results, keys, "style")]
    lines += ["## Labels that match no chunk", ""]
    for key, r in zip(keys, results):
        if r.unmatched or r.unscorable:
            lines.append(f"{key}: {len(r.unmatched)} unmatched labels; questions left unscored: {', '.join(r.unscorable) or 'none'}")
            lines += [f"- {_cell(u.describe())}" for u in r.unmatched]
        else:
            lines.append(f"{key}: none.")
        lines.append("")
    lines += ["## Failed questions (top-1 not correct)", ""]
    for key, r in zip(keys, results):
        lines += failures_section(key, r)
    return "\n".join(lines).rstrip() + "\n"


def write_reports(out: Path, stem: str, text: str, payload: dict[str, Any]) -> tuple[Path, Path]:
    """The Markdown and JSON reports under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(text, encoding="utf-8")
    js.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return md, js
