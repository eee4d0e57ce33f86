"""Choosing and loading an embedder: `auto`, `bundled`, a Hugging Face id or a local path — never hanging on the hub."""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rag.backends import DEFAULT_BACKEND, check_backend, make_backend
from rag.backends.base import EmbedderUnavailable
from rag.embeddings import BUNDLED, E5Embeddings

FINE_TUNED = "ThanhLe0125/ebd-math"
AUTO = "auto"
HOW_TO_CHOOSE = "choose with --embedder (bundled | a Hugging Face id | a model folder) or VIMATH_EMBEDDER"


__all__ = ["AUTO", "FINE_TUNED", "Choice", "EmbedderUnavailable", "choose", "load_embeddings"]


@dataclass(frozen=True)
class Choice:
    """Which embedder to load and why."""

    spec: str
    reason: str
    local_files_only: bool = False


def in_local_cache(repo_id: str) -> bool:
    """Whether a hub model's files already lie in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def hub_answers(repo_id: str, timeout_s: float) -> bool:
    """Whether the hub answers for `repo_id` within `timeout_s` (False when offline mode is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    from huggingface_hub import constants

    url = f"{constants.ENDPOINT}/api/models/{repo_id}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s) as resp:
            return resp.status < 400
    except (urllib.error.URLError, TimeoutError, OSError, ValueError):
        return False


def choose(spec: str, hub_timeout_s: float) -> Choice:
    """Resolve `auto` and check that a hub id can be had before anything waits on it."""
    if spec == BUNDLED:
        return Choice(BUNDLED, "asked for")
    if spec == AUTO:
        if in_local_cache(FINE_TUNED):
            return Choice(FINE_TUNED, "auto: the fine-tuned model is in the local Hugging Face cache", True)
        if hub_answers(FINE_TUNED, hub_timeout_s):
            return Choice(FINE_TUNED, "auto: downloading the fine-tuned model from the Hugging Face hub")
        return Choice(BUNDLED, f"auto: {FINE_TUNED} is not cached and the hub did not answer in {hub_timeout_s:g} s")
    if Path(spec).exists():
        return Choice(spec, "a local model folder", True)
    if in_local_cache(spec):
        return Choice(spec, "in the local Hugging Face cache", True)
    if hub_answers(spec, hub_timeout_s):
        return Choice(spec, "downloading from the Hugging Face hub")
    raise EmbedderUnavailable(
        f"Embedder {spec!r} is neither a folder here, nor in the Hugging Face cache, and the hub did not answer "
        f"within {hub_timeout_s:g} s. Check the name, download it where the hub is reachable, or use "
        f"--embedder bundled."
    )


@lru_cache(maxsize=4)
def _load(spec: str, local_files_only: bool, batch_size: int, backend: str, bulk: int) -> E5Embeddings:
    try:
        engine = make_backend(backend, spec, local_files_only=local_files_only, bulk=bulk)
    except (OSError, ValueError) as exc:
        raise EmbedderUnavailable(f"Could not load embedder {spec!r} with the {backend} backend: {exc}") from exc
    return E5Embeddings(engine, batch_size=batch_size)


def load_embeddings(spec: str, *, hub_timeout_s: float = 3.0, batch_size: int = 16, announce: bool = True,
                    reason: str | None = None, backend: str = DEFAULT_BACKEND, bulk: int = 0) -> E5Embeddings:
    """The embedder for `spec` run by `backend` (rag.backends), loaded once per process; says on stderr which and why.
    `bulk`: the bytes of lesson text this process will embed (ingest), so that `auto` may pick a faster engine with
    the same vectors (rag.backends.auto)."""
    check_backend(backend)  # a bad name is refused before anything loads
    choice = choose(spec, hub_timeout_s)
    embeddings = _load(choice.spec, choice.local_files_only, batch_size, backend, bulk)
    if announce:
        engine = getattr(embeddings.backend, "name", backend)
        print(f"Embedder: {embeddings.identity.describe()} via {engine} — {reason or choice.reason}; {HOW_TO_CHOOSE}.",
              file=sys.stderr)
    return embeddings
