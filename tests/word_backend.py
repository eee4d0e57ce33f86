"""A deterministic bag-of-words embedder backend for tests: meaningful cosine, cheap, no model."""
from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np

from rag.embeddings import EmbedderIdentity, Role


class WordBackend:
    """Hashed word counts as vectors and whitespace token counts (plus three for prefix and specials)."""

    identity = EmbedderIdentity(spec="test-words", name="test words", revision="1", dimension=64)

    def encode(self, texts: Sequence[str], role: Role) -> np.ndarray:
        vectors = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                vectors[row, zlib.crc32(word.encode()) % 64] += 1.0
        vectors[:, 0] += 1e-3  # never a zero vector
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def count_tokens(self, text: str, role: Role) -> int:
        return len(text.split()) + 3
