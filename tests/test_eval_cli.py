"""`python -m rag.eval` end to end on three tiny lessons and four questions, with the bundled embedder."""
from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from rag.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rag.eval.__main__ import main
from rag.eval.metrics import METRICS

LESSONS = {
    "lop11/01-cap-so-cong.md": """# Bài 1. Cấp số cộng

**Định nghĩa 1.** Cấp số cộng là dãy số mà kể từ số hạng thứ hai, mỗi số hạng bằng số hạng đứng ngay trước nó cộng với một số không đổi $d$, gọi là công sai.

**Công thức.** Số hạng tổng quát của cấp số cộng là $u_n = u_1 + (n-1)d$.
""",
    "lop12/01-tich-phan.md": """# Bài 2. Tích phân

**Định nghĩa 1.** Nếu $F$ là một nguyên hàm của $f$ trên $[a; b]$ thì tích phân của $f$ từ $a$ đến $b$ là $\\int_a^b f(x)\\,dx = F(b) - F(a)$.
""",
    "lop10/01-xac-suat.md": """# Bài 3. Xác suất cổ điển

**Định nghĩa 1.** Xác suất của biến cố $A$ là tỉ số giữa số kết quả thuận lợi cho $A$ và số phần tử của không gian mẫu: $P(A) = \\frac{n(A)}{n(\\Omega)}$.
""",
}
QUESTIONS = [
    {"id": "t-csc", "question": "cấp số cộng là gì", "split": "test", "type": "definition",
     "correct": [{"source": "lop11/01-cap-so-cong.md", "span": "gọi là công sai"}],
     "related": [{"source": "lop10/01-xac-suat.md"}]},
    {"id": "t-tp", "question": "tích phân từ a đến b tính bằng nguyên hàm thế nào", "split": "test",
     "correct": [{"source": "lop12/01-tich-phan.md"}], "related": []},
    {"id": "t-xs", "question": "công thức tính xác suất của biến cố", "split": "test",
     "correct": [{"span": "P(A) = \\frac{n(A)}{n(\\Omega)}"}],
     "related": [{"span": "a sentence that is in no lesson"}]},
    # deliberately failing: labelled with the probability lesson, asks about the arithmetic progression
    {"id": "t-fail", "question": "công sai của cấp số cộng là gì", "split": "test",
     "correct": [{"source": "lop10/01-xac-suat.md"}], "related": [{"source": "lop11/01-cap-so-cong.md"}]},
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evalcli")
    for rel, text in LESSONS.items():
        (root / "lessons" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "lessons" / rel).write_text(text, encoding="utf-8")
    (root / "q.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    return root


def run(workdir: Path, *extra: str) -> tuple[int, Any, str]:
    """The command in `workdir` (its per-embedder index goes under ./.vimath_eval there): exit code, JSON, stderr."""
    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(workdir)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(["--dataset", "q.jsonl", "--lessons", "lessons", "--embedder", "bundled", "--json", "--out", "reports", *extra])
    finally:
        os.chdir(cwd)
    return code, json.loads(out.getvalue()) if code == 0 else None, err.getvalue()


@pytest.fixture(scope="module")
def first_run(workdir: Path) -> tuple[int, Any, str]:
    return run(workdir)


def check(result: dict[str, Any]) -> None:
    for name in ("MRR@10", "Accuracy@1", "Hit@1", "Hit@3", "Hit@5", "nDCG@10", "Recall@5", "HardNegativeAbove@10"):
        assert 0.0 <= result[name] <= 1.0, name
    assert set(METRICS) <= set(result)
    assert result["queries"] == 4
    assert "t-fail" in {q["id"] for q in result["failed"]}
    assert [u["id"] for u in result["unmatched_labels"]] == ["t-xs"]


def test_single_configuration(workdir: Path, first_run: tuple[int, Any, str]) -> None:
    code, result, err = first_run
    assert code == 0
    check(result)
    assert result["method"] == Settings.model_fields["retrieval_method"].default
    assert "multilingual-e5-small" in result["embedder"]
    assert result["Hit@5"] >= 0.75  # the three answerable questions are easy
    assert "Unmatched label: t-xs related" in err
    assert any((workdir / ".vimath_eval").iterdir())
    report = next((workdir / "reports").glob("*.md")).read_text(encoding="utf-8")
    assert "t-fail" in report and "a sentence that is in no lesson" in report


def test_compare_methods_reuses_the_index(workdir: Path, first_run: tuple[int, Any, str]) -> None:
    code, result, err = run(workdir, "--method", "dense", "--compare-method", "hybrid")
    assert code == 0
    assert set(result) == {"a", "b", "diff"}
    check(result["a"])
    check(result["b"])
    assert result["b"]["method"] == "hybrid"
    assert result["diff"]["MRR@10"] == pytest.approx(result["b"]["MRR@10"] - result["a"]["MRR@10"])
    assert "0 embedded" in err  # incremental ingest: nothing changed since the first run


def test_bad_dataset_is_an_error(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(workdir)
    (workdir / "bad.jsonl").write_text('{"id": "x", "question": "?", "split": "test", "correct": [{"chunk_id": "abc"}]}\n', encoding="utf-8")
    assert main(["--dataset", "bad.jsonl", "--lessons", "lessons", "--embedder", "bundled"]) == 1
    assert "never chunk ids" in capsys.readouterr().err


def test_grade_scope_and_the_report_by_grade_and_style(workdir: Path, first_run: tuple[int, Any, str]) -> None:
    # the questions carry no grade: it comes from their correct labels' folders (t-xs has a span only: no grade)
    assert first_run[1]["by_grade"].keys() == {"10", "11", "12", "none"}
    assert first_run[1]["by_grade"]["11"]["questions"] == 1
    assert first_run[1]["by_style"].keys() == {"none"}
    assert first_run[1]["grade_scope"] is False
    code, result, _ = run(workdir, "--method", "dense", "--grade-scope")
    assert code == 0 and result["grade_scope"] is True
    # t-fail (grade 10, asks about the grade-11 lesson) can no longer be led astray by the grade-11 chunk
    fail = next(q for q in result["per_query"] if q["id"] == "t-fail")
    assert fail["first_correct_rank"] == 1
    code, result, _ = run(workdir, "--method", "dense", "--grade", "12")
    assert code == 0 and result["queries"] == 1 and set(result["by_grade"]) == {"12"}
    report = max((workdir / "reports").glob("*grade12*.md"), key=lambda p: p.stat().st_mtime).read_text(encoding="utf-8")
    assert "## By grade" in report and "## By question style" in report
