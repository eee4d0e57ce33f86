"""Prompt templates, kept as files in prompts/, loaded as LangChain templates with a name and content hash."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder, PromptTemplate

from rag.index import Hit
from rag.normalize import nfc

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"
TUTOR_SYSTEM, TUTOR_USER, CONDENSE = "tutor_system", "tutor_user", "condense_question"


@dataclass(frozen=True)
class PromptFile:
    """A prompt's text and the version an answer records."""

    name: str
    text: str

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:12]


def load_prompt(name: str, folder: Path | None = None) -> PromptFile:
    """A prompt from `folder`, by default the module's PROMPTS_DIR (bench/answer_eval.py --prompts points it at a
    variant to compare without editing prompts/)."""
    return _load(name, folder or PROMPTS_DIR)


@cache
def _load(name: str, folder: Path) -> PromptFile:
    return PromptFile(name, nfc((folder / f"{name}.md").read_text(encoding="utf-8")).strip())


def tutor_version() -> str:
    """Name and hash of the tutor prompt pair, recorded with every answer."""
    system, user = load_prompt(TUTOR_SYSTEM), load_prompt(TUTOR_USER)
    return f"{system.name}@{system.sha}+{user.name}@{user.sha}"


def tutor_template() -> ChatPromptTemplate:
    """System rules, then recent turns, then the numbered material with the question."""
    return ChatPromptTemplate.from_messages([
        ("system", load_prompt(TUTOR_SYSTEM).text),
        MessagesPlaceholder("history"),
        ("human", load_prompt(TUTOR_USER).text),
    ])


def condense_template() -> PromptTemplate:
    return PromptTemplate.from_template(load_prompt(CONDENSE).text)


# The fence around each chunk, and the prompt line that introduces the question: text inside a chunk must not be
# able to close its fence or start a fake question (prompt injection from an uploaded document).
FENCE_OPEN, FENCE_CLOSE = "<tài_liệu", "</tài_liệu>"
QUESTION_LABEL = "Câu hỏi của học sinh:"
_FAKE_FENCE = re.compile(r"<\s*(/?)\s*tài[\s_]*liệu", re.IGNORECASE)
_FAKE_QUESTION = re.compile(r"câu\s+hỏi\s+của\s+học\s+sinh\s*:", re.IGNORECASE)
_BLANK_LINES = re.compile(r"\n\s*\n(\s*\n)+")


def neutralise(text: str) -> str:
    """Chunk text that cannot fake the prompt's structure: fence tags and the question label are defused."""
    text = _FAKE_FENCE.sub(lambda m: f"‹{m.group(1)}tài liệu", nfc(text))
    return _FAKE_QUESTION.sub("Câu hỏi (trích trong tài liệu):", text)


def denoise(hit: Hit) -> str:
    """The chunk's text for the model: without the heading path it starts with (the fence names it), bold markers and
    runs of blank lines, which cost tokens and were copied back verbatim by a small model."""
    text = nfc(hit.body).strip()
    return _BLANK_LINES.sub("\n\n", text.replace("**", "")).strip()


def _attribute(value: str) -> str:
    return neutralise(value).replace('"', "'").replace("\n", " ")


def format_chunk(number: int, hit: Hit) -> str:
    """One numbered piece of material as the model sees it: fenced, with where it comes from."""
    meta = hit.metadata
    page = f", trang {meta['page']}" if "page" in meta else ""
    heading = f' mục="{_attribute(str(meta["heading_path"]))}"' if meta.get("heading_path") else ""
    return (f'{FENCE_OPEN} số="{number}" nguồn="{_attribute(str(meta.get("source", "?")))}{page}"{heading}>\n'
            f"{neutralise(denoise(hit))}\n{FENCE_CLOSE}")

