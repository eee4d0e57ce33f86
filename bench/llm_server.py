"""Serve a GGUF model with llama.cpp (the `xllamacpp` wheel) as an OpenAI-compatible server on 127.0.0.1.

    python scripts/setup_llm.py                       # once: the engine and the weights (prints the GGUF path)
    python bench/llm_server.py --gguf PATH --port 8080 [--threads 1] [--ctx 4096]
    VIMATH_LLM_PROVIDER=openai VIMATH_LLM_BASE_URL=http://127.0.0.1:8080/v1 python -m rag ask "…"

One thread by default: on a small shared machine two threads under any other load made generation collapse
(measured: 0.56 instead of ~9 tokens/s for the 1.5B model). The server answers /v1/models, /v1/chat/completions
(streaming included) and /health; it does not speak Ollama's /api/*.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator


def _params(gguf: Path, port: int, threads: int, ctx: int, parallel: int, alias: str | None = None):
    import xllamacpp as xlc  # installed by scripts/setup_llm.py; measurement only, never a product dependency

    p = xlc.CommonParams()
    p.model.path = str(gguf)
    p.n_ctx = ctx * parallel  # llama.cpp splits n_ctx between the parallel slots
    p.n_parallel = parallel
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.warmup = False
    p.hostnames = ["127.0.0.1"]  # never all interfaces
    p.port = port
    p.model_alias = {alias or gguf.stem}  # the name /v1/models lists (else the file's full path)
    return p


def wait_ready(base_url: str, timeout_s: float = 120.0) -> None:
    """Until /health says ok (the model is loaded), or raise."""
    deadline = time.monotonic() + timeout_s
    root = base_url.removesuffix("/v1")
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(f"{root}/health", timeout=2) as r:
                if json.loads(r.read() or b"{}").get("status") == "ok":
                    return
        time.sleep(0.5)
    raise TimeoutError(f"no healthy llama.cpp server at {root} after {timeout_s:g} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(gguf: Path, port: int | None = None, threads: int = 1, ctx: int = 4096, parallel: int = 1,
            alias: str | None = None) -> Iterator[str]:
    """The OpenAI base URL (…/v1) of a server running in this process while the block runs."""
    import xllamacpp as xlc

    port = port or free_port()
    server = xlc.Server(_params(gguf, port, threads, ctx, parallel, alias))
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(url)
        yield url
    finally:
        del server  # the engine stops when the object goes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ctx", type=int, default=4096, help="context per slot")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--alias", help="the model's name for clients (VIMATH_LLM_MODEL); default: the file's stem")
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        parser.error(f"{args.gguf} is not a file (python scripts/setup_llm.py prints where the weights are)")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with serving(args.gguf, args.port, args.threads, args.ctx, args.parallel, args.alias) as url:
        print(f"serving {args.gguf.name} at {url} ({args.threads} thread(s)); Ctrl+C stops", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
