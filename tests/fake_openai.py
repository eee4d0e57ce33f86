"""A fake OpenAI-compatible server for tests (what llama.cpp's llama-server, vLLM, LM Studio and LocalAI speak):
`GET /v1/models` and `POST /v1/chat/completions`, streaming as server-sent events, able to hang, fail and 404.

The real `langchain_openai.ChatOpenAI` (openai 3.x, httpx 0.28) works against it. What reaches its callers:
- refused connection: `openai.APIConnectionError`; no answer within the timeout: `openai.APITimeoutError`
  (raised before any chunk) or `httpx.ReadTimeout` (once streaming has begun);
- unknown model: `openai.NotFoundError` (404) whose message names the model, like vLLM's;
- a cut connection midway: `httpx.RemoteProtocolError` after the chunks already received have been yielded.
"""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fake_ollama import Reply, echo_reply, split_words


class FakeOpenAI:
    """An OpenAI-protocol look-alike on 127.0.0.1 whose attributes tests may change between requests."""

    def __init__(self, models: list[str] | None = None, reply: Reply = echo_reply, first_token_delay_s: float = 0.0,
                 token_delay_s: float = 0.0, break_after_chunks: int | None = None, models_delay_s: float = 0.0,
                 api_key: str | None = None) -> None:
        self.models = list(models) if models is not None else ["qwen2.5:7b-instruct"]
        self.reply = reply
        self.first_token_delay_s = first_token_delay_s  # after the headers, before any token (a server that hangs)
        self.token_delay_s = token_delay_s
        self.break_after_chunks = break_after_chunks  # cut the connection after this many content chunks
        self.models_delay_s = models_delay_s
        self.api_key = api_key  # when set, requests without `Authorization: Bearer <key>` get 401
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self.sent_chunks: list[int] = []  # content chunks written per streamed request (how far generation went)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, with the /v1 that OpenAI clients expect."""
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def chat_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [body for path, body in self.requests if path == "/v1/chat/completions"]

    def _wait(self, seconds: float) -> bool:
        return self._stopping.wait(seconds) if seconds > 0 else self._stopping.is_set()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up (the tutor closing a stream it stopped) are expected


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        path = self.path.split("?", 1)[0]
        with fake._lock:
            fake.requests.append((path, body))
            fake.headers.append({k.lower(): v for k, v in self.headers.items()})
        if fake.api_key is not None and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            return self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
        if (self.command, path) == ("GET", "/v1/models"):
            if fake._wait(fake.models_delay_s):
                return
            return self._json(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test"} for m in fake.models]})
        if (self.command, path) == ("POST", "/v1/chat/completions"):
            return self._complete(body)
        self._json(404, {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}})

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _event(self, obj: dict[str, Any] | str) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj)
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    def _complete(self, body: dict[str, Any]) -> None:
        fake = self.server.fake
        model = body.get("model") or ""
        if model not in fake.models:
            return self._json(404, {"error": {"message": f"The model `{model}` does not exist.",
                                              "type": "NotFoundError", "code": 404}})
        messages = body.get("messages") or []
        options = {"num_predict": body.get("max_tokens") or body.get("max_completion_tokens"), "stop": body.get("stop")}
        text = fake.reply(messages, options)
        for stop in body.get("stop") or []:  # as real servers do: the stop sequence ends the text and is not sent
            if stop in text:
                text = text[: text.index(stop)]
        pieces = split_words(text)
        limit = options["num_predict"]
        finish = "stop"
        if isinstance(limit, int) and limit < len(pieces):
            pieces, finish = pieces[:limit], "length"
        prompt_tokens = sum(len(str(m.get("content") or "")) for m in messages) // 3
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces), "total_tokens": prompt_tokens + len(pieces)}
        base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            if fake._wait(fake.first_token_delay_s):
                return
            return self._json(200, {**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": "".join(pieces)}}]})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()  # no length, no chunking: the stream ends when the connection closes, as with llama-server
        self.close_connection = True
        sent = 0
        try:
            if fake._wait(fake.first_token_delay_s):
                return
            for i, piece in enumerate(pieces):
                if i and fake._wait(fake.token_delay_s):
                    return
                if fake.break_after_chunks is not None and i == fake.break_after_chunks:
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._event({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                sent += 1
            self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                self._event({**base, "choices": [], "usage": usage})
            self._event("[DONE]")
        except OSError:  # the client closed the stream: generation stops, as a real server's does
            return
        finally:
            with fake._lock:
                fake.sent_chunks.append(sent)
