"""`python -m rag search` over the sample index: JSON output, --queries files, and a missing index."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.__main__ import main
from rag.settings import Settings

LESSONS = Path(__file__).resolve().parents[1] / "data" / "lessons"


def search_json(capsys: pytest.CaptureFixture[str], index: Settings, *args: str) -> list[dict]:
    assert main(["search", *args, "--json", "--index", str(index.index_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    return json.loads(out)


@pytest.mark.parametrize("method", [None, "dense", "hybrid", "bm25", "lesson"])
def test_json_results_are_ranked_records(sample_index: Settings, capsys: pytest.CaptureFixture[str],
                                         method: str | None) -> None:
    extra = ["--retrieval-method", method] if method else []
    hits = search_json(capsys, sample_index, "Công thức tính tích phân từng phần", *extra)
    assert len(hits) == sample_index.top_k == 5
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in hits]
    assert all(0 < s <= 1 for s in scores)  # `score` is the dense cosine whatever ranks the hits
    if method == "dense":
        assert scores == sorted(scores, reverse=True)
    if method == "hybrid" or (method is None and sample_index.retrieval_method == "hybrid"):
        fused = [h["metadata"]["rrf"] for h in hits]
        assert fused == sorted(fused, reverse=True)
    if method == "lesson" or (method is None and sample_index.retrieval_method == "lesson"):
        fused = [h["metadata"]["lesson_score"] for h in hits]
        assert fused == sorted(fused, reverse=True)
    if method == "bm25":
        lexical = [h["metadata"]["bm25"] for h in hits]
        assert lexical == sorted(lexical, reverse=True)
    assert len({h["metadata"]["id"] for h in hits}) == 5
    for hit in hits:
        assert hit["text"].strip()
        assert (LESSONS / hit["metadata"]["source"]).is_file()
        assert hit["text"].startswith(hit["metadata"]["heading_path"])
    assert hits[0]["metadata"]["source"] == "lop12/08-tich-phan.md"


def test_k_and_source_filter(sample_index: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    hits = search_json(capsys, sample_index, "đạo hàm", "-k", "2")
    assert len(hits) == 2
    hits = search_json(capsys, sample_index, "đạo hàm", "-k", "4", "--source", "lop12/02-cuc-tri.md")
    assert len(hits) == 4 and {h["metadata"]["source"] for h in hits} == {"lop12/02-cuc-tri.md"}


def test_queries_file_prints_one_json_list_per_line_in_order(sample_index: Settings, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    queries = ["Công thức tính thể tích khối chóp", "xác suất có điều kiện của A khi biết B",
               "số hạng tổng quát của cấp số nhân", "dinh li cosin trong tam giac"]
    path = tmp_path / "cau-hoi.txt"
    path.write_text("\ufeff" + "\n\n".join(queries) + "\n", encoding="utf-8")
    assert main(["search", "--queries", str(path), "-k", "3", "--index", str(sample_index.index_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(queries)
    results = [json.loads(line) for line in lines]
    for query, result in zip(queries, results):
        assert result == search_json(capsys, sample_index, query, "-k", "3"), query
    assert [r[0]["metadata"]["source"] for r in results[:3]] == [
        "lop12/10-the-tich-khoi-da-dien.md", "lop12/14-xac-suat-co-dieu-kien.md", "lop11/05-cap-so-nhan.md"]


def test_plain_output_names_source_and_score(sample_index: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "tiệm cận ngang", "-k", "1", "--index", str(sample_index.index_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[1] score 0.") and "lop12/04-tiem-can.md" in out


def test_missing_index_exits_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["search", "đạo hàm", "--json", "--index", str(tmp_path / "khong-co-index")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "No index at" in captured.err and "khong-co-index" in captured.err and "python -m ingest" in captured.err


def test_empty_queries_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trong.txt"
    path.write_text("\n  \n", encoding="utf-8")
    assert main(["search", "--queries", str(path), "--index", str(tmp_path / "index")]) == 1
    assert "--queries" in capsys.readouterr().err


def test_grade_flag_keeps_the_search_within_the_grade(sample_index: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    question = "số trung bình cộng của mẫu số liệu"
    everywhere = {h["metadata"].get("grade") for h in search_json(capsys, sample_index, question, "-k", "10")}
    assert len(everywhere) > 1  # the question matches statistics of several grades
    scoped = search_json(capsys, sample_index, question, "-k", "10", "--grade", "10")
    assert scoped and all(h["metadata"]["grade"] == 10 for h in scoped)  # every sample lesson has a grade
