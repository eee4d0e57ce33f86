"""Training triplets (question, correct chunk, hard negative) from the evaluation set and the product's own chunks."""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rag.chunking import ChunkerConfig
from rag.embeddings import E5Embeddings, strip_prefix
from rag.eval.dataset import (
    ChunkView,
    EvalSet,
    Question,
    ResolvedQuestion,
    Triplet,
    load_questions,
    resolve,
)
from rag.finetune.pairs import Pair
from rag.index import StoredChunk
from rag.ingestion import chunk_id, chunk_metadata, discover, prepare_file
from rag.loaders import LoadError

if TYPE_CHECKING:
    from datasets import Dataset

TRAIN, VALIDATION, TEST = "train", "validation", "test"
# Only these splits may ever feed training or model selection; the test split is for the final table alone.
FITTING_SPLITS = (TRAIN, VALIDATION)


@dataclass(frozen=True)
class TripletSet:
    """The triplets of one split and how they were made."""

    split: str
    questions: int  # questions of the split in the file
    scorable: int  # questions whose correct labels matched a chunk
    triplets: list[Triplet]
    from_related: int  # questions whose hard negatives are their `related` chunks
    from_lesson: int  # questions without a matched related chunk: negative drawn from their lesson's other chunks
    without_negative: list[str] = field(default_factory=list)  # ids left out: nothing to use as a negative
    unscorable: list[str] = field(default_factory=list)  # ids whose correct labels matched no chunk

    def summary(self) -> dict[str, object]:
        """Counts for the log and the model card."""
        return {"split": self.split, "questions": self.questions, "scorable": self.scorable, "triplets": len(self.triplets),
                "negatives_from_related": self.from_related, "negatives_from_same_lesson": self.from_lesson,
                "dropped_without_negative": self.without_negative, "unscorable": self.unscorable}


def split_file(data: Path, split: str) -> Path | None:
    """DATA/<split>.jsonl when the split files exist, else None (questions then come from DATA/parts/*.jsonl)."""
    path = data / f"{split}.jsonl"
    return path if path.is_file() else None


def load_split(data: Path, split: str) -> list[Question]:
    """The questions of one split: from DATA/<split>.jsonl, or filtered by their `split` field from DATA/parts/."""
    path = split_file(data, split)
    if path is not None:
        return load_questions(path, split)
    parts = sorted((data / "parts").glob("*.jsonl"))
    if not parts:
        raise FileNotFoundError(f"neither {data / (split + '.jsonl')} nor {data / 'parts'}/*.jsonl exist")
    return [q for part in parts for q in load_questions(part, split)]


def stored_lesson_chunks(lessons: Path, embeddings: E5Embeddings, config: ChunkerConfig | None = None) -> list[StoredChunk]:
    """Every lesson chunked exactly as `python -m ingest` does with this embedder: ids, texts and metadata as stored."""
    config = config or ChunkerConfig(max_tokens=embeddings.identity.max_tokens)
    files, _ = discover([lessons])
    stored: list[StoredChunk] = []
    for file in files:
        try:
            prepared = prepare_file(file, embeddings, config)
        except LoadError:
            continue  # ingest skips such files too; their labels then show up as unmatched
        total = len(prepared.chunks)
        for chunk in prepared.chunks:
            meta = chunk_metadata(file.source, prepared.fingerprint, chunk, total)
            stored.append(StoredChunk(chunk_id(file.source, prepared.fingerprint, chunk.ordinal), chunk.text, meta))
    return stored


def lesson_chunks(lessons: Path, embeddings: E5Embeddings, config: ChunkerConfig | None = None) -> list[ChunkView]:
    """Every lesson chunked exactly as `python -m ingest` does with this embedder, with the ids the index would give."""
    return views_of(stored_lesson_chunks(lessons, embeddings, config))


def views_of(chunks: Sequence[StoredChunk]) -> list[ChunkView]:
    """What labels are matched against, sorted by id."""
    return sorted((ChunkView.of(c) for c in chunks), key=lambda c: c.id)


def same_lesson_negative(q: ResolvedQuestion, chunks: dict[str, ChunkView], seed: int) -> str | None:
    """A chunk of the correct chunks' lesson(s) that is not correct, drawn reproducibly; None if there is none."""
    sources = {chunks[c].source for c in q.correct}
    pool = sorted(c for c, view in chunks.items() if view.source in sources and c not in q.correct)
    if not pool:
        return None
    return random.Random(f"{seed}:{q.question.id}").choice(pool)


def _triplet(question: str, positive: str, negative: str) -> Triplet:
    """A triplet of bare texts: the trainer adds the E5 prefixes, so none may be there already."""
    return Triplet(strip_prefix(question, "query"), strip_prefix(positive, "passage"), strip_prefix(negative, "passage"))


def build_triplets(split: str, questions: Sequence[Question], chunks: Sequence[ChunkView], seed: int) -> TripletSet:
    """Triplets for every scorable question; a question with no matched related chunk gets one from its own lesson."""
    if split not in FITTING_SPLITS:
        raise ValueError(f"the {split!r} split is never used for training or model selection")
    eval_set = resolve(questions, chunks)
    with_related = [q for q in eval_set.scorable if q.related]
    triplets = [_triplet(t.question, t.positive, t.negative) for t in EvalSet(with_related, eval_set.chunks).triplets()]
    from_lesson, dropped = 0, []
    for q in eval_set.scorable:
        if q.related:
            continue
        negative = same_lesson_negative(q, eval_set.chunks, seed)
        if negative is None:
            dropped.append(q.question.id)
            continue
        from_lesson += 1
        triplets += [_triplet(q.question.question, eval_set.text(p), eval_set.text(negative)) for p in sorted(q.correct)]
    return TripletSet(split, len(questions), len(eval_set.scorable), triplets, len(with_related), from_lesson, dropped,
                      [q.question.id for q in eval_set.unscorable])


def as_dataset(triplets: Sequence[Triplet]) -> Dataset:
    """Columns anchor/positive/negative, in the order MultipleNegativesRankingLoss expects."""
    from datasets import Dataset

    return Dataset.from_dict({"anchor": [t.question for t in triplets], "positive": [t.positive for t in triplets],
                              "negative": [t.negative for t in triplets]})


def pair_triplets(pairs: Sequence[Pair], chunks: Sequence[StoredChunk], seed: int) -> list[Triplet]:
    """Material pairs as triplets; a pair without a hard negative gets a chunk of another lesson, drawn with the seed."""
    rng = random.Random(f"{seed}:fill")
    out = []
    for p in pairs:
        negative = p.negative
        if negative is None:
            pool = [c.text for c in chunks if c.text != p.positive and c.metadata.get("source") != _source_of(p, chunks)]
            negative = rng.choice(pool) if pool else None
        if negative is not None:
            out.append(_triplet(p.anchor, p.positive, negative))
    return out


def _source_of(pair: Pair, chunks: Sequence[StoredChunk]) -> object:
    return next((c.metadata.get("source") for c in chunks if c.id == pair.positive_id), None)
