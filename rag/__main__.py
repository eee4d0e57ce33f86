"""`python -m rag config | search | ask`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rag.cli_args import add_settings_args, cli_values, settings_from_args
from rag.embedder_loading import EmbedderUnavailable
from rag.index import Hit, IndexMismatch, IndexMissing
from rag.normalize import nfc
from rag.retrieval import Filters, Searcher
from rag.settings import Settings, provenance

EXIT_OK, EXIT_ERROR = 0, 1


def hit_record(rank: int, hit: Hit) -> dict[str, Any]:
    """The JSON shape of one search result."""
    return {"rank": rank, "score": round(hit.score, 6), "text": hit.text, "metadata": {**hit.metadata, "id": hit.id}}


def print_hits(hits: list[Hit]) -> None:
    if not hits:
        print("No matching chunks.")
    for rank, hit in enumerate(hits, start=1):
        meta = hit.metadata
        page = f", page {meta['page']}" if "page" in meta else ""
        print(f"[{rank}] score {hit.score:.3f} — {meta.get('source')}{page} — {meta.get('heading_path', '')}")
        print(hit.text.strip())
        print()


def read_queries(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [nfc(line).strip() for line in lines if line.strip()]


def cmd_config(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    origin = provenance(settings, **cli_values(args))
    for name, value in settings.model_dump().items():
        shown = "(set)" if name == "teacher_password" and value else value
        print(f"{name:18} = {shown!s:40} [{origin[name]}]")
    print(f"{'ollama (effective)':18} = {settings.effective_ollama_url()}")
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    from rag.workspace import open_searcher

    settings = settings_from_args(args)
    queries = read_queries(args.queries) if args.queries else [args.query]
    if not queries or not all(queries):
        print("Error: give a question, or --queries FILE with one question per line.", file=sys.stderr)
        return EXIT_ERROR
    searcher = open_searcher(settings)
    k = args.k or settings.top_k
    filters = Filters(source=args.source, lesson=args.lesson)
    for query in queries:
        hits = searcher.search(query, k, filters=filters)
        if args.json or args.queries:
            print(json.dumps([hit_record(r, h) for r, h in enumerate(hits, start=1)], ensure_ascii=False))
        else:
            print_hits(hits)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rag", description="vimath-tutor: search and answer over the lesson index.")
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config", help="print the effective settings and where each came from")
    add_settings_args(config, *[n for n in Settings.model_fields if n not in {"index_dir", "embedder", "chroma_host", "chroma_port", "collection", "teacher_password"}])
    config.set_defaults(run=cmd_config)
    search = sub.add_parser("search", help="print the chunks closest to a question")
    search.add_argument("query", nargs="?", default="", help="the question (Vietnamese)")
    search.add_argument("-k", type=int, default=None, help="number of chunks (default: top_k setting)")
    search.add_argument("--json", action="store_true", help="print a JSON list")
    search.add_argument("--queries", type=Path, metavar="FILE", help="one question per line; prints one JSON list per line")
    search.add_argument("--source", help="only chunks of this source file")
    search.add_argument("--lesson", help="only chunks of this lesson (its title)")
    add_settings_args(search, "retrieval_method")
    search.set_defaults(run=cmd_search)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (IndexMissing, IndexMismatch, EmbedderUnavailable, FileNotFoundError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
