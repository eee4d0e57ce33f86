"""A fake Ollama server for tests: the real `ChatOllama` and `ollama.Client` work against it.

Exceptions that reach callers of ChatOllama (langchain-ollama 1.1.0, ollama 0.6.3, httpx 0.28):
- refused connection: `httpx.ConnectError` for streaming requests (ChatOllama's default, `invoke`
  included); builtin `ConnectionError` for `stream=False` and for `validate_model_on_init=True`.
- unknown model: `ollama.ResponseError` with `.status_code == 404`; with
  `validate_model_on_init=True` the constructor raises `pydantic.ValidationError` (a `ValueError`).
- timeout (`client_kwargs={"timeout": s}`): `httpx.ReadTimeout` (an `httpx.TimeoutException`).
- broken stream: `httpx.RemoteProtocolError` once the chunks already received have been yielded;
  an `{"error": ...}` line in the stream (real Ollama's runner failure) gives `ollama.ResponseError`
  with `.status_code == -1`.
None of httpx's exceptions derives from the builtin `ConnectionError` or `TimeoutError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

Reply = Callable[[list[dict[str, Any]], dict[str, Any]], str]
Route = Callable[["_Handler", dict[str, Any]], None]


def free_port() -> int:
    """Return a port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def echo_reply(messages: list[dict[str, Any]], options: dict[str, Any]) -> str:
    """Answer deterministically by echoing the last user message."""
    last = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    return f"You said: {last}"


def split_words(text: str) -> list[str]:
    """Split text into word chunks (leading whitespace kept) that join back to it."""
    pieces = re.findall(r"\s*\S+", text)
    rest = text[len("".join(pieces)) :]
    if rest:
        pieces = [*pieces[:-1], pieces[-1] + rest] if pieces else [rest]
    return pieces


def _now() -> str:
    """Return the current UTC time the way Ollama formats `created_at`."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class FakeOllama:
    """An Ollama look-alike on 127.0.0.1 whose attributes tests may change between requests."""

    def __init__(
        self,
        models: list[str] | None = None,
        reply: Reply = echo_reply,
        first_token_delay_s: float = 0.0,
        token_delay_s: float = 0.0,
        break_after_chunks: int | None = None,
        stream_error: str | None = None,
        context_length: int = 32768,
        version: str = "0.6.5",
    ) -> None:
        self.models: list[str] = list(models) if models is not None else ["qwen2.5:7b-instruct"]
        self.reply = reply
        self.first_token_delay_s = first_token_delay_s
        self.token_delay_s = token_delay_s
        # After this many NDJSON lines the connection is cut, or with stream_error an error line sent.
        self.break_after_chunks = break_after_chunks
        self.stream_error = stream_error
        self.context_length = context_length
        self.version = version
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        if self._server is None:
            raise RuntimeError("FakeOllama is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeOllama:
        """Bind a free port and serve in a daemon thread."""
        if self._server is None:
            self._stopping.clear()
            self._server = _Server(("127.0.0.1", 0), _Handler)
            self._server.fake = self
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.02,), daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection, cutting off requests in progress."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def last(self, path: str) -> dict[str, Any]:
        """Return the JSON body of the latest request to `path`."""
        with self._lock:
            return next(body for p, body in reversed(self.requests) if p == path)

    def resolve(self, name: str) -> str | None:
        """Return the served model `name` refers to (a bare name means `:latest`), or None."""
        for candidate in (name, f"{name}:latest") if ":" not in name else (name,):
            if candidate in self.models:
                return candidate
        return None

    def _record(self, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append((path, body))

    def _wait(self, seconds: float) -> bool:
        """Sleep unless the server stops first; return True if it is stopping."""
        return self._stopping.wait(seconds) if seconds > 0 else self._stopping.is_set()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeOllama

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients hanging up are expected
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Go's net/http
        with self.server.fake._lock:
            self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.fake._lock:
            self.server.fake._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        try:
            body = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            self.server.fake._record(path, {})
            return self._json(400, {"error": str(exc)})
        self.server.fake._record(path, body)
        route = _ROUTES.get((method, path))
        if route is None:
            return self._text(404, "404 page not found")
        route(self, body)

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _chunk(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _cut(self) -> None:
        """Drop the connection without finishing the response, like a crashed server."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def root(self, body: dict[str, Any]) -> None:
        self._text(200, "Ollama is running")

    def version(self, body: dict[str, Any]) -> None:
        self._json(200, {"version": self.server.fake.version})

    def tags(self, body: dict[str, Any]) -> None:
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": "2025-01-01T00:00:00Z",
                "size": 4683087332,
                "digest": hashlib.sha256(name.encode()).hexdigest(),
                "details": _details(),
            }
            for name in self.server.fake.models
        ]
        self._json(200, {"models": models})

    def show(self, body: dict[str, Any]) -> None:
        fake = self.server.fake
        name = body.get("model") or body.get("name") or ""
        if not name:
            return self._json(400, {"error": "model is required"})
        if fake.resolve(name) is None:
            return self._json(404, {"error": f"model '{name}' not found"})
        self._json(
            200,
            {
                "license": "Apache License 2.0",
                "modelfile": f"FROM {name}\n",
                "parameters": 'stop "<|im_start|>"\nstop "<|im_end|>"',
                "template": "{{ .Prompt }}",
                "details": _details(),
                "model_info": {
                    "general.architecture": "qwen2",
                    "general.parameter_count": 7615616512,
                    "qwen2.context_length": fake.context_length,
                    "qwen2.embedding_length": 3584,
                },
                "capabilities": ["completion", "tools"],
                "modified_at": "2025-01-01T00:00:00Z",
            },
        )

    def chat(self, body: dict[str, Any]) -> None:
        self._complete(body, body.get("messages") or [], "message")

    def generate(self, body: dict[str, Any]) -> None:
        messages = [{"role": "system", "content": body["system"]}] if body.get("system") else []
        if body.get("prompt"):
            messages.append({"role": "user", "content": body["prompt"]})
        self._complete(body, messages, "response")

    def _complete(self, body: dict[str, Any], messages: list[dict[str, Any]], field: str) -> None:
        """Answer /api/chat (field "message") or /api/generate (field "response")."""
        fake = self.server.fake
        name = body.get("model") or ""
        if not name:
            return self._json(400, {"error": "model is required"})
        if fake.resolve(name) is None:
            return self._json(404, {"error": f'model "{name}" not found, try pulling it first'})

        def part(text: str, **extra: Any) -> dict[str, Any]:
            content = {"role": "assistant", "content": text} if field == "message" else text
            return {"model": name, "created_at": _now(), field: content, **extra}

        if not messages:  # an empty request loads (or, with keep_alive 0, unloads) the model
            reason = "unload" if body.get("keep_alive") in (0, "0", "0s") else "load"
            return self._json(200, part("", done=True, done_reason=reason))

        options = body.get("options") or {}
        try:
            pieces = split_words(fake.reply(messages, options))
        except Exception as exc:  # a failing reply plays a server-side error
            return self._json(500, {"error": str(exc)})
        done_reason = "stop"
        limit = options.get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(pieces):
            pieces, done_reason = pieces[:limit], "length"
        words = sum(len(str(m.get("content") or "").split()) for m in messages)
        final = part(
            "",
            done=True,
            done_reason=done_reason,
            total_duration=1_000_000 * (len(pieces) + 10),
            load_duration=1_000_000,
            prompt_eval_count=words,
            prompt_eval_duration=100_000 * words,
            eval_count=len(pieces),
            eval_duration=1_000_000 * len(pieces),
            **({"context": list(range(1, words + len(pieces) + 1))} if field == "response" else {}),
        )
        lines = [part(p, done=False) for p in pieces] + [final]
        stop_at = fake.break_after_chunks

        if fake._wait(fake.first_token_delay_s):
            return self._cut()
        if body.get("stream", True) is False:  # Ollama answers once generation has finished
            produced = len(lines) if stop_at is None else min(stop_at, len(lines))
            for _ in range(produced - 1):
                if fake._wait(fake.token_delay_s):
                    return self._cut()
            if produced < len(lines):
                if not fake.stream_error:
                    return self._cut()
                return self._json(500, {"error": fake.stream_error})
            text = "".join(pieces)
            final[field] = {"role": "assistant", "content": text} if field == "message" else text
            return self._json(200, final)

        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, line in enumerate(lines):
            if i and fake._wait(fake.token_delay_s):
                return self._cut()
            if i == stop_at:
                if not fake.stream_error:
                    return self._cut()
                self._chunk({"error": fake.stream_error})
                break
            self._chunk(line)
        self.wfile.write(b"0\r\n\r\n")


def _details() -> dict[str, Any]:
    """Return the `details` block Ollama gives for a qwen2.5 7B GGUF model."""
    return {
        "parent_model": "",
        "format": "gguf",
        "family": "qwen2",
        "families": ["qwen2"],
        "parameter_size": "7.6B",
        "quantization_level": "Q4_K_M",
    }


_ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/"): _Handler.root,
    ("HEAD", "/"): _Handler.root,
    ("GET", "/api/version"): _Handler.version,
    ("GET", "/api/tags"): _Handler.tags,
    ("POST", "/api/show"): _Handler.show,
    ("POST", "/api/chat"): _Handler.chat,
    ("POST", "/api/generate"): _Handler.generate,
}
