"""Limits that keep one client, or a burst of them, from taking the service down: request rate per key, request
size, and a bounded queue in front of the LLM."""
from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.api.errors import ApiError, error_body


class RateLimiter:
    """A token bucket per caller: `per_minute` requests a minute, in bursts of up to `per_minute`."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, caller: str) -> None:
        """Take one token for `caller`, or raise 429 saying when to retry."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(caller, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self.rate)
                raise ApiError(429, "rate_limited", f"Too many requests for this API key (limit "
                                                    f"{int(self.capacity)} a minute); retry in {wait} s.",
                               headers={"Retry-After": str(wait)})
            self._buckets[caller] = (tokens - 1.0, now)


class BodyLimit:
    """ASGI middleware refusing bodies over `max_bytes` with 413, by Content-Length or while a chunked body arrives,
    before anything parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        received = 0
        too_large = False
        answered = False

        async def limited() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            # The framework turns a failed body read into its own 400; what it answers is replaced by the 413.
            nonlocal answered
            if too_large:
                if not answered and message["type"] == "http.response.start":
                    answered = True
                    await self._refuse(send)
                return
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except Exception:
            if not (too_large and not answered):
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(error_body("request_too_large", f"The request body is larger than {self.max_bytes} bytes "
                                                          "(setting api_max_body_bytes).", 413)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class GenerationGate:
    """At most `slots` answers generated at once and `queue` more waiting; beyond that, or after waiting `wait_s`,
    a clear 503 instead of an ever longer queue. Used from the event loop only, so plain counters are safe."""

    def __init__(self, slots: int, queue: int, wait_s: float) -> None:
        self.slots, self.queue, self.wait_s = slots, queue, wait_s
        self.admitted = 0  # running or waiting
        self.running = 0
        self._semaphore: asyncio.Semaphore | None = None

    def _sem(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.slots)
        return self._semaphore

    @asynccontextmanager
    async def admission(self) -> AsyncIterator[None]:
        """A place in line, refused at once when the line is full."""
        if self.admitted >= self.slots + self.queue:
            raise ApiError(503, "overloaded", f"The tutor is answering {self.slots} questions and {self.queue} more "
                                              "are waiting; retry in a few seconds.", headers={"Retry-After": "5"})
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def acquire(self) -> None:
        """Wait for a generation slot (call `release` when the generation ends), or 503 after `wait_s`."""
        try:
            await asyncio.wait_for(self._sem().acquire(), self.wait_s)
        except (asyncio.TimeoutError, TimeoutError):
            raise ApiError(503, "overloaded", f"No answer slot freed up within {self.wait_s:g} s; retry later.",
                           headers={"Retry-After": "10"}) from None
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        self._sem().release()
