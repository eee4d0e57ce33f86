"""Label resolution: by file, file list, heading and span; survives re-chunking; unmatched labels are reported."""
from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from word_backend import WordBackend

from rag.chunking import ChunkerConfig
from rag.embeddings import E5Embeddings
from rag.eval.dataset import (
    DatasetError,
    EvalSet,
    Label,
    load_questions,
    normalized,
    parse_question,
    resolve_against,
)
from rag.index import LessonIndex
from rag.ingestion import IngestJob, discover
from rag.settings import load_settings

A = "lop10/01-ham-so.md"
B = "lop10/02-vecto.md"
LESSONS = {
    A: """# Bài 1. Hàm số bậc hai

Bài này ôn lại hàm số bậc hai và đồ thị của nó.

## 1. Định nghĩa

**Định nghĩa 1.** Hàm số bậc hai là hàm số cho bởi công thức $y = ax^2 + bx + c$ với $a \\ne 0$.

**Ví dụ 1.** Hàm số $y = 2x^2 - 3x + 1$ là hàm số bậc hai với $a = 2$.

## 2. Đồ thị

**Định lí 1.** Đồ thị của hàm số bậc hai là một parabol có đỉnh $I\\left(-\\frac{b}{2a}; -\\frac{\\Delta}{4a}\\right)$.

**Chú ý.** Parabol quay bề lõm lên trên khi $a > 0$ và xuống dưới khi $a < 0$.
""",
    B: """# Bài 2. Vectơ

## 1. Tổng hai vectơ

**Quy tắc ba điểm.** Với ba điểm bất kì $A, B, C$ ta luôn có $\\vec{AB} + \\vec{BC} = \\vec{AC}$.

**Quy tắc hình bình hành.** Nếu $ABCD$ là hình bình hành thì $\\vec{AB} + \\vec{AD} = \\vec{AC}$.
""",
}
BIG = ChunkerConfig(max_tokens=256, target_tokens=200)
SMALL = ChunkerConfig(max_tokens=60, target_tokens=10)


def build_index(root: Path, lessons: Path, config: ChunkerConfig, name: str) -> LessonIndex:
    embeddings = E5Embeddings(WordBackend())
    index = LessonIndex.open(load_settings(index_dir=root / name, collection="lessons"), embeddings.identity)
    files, _ = discover([lessons])
    IngestJob(index, embeddings, config).run(files)
    return index


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LessonIndex]:
    root = tmp_path_factory.mktemp("labels")
    lessons = root / "lessons"
    for rel, text in LESSONS.items():
        (lessons / rel).parent.mkdir(parents=True, exist_ok=True)
        (lessons / rel).write_text(text, encoding="utf-8")
    return {"big": build_index(root, lessons, BIG, "big"), "small": build_index(root, lessons, SMALL, "small")}


def question(correct: list[dict[str, object]], related: list[dict[str, object]] | None = None, qid: str = "q1") -> dict[str, object]:
    return {"id": qid, "question": "?", "split": "test", "correct": correct, "related": related or []}


def resolve_one(index: LessonIndex, raw: dict[str, object]) -> EvalSet:
    return resolve_against(index, [parse_question(raw)])


def sources_of(index: LessonIndex, ids: frozenset[str]) -> set[str]:
    return {m["source"] for i, m in index.metadatas() if i in ids}


def test_the_two_chunkings_differ(indexes: dict[str, LessonIndex]) -> None:
    assert indexes["small"].count() > indexes["big"].count()


@pytest.mark.parametrize("which", ["big", "small"])
def test_file_label_takes_every_chunk_of_the_file(indexes: dict[str, LessonIndex], which: str) -> None:
    index = indexes[which]
    resolved = resolve_one(index, question([{"source": A}])).questions[0]
    assert resolved.correct == frozenset(index.ids_of(A))
    assert not resolved.unmatched


@pytest.mark.parametrize("which", ["big", "small"])
def test_file_list_label_takes_the_chunks_of_every_file(indexes: dict[str, LessonIndex], which: str) -> None:
    index = indexes[which]
    resolved = resolve_one(index, question([{"source": [A, B]}])).questions[0]
    assert resolved.correct == frozenset(index.ids_of(A) + index.ids_of(B))


@pytest.mark.parametrize("which", ["big", "small"])
def test_heading_label_takes_the_chunks_under_that_heading(indexes: dict[str, LessonIndex], which: str) -> None:
    index = indexes[which]
    label = {"source": A, "heading": "Bài 1. Hàm số bậc hai ›  2.  Đồ thị"}  # spacing does not matter
    resolved = resolve_one(index, question([label])).questions[0]
    expected = {i for i, m in index.metadatas({"source": A}) if m["heading_path"] == "Bài 1. Hàm số bậc hai › 2. Đồ thị"}
    assert resolved.correct == frozenset(expected) and expected
    whole_lesson = resolve_one(index, question([{"source": A, "heading": "Bài 1. Hàm số bậc hai"}])).questions[0]
    assert whole_lesson.correct == frozenset(index.ids_of(A))
    # a heading prefix is matched title by title, not as a string prefix
    partial = resolve_one(index, question([{"source": A, "heading": "Bài 1. Hàm số bậc hai › 2. Đồ"}]))
    assert partial.unmatched and not partial.questions[0].correct


@pytest.mark.parametrize("which", ["big", "small"])
@pytest.mark.parametrize("span", [
    "Parabol quay bề lõm lên trên khi $a > 0$",
    "$\\vec{AB} + \\vec{BC} = \\vec{AC}$",
    "là hàm số cho bởi công thức $y = ax^2 + bx + c$",
])
def test_span_label_survives_rechunking(indexes: dict[str, LessonIndex], which: str, span: str) -> None:
    index = indexes[which]
    resolved = resolve_one(index, question([{"span": span}])).questions[0]
    assert resolved.correct, f"{span!r} matched nothing in the {which} index"
    texts = {i: normalized(d) for i, d in zip(*_docs(index))}
    assert all(normalized(span) in texts[i] for i in resolved.correct)


def _docs(index: LessonIndex) -> tuple[list[str], list[str]]:
    got = index.collection.get(include=["documents"])
    return got["ids"], got["documents"]


def test_span_is_compared_after_nfc_and_whitespace_collapsing(indexes: dict[str, LessonIndex]) -> None:
    decomposed = unicodedata.normalize("NFD", "Parabol quay   bề lõm\nlên trên")
    resolved = resolve_one(indexes["small"], question([{"span": decomposed, "source": A}])).questions[0]
    assert len(resolved.correct) == 1


def test_span_with_source_is_limited_to_that_file(indexes: dict[str, LessonIndex]) -> None:
    index = indexes["small"]
    assert resolve_one(index, question([{"span": "Định nghĩa 1.", "source": A}])).questions[0].correct
    wrong_file = resolve_one(index, question([{"span": "Định nghĩa 1.", "source": B}]))
    assert [u.role for u in wrong_file.unmatched] == ["correct"]


def test_unmatched_labels_are_reported_not_dropped(indexes: dict[str, LessonIndex]) -> None:
    raw = question([{"span": "không có trong bài nào"}], [{"source": "lop10/99-khong-co.md"}])
    eval_set = resolve_one(indexes["big"], raw)
    assert [(u.question_id, u.role) for u in eval_set.unmatched] == [("q1", "correct"), ("q1", "related")]
    assert [q.question.id for q in eval_set.unscorable] == ["q1"]
    assert "không có trong bài nào" in eval_set.unmatched[0].describe()


def test_related_and_triplet_texts(indexes: dict[str, LessonIndex]) -> None:
    raw = question([{"span": "cho bởi công thức"}], [{"span": "là một parabol có đỉnh"}])
    eval_set = resolve_one(indexes["small"], raw)
    q = eval_set.questions[0]
    assert q.correct and q.related and not q.correct & q.related
    triplets = list(eval_set.triplets())
    assert triplets and all("cho bởi công thức" in t.positive and "parabol có đỉnh" in t.negative for t in triplets)


def test_a_chunk_both_correct_and_related_counts_as_correct(indexes: dict[str, LessonIndex]) -> None:
    raw = question([{"span": "Quy tắc ba điểm"}], [{"source": B}])
    q = resolve_one(indexes["big"], raw).questions[0]
    assert q.correct and not q.correct & q.related


@pytest.mark.parametrize("label", [{"id": "abc123"}, {"chunk_id": "x", "source": A}, {"heading": "Bài 1"}, {},
                                   {"source": []}, {"span": "  "}])
def test_bad_labels_are_refused(label: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Label.parse(label)


def test_file_validation(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    rows = [question([{"source": A}], qid="a"), {**question([{"source": B}], qid="b"), "split": "train"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert [q.id for q in load_questions(path)] == ["a", "b"]
    assert [q.id for q in load_questions(path, "train")] == ["b"]
    path.write_text("\n".join(json.dumps(r) for r in rows + [rows[0]]) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"q.jsonl:3: id 'a' already used on line 1"):
        load_questions(path)
    path.write_text(json.dumps({"id": "x", "question": "?", "split": "test"}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="missing"):
        load_questions(path)
