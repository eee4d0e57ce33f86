"""`python -m rag.eval`: retrieval metrics on the labelled questions, through the chat's own retrieval path."""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from rag.books import BookError, resolve_book, same_book
from rag.cli_args import add_settings_args, settings_from_args
from rag.embedder_loading import load_embeddings
from rag.embeddings import E5Embeddings, EmbedderIdentity
from rag.errors import VimathError
from rag.eval import evaluate
from rag.eval.dataset import (
    SPLITS,
    DatasetError,
    EvalSet,
    Question,
    load_questions,
    resolve_against,
)
from rag.eval.report import RunResult, comparison_json, markdown, write_reports
from rag.index import LessonIndex, describe_location
from rag.ingestion import FileProgressBar, IngestJob, discover
from rag.ranking import METHODS
from rag.ranking.base import QueryVectorCache
from rag.retrieval import Searcher
from rag.settings import Settings
from rag.workspace import make_ranker, open_index

EXIT_OK, EXIT_ERROR = 0, 1
EVAL_ROOT = Path(".vimath_eval")
DEFAULT_SPLIT = "test"


@dataclass(frozen=True)
class Config:
    """One configuration to evaluate."""

    embedder: str  # as asked for; resolved when loaded
    method: str


@dataclass
class Prepared:
    """An index ready to search, its embedder, and the questions resolved against its chunks."""

    index: LessonIndex
    embeddings: E5Embeddings
    location: str
    eval_set: EvalSet


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rag.eval", description=__doc__)
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help=f"which questions (default {DEFAULT_SPLIT}; with --dataset, all of the file)")
    parser.add_argument("--dataset", type=Path, metavar="FILE.jsonl", help="questions file (default data/eval/<split>.jsonl)")
    parser.add_argument("--method", choices=METHODS, default=None, help="retrieval method (default: the retrieval_method setting)")
    parser.add_argument("--compare", metavar="EMBEDDER", help="also evaluate this embedder, side by side")
    parser.add_argument("--compare-method", choices=METHODS, help="also evaluate this method, side by side")
    parser.add_argument("--all-methods", action="store_true", help="evaluate dense, bm25 and hybrid with the one embedder")
    parser.add_argument("--lessons", type=Path, default=Path("data/lessons"), help="lessons to index when --index is not given")
    parser.add_argument("--grade-scope", action="store_true",
                        help="search each question within its own grade (and the material without a grade), as a student who picked it")
    parser.add_argument("--grade", type=int, choices=range(1, 13), metavar="N",
                        help="only the questions of grade N, each searched within grade N")
    parser.add_argument("--book-scope", action="store_true",
                        help="search each question within its own book (its `book` field; and the material without a book)")
    parser.add_argument("--book", metavar="NAME",
                        help="only the questions of this textbook series (e.g. \"Cánh diều\" or kntt), each searched within it")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the Markdown report")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for the Markdown and JSON reports")
    add_settings_args(parser)
    args = parser.parse_args(argv)
    if args.all_methods and (args.compare or args.compare_method):
        parser.error("--all-methods compares the methods of one embedder; drop --compare/--compare-method")
    if args.compare and (args.index_dir or args.chroma_host):
        parser.error("an existing index holds one embedder's vectors: --compare needs its own index, so omit --index")
    return args


def configs(args: argparse.Namespace, settings: Settings) -> list[Config]:
    """The configurations asked for, the first being the baseline."""
    method = args.method or settings.retrieval_method
    if args.all_methods:
        return [Config(settings.embedder, m) for m in METHODS]
    out = [Config(settings.embedder, method)]
    if args.compare or args.compare_method:
        out.append(Config(args.compare or settings.embedder, args.compare_method or method))
    return out


def slug(identity: EmbedderIdentity) -> str:
    """A folder name per embedder: readable, and distinct for every identity (model, revision, prefixes)."""
    readable = Path(identity.spec).name if Path(identity.spec).is_absolute() else identity.spec
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", readable).strip("-.")[:60] or "embedder"
    return f"{readable}-{hashlib.sha256(identity.key().encode()).hexdigest()[:8]}"


def built_index(settings: Settings, spec: str, lessons: Path) -> tuple[LessonIndex, E5Embeddings, str]:
    """The evaluation index of one embedder over `lessons`, brought up to date incrementally."""
    embeddings = load_embeddings(spec, hub_timeout_s=settings.hub_timeout_s, batch_size=settings.embed_batch_size,
                                 backend=settings.embed_backend)
    own = settings.model_copy(update={"index_dir": EVAL_ROOT / slug(embeddings.identity), "chroma_host": None,
                                      "embedder": embeddings.identity.spec})
    index, embeddings = open_index(own, announce=False)
    files, skipped = discover([lessons])
    if not files:
        raise FileNotFoundError(f"no lesson files under {lessons}")
    bar = FileProgressBar(len(files), disable=None)
    report = IngestJob(index, embeddings).run(files, prune=True, skipped=skipped, progress=bar.update, on_file=bar.on_file)
    bar.close()
    for outcome in report.outcomes:
        if outcome.status == "failed":
            print(f"  failed: {outcome.source}: {outcome.error}", file=sys.stderr)
    print(f"Index {describe_location(own)}: {report.summary()}", file=sys.stderr)
    return index, embeddings, describe_location(own)


def existing_index(settings: Settings) -> tuple[LessonIndex, E5Embeddings, str]:
    """An index ingested beforehand (--index / --chroma-host), with the embedder that built it unless one is named."""
    index, embeddings = open_index(settings, create=False)
    return index, embeddings, describe_location(settings)


def prepare(args: argparse.Namespace, settings: Settings, spec: str, questions: list[Question]) -> Prepared:
    """The index for one embedder, and the questions resolved against it (unmatched labels go to stderr)."""
    use_existing = bool(args.index_dir or args.chroma_host)
    index, embeddings, location = existing_index(settings) if use_existing else built_index(settings, spec, args.lessons)
    if book_scope(args):
        questions = with_index_books(questions, index.books())
    eval_set = resolve_against(index, questions)
    for unmatched in eval_set.unmatched:
        print(f"Unmatched label: {unmatched.describe()}", file=sys.stderr)
    for q in eval_set.unscorable:
        print(f"Not scored (no correct label matches a chunk): {q.question.id}", file=sys.stderr)
    # one cache across methods: each question is embedded once whatever the method (the vectors are the same)
    cached = QueryVectorCache(embeddings, size=len(questions) + 1)
    return Prepared(index, cached, location, eval_set)


def book_scope(args: argparse.Namespace) -> bool:
    return bool(args.book_scope or args.book is not None)


def with_index_books(questions: list[Question], books: list[str]) -> list[Question]:
    """The questions with their books as the index stores them (any case, or a series' abbreviation, in the file);
    a book the index lacks is an error, since searching "within" it would search only the material without a book."""
    out = []
    for q in questions:
        try:
            out.append(q if q.book is None else replace(q, book=resolve_book(q.book, books)))
        except BookError as exc:
            raise DatasetError(f"question {q.id}: {exc}") from None
    return out


def run_config(config: Config, prepared: Prepared, settings: Settings, dataset: Path, split: str | None,
               grade_scope: bool = False, book_scope: bool = False) -> RunResult:
    """Evaluate one configuration through Searcher + make_ranker, exactly as the chat retrieves."""
    ranker = make_ranker(settings.model_copy(update={"retrieval_method": config.method}), prepared.index, prepared.embeddings)
    eval_set = prepared.eval_set
    identity = prepared.embeddings.identity
    with tqdm(total=len(eval_set.scorable), desc=f"{config.method}", unit="q", file=sys.stderr, disable=None) as bar:
        summary, results = evaluate(Searcher(ranker), eval_set, progress=bar.update, grade_scope=grade_scope,
                                    book_scope=book_scope)
    short = Path(identity.spec).name if Path(identity.spec).is_absolute() else identity.spec
    return RunResult(name=f"{short} · {config.method}", embedder=identity.describe(), embedder_spec=identity.spec,
                     method=config.method, index=prepared.location, chunks=prepared.index.count(), dataset=str(dataset),
                     split=split, summary=summary, queries=results, unmatched=eval_set.unmatched,
                     unscorable=[q.question.id for q in eval_set.unscorable], grade_scope=grade_scope,
                     book_scope=book_scope)


def keys_for(results: Sequence[RunResult], all_methods: bool) -> list[str]:
    if all_methods:
        return [r.method for r in results]
    return ["a", "b"][: len(results)]


def report_stem(split: str | None, dataset: Path, results: Sequence[RunResult], all_methods: bool, scope: str = "") -> str:
    """A file name that says what was evaluated; the same run overwrites its own reports."""
    names = [results[0].name.split(" · ")[0] + " all methods"] if all_methods else [r.name for r in results]
    raw = f"eval {split or dataset.stem} {scope} " + " vs ".join(names)
    return re.sub(r"[^A-Za-z0-9._]+", "-", raw).strip("-")[:150]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from_args(args)
    split = args.split or (None if args.dataset else DEFAULT_SPLIT)
    dataset = args.dataset or Path("data/eval") / f"{split}.jsonl"
    try:
        if not dataset.exists():
            raise FileNotFoundError(f"no questions file {dataset} (build the splits: python data/eval/build_splits.py)")
        questions = load_questions(dataset, split)
        if args.grade is not None:
            questions = [q for q in questions if q.grade == args.grade]
        if args.book is not None:
            questions = [q for q in questions if same_book(q.book, args.book)]
        if not questions:
            raise DatasetError(f"{dataset}: no questions" + (f" with split {split!r}" if split else "")
                               + (f" of grade {args.grade}" if args.grade is not None else "")
                               + (f" of book {args.book!r}" if args.book is not None else ""))
        grade_scope = args.grade_scope or args.grade is not None
        wanted = configs(args, settings)
        prepared: dict[str, Prepared] = {}
        results: list[RunResult] = []
        for config in wanted:
            if config.embedder not in prepared:
                prepared[config.embedder] = prepare(args, settings, config.embedder, questions)
            results.append(run_config(config, prepared[config.embedder], settings, dataset, split, grade_scope,
                                      book_scope(args)))
    except (VimathError, FileNotFoundError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    keys = keys_for(results, args.all_methods)
    title = f"Retrieval evaluation — {split or dataset.name}"
    command = " ".join(["python -m rag.eval", *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
    text = markdown(results, keys, title, command)
    payload = comparison_json(results, keys)
    scope = f"grade{args.grade}" if args.grade is not None else "grade-scope" if args.grade_scope else ""
    scope += f" book {args.book}" if args.book is not None else " book-scope" if args.book_scope else ""
    md, js = write_reports(args.out, report_stem(split, dataset, results, args.all_methods, scope), text, payload)
    print(f"Reports: {md}, {js}", file=sys.stderr)
    print(json.dumps(payload, ensure_ascii=False) if args.json else text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
