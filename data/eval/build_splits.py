"""Regenerate data/eval/{train,validation,test}.jsonl from data/eval/parts/ (run: python data/eval/build_splits.py).

Deterministic: parts in name order, questions in file order, each question's own `split`. The *-sanity.jsonl parts
are not part of the evaluation set and are left out. Fails on a malformed line, a duplicate id or an unknown split.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rag.eval.dataset import SPLITS, QuestionRecord, parse_question

HERE = Path(__file__).resolve().parent
MIN_QUESTIONS = 200


def read_parts(parts: Path) -> list[dict[str, Any]]:
    """The questions of every non-sanity part, checked."""
    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for path in sorted(p for p in parts.glob("*.jsonl") if not p.stem.endswith("-sanity")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:  # the one schema of an evaluation line, as python -m rag.eval reads it (NFC included)
                parse_question(json.loads(line))
                row = QuestionRecord.model_validate_json(line).model_dump(exclude_none=True, exclude_defaults=True)
            except ValueError as exc:
                sys.exit(f"{where}: {exc}")
            if row["split"] not in SPLITS:
                sys.exit(f"{where}: split {row['split']!r} is not one of {SPLITS}")
            if row["id"] in seen:
                sys.exit(f"{where}: id {row['id']!r} already in {seen[row['id']]}")
            seen[row["id"]] = where
            rows.append({k: row[k] for k in QuestionRecord.model_fields if k in row})
    return rows


def main() -> None:
    rows = read_parts(HERE / "parts")
    if len(rows) < MIN_QUESTIONS:
        sys.exit(f"only {len(rows)} questions; the evaluation set needs at least {MIN_QUESTIONS}")
    for split in SPLITS:
        chosen = [r for r in rows if r["split"] == split]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen)
        (HERE / f"{split}.jsonl").write_text(text, encoding="utf-8")
        print(f"{split}.jsonl: {len(chosen)} questions")


if __name__ == "__main__":
    main()
