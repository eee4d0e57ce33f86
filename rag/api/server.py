"""`python -m rag serve`: check the binding against the keys, open the service, run uvicorn."""
from __future__ import annotations

import logging
import sys

from rag.api.auth import auth_problem
from rag.api.keys import KeyStore
from rag.errors import VimathError
from rag.settings import Settings


class ServeRefused(VimathError):
    """The server must not start with this configuration (the message says how to fix it)."""


def serve(settings: Settings, host: str, port: int, *, log_level: str = "info") -> None:
    store = KeyStore(settings.api_keys_file)
    problem = auth_problem(host, settings.api_allow_anonymous, store)
    if problem:
        raise ServeRefused(problem)
    import uvicorn

    from rag.api.app import create_app
    from rag.api.service import TutorService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = TutorService.open(settings)
    names = [k.name for k in store.keys()]
    mode = "anonymous access (loopback only)" if settings.api_allow_anonymous else f"{len(names)} API key(s): {', '.join(names)}"
    print(f"vimath-tutor API on http://{host}:{port} (docs at /docs) — {mode}", file=sys.stderr, flush=True)
    app = create_app(service, auth_required=not settings.api_allow_anonymous, keys=store)
    # proxy headers off: behind a reverse proxy, rate limits are per key, so the client address matters little
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False,
                timeout_graceful_shutdown=10)
