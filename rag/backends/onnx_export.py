"""Export a sentence-transformers checkpoint to ONNX once (float32, and dynamically quantised int8) and reuse it.

sentence-transformers' own `backend="onnx"` needs `optimum-onnx`, whose releases all pin transformers < 4.58 (we
pin 5.24), so we export with `torch.onnx.export`. The graph is the checkpoint's whole module pipeline — Transformer,
then its own Pooling (and Dense/Normalize if it has them) — so pooling is exactly what sentence-transformers
computes; the tokenizer is saved beside it as the very `tokenizers` object the checkpoint's tokenizer wraps, so
token ids are identical too.

The graph is then fused by ONNX Runtime's transformer optimizer (attention, skip+layer-norm, bias+GELU, embedding
layer-norm each become one kernel): on two cores and the sample chunks, 1.24× the unfused float32 graph, and
1.26× after int8. Its patterns match the TorchScript exporter's graph of eager attention, not the dynamo
exporter's, so the model is traced that way; the fused graph is kept only if it gives torch's vectors (cosine ≥
FUSED_MIN_COSINE on probe texts), else the plain graph is, and the dynamo exporter is the fallback when tracing fails.

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
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rag.backends.base import MAX_TOKENS, cache_root

EXPORT_FORMAT = 2  # 2: fused graphs. Bump whenever the exported graph would change: older exports are then redone
OPSET = 18  # the dynamo exporter's
TRACE_OPSET = 17  # the TorchScript exporter's (the last it supports fully)
FUSED_MIN_COSINE = 0.9999
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
def _quiet(logger: str | None) -> Iterator[None]:
    """Only errors from this logger (None: the root logger) while the block runs: ONNX Runtime's tools log freely."""
    import logging

    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


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

    # Eager attention: the same numbers as SDPA, in the pattern the fusion recognises.
    model = SentenceTransformer(source, device="cpu", local_files_only=local_files_only,
                                model_kwargs={"attn_implementation": "eager"})
    model.max_seq_length = MAX_TOKENS
    model.eval()
    # Two texts of different lengths, so that neither the batch nor the sequence axis is specialised to 1.
    features = model.preprocess(["passage: một hai ba bốn năm sáu bảy tám", "query: x"])
    inputs = tuple(n for n in INPUTS if isinstance(features.get(n), torch.Tensor))
    if inputs[:2] != INPUTS[:2]:
        raise ValueError(f"{source}: its tokenizer gives {inputs}, not input_ids and attention_mask")
    pipeline = _make_pipeline_class()(model, inputs).eval()
    example = tuple(features[n] for n in inputs)
    probe = model.preprocess(list(_PROBES))
    with torch.no_grad():
        expected = pipeline(*(probe[n] for n in inputs)).numpy()
    with _temp_beside(folder / FP32) as tmp:
        graph = _export_graph(pipeline, example, inputs, tmp, model, ({n: probe[n].numpy() for n in inputs}, expected))
    tokenizer = model.tokenizer.backend_tokenizer  # the exact `tokenizers` object sentence-transformers uses
    clean = type(tokenizer).from_str(tokenizer.to_str())
    clean.no_truncation()
    clean.no_padding()
    _write_atomic(folder / TOKENIZER, clean.to_str().encode("utf-8"))
    pad_token = model.tokenizer.pad_token or ""
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    marker = {"format": EXPORT_FORMAT, "revision": revision, "source": source, "opset": graph.pop("opset"), **graph,
              "inputs": list(inputs), "dimension": int(model.get_embedding_dimension()), "pad_id": int(pad_id),
              "pad_token": pad_token, "files": {name: (folder / name).stat().st_size for name in (FP32, TOKENIZER)}}
    _write_atomic(folder / MARKER, json.dumps(marker, indent=2).encode())


# Probe texts for the fused graph's check: lengths differ, so padding and the attention mask are exercised.
_PROBES = ("passage: Phương trình bậc hai $ax^2 + bx + c = 0$ có hai nghiệm phân biệt khi $\\Delta > 0$.",
           "query: đạo hàm là gì", "passage: x")


def _export_graph(pipeline, example: tuple, inputs: tuple[str, ...], target: Path, model, probe: tuple[dict, "object"]) -> dict:
    """Write the float32 graph to `target`: fused when tracing and fusion work and agree with torch; returns how."""
    import torch

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as work:
        traced = Path(work) / "traced.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on Python conditions it freezes (masks, shapes)
                torch.onnx.export(pipeline, example, str(traced), input_names=list(inputs), output_names=["sentence_embedding"],
                                  dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in inputs}, "sentence_embedding": {0: "batch"}},
                                  opset_version=TRACE_OPSET, dynamo=False)
        except Exception as exc:  # a model the tracer cannot follow: the dynamo exporter, unfused
            print(f"Tracing failed ({type(exc).__name__}: {exc}); exporting with the dynamo exporter, unfused.", file=sys.stderr)
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=max(MAX_TOKENS, 512))
            torch.onnx.export(pipeline, example, str(target), input_names=list(inputs), output_names=["sentence_embedding"],
                              dynamic_shapes={n: {0: batch, 1: seq} for n in inputs}, opset_version=OPSET, dynamo=True,
                              external_data=False, verbose=False)
            return {"opset": OPSET, "graph": "plain", "fusions": {}}
        fused = Path(work) / "fused.onnx"
        try:
            fusions = _fuse(traced, fused, model[0].auto_model.config)
            agreement = _agreement(fused, *probe)
        except Exception as exc:
            fusions, agreement = {}, 0.0
            print(f"Graph fusion failed ({type(exc).__name__}: {exc}); keeping the plain graph.", file=sys.stderr)
        if fusions and agreement >= FUSED_MIN_COSINE:
            os.replace(fused, target)
            return {"opset": TRACE_OPSET, "graph": "fused", "fusions": fusions}
        if fusions:
            print(f"The fused graph disagrees with torch (cosine {agreement:.5f}); keeping the plain graph.", file=sys.stderr)
        os.replace(traced, target)
        return {"opset": TRACE_OPSET, "graph": "plain", "fusions": {}}


def _fuse(source: Path, target: Path, config) -> dict[str, int]:
    """ONNX Runtime's offline transformer fusion; the counts of fused kernels (empty: nothing matched)."""
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet("onnxruntime.transformers"):  # it logs every pattern it tries
        optimized = optimize_model(str(source), model_type="bert", num_heads=int(config.num_attention_heads),
                                   hidden_size=int(config.hidden_size), opt_level=0)
    fusions = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    if not fusions.get("Attention"):
        return {}  # the pattern did not match this architecture: nothing worth a different graph
    optimized.save_model_to_file(str(target))
    return fusions


def _agreement(path: Path, feed: dict, expected) -> float:
    """The least cosine between `path`'s outputs on `feed` and torch's `expected`."""
    import numpy as np
    import onnxruntime as ort

    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    cos = (got * expected).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    return float(cos.min())


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
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quiet: quantize_dynamic logs (on the root logger) a "consider pre-processing" warning meant for static calibration
    with _quiet(None), _temp_beside(folder / INT8) as tmp:
        # DefaultTensorType: fused kernels (com.microsoft domain) have no ONNX shape inference to tell their types.
        quantize_dynamic(str(folder / FP32), str(tmp), weight_type=QuantType.QInt8, per_channel=QUANT_PER_CHANNEL,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    marker = _read_marker(folder)
    marker["files"][INT8] = (folder / INT8).stat().st_size
    marker["int8_scheme"] = INT8_SCHEME
    _write_atomic(folder / MARKER, json.dumps(marker, indent=2).encode())

