"""`python -m ingest PATH...`: chunk and embed lesson files into the index."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rag.cli_args import add_settings_args, settings_from_args
from rag.errors import VimathError
from rag.index import describe_location
from rag.ingestion import FileProgressBar, IngestJob, discover
from rag.loaders import describe_suffixes
from rag.workspace import open_index

EXIT_OK, EXIT_NOTHING, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 130


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ingest", description=f"Ingest Vietnamese math lessons ({describe_suffixes()}) into the index.")
    parser.add_argument("paths", nargs="+", type=Path, help="folders (searched recursively) and files")
    parser.add_argument("--prune", action="store_true", help="remove from the index the files no longer under PATHS")
    parser.add_argument("--rebuild", action="store_true", help="build the index anew (e.g. with another embedder); the old one stays until the new one is complete")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_args(parser, "max_file_mb")
    return parser.parse_args(argv)


def text_bytes(files) -> int:
    """The size of the lesson files, for the choice of engine (rag.backends.auto: is a model export worth it)."""
    total = 0
    for file in files:
        try:
            total += file.path.stat().st_size
        except OSError:  # reported when the file is read
            pass
    return max(total, 1)  # at least 1: 0 tells the embedder loading "no bulk work" (a process that embeds questions)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from_args(args)
    try:
        files, skipped = discover(args.paths)
    except FileNotFoundError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_NOTHING
    if not files:
        for outcome in skipped:
            print(f"  {outcome.status}: {outcome.source}: {outcome.error}", file=sys.stderr)
        print(f"Error: no lesson files ({describe_suffixes()}) under {', '.join(map(str, args.paths))}.", file=sys.stderr)
        return EXIT_NOTHING
    try:
        index, embeddings = open_index(settings, rebuild=args.rebuild, bulk=text_bytes(files))
    except VimathError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_NOTHING
    if index.set_aside is not None:
        print(f"The damaged index was moved to {index.set_aside}/ (delete it once the new index works); building a new one.",
              file=sys.stderr)
    bar = FileProgressBar(len(files), disable=args.quiet)
    job = IngestJob(index, embeddings, max_file_mb=settings.max_file_mb)
    try:
        report = job.run(files, prune=args.prune, skipped=skipped, progress=bar.update, on_file=bar.on_file)
    except KeyboardInterrupt:
        bar.close()
        print("\nInterrupted. Files finished so far are in the index; the rest are as before. Run the same command again to finish.", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    for outcome in report.outcomes:
        if outcome.status in {"failed", "skipped"}:
            print(f"  {outcome.status}: {outcome.source}: {outcome.error}", file=sys.stderr)
        for note in outcome.notes:
            print(f"  warning: {outcome.source}: {note}", file=sys.stderr)
    print(f"Index: {describe_location(settings)}, {index.count()} chunks, embedder {embeddings.identity.describe()}.")
    print(report.summary())
    if report.rebuild_pending:
        print("Rebuild not made live: some files failed, so the previous index is still the one in use. Fix or "
              "remove those files and run the same command again.", file=sys.stderr)
    counts = report.counts()
    if counts["failed"]:
        return EXIT_PARTIAL if counts["added"] + counts["updated"] + counts["unchanged"] else EXIT_NOTHING
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
