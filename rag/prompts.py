"""Prompt templates, kept as files in prompts/, loaded as LangChain templates with a name and content hash."""
from __future__ import annotations

import hashlib
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


@cache
def load_prompt(name: str, folder: Path = PROMPTS_DIR) -> PromptFile:
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


def format_chunk(number: int, hit: Hit) -> str:
    """One numbered piece of material as the model sees it."""
    meta = hit.metadata
    page = f", trang {meta['page']}" if "page" in meta else ""
    return f"[{number}] (nguồn: {meta.get('source', '?')}{page})\n{hit.text.strip()}"

