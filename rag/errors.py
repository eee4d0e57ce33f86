"""One base for every error vimath-tutor raises on purpose (like langchain-core's LangChainException).

Each CLI catches `VimathError` once and prints its message, which always says what to do; anything else is a bug
and keeps its traceback. Subclasses keep their older built-in bases too, so existing `except` clauses still work.
"""
from __future__ import annotations


class VimathError(Exception):
    """An expected failure with an actionable message for the user."""
