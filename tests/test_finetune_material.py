"""Fine-tuning from the material itself: pairs from a lesson's structure, selection by validation MRR, the guardrail,
and LLM question generation with its cache and time budget (tiny models, a fake Ollama; no download)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_st_model
from fake_ollama import FakeOllama
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
from test_finetune import _restore_torch_threads  # noqa: F401  (autouse: train() pins torch threads)

from rag.chunking import ChunkerConfig
from rag.finetune.pairs import Pair, material_pairs, parse_blocks, sample, with_styles
from rag.finetune.selection import METRIC, ValidationData, beats_base
from rag.finetune.styles import plain_math, without_diacritics
from rag.finetune.trainer import FinetuneConfig, TrainingData, train
from rag.finetune.triplets import pair_triplets, stored_lesson_chunks
from rag.index import StoredChunk

LESSON = r"""# Bài 1. Đường tiệm cận

## 1. Tiệm cận ngang

**Định nghĩa 1.** Đường thẳng $y = y_0$ gọi là đường tiệm cận ngang của đồ thị hàm số $y = f(x)$ nếu $\lim\limits_{x \to +\infty} f(x) = y_0$.

**Ví dụ 1.** Tìm tiệm cận ngang của đồ thị hàm số $y = \dfrac{2x + 1}{x - 1}$.

**Giải.** Ta có $\lim\limits_{x \to +\infty} y = 2$ nên đường thẳng $y = 2$ là tiệm cận ngang.

## 2. Tiệm cận đứng

**Định nghĩa 2.** Đường thẳng $x = x_0$ gọi là đường tiệm cận đứng của đồ thị hàm số $y = f(x)$ nếu $\lim\limits_{x \to x_0^+} f(x) = +\infty$.

**Bài 1.** Tìm tiệm cận đứng của đồ thị hàm số $y = \dfrac{3}{x - 2}$.

## Bài tập

**Bài 2.** Đồ thị hàm số $y = \dfrac{x + 5}{x - 4}$ có đường tiệm cận đứng là đường thẳng nào?
"""


@pytest.fixture(scope="module")
def tiny_lesson(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[StoredChunk]]:
    """A one-lesson folder, a tiny model, and the lesson's chunks: one per structural unit (no merging)."""
    from rag.embeddings import E5Embeddings, SentenceTransformerBackend

    root = tmp_path_factory.mktemp("material")
    (root / "lessons/lop12").mkdir(parents=True)
    (root / "lessons/lop12/01-tiem-can.md").write_text(LESSON, encoding="utf-8")
    model = build_tiny_st_model(root / "tiny", sentences=LESSON.splitlines() + ["query: passage:"], vocab_size=300)
    embeddings = E5Embeddings(SentenceTransformerBackend(str(model)))
    chunks = stored_lesson_chunks(root / "lessons", embeddings, ChunkerConfig(max_tokens=256, target_tokens=1))
    return root, model, chunks


def _by_ordinal(chunks: list[StoredChunk]) -> dict[str, int]:
    return {c.text: int(c.metadata["chunk_index"]) for c in chunks}


def test_pairs_come_from_the_lesson_structure(tiny_lesson: tuple[Path, Path, list[StoredChunk]]) -> None:
    _, _, chunks = tiny_lesson
    # Chunks: 0 Định nghĩa 1 | 1 Ví dụ 1 + Giải | 2 Định nghĩa 2 | 3 Bài 1 (in section 2) | 4 Bài 2 (Bài tập section)
    assert len(chunks) == 5
    ordinal = _by_ordinal(chunks)
    made = material_pairs(chunks, seed=42)
    got = {(p.kind, p.anchor, ordinal[p.positive], ordinal.get(p.negative or "")) for p in made.pairs}
    example = r"Tìm tiệm cận ngang của đồ thị hàm số $y = \dfrac{2x + 1}{x - 1}$."
    exercise = r"Tìm tiệm cận đứng của đồ thị hàm số $y = \dfrac{3}{x - 2}$."
    review = r"Đồ thị hàm số $y = \dfrac{x + 5}{x - 4}$ có đường tiệm cận đứng là đường thẳng nào?"
    expected = {
        ("example→theory", example, 0, 2),  # the definition of its section; negative: theory of the other section
        ("example→theory", exercise, 2, 0),
        ("exercise→theory", review, 2, 0),  # Bài tập has no theory: the lesson's best lexical match, "tiệm cận đứng"
        ("heading→body", "Tiệm cận ngang", 0, 2),
        ("heading→body", "Tiệm cận đứng", 2, 0),
    }
    assert expected <= got
    solution = [p for p in made.pairs if p.kind == "example→solution"]
    assert [(p.anchor, ordinal[p.positive]) for p in solution] == [(example, 1)]  # its own worked solution
    assert ordinal[solution[0].negative] in (3, 4)  # another exercise of the lesson
    subjects = {(ordinal[p.positive], ordinal[p.negative]): p.anchor for p in made.pairs if p.kind == "subject→theory"}
    # Theory queries: the definition's subject; negative: an exercise of the same section that names it.
    assert set(subjects) == {(0, 1), (2, 3)}
    assert "đường tiệm cận ngang" in subjects[(0, 1)] and "đường tiệm cận đứng" in subjects[(2, 3)]
    assert len(made.pairs) == len(expected) + 1 + 2
    assert made.counts()["total"] == len(made.pairs)
    assert all(not p.anchor.startswith(("**", "Ví dụ", "Bài")) for p in made.pairs)  # markers stripped


def test_blocks_follow_the_markers() -> None:
    blocks = parse_blocks("**Định lí 1 (Vi-ét).** Nếu … thì …\n\nHệ thức trên.\n\n**Ví dụ 2.** Giải …\n\n**Giải.** Ta có …")
    assert [(b.kind, b.marker, b.title) for b in blocks] == [("theory", "định lí", "Vi-ét"), ("example", "ví dụ", None),
                                                            ("solution", "giải", None)]
    assert blocks[0].statement == "Nếu … thì …\n\nHệ thức trên."  # an unmarked paragraph continues its block


def test_student_forms_and_sampling() -> None:
    assert plain_math(r"Tìm $m$ để $\dfrac{x^{2} + 1}{x - m} \le \sqrt{x}$") == "Tìm m để (x^2 + 1)/(x - m) <= căn(x)"
    assert without_diacritics("Đạo hàm của hàm hợp") == "Dao ham cua ham hop"
    pairs = [Pair(f"câu hỏi $x^{i}$ số {i}", f"p{i}", None, kind) for i, kind in enumerate(["a"] * 30 + ["b"] * 10)]
    styled = with_styles(pairs, share=1.0, seed=1)
    assert len(styled) == 3 * len(pairs)
    assert {p.style for p in styled} == {"original", "no_diacritics", "plain_math"}
    assert "cau hoi x^0 so 0" in {p.anchor for p in styled}
    chosen = sample(pairs, 20, seed=1)
    assert len(chosen) == 20 and sum(p.kind == "b" for p in chosen) == 5  # kinds in proportion
    assert sample(pairs, 20, seed=1) == chosen


class SequenceEvaluator(SentenceEvaluator):
    """A stand-in for the retrieval evaluator: returns the next of a fixed list of validation MRR@10 values."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = list(values)
        self.calls = 0
        self.primary_metric = METRIC
        self.greater_is_better = True

    def __call__(self, model, output_path=None, epoch=-1, steps=-1) -> dict[str, float]:
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return {METRIC: value, "validation_accuracy@1": value / 2}


def _data(chunks: list[StoredChunk]) -> TrainingData:
    triplets = pair_triplets(material_pairs(chunks, seed=1).pairs, chunks, seed=1)
    validation = ValidationData({c.id: c.text for c in chunks}, {"q": "tiệm cận"}, {"q": {chunks[0].id}})
    return TrainingData(triplets, validation, {"triplets": len(triplets)})


def _config(root: Path, model: Path, out: Path, **changes: object) -> FinetuneConfig:
    settings = {"data": root / "eval", "base": str(model), "out": out, "lessons": root / "lessons", "epochs": 6,
                "batch_size": 4, "lr": 5e-3, "patience": 2, "threads": 1, "keep_checkpoints": True,
                "freeze_embeddings": False, **changes}
    return FinetuneConfig(**settings)


def test_the_epoch_with_the_best_validation_mrr_is_kept(tiny_lesson: tuple[Path, Path, list[StoredChunk]],
                                                        tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    root, model, chunks = tiny_lesson
    # Base 0.30, then epochs 1..: 0.35, 0.50, 0.40, 0.45 → epoch 2 is best; patience 2 stops after epoch 4.
    evaluator = SequenceEvaluator([0.30, 0.35, 0.50, 0.40, 0.45, 0.90, 0.90])
    result = train(_config(root, model, tmp_path / "out"), data=_data(chunks), evaluator=evaluator)
    assert [e.mrr for e in result.epochs] == [0.35, 0.50, 0.40, 0.45]
    assert result.best_epoch == 2 and result.early_stopped and result.stopped_at_epoch == 4
    assert result.base_validation == {"mrr@10": 0.30, "accuracy@1": 0.15}
    assert result.best_validation["mrr@10"] == 0.50 and result.beats_base
    best_step = next(e.step for e in result.epochs if e.epoch == 2)
    kept = load_file(str(tmp_path / "out/checkpoints" / f"checkpoint-{best_step}" / "model.safetensors"))
    final = load_file(str(tmp_path / "out/model.safetensors"))
    assert all(np.array_equal(kept[k], final[k]) for k in kept)  # OUT holds epoch 2, not the last one
    log = json.loads((tmp_path / "out/training_log.json").read_text(encoding="utf-8"))
    assert log["beats_base"] and log["best_epoch"] == 2


def test_a_model_that_does_not_beat_its_base_on_validation_is_not_called_better(
        tiny_lesson: tuple[Path, Path, list[StoredChunk]], tmp_path: Path) -> None:
    from rag.finetune.__main__ import summary
    from rag.finetune.card import render_card

    root, model, chunks = tiny_lesson
    evaluator = SequenceEvaluator([0.50, 0.40, 0.45])
    result = train(_config(root, model, tmp_path / "out", epochs=2), data=_data(chunks), evaluator=evaluator)
    assert result.best_epoch == 2 and not result.beats_base
    card = render_card(result, [], "out")
    assert "⛔ **Not better than its base on validation**" in card and "keep the base embedder" in card
    assert "| **MRR@10** | 0.5000 | 0.4500 | -0.0500 |" in card  # the validation table, base vs fine-tuned
    assert "✅ **Better" not in card
    assert "NOT BETTER" in summary(result)
    assert not beats_base(0.5, 0.5) and beats_base(0.51, 0.5) and not beats_base(None, 0.5)


def test_selection_never_reads_the_test_split() -> None:
    from rag.eval.dataset import parse_question
    from rag.finetune.selection import validation_data

    q = parse_question({"id": "t", "question": "x", "split": "test", "correct": [{"source": "a.md"}]})
    with pytest.raises(ValueError, match="validation questions only"):
        validation_data([q], [])


def _chunks(n: int) -> list[StoredChunk]:
    return [StoredChunk(f"c{i}", f"Bài {i}\n\n**Định nghĩa.** Khái niệm số {i}.",
                        {"source": "lop10/a.md", "heading_path": f"Bài {i}", "chunk_index": i, "chunk_hash": f"h{i}"})
            for i in range(n)]


def _replies(messages, options) -> str:
    return "1. Khái niệm này là gì?\n- tinh x^2 + 1 the nao\nCâu 3: cho x = 2 thì sao?\n"


def test_llm_questions_are_cached_and_the_budget_is_honoured(tmp_path: Path) -> None:
    from rag.finetune.questions import generate_questions, llm_ask
    from rag.settings import load_settings

    with FakeOllama(models=["tiny:1b"], reply=_replies) as fake:
        settings = load_settings(ollama_url=fake.url, ollama_model="tiny:1b")
        ask, model = llm_ask(settings)
        clock = iter(float(t) for t in range(0, 1000, 10))  # every look at the clock: 10 s later
        first = generate_questions(_chunks(4), budget_s=25, cache=tmp_path / "cache", ask=ask, model=model,
                                   clock=lambda: next(clock))
        asked = len([p for p, _ in fake.requests if p == "/api/chat"])
        assert first.counts["asked"] == asked == 2 and first.counts["out_of_budget"] == 2  # 0 s, 10 s, then ≥ 25 s
        assert first.by_chunk["c0"] == ["Khái niệm này là gì?", "tinh x^2 + 1 the nao", "cho x = 2 thì sao?"]

        again = generate_questions(_chunks(4)[:2], budget_s=0, cache=tmp_path / "cache", ask=ask, model=model)
        assert again.counts["cached"] == 2 and again.counts["asked"] == 0 and again.by_chunk == first.by_chunk
        assert len([p for p, _ in fake.requests if p == "/api/chat"]) == asked  # a rerun costs nothing
        other = generate_questions(_chunks(1), budget_s=60, cache=tmp_path / "cache", ask=ask, model="other:7b")
        assert other.counts["asked"] == 1  # another model is another cache entry
        pairs = first.pairs(_chunks(4))
        assert {(p.kind, p.positive_id) for p in pairs} == {("llm", "c0"), ("llm", "c1")} and len(pairs) == 6


def test_an_unreachable_llm_stops_generation_without_failing(tmp_path: Path) -> None:
    import httpx

    from rag.finetune.questions import generate_questions

    def refused(prompt: str) -> str:
        raise httpx.ConnectError("refused")

    result = generate_questions(_chunks(3), budget_s=60, cache=tmp_path, ask=refused, model="m")
    assert result.counts["failed"] == 1 and result.counts["not_asked"] == 2 and not result.by_chunk
    assert result.summary()["stopped"].startswith("llm_unreachable")


def test_the_adapter_learns_a_ranking_and_keeps_its_best_epoch() -> None:
    from rag.finetune.adapter import AdapterConfig, Examples, Queries, apply, retrieval_metrics, train_adapter

    rng = np.random.default_rng(0)
    d, n = 16, 40
    corpus = rng.normal(size=(n, d)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    mix = np.eye(d, dtype=np.float32) + rng.normal(scale=0.8, size=(d, d)).astype(np.float32)

    def queries(rows: np.ndarray) -> np.ndarray:  # the questions "speak another language": a fixed linear distortion
        q = corpus[rows] @ mix.T + rng.normal(scale=0.05, size=(len(rows), d)).astype(np.float32)
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    train_rows, val_rows = rng.integers(0, n, 300), rng.integers(0, n, 60)
    examples = Examples(queries(train_rows), [frozenset({int(r)}) for r in train_rows])
    validation = Queries(queries(val_rows), [frozenset({int(r)}) for r in val_rows])
    run = train_adapter(examples, corpus, validation, AdapterConfig(epochs=30, batch_size=32, lr=1e-2, patience=30))
    assert run.best_epoch is not None and run.epochs[run.best_epoch - 1]["validation"]["mrr@10"] > run.base["mrr@10"] + 0.1
    kept = retrieval_metrics(apply(run.weight, validation.vectors), apply(run.weight, corpus), validation.relevant)
    assert kept == run.epochs[run.best_epoch - 1]["validation"]

    scripted = iter([0.5, 0.6, 0.7, 0.65, 0.69, 0.9])
    stopped = train_adapter(examples, corpus, validation, AdapterConfig(epochs=10, patience=2),
                            evaluate=lambda w: {"mrr@10": next(scripted)})
    assert stopped.best_epoch == 2 and len(stopped.epochs) == 4 and stopped.early_stopped
    flat = iter([0.5, 0.5, 0.4])
    never = train_adapter(examples, corpus, validation, AdapterConfig(epochs=2, patience=5),
                          evaluate=lambda w: {"mrr@10": next(flat)})
    assert never.best_epoch is None and np.array_equal(never.weight, np.eye(d))  # nothing beat the base: base kept


def test_the_adapter_cli_saves_a_model_the_product_loads(tiny_lesson: tuple[Path, Path, list[StoredChunk]],
                                                         tmp_path: Path) -> None:
    from rag.embeddings import E5Embeddings, SentenceTransformerBackend
    from rag.finetune.__main__ import main
    from rag.finetune.adapter import apply
    from rag.finetune.vectors import VectorCache

    root, model, chunks = tiny_lesson
    data = root / "eval"
    data.mkdir(exist_ok=True)
    row = {"id": "v1", "question": "tiệm cận đứng là gì", "split": "validation",
           "correct": [{"source": "lop12/01-tiem-can.md", "span": "gọi là đường tiệm cận đứng"}]}
    (data / "validation.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text(json.dumps({**row, "id": split, "split": split}, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
    out = tmp_path / "models/adapted"
    argv = ["--adapter", "--from-index", "--data", str(data), "--lessons", str(root / "lessons"), "--base", str(model),
            "--out", str(out), "--epochs", "3", "--threads", "1", "--no-eval"]
    assert main(argv) == 0
    log = json.loads((out / "training_log.json").read_text(encoding="utf-8"))
    assert log["config"]["adapter"] and len(log["epochs"]) >= 1 and log["base_validation"]["mrr@10"] > 0
    assert (out / "README.md").is_file() and list((tmp_path / "models/_vectors").glob("*.npz"))
    # The saved model is base → normalize → W → normalize, loaded by the product's backend with the E5 prefixes.
    from safetensors.numpy import load_file

    weight = load_file(str(out / "3_Dense/model.safetensors"))["linear.weight"]
    product = E5Embeddings(SentenceTransformerBackend(str(out), local_files_only=True))
    base_vectors = VectorCache(tmp_path / "models/_vectors", str(model), "passage")
    text = chunks[0].text
    expected = apply(weight, base_vectors.encode(__import__("sentence_transformers").SentenceTransformer(str(model)), [text]))
    assert np.allclose(product.encode([text], "passage")[0], expected[0], atol=1e-5)


@pytest.mark.slow
def test_the_adapter_beats_the_bundled_base_on_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real thing on this machine's CPU (~10 min): every lesson, the bundled base exported, no test question."""
    from conftest import REPO

    from rag.finetune.__main__ import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "models/adapted"
    argv = ["--adapter", "--from-index", "--base", "bundled", "--out", str(out), "--data", str(REPO / "data/eval"),
            "--lessons", str(REPO / "data/lessons"), "--threads", "2", "--no-eval"]
    assert main(argv) == 0
    log = json.loads((out / "training_log.json").read_text(encoding="utf-8"))
    assert log["beats_base"]
    assert log["best_validation"]["mrr@10"] >= log["base_validation"]["mrr@10"] + 0.05
    assert log["data"]["material"]["pairs"]["total"] > 300


def test_pairs_from_an_ingested_index_equal_those_from_the_lessons(tiny_lesson: tuple[Path, Path, list[StoredChunk]],
                                                                   tmp_path: Path) -> None:
    from ingest.__main__ import main as ingest
    from rag.embeddings import E5Embeddings, SentenceTransformerBackend
    from rag.finetune.trainer import material_chunks

    root, model, _ = tiny_lesson
    assert ingest([str(root / "lessons"), "--index", str(tmp_path / "index"), "--embedder", str(model), "--quiet"]) == 0
    from_index = material_chunks(_config(root, model, tmp_path / "out", index=tmp_path / "index"), str(model))
    from_lessons = stored_lesson_chunks(root / "lessons", E5Embeddings(SentenceTransformerBackend(str(model))))

    def pairs(chunks: list[StoredChunk]) -> set[tuple[str, str, str]]:
        return {(p.kind, p.anchor, p.positive) for p in material_pairs(chunks, seed=3).pairs}

    assert sorted(c.id for c in from_index) == sorted(c.id for c in from_lessons)
    assert pairs(from_index) == pairs(from_lessons) and pairs(from_index)


def test_generated_questions_join_the_training_data(tiny_lesson: tuple[Path, Path, list[StoredChunk]], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.finetune.trainer import build_data

    root, model, _ = tiny_lesson

    def about_the_chunk(messages, options) -> str:  # one question per chunk, quoting the chunk's last words
        return "hỏi về: " + messages[-1]["content"].strip()[-40:]

    data = root / "eval"
    data.mkdir(exist_ok=True)
    row = {"id": "v1", "question": "tiệm cận đứng là gì", "split": "validation",
           "correct": [{"source": "lop12/01-tiem-can.md", "span": "gọi là đường tiệm cận đứng"}]}
    (data / "validation.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    with FakeOllama(models=["tiny:1b"], reply=about_the_chunk) as fake:
        monkeypatch.setenv("VIMATH_OLLAMA_URL", fake.url)
        monkeypatch.setenv("VIMATH_OLLAMA_MODEL", "tiny:1b")
        config = _config(root, model, tmp_path / "models/out", from_index=True, labels=False, generate_with_llm=True,
                         llm_budget_s=60, style_share=0.0)
        made = build_data(config, str(model))
    n = made.summary["chunks"]  # as ingest chunks the lesson (merged up to the target size)
    assert made.summary["llm"]["questions"] == n and made.summary["llm"]["asked"] == n
    assert made.summary["material"]["used_by_kind"]["llm"] == n
    generated = {a: ids for a, ids in made.anchors.items() if a.startswith("hỏi về:")}
    assert len(generated) == n and all(len(ids) == 1 for ids in generated.values())
    assert list((tmp_path / "models/_llm_questions").glob("*.json"))
