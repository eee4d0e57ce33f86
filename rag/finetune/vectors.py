"""Embeddings of the frozen base, computed once and kept on disk: the adapter trains and validates on them.

On a shared CPU a full fine-tuning step of e5-small takes a minute or more; the frozen encoder's vectors of every chunk
and anchor are computed once (a few minutes), then training and per-epoch validation cost milliseconds.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag.embeddings import PREFIXES
from rag.normalize import nfc

CACHE_FILE = "vectors-{model}-{kind}.npz"


def model_fingerprint(base: str) -> str:
    """A short id of the base weights (path, size and mtime of the weights file), for the cache's name."""
    path = Path(base)
    weights = next((p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.is_file()), None)
    stamp = f"{path.resolve()}:{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if weights else base
    return hashlib.sha256(stamp.encode()).hexdigest()[:12]


def _key(text: str) -> str:
    return hashlib.sha256(nfc(text).encode("utf-8")).hexdigest()


class VectorCache:
    """Normalised vectors of one base model for one kind of text (query or passage), by text hash, on disk."""

    def __init__(self, folder: Path, base: str, kind: str) -> None:
        if kind not in PREFIXES:
            raise ValueError(f"kind must be one of {sorted(PREFIXES)}, not {kind!r}")
        self.kind = kind
        self.path = folder / CACHE_FILE.format(model=model_fingerprint(base), kind=kind)
        self.vectors: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path) as saved:
                self.vectors = dict(zip(saved["keys"].tolist(), saved["vectors"]))

    def encode(self, model: Any, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """The vectors of `texts` (rows in order), encoding only those not cached, then saving the cache."""
        keys = [_key(t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in self.vectors}.items())
        if missing:
            # Longest first: batches of similar length pad less.
            order = sorted(missing, key=lambda kt: -len(kt[1]))
            encoded = model.encode([PREFIXES[self.kind] + nfc(t) for _, t in order], batch_size=batch_size,
                                   normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            for (k, _), v in zip(order, encoded):
                self.vectors[k] = np.asarray(v, dtype=np.float32)
            self.save()
        return np.stack([self.vectors[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        keys = sorted(self.vectors)
        np.savez(tmp, keys=np.array(keys), vectors=np.stack([self.vectors[k] for k in keys]))
        tmp.replace(self.path)  # whole or absent
