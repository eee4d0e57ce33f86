"""Answer quality with a real LLM: questions through the whole chain (retrieval, prompt, streaming, citations, guard).

    python scripts/setup_llm.py                                   # engine + weights, prints the GGUF path
    python bench/llm_server.py --gguf PATH --port 8080 --ctx 8192 &  # 127.0.0.1, 1 thread
    VIMATH_LLM_PROVIDER=openai VIMATH_LLM_BASE_URL=http://127.0.0.1:8080/v1 \
      python bench/answer_eval.py --index vimath_index --limit 30 --name after
    python bench/answer_eval.py --rescore bench/results/after.json     # recompute the metrics of stored answers

Any configured provider works (Ollama too). Per question and in total: status, time to first token, tokens/s,
prompt tokens counted by the server vs the chain's estimate, answers with a valid citation, citation precision
against the question's `correct` labels, answers in Vietnamese, LaTeX that parses, refusals on out-of-scope
questions and wrong refusals on in-scope ones, and degenerate output (the guard's verdict, or for answers made
without the guard the same detector run afterwards). Writes bench/results/NAME.json and NAME.md (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rag import prompts  # noqa: E402
from rag.answering import Tutor, instructions  # noqa: E402
from rag.degenerate import judge, longest_copy  # noqa: E402
from rag.eval.dataset import load_questions, resolve_against  # noqa: E402
from rag.normalize import nfc  # noqa: E402
from rag.retrieval import Searcher  # noqa: E402
from rag.settings import Settings, load_settings  # noqa: E402
from rag.workspace import make_ranker, open_index  # noqa: E402

RESULTS = ROOT / "bench" / "results"
EVAL = ROOT / "data" / "eval"

# --- metrics on one answer -------------------------------------------------------------------------------------

# Saying the material does not cover the question, in the prompt's words or the variants seen. "Ask your teacher"
# alone is not a refusal: a good answer may end with it.
_REFUSAL = re.compile(r"chưa (?:được )?đề cập|không (?:được )?đề cập|(?:chưa|không) có (?:thông tin|nội dung|kiến thức)|"
                      r"không đủ (?:thông tin|để trả lời)|không thể trả lời", re.IGNORECASE)
_VI_LETTERS = set("ăâđêôơưáàảãạắằẳẵặấầẩẫậéèẻẽẹếềểễệíìỉĩịóòỏõọốồổỗộớờởỡợúùủũụứừửữựýỳỷỹỵ")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$", re.DOTALL)


def is_vietnamese(text: str) -> bool:
    """Mostly Vietnamese prose: a good share of the words (formulas aside) carry Vietnamese letters, and no CJK."""
    prose = _MATH.sub(" ", text)
    if _CJK.search(prose):
        return False
    words = [w for w in re.findall(r"[^\W\d_]+", prose.lower()) if len(w) > 1]
    if len(words) < 3:
        return False
    return sum(1 for w in words if set(w) & _VI_LETTERS) / len(words) >= 0.25


def latex_ok(text: str) -> bool | None:
    """Every $…$ / $$…$$ balanced and parsed by latex2mathml; None when the answer has no formula."""
    from latex2mathml.converter import convert

    stripped = text.replace("\\$", "")
    if stripped.count("$") % 2:
        return False
    formulas = [a or b for a, b in _MATH.findall(stripped)]
    if not formulas:
        return None
    for formula in formulas:
        try:
            convert(formula.strip())
        except Exception:  # latex2mathml raises many kinds for bad input; any of them means "does not parse"
            return False
    return True


def refused(record: dict[str, Any]) -> bool:
    return record["status"] == "not_covered" or bool(_REFUSAL.search(record.get("text") or ""))


def score(record: dict[str, Any], correct: set[str], material: list[str], prompt_lines: list[str]) -> dict[str, Any]:
    """The per-answer metrics, from the stored record alone (so that --rescore can recompute them)."""
    text = record.get("text") or ""
    raw = record.get("raw_text", text)
    cited = record.get("cited_ids") or []
    verdict = judge(raw, material, prompt_lines, record.get("question") or "") if record["status"] != "degenerate" else None
    first, total, out = record["timings"].get("first_token_s"), record["timings"]["total_s"], record.get("completion_tokens")
    return {
        "answered": bool(text.strip()),
        "valid_citation": bool(record.get("cited")),
        "cited": len(cited),
        "cited_correct": sum(1 for c in cited if c in correct),
        "vietnamese": is_vietnamese(text) if text.strip() else None,
        "latex_ok": latex_ok(text) if text.strip() else None,
        "refused": refused(record),
        "degenerate": record["status"] == "degenerate" or verdict is not None,
        "degenerate_kind": record.get("degenerate_kind") or (verdict.kind if verdict else None),
        "longest_copy": longest_copy(raw, material),
        "first_token_s": first,
        "tokens_per_s": (out / (total - first)) if out and first is not None and total > first else None,
        "prompt_tokens": record.get("prompt_tokens"),
        "prompt_tokens_estimate": record.get("prompt_tokens_estimate"),
        "prompt_chars": record.get("prompt_chars"),
    }


# --- running ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    id: str
    question: str
    in_scope: bool
    correct: frozenset[str]


def spread(items: list[Any], n: int | None) -> list[Any]:
    """n items evenly spread over the list (the test split is ordered by grade and lesson)."""
    if n is None or n >= len(items):
        return items
    return [items[round(i * len(items) / n)] for i in range(n)]


def load_items(index: Any, split: str, limit: int | None, oos_limit: int | None) -> list[Item]:
    questions = spread(load_questions(EVAL / f"{split}.jsonl", split), limit)
    resolved = resolve_against(index, questions)
    items = [Item(q.question.id, q.question.question, True, q.correct) for q in resolved.questions]
    oos = [json.loads(line) for line in (EVAL / "out_of_scope.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    items += [Item(o["id"], nfc(o["question"]), False, frozenset()) for o in spread(oos, oos_limit)]
    return items


def run_one(tutor: Tutor, item: Item, prompt_lines: list[str]) -> dict[str, Any]:
    stream = tutor.stream(item.question)
    raw: list[str] = []
    started = time.perf_counter()
    for delta in stream:
        raw.append(delta)
    answer = stream.answer
    record = answer.to_record()
    record["wall_s"] = time.perf_counter() - started
    record["raw_text"] = "".join(raw)
    record["degenerate_kind"] = answer.degenerate.split(":")[0] if answer.degenerate else None
    context = answer.retrieved[: answer.context_size]
    record["material"] = [h.text for h in context]
    record["id"], record["in_scope"], record["correct_ids"] = item.id, item.in_scope, sorted(item.correct)
    record["metrics"] = score(record, set(item.correct), record["material"], prompt_lines)
    return record


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _share(flags: Iterable[bool | None]) -> str:
    vals = [bool(f) for f in flags if f is not None]
    return f"{sum(vals)}/{len(vals)} ({100 * sum(vals) / len(vals):.0f}%)" if vals else "–"


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    inside = [r for r in records if r["in_scope"]]
    outside = [r for r in records if not r["in_scope"]]
    m = lambda rs: [r["metrics"] for r in rs]  # noqa: E731
    answered = [x for x in m(inside) if x["answered"]]
    cited = sum(x["cited"] for x in m(inside))
    pairs = [(x["prompt_tokens"], x["prompt_chars"], x["prompt_tokens_estimate"]) for x in m(records)
             if x["prompt_tokens"] and x["prompt_chars"]]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "questions": len(records), "in_scope": len(inside), "out_of_scope": len(outside),
        "statuses": statuses,
        "in_scope_statuses": {s: sum(1 for r in inside if r["status"] == s) for s in sorted({r["status"] for r in inside})},
        "answers_with_valid_citation": _share(x["valid_citation"] for x in answered),
        "citation_precision": f"{sum(x['cited_correct'] for x in m(inside))}/{cited} "
                              f"({100 * sum(x['cited_correct'] for x in m(inside)) / cited:.0f}%)" if cited else "–",
        "vietnamese": _share(x["vietnamese"] for x in answered),
        "latex_parses": _share(x["latex_ok"] for x in answered),
        "degenerate": _share(x["degenerate"] for x in m(inside) if x["answered"] or x["degenerate"]),
        "oos_refused": _share(x["refused"] for x in m(outside)),
        "in_scope_wrongly_refused": _share(x["refused"] for x in m(inside)),
        "first_token_s_mean": _mean(x["first_token_s"] for x in m(records)),
        "first_token_s_max": max((x["first_token_s"] for x in m(records) if x["first_token_s"]), default=None),
        "tokens_per_s_mean": _mean(x["tokens_per_s"] for x in m(records)),
        "prompt_tokens_server_max": max((p for p, _, _ in pairs), default=None),
        "chars_per_token_measured_min": min((c / p for p, c, _ in pairs), default=None),
        "chars_per_token_measured_mean": _mean(c / p for p, c, _ in pairs),
        "estimate_over_server_min": min((e / p for p, _, e in pairs), default=None),
        "longest_copy_median": statistics.median([x["longest_copy"] for x in answered]) if answered else None,
        "wall_s_total": sum(r.get("wall_s", 0) for r in records),
    }


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else ("–" if v is None else str(v))


def markdown(name: str, meta: dict[str, Any], summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    lines = [f"# Answer benchmark: {name}", "", "```", json.dumps(meta, ensure_ascii=False, indent=1), "```", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in summary.items()]
    lines += ["", "| id | status | first token s | tok/s | prompt tok (server/est.) | cited (correct) | vi | LaTeX | refused | degenerate | longest copy |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        x = r["metrics"]
        lines.append(f"| {r['id']} | {r['status']} | {_fmt(x['first_token_s'])} | {_fmt(x['tokens_per_s'])} | "
                     f"{_fmt(x['prompt_tokens'])}/{_fmt(x['prompt_tokens_estimate'])} | {x['cited']} ({x['cited_correct']}) | "
                     f"{_fmt(x['vietnamese'])} | {_fmt(x['latex_ok'])} | {x['refused']} | "
                     f"{x['degenerate_kind'] or x['degenerate']} | {x['longest_copy']} |")
    return "\n".join(lines) + "\n"


def write(name: str, meta: dict[str, Any], records: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    summary = summarize(records) if records else {}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "summary": summary, "records": records},
                                                 ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    (out / f"{name}.md").write_text(markdown(name, meta, summary, records), encoding="utf-8")
    return summary


def rescore(path: Path) -> int:
    data = json.loads(path.read_text(encoding="utf-8"))
    for r in data["records"]:
        r["metrics"] = score(r, set(r["correct_ids"]), r["material"], data["meta"]["instructions"])
    summary = write(path.stem, data["meta"], data["records"], path.parent)
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0


def merge(paths: list[Path], name: str, out: Path) -> int:
    """Shards of one run (same settings, different questions) as one result, in question order, without repeats."""
    parts = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    records: dict[str, dict[str, Any]] = {}
    for part in parts:
        for r in part["records"]:
            records.setdefault(r["id"], r)
    meta = {**parts[0]["meta"], "merged_from": [str(p) for p in paths]}
    ordered = sorted(records.values(), key=lambda r: (not r["in_scope"], r["id"]))
    print(json.dumps(write(name, meta, ordered, out), ensure_ascii=False, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, help="index folder (default: the index_dir setting)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="in-scope questions, spread over the split")
    parser.add_argument("--oos-limit", type=int, default=None, help="out-of-scope questions")
    parser.add_argument("--num-predict", type=int, default=384, help="answer_tokens: the cap on generated tokens")
    parser.add_argument("--name", default="answers")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--rescore", type=Path, help="recompute the metrics of a stored result file and stop")
    parser.add_argument("--items", default=":", metavar="START:END",
                        help="a slice of the question list (in-scope first, then out-of-scope): shards run on several servers")
    parser.add_argument("--merge", type=Path, nargs="+", help="merge shard result files into --name and stop")
    parser.add_argument("--prompts", type=Path, help="a folder of prompt files to use instead of prompts/ (a variant to compare)")
    parser.add_argument("--ids", help="only these question ids, comma-separated (a pilot on chosen questions)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=JSON",
                        help="override a setting, e.g. degenerate_guard=false or llm_stop=[] (the 'before' chain)")
    args = parser.parse_args(argv)
    if args.rescore:
        return rescore(args.rescore)
    if args.merge:
        return merge(args.merge, args.name, args.out)
    if args.prompts:
        prompts.PROMPTS_DIR = args.prompts.resolve()
    overrides: dict[str, Any] = {"answer_tokens": args.num_predict}
    if args.index:
        overrides["index_dir"] = args.index
    for pair in args.setting:
        key, _, value = pair.partition("=")
        overrides[key] = json.loads(value)
    settings: Settings = load_settings(**overrides)
    index, embeddings = open_index(settings, create=False, announce=False)
    tutor = Tutor(Searcher(make_ranker(settings, index, embeddings)), settings)
    start, _, end = args.items.partition(":")
    items = load_items(index, args.split, args.limit, args.oos_limit)[int(start or 0): int(end) if end else None]
    if args.ids:
        wanted = set(args.ids.split(","))
        items = [item for item in items if item.id in wanted]
    meta = {"prompts": str(prompts.PROMPTS_DIR), "prompt_version": prompts.tutor_version(),
            "provider": settings.llm_provider, "model": settings.effective_model(), "num_predict": args.num_predict,
            "overrides": {k: str(v) for k, v in overrides.items()}, "split": args.split, "top_k": settings.top_k,
            "min_score": settings.min_score, "instructions": instructions(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    records: list[dict[str, Any]] = []
    for n, item in enumerate(items, start=1):
        record = run_one(tutor, item, meta["instructions"])
        records.append(record)
        x = record["metrics"]
        print(f"[{n}/{len(items)}] {item.id} {record['status']} wall {record['wall_s']:.0f}s first {_fmt(x['first_token_s'])} "
              f"tok/s {_fmt(x['tokens_per_s'])} prompt {_fmt(x['prompt_tokens'])}/{x['prompt_tokens_estimate']} "
              f"cited {x['cited']}({x['cited_correct']}) degenerate {x['degenerate_kind'] or x['degenerate']}", flush=True)
        write(args.name, meta, records, args.out)  # after every question: a long run interrupted keeps its results
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    summary = write(args.name, meta, records, args.out)
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
