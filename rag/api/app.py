"""The FastAPI application: routes, error handlers, limits and CORS around one `TutorService`."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from rag.api.auth import Authenticator
from rag.api.errors import install_error_handlers
from rag.api.keys import KeyStore
from rag.api.limits import BodyLimit, RateLimiter
from rag.api.routes import ask, health, openai, search
from rag.api.service import TutorService

DESCRIPTION = """vimath-tutor answers Vietnamese high-school mathematics questions from the teacher's lesson material,
citing it. Authenticate with `Authorization: Bearer <key>` (keys: `python -m rag keys add NAME`). Errors are JSON:
`{"error": {"message", "type", "code"}}`."""


def create_app(service: TutorService, *, auth_required: bool = True, keys: KeyStore | None = None,
               close_service: bool = True) -> FastAPI:
    """The API over `service`. Without `auth_required` every caller is "anonymous" (the server allows that on
    loopback only); keys default to the settings' api_keys_file."""
    settings = service.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_service:
            service.close()

    app = FastAPI(title="vimath-tutor API", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.state.authenticator = Authenticator(keys or KeyStore(settings.api_keys_file), auth_required)
    app.state.rate_limiter = RateLimiter(settings.api_rate_limit_per_minute)
    install_error_handlers(app)
    for module in (health, search, ask, openai):
        app.include_router(module.router)
    if settings.api_cors_origins:  # closed unless the operator names the origins of its front-ends
        app.add_middleware(CORSMiddleware, allow_origins=settings.api_cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Conversation-Id"])
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    return app
