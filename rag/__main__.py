"""`python -m rag config | search | ask | serve | keys`."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rag.cli_args import add_settings_args, cli_values, settings_from_args
from rag.errors import VimathError
from rag.index import Hit
from rag.normalize import nfc
from rag.retrieval import Filters, Searcher
from rag.settings import Settings, provenance

if TYPE_CHECKING:
    from rag.answering import Answer

EXIT_OK, EXIT_ERROR, EXIT_LLM = 0, 1, 3


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
        shown = "(set)" if name in {"teacher_password", "llm_api_key"} and value else value
        print(f"{name:18} = {shown!s:40} [{origin[name]}]")
    from rag.llm import effective_url

    print(f"{'ollama (effective)':18} = {settings.effective_ollama_url()}")
    print(f"{'llm (effective)':18} = {effective_url(settings)} (provider {settings.llm_provider}, model {settings.effective_model()})")
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    from rag import profiling

    if args.profile:
        profiling.enable()
        profiling.record("import", time.perf_counter() - profiling.STARTED)
    with profiling.stage("import"):
        from rag.workspace import open_searcher

    settings = settings_from_args(args)
    queries = read_queries(args.queries) if args.queries else [args.query]
    if not queries or not all(queries):
        print("Error: give a question, or --queries FILE with one question per line.", file=sys.stderr)
        return EXIT_ERROR
    searcher = open_searcher(settings)
    k = args.k or settings.top_k
    filters = Filters(source=args.source, lesson=args.lesson, grade=args.grade, book=book_of(args, searcher))
    for query in queries:
        with profiling.stage("query"):
            hits = searcher.search(query, k, filters=filters)
        if args.json or args.queries:
            print(json.dumps([h.to_record(r) for r, h in enumerate(hits, start=1)], ensure_ascii=False))
        else:
            print_hits(hits)
    profiling.report()
    return EXIT_OK


def print_sources(answer: "Answer") -> None:
    cited = answer.cited_chunks
    shown = cited or answer.retrieved
    print("\nNguồn:" if cited else "\nCác đoạn tài liệu liên quan nhất:")
    numbers = answer.cited or list(range(1, len(shown) + 1))
    for number, hit in zip(numbers, shown):
        meta = hit.metadata
        page = f", trang {meta['page']}" if "page" in meta else ""
        print(f"  [{number}] {meta.get('source')}{page} — {meta.get('heading_path', '')} (điểm {hit.score:.3f})")
    if answer.invalid_citations:
        print(f"  (đã bỏ trích dẫn không hợp lệ: {', '.join(f'[{n}]' for n in answer.invalid_citations)})")


def cmd_ask(args: argparse.Namespace) -> int:
    from rag.answering import Tutor
    from rag.workspace import open_searcher

    settings = settings_from_args(args)
    question = nfc(args.question).strip()
    if not question:
        print("Error: give a question, e.g. python -m rag ask \"Hàm số đồng biến khi nào?\"", file=sys.stderr)
        return EXIT_ERROR
    searcher = open_searcher(settings)
    filters = Filters(grade=args.grade, book=book_of(args, searcher))
    stream = Tutor(searcher, settings).stream(question, k=args.k, filters=filters)
    for delta in stream:
        if not args.json:
            print(delta, end="", flush=True)
    answer = stream.answer
    if args.json:
        print(json.dumps(answer.to_record(), ensure_ascii=False, indent=2))
        return EXIT_OK if answer.llm_ok else EXIT_LLM
    if answer.text:
        print()
    if answer.notice:
        print(f"\n{answer.notice}")
    print_sources(answer)
    return EXIT_OK if answer.llm_ok else EXIT_LLM


def cmd_serve(args: argparse.Namespace) -> int:
    from rag.api.server import serve

    if args.allow_anonymous:
        args.api_allow_anonymous = True
    if args.cors_origin:
        args.api_cors_origins = args.cors_origin
    serve(settings_from_args(args), args.host, args.port)
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    from rag.api.keys import KeyStore

    store = KeyStore(settings_from_args(args).api_keys_file)
    if args.action == "add":
        key = store.add(args.name)
        print(f"Added key {args.name!r} to {store.path}. It is shown only now; give it to the client:\n\n{key}\n")
    elif args.action == "revoke":
        store.revoke(args.name)
        print(f"Revoked key {args.name!r}; running servers refuse it from their next request.")
    else:
        keys = store.keys()
        if not keys:
            print(f"No API keys in {store.path}.")
        for key in keys:
            print(f"{key.name:24} {key.hint}…  created {key.created_at}")
    return EXIT_OK


def add_grade_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grade", type=int, choices=range(1, 13), metavar="N",
                        help="only material of grade N and material without a grade (rag/grades.py says how a file gets one)")
    parser.add_argument("--book", metavar="NAME",
                        help="only material of this textbook series and material without one, e.g. \"Cánh diều\" or kntt "
                             "(rag/books.py says how a file gets one)")


def book_of(args: argparse.Namespace, searcher: Searcher) -> str | None:
    """The index's book that --book names (any case, or a series' abbreviation); an unknown one is an error listing
    the books the index has."""
    if args.book is None:
        return None
    from rag.books import resolve_book

    return resolve_book(args.book, searcher.books())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rag", description="vimath-tutor: search and answer over the lesson index.")
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config", help="print the effective settings and where each came from")
    not_flags = {"index_dir", "embedder", "chroma_host", "chroma_port", "collection", "teacher_password", "api_cors_origins",
                 "llm_api_key", "llm_stop"}
    add_settings_args(config, *[n for n in Settings.model_fields if n not in not_flags])
    config.set_defaults(run=cmd_config)
    search = sub.add_parser("search", help="print the chunks closest to a question")
    search.add_argument("query", nargs="?", default="", help="the question (Vietnamese)")
    search.add_argument("-k", type=int, default=None, help="number of chunks (default: top_k setting)")
    search.add_argument("--json", action="store_true", help="print a JSON list")
    search.add_argument("--queries", type=Path, metavar="FILE", help="one question per line; prints one JSON list per line")
    search.add_argument("--source", help="only chunks of this source file")
    search.add_argument("--lesson", help="only chunks of this lesson (its title)")
    search.add_argument("--profile", action="store_true", help="print where the time went (import, model load, index open, lexical load, query) to stderr")
    add_grade_arg(search)
    add_settings_args(search, "retrieval_method")
    search.set_defaults(run=cmd_search)
    ask = sub.add_parser("ask", help="answer a question from the material through the LLM (Ollama or OpenAI-compatible), citing it")
    ask.add_argument("question", help="the question (Vietnamese)")
    ask.add_argument("-k", type=int, default=None, help="number of chunks to retrieve")
    ask.add_argument("--json", action="store_true", help="print the answer record as JSON")
    add_grade_arg(ask)
    add_settings_args(ask, "retrieval_method", "llm_provider", "llm_base_url", "llm_model", "ollama_url", "ollama_model",
                      "temperature", "num_ctx", "min_score", "llm_timeout_s", "llm_first_token_timeout_s", "context_chunks")
    ask.set_defaults(run=cmd_ask)
    serve = sub.add_parser("serve", help="run the HTTP API (FastAPI + uvicorn; docs at /docs)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--allow-anonymous", action="store_true", help="no API keys; refused unless --host is loopback")
    serve.add_argument("--cors-origin", action="append", metavar="ORIGIN", help="a browser origin allowed to call the API (repeat)")
    serve.add_argument("--keys", dest="api_keys_file", type=Path, default=None, metavar="FILE", help="API keys file")
    add_settings_args(serve, "retrieval_method", "llm_provider", "llm_base_url", "llm_model", "ollama_url", "ollama_model",
                      "llm_first_token_timeout_s", "context_chunks", "temperature", "num_ctx", "min_score",
                      "llm_timeout_s", "database_url", "api_rate_limit_per_minute", "api_generation_slots",
                      "api_generation_queue", "api_queue_timeout_s", "api_max_body_bytes")
    serve.set_defaults(run=cmd_serve, api_allow_anonymous=None, api_cors_origins=None)
    keys = sub.add_parser("keys", help="add, list or revoke API keys (stored hashed)")
    keys.add_argument("action", choices=["add", "list", "revoke"])
    keys.add_argument("name", nargs="?", help="the key's name (add, revoke), e.g. moodle or zalo-bot")
    keys.add_argument("--keys", dest="api_keys_file", type=Path, default=None, metavar="FILE", help="API keys file")
    keys.set_defaults(run=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "keys" and args.action != "list" and not args.name:
        parser.error(f"keys {args.action} needs a NAME")
    try:
        return args.run(args)
    except (VimathError, FileNotFoundError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
