"""The code's shape, checked: layers point one way, registries name every kind once, errors share one base."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from word_backend import WordBackend

from rag.answering import AnswerStatus, status_label
from rag.conversation_log import LogUnavailable
from rag.embedder_loading import EmbedderUnavailable
from rag.embeddings import E5Embeddings
from rag.errors import VimathError
from rag.eval.dataset import DatasetError, load_questions, parse_question
from rag.finetune.card import EvaluationFailed
from rag.finetune.trainer import Interrupted, load_log
from rag.index import IndexDamaged, IndexMismatch, IndexMissing, LessonIndex
from rag.llm import Failure
from rag.loaders import LOADERS, SUFFIXES, LoadError, load
from rag.ranking import METHODS, RANKERS, check_method, make_ranker
from rag.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((REPO / "rag").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_the_library_never_imports_the_application(path: Path) -> None:
    application = {m for m in imported_modules(path) if m.split(".")[0] in {"ingest", "ui"}}
    assert not application, f"{path.relative_to(REPO)} imports {sorted(application)}"


def test_every_ranking_method_is_registered_once_and_builds_a_ranker(tmp_path: Path) -> None:
    embeddings = E5Embeddings(WordBackend())
    index = LessonIndex.open(Settings(index_dir=tmp_path / "ix"), embeddings.identity)
    texts = ["Hàm số đồng biến khi đạo hàm dương.", "Tích phân từng phần.", "Xác suất có điều kiện."]
    index.upsert(["a", "b", "c"], embeddings.encode(texts, "passage"), texts,
                 [{"source": f"{i}.md", "heading_path": "", "chunk_hash": i} for i in "abc"])
    assert METHODS == tuple(RANKERS) and len(set(METHODS)) == len(METHODS)
    for method in METHODS:
        hits = make_ranker(method, index, embeddings).rank("hàm số đồng biến", 2, None)
        assert hits and all(-1.0 <= h.score <= 1.0 for h in hits), method


def test_an_unknown_method_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="dense, bm25, hybrid"):
        check_method("fancy")
    with pytest.raises(ValueError, match="dense, bm25, hybrid"):
        Settings(retrieval_method="fancy")


@pytest.mark.parametrize("error", [IndexMissing, IndexMismatch, IndexDamaged, LogUnavailable, EmbedderUnavailable,
                                    LoadError, DatasetError, Interrupted, EvaluationFailed])
def test_expected_errors_share_one_base(error: type[Exception]) -> None:
    assert issubclass(error, VimathError)


def test_answer_statuses_cover_every_llm_failure_and_have_labels() -> None:
    assert {AnswerStatus.of(f) for f in Failure} <= set(AnswerStatus)
    assert all(status.label and status.label != status.value for status in AnswerStatus)
    assert status_label("ok") == AnswerStatus.OK.label and status_label("from-an-older-version") == "from-an-older-version"
    assert json.dumps({"status": AnswerStatus.NOT_COVERED}) == '{"status": "not_covered"}'


def test_every_registered_format_loads_and_others_are_refused_with_the_list(tmp_path: Path) -> None:
    assert SUFFIXES == tuple(LOADERS)
    odd = tmp_path / "bai.odt"
    odd.write_text("x", encoding="utf-8")
    with pytest.raises(LoadError, match=" ".join(["unsupported file type .odt; use", ", ".join(SUFFIXES)])):
        load(odd)


def question(**extra: object) -> dict[str, object]:
    return {"id": "q1", "question": "Đạo hàm là gì?", "split": "test", "correct": [{"source": "lop11/08-dao-ham.md"}], **extra}


def test_eval_lines_carry_grade_and_style_and_refuse_unknown_fields() -> None:
    q = parse_question(question(grade=11, style="plain_math"))
    assert (q.grade, q.style) == (11, "plain_math")
    with pytest.raises(ValueError, match="unknown field 'difficulty'"):
        parse_question(question(difficulty="hard"))
    with pytest.raises(ValueError, match="grade"):
        parse_question(question(grade=9))
    with pytest.raises(ValueError, match="missing field 'correct'"):
        parse_question({"id": "q", "question": "?", "split": "test"})


def test_an_eval_file_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(question()) + "\n" + json.dumps(question(id="q2", correct=[])) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"q.jsonl:2: correct"):
        load_questions(path)


def test_a_damaged_training_log_is_named_not_half_read(tmp_path: Path) -> None:
    (tmp_path / "training_log.json").write_text(json.dumps({"completed": True, "epochs": "many"}), encoding="utf-8")
    with pytest.raises(ValueError, match="training_log.json"):
        load_log(tmp_path)


def test_finetuning_without_the_train_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import rag.finetune.__main__ as cli

    monkeypatch.setattr(cli, "missing_training_packages", lambda: ["datasets"])
    assert cli.main(["--data", "data/eval", "--out", "x"]) == cli.EXIT_ERROR
    assert "pip install -e '.[train]'" in capsys.readouterr().err
