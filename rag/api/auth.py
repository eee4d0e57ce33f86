"""Who is calling: `Authorization: Bearer <key>` checked against the keys file, or anonymous when allowed."""
from __future__ import annotations

import ipaddress

from fastapi import Request

from rag.api.errors import ApiError
from rag.api.keys import KeyStore

ANONYMOUS = "anonymous"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_problem(host: str, allow_anonymous: bool, store: KeyStore) -> str | None:
    """Why the server must not start with this binding and these keys, or None when it may."""
    if allow_anonymous:
        if not is_loopback(host):
            return (f"Anonymous access is allowed only on a loopback address, not on {host}. Remove "
                    "--allow-anonymous (VIMATH_API_ALLOW_ANONYMOUS) or bind to 127.0.0.1.")
        return None
    if not store.keys():
        return (f"No API keys in {store.path}. Create one with `python -m rag keys add NAME --keys {store.path}`, "
                "or, for local testing only, bind to 127.0.0.1 with --allow-anonymous.")
    return None


class Authenticator:
    """A FastAPI dependency that returns the caller's name (the key's name) or raises 401."""

    def __init__(self, store: KeyStore, required: bool) -> None:
        self.store, self.required = store, required

    def __call__(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not self.required:
            name = self.store.verify(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
            return name or ANONYMOUS
        challenge = {"WWW-Authenticate": 'Bearer realm="vimath-tutor"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing_api_key", "Send an API key as `Authorization: Bearer <key>` "
                                                   "(an administrator creates one with `python -m rag keys add NAME`).",
                           headers=challenge)
        name = self.store.verify(token.strip())
        if name is None:
            raise ApiError(401, "invalid_api_key", "The API key is not valid (unknown or revoked).", headers=challenge)
        request.state.client_name = name
        return name
