"""FastAPI dependencies shared by the routes: the service, and the caller (authenticated, then rate-limited)."""
from __future__ import annotations

from fastapi import Request

from rag.api.auth import ANONYMOUS
from rag.api.errors import ApiError
from rag.api.service import TutorService
from rag.settings import Settings


def service(request: Request) -> TutorService:
    return request.app.state.service


def caller(request: Request) -> str:
    """The API key's name (or "anonymous"), once the request fits in the key's rate limit."""
    name: str = request.app.state.authenticator(request)
    host = request.client.host if request.client else "?"
    request.app.state.rate_limiter.check(f"anonymous@{host}" if name == ANONYMOUS else name)
    return name


def check_question(settings: Settings, question: str, history_turns: int = 0) -> None:
    if len(question) > settings.api_max_question_chars:
        raise ApiError(422, "question_too_long", f"The question has {len(question)} characters; at most "
                                                 f"{settings.api_max_question_chars} are accepted.")
    if history_turns > settings.api_max_history_turns:
        raise ApiError(422, "history_too_long", f"The history has {history_turns} exchanges; at most "
                                                f"{settings.api_max_history_turns} are accepted.")
