"""Student-style questions per chunk from the configured LLM (optional), within a time budget, cached on disk.

The cache key is the chunk's hash, the prompt and the model: a rerun over unchanged lessons with the same model asks
the LLM nothing, and an interrupted or budget-cut run continues where it stopped. Only the lessons' chunks are shown
to the LLM, never an evaluation question.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.index import StoredChunk
from rag.normalize import nfc
from rag.schema import CHUNK_HASH

PROMPT = """Em là học sinh THPT đang ôn môn Toán. Đọc đoạn bài học dưới đây rồi viết 3 câu hỏi mà một học sinh có thể \
gõ vào ô chat để tìm đúng đoạn này:
1. một câu hỏi bình thường, có dấu;
2. một câu có công thức gõ bằng chữ thường như trên bàn phím (x^2, căn(x), (2x+1)/(x-1)), không dùng LaTeX;
3. một câu chỉ đưa ra bài toán hoặc tình huống, không nêu tên chủ đề của bài.
Chỉ in ba câu hỏi, mỗi câu một dòng, không đánh số, không giải thích.

Đoạn bài học:
{chunk}"""
PROMPT_VERSION = hashlib.sha256(PROMPT.encode("utf-8")).hexdigest()[:12]
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|câu\s*\d+\s*[:.)])\s*", re.IGNORECASE)

Ask = Callable[[str], str]  # prompt → the LLM's reply text


@dataclass
class GeneratedQuestions:
    """Questions by chunk id, and what generating them cost."""

    by_chunk: dict[str, list[str]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)  # asked, cached, out_of_budget, failed, empty
    model: str = ""
    elapsed_s: float = 0.0
    error: str | None = None  # why generation stopped early (the LLM unreachable…)

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "questions": sum(len(v) for v in self.by_chunk.values()),
                "chunks": len(self.by_chunk), **dict(sorted(self.counts.items())), "elapsed_s": round(self.elapsed_s, 1),
                **({"stopped": self.error} if self.error else {})}

    def pairs(self, chunks: Sequence[StoredChunk], seed: int = 42) -> list[Any]:
        from rag.finetune.pairs import question_pairs

        return question_pairs(chunks, self.by_chunk, seed=seed)


def cache_key(chunk: StoredChunk, model: str) -> str:
    """Chunk hash + prompt + model: what makes an answer reusable."""
    chunk_hash = str(chunk.metadata.get(CHUNK_HASH) or hashlib.sha256(nfc(chunk.text).encode("utf-8")).hexdigest())
    return hashlib.sha256(f"{chunk_hash}\0{PROMPT_VERSION}\0{model}".encode()).hexdigest()


def parse_questions(reply: str, limit: int = 3) -> list[str]:
    """The question lines of a reply: bullets and numbering stripped, blank and over-long lines dropped."""
    out = []
    for line in nfc(reply).splitlines():
        line = _BULLET.sub("", line).strip().strip('"“”').strip()
        if 8 <= len(line) <= 300 and line not in out:
            out.append(line)
    return out[:limit]


def llm_ask(settings: Any = None) -> tuple[Ask, str]:
    """A prompt → reply function over the product's chat model (rag.llm), and the model's name for the cache key."""
    from rag.llm import chat_model
    from rag.settings import load_settings

    settings = settings or load_settings()
    model = chat_model(settings, num_ctx=2048, num_predict=160)
    provider = getattr(settings, "llm_provider", "ollama")
    return (lambda prompt: str(model.invoke([("human", prompt)]).content)), f"{provider}:{settings.ollama_model}"


def generate_questions(chunks: Sequence[StoredChunk], *, budget_s: float, cache: Path, ask: Ask | None = None,
                       model: str | None = None, clock: Callable[[], float] = time.monotonic) -> GeneratedQuestions:
    """Questions for each chunk: from the cache when there, else asked while the budget lasts.

    An LLM that cannot be reached stops generation (what was cached is still used); one failed chunk is skipped.
    """
    from rag.llm import Failure, classify

    if ask is None:
        ask, model = llm_ask()
    result = GeneratedQuestions(model=model or "")
    cache.mkdir(parents=True, exist_ok=True)
    started = clock()
    for chunk in sorted(chunks, key=lambda c: c.id):
        path = cache / f"{cache_key(chunk, result.model)}.json"
        if path.is_file():
            result.by_chunk[chunk.id] = json.loads(path.read_text(encoding="utf-8"))["questions"]
            result.counts["cached"] += 1
            continue
        if result.error or clock() - started >= budget_s:
            result.counts["out_of_budget" if not result.error else "not_asked"] += 1
            continue
        try:
            reply = ask(PROMPT.format(chunk=chunk.text))
        except Exception as exc:  # noqa: BLE001 (any LLM failure: classified, never fatal to training)
            failure = classify(exc)
            result.counts["failed"] += 1
            if failure in (Failure.UNREACHABLE, Failure.MODEL_MISSING):
                result.error = f"{failure.value}: {exc}"
            continue
        result.counts["asked"] += 1
        questions = parse_questions(reply)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"questions": questions, "chunk": chunk.id, "model": result.model},
                                  ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)  # whole or absent: an interrupted write never poisons the cache
        if questions:
            result.by_chunk[chunk.id] = questions
        else:
            result.counts["empty"] += 1
    result.elapsed_s = clock() - started
    return result
