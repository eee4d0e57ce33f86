"""Export a sentence-transformers checkpoint to ONNX once (float32, and dynamically quantised int8) and reuse it.

sentence-transformers' own `backend="onnx"` needs `optimum-onnx`, whose releases all pin transformers < 4.58 (we
pin 5.24), so we export with `torch.onnx.export` (the dynamo exporter, opset 18). The graph is the checkpoint's
whole module pipeline — Transformer, then its own Pooling (and Dense/Normalize if it has them) — so pooling is
exactly what sentence-transformers computes; the tokenizer is saved beside it as the very `tokenizers` object the
checkpoint's tokenizer wraps, so token ids are identical too.

Files land in `<model>/onnx/` (`model.onnx`, `model_qint8.onnx`, `tokenizer.json`, `vimath_onnx.json`) when that
folder is ours to write, else in vimath's cache. Each file is written to a temporary name and renamed, and the
marker — written last — lists each file with its size and the revision of the weights it came from: a file the
marker does not vouch for (interrupted, truncated, from other weights, written by another tool) is exported again.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rag.backends.base import MAX_TOKENS, cache_root

EXPORT_FORMAT = 1  # bump whenever the exported graph would change: older exports are then redone
OPSET = 18
FP32 = "model.onnx"
INT8 = "model_qint8.onnx"
TOKENIZER = "tokenizer.json"
MARKER = "vimath_onnx.json"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Per-channel int8 weights: on the bundled model's chunks, mean cosine to float32 0.9958 (min 0.9923) against 0.9856
# (min 0.9808) per tensor, at the same speed and size (bench/embed_bench.py). Recorded in the marker as INT8_SCHEME:
# an int8 file quantised another way is quantised again, never trusted.
QUANT_PER_CHANNEL = True
INT8_SCHEME = "dynamic-qint8-per-channel" if QUANT_PER_CHANNEL else "dynamic-qint8"


@dataclass(frozen=True)
class Export:
    """A trusted export: where its files are and what the runtime needs to feed it."""

    folder: Path
    inputs: tuple[str, ...]
    dimension: int
    pad_id: int
    pad_token: str

    def model(self, quantized: bool) -> Path:
        return self.folder / (INT8 if quantized else FP32)


def export_folder(source: Path, revision: str | None, name: str) -> Path:
    """`<source>/onnx` when we may write there and no other tool's ONNX files live there; else vimath's cache."""
    own = source / "onnx"
    foreign = own.is_dir() and not (own / MARKER).exists() and any(own.glob("*.onnx"))
    if not foreign and os.access(own if own.exists() else source, os.W_OK):
        return own
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-") or "model"
    return cache_root() / "onnx" / f"{slug}-{(revision or 'unknown')[:16]}"


def _read_marker(folder: Path) -> dict:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def trusted(folder: Path, revision: str | None, quantized: bool) -> Export | None:
    """The export in `folder` if its marker vouches for the model file wanted (same format, weights and size)."""
    marker = _read_marker(folder)
    if marker.get("format") != EXPORT_FORMAT or marker.get("revision") != revision:
        return None
    sizes: dict[str, int] = marker.get("files", {})
    if quantized and marker.get("int8_scheme", "dynamic-qint8") != INT8_SCHEME:  # exports before the scheme was recorded
        return None
    for name in (INT8 if quantized else FP32, TOKENIZER):
        path = folder / name
        if name not in sizes or not path.is_file() or path.stat().st_size != sizes[name]:
            return None
    return Export(folder, tuple(marker["inputs"]), int(marker["dimension"]), int(marker["pad_id"]), str(marker["pad_token"]))


def forget(folder: Path, name: str) -> None:
    """Withdraw the marker's word for one file (it failed to load), so that the next load exports it again."""
    marker = _read_marker(folder)
    if name in marker.get("files", {}):
        del marker["files"][name]
        _write_atomic(folder / MARKER, json.dumps(marker, indent=2).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    with _temp_beside(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def _temp_beside(path: Path) -> Iterator[Path]:
    """A temporary path in the same folder, renamed onto `path` only if the block completes."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the export is as readable as the model it came from
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One exporter per folder at a time (two ingest processes may start together)."""
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".export.lock")):
        yield


def ensure_export(source: str, folder: Path, revision: str | None, *, quantized: bool, local_files_only: bool = True) -> Export:
    """The trusted export in `folder`, exporting (and quantising) first if it is missing or not trusted."""
    found = trusted(folder, revision, quantized)
    if found:
        return found
    with _locked(folder):
        found = trusted(folder, revision, quantized)  # another process may have finished it meanwhile
        if found:
            return found
        base = trusted(folder, revision, False)
        if base is None:
            print(f"Exporting {source} to ONNX in {folder} (once; reused afterwards)…", file=sys.stderr)
            _export_fp32(source, folder, revision, local_files_only)
        if quantized:
            print(f"Quantising {folder / FP32} to int8 (once)…", file=sys.stderr)
            _quantize(folder)
    found = trusted(folder, revision, quantized)
    assert found is not None, "an export that just completed must be trusted"
    return found


def _export_fp32(source: str, folder: Path, revision: str | None, local_files_only: bool) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(source, device="cpu", local_files_only=local_files_only)
    model.max_seq_length = MAX_TOKENS
    model.eval()
    # Two texts of different lengths, so that neither the batch nor the sequence axis is specialised to 1.
    features = model.preprocess(["passage: một hai ba bốn năm sáu bảy tám", "query: x"])
    inputs = tuple(n for n in INPUTS if isinstance(features.get(n), torch.Tensor))
    if inputs[:2] != INPUTS[:2]:
        raise ValueError(f"{source}: its tokenizer gives {inputs}, not input_ids and attention_mask")
    pipeline = _make_pipeline_class()(model, inputs).eval()
    example = tuple(features[n] for n in inputs)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=max(MAX_TOKENS, 512))
    with _temp_beside(folder / FP32) as tmp:
        torch.onnx.export(pipeline, example, str(tmp), input_names=list(inputs), output_names=["sentence_embedding"],
                          dynamic_shapes={n: {0: batch, 1: seq} for n in inputs}, opset_version=OPSET, dynamo=True,
                          external_data=False, verbose=False)
    tokenizer = model.tokenizer.backend_tokenizer  # the exact `tokenizers` object sentence-transformers uses
    clean = type(tokenizer).from_str(tokenizer.to_str())
    clean.no_truncation()
    clean.no_padding()
    _write_atomic(folder / TOKENIZER, clean.to_str().encode("utf-8"))
    pad_token = model.tokenizer.pad_token or ""
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    marker = {"format": EXPORT_FORMAT, "revision": revision, "source": source, "opset": OPSET, "inputs": list(inputs),
              "dimension": int(model.get_embedding_dimension()), "pad_id": int(pad_id), "pad_token": pad_token,
              "files": {name: (folder / name).stat().st_size for name in (FP32, TOKENIZER)}}
    _write_atomic(folder / MARKER, json.dumps(marker, indent=2).encode())


def _make_pipeline_class():  # torch is heavy: define the nn.Module only when an export actually runs
    import torch

    class Pipeline(torch.nn.Module):
        """The checkpoint's module pipeline, from tokenizer tensors to `sentence_embedding`."""

        def __init__(self, model: torch.nn.Module, inputs: tuple[str, ...]) -> None:
            super().__init__()
            self.model = model
            self.inputs = inputs

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            features = {"input_ids": input_ids, "attention_mask": attention_mask, "modality": "text"}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            return self.model(features)["sentence_embedding"]

    return Pipeline


def _quantize(folder: Path) -> None:
    """Dynamic int8 quantisation of the float32 export (weights int8, activations quantised per batch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _temp_beside(folder / INT8) as tmp:
        quantize_dynamic(str(folder / FP32), str(tmp), weight_type=QuantType.QInt8, per_channel=QUANT_PER_CHANNEL)
    marker = _read_marker(folder)
    marker["files"][INT8] = (folder / INT8).stat().st_size
    marker["int8_scheme"] = INT8_SCHEME
    _write_atomic(folder / MARKER, json.dumps(marker, indent=2).encode())

