"""A linear adapter on the frozen E5 encoder: the CPU way to adapt the embedder to a teacher's material.

The base's normalised vectors of every chunk and every training anchor are computed once (rag.finetune.vectors);
a 384×384 matrix W (starting as the identity) is then trained so that `normalize(W·v)` ranks, for each anchor, its
chunk above every other chunk of the lessons: a softmax over the *whole* corpus (all chunks are negatives, the hard
ones included), the other correct chunks of the same anchor masked. After each epoch the validation questions are
ranked over every chunk (MRR@10); the best epoch is kept and training stops after `patience` epochs without gain.

The result is an ordinary sentence-transformers model (Transformer → Pooling → Normalize → Dense(W) → Normalize), so
ingest (`--embedder models/NAME`), the identity guard, the eval and the app load it as any other model. The same W
applies to queries and passages (the E5 prefixes still tell them apart), so cosine scores stay symmetric.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

K = 10


@dataclass(frozen=True)
class AdapterConfig:
    """How the adapter trains; all of it goes into the recipe."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    scale: float = 20.0  # the cosine → logit scale of MultipleNegativesRankingLoss
    identity_decay: float = 0.0  # L2 pull of W towards the identity, per step (0: early stopping is the regulariser)
    patience: int = 8
    seed: int = 42


@dataclass(frozen=True)
class Examples:
    """Training anchors (vectors) with the corpus rows that answer each of them."""

    anchors: np.ndarray  # [n, d]
    positives: list[frozenset[int]]  # per anchor, rows of the corpus


@dataclass(frozen=True)
class Queries:
    """Validation questions (vectors) and their correct corpus rows."""

    vectors: np.ndarray
    relevant: list[frozenset[int]]


def retrieval_metrics(queries: np.ndarray, corpus: np.ndarray, relevant: Sequence[frozenset[int]]) -> dict[str, float]:
    """MRR@10, accuracy@1/3/5 of ranking every corpus row by cosine (rows already normalised)."""
    scores = queries @ corpus.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    rr, hits = [], {1: [], 3: [], 5: []}
    for row, correct in zip(top, relevant):
        rank = next((i + 1 for i, c in enumerate(row) if int(c) in correct), None)
        rr.append(1.0 / rank if rank else 0.0)
        for k in hits:
            hits[k].append(1.0 if rank and rank <= k else 0.0)
    return {"mrr@10": float(np.mean(rr)), **{f"accuracy@{k}": float(np.mean(v)) for k, v in hits.items()}}


def _normalise(x: Any) -> Any:
    import torch

    return torch.nn.functional.normalize(x, dim=-1)


@dataclass
class AdapterRun:
    """What a training run did: the kept W, the metrics per epoch, the base's."""

    weight: np.ndarray
    base: dict[str, float]
    epochs: list[dict[str, Any]] = field(default_factory=list)  # {"epoch", "step", "loss", "validation", "elapsed_s"}
    best_epoch: int | None = None
    early_stopped: bool = False


def apply(weight: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """normalize(W·v) for each row."""
    out = vectors @ weight.T
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def train_adapter(examples: Examples, corpus: np.ndarray, validation: Queries, config: AdapterConfig,
                  evaluate: Callable[[np.ndarray], dict[str, float]] | None = None) -> AdapterRun:
    """W trained with a full-corpus softmax; the epoch with the best validation MRR@10 kept (the earliest on a tie).

    `evaluate(W)` replaces the validation ranking (tests use it to script the metric sequence).
    """
    import torch

    evaluate = evaluate or (lambda w: retrieval_metrics(apply(w, validation.vectors), apply(w, corpus), validation.relevant))
    generator = torch.Generator().manual_seed(config.seed)
    d = corpus.shape[1]
    weight = torch.nn.Parameter(torch.eye(d))
    optimiser = torch.optim.Adam([weight], lr=config.lr)
    anchors = torch.from_numpy(np.ascontiguousarray(examples.anchors, dtype=np.float32))
    docs = torch.from_numpy(np.ascontiguousarray(corpus, dtype=np.float32))
    # One training row per (anchor, positive); the anchor's other positives are masked out of its softmax.
    rows = [(i, p) for i, positives in enumerate(examples.positives) for p in sorted(positives)]
    mask = torch.zeros(len(examples.positives), docs.shape[0], dtype=torch.bool)
    for i, positives in enumerate(examples.positives):
        mask[i, list(positives)] = True
    base = evaluate(np.eye(d, dtype=np.float32))
    run = AdapterRun(np.eye(d, dtype=np.float32), base)
    best, since_best, step, started = base["mrr@10"], 0, 0, time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(rows), generator=generator).tolist()
        losses = []
        for start in range(0, len(order), config.batch_size):
            batch = [rows[j] for j in order[start:start + config.batch_size]]
            anchor_ids = torch.tensor([a for a, _ in batch])
            targets = torch.tensor([p for _, p in batch])
            q = _normalise(anchors[anchor_ids] @ weight.T)
            c = _normalise(docs @ weight.T)
            logits = config.scale * q @ c.T
            others = mask[anchor_ids].clone()
            others[torch.arange(len(batch)), targets] = False
            logits = logits.masked_fill(others, float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, targets)
            if config.identity_decay:
                loss = loss + config.identity_decay * (weight - torch.eye(d)).pow(2).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            step += 1
        current = weight.detach().numpy().copy()
        metrics = evaluate(current)
        run.epochs.append({"epoch": epoch, "step": step, "loss": float(np.mean(losses)), "validation": metrics,
                           "elapsed_s": time.perf_counter() - started})
        if metrics["mrr@10"] > best:
            best, since_best, run.best_epoch, run.weight = metrics["mrr@10"], 0, epoch, current
        else:
            since_best += 1
            if since_best >= config.patience:
                run.early_stopped = epoch < config.epochs
                break
    return run


def save_adapted(base: str, weight: np.ndarray, out: Path, max_seq_length: int) -> None:
    """The base model with `Dense(W)` and a final Normalize appended, saved to `out` as a sentence-transformers model."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    model = SentenceTransformer(base, local_files_only=Path(base).exists(), device="cpu")
    if not isinstance(model[len(model) - 1], Normalize):
        model.append(Normalize())
    d = weight.shape[0]
    model.append(Dense(d, d, bias=False, activation_function=None, init_weight=torch.from_numpy(weight.copy())))
    model.append(Normalize())
    model.max_seq_length = max_seq_length
    from rag.finetune.trainer import save_model

    save_model(model, out)
