"""Load test of the HTTP API: N concurrent clients for a bounded time on loopback, half of them searching and half
asking (streamed, OpenAI format). Reports throughput, p50/p95 of search latency and of time to first token, and
errors (the target is none).

Against a running server:

    python bench/api_load.py --url http://127.0.0.1:8000 --key vmt_… [--clients 8] [--duration 30]

Or it starts `python -m rag serve` itself over an index, with the test suite's fake Ollama as the LLM (so that the
figures measure the service, not a model) unless --ollama-url names a real one:

    python bench/api_load.py --index vimath_index [--clients 8] [--duration 30] [--token-delay 0.02] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
FALLBACK_QUESTIONS = ["Hàm số đồng biến khi nào?", "Công thức tính tích phân từng phần", "Tiệm cận ngang là gì?",
                      "Định lí côsin trong tam giác", "Số hạng tổng quát của cấp số nhân"]


def questions() -> list[str]:
    path = ROOT / "data/eval/validation.jsonl"
    if not path.exists():
        return FALLBACK_QUESTIONS
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["question"] for r in rows][:200] or FALLBACK_QUESTIONS


@dataclass
class Results:
    search_s: list[float] = field(default_factory=list)
    first_token_s: list[float] = field(default_factory=list)
    answer_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, value: float) -> None:
        with self.lock:
            getattr(self, name).append(value)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors[what] += 1


def search(client: httpx.Client, question: str, results: Results) -> None:
    started = time.perf_counter()
    response = client.post("/v1/search", json={"question": question, "k": 5})
    if response.status_code != 200 or not response.json()["results"]:
        return results.error(f"search {response.status_code}")
    results.add("search_s", time.perf_counter() - started)


def ask(client: httpx.Client, question: str, model: str, results: Results) -> None:
    started = time.perf_counter()
    first = None
    finished = False
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": question}]}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            return results.error(f"ask {response.status_code} {response.json().get('error', {}).get('code')}")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                finished = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return results.error(f"ask stream {chunk['error'].get('code')}")
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
    if not finished or first is None:
        return results.error("ask incomplete")
    results.add("first_token_s", first)
    results.add("answer_s", time.perf_counter() - started)


def client_loop(number: int, url: str, key: str, model: str, deadline: float, searching: bool, results: Results) -> None:
    pool = questions()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        i = number
        while time.monotonic() < deadline:
            question = pool[i % len(pool)]
            # Each client either searches or asks: the share stays fixed whatever the speed of each kind.
            try:
                if searching:
                    search(client, question, results)
                else:
                    ask(client, question, model, results)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                results.error(type(exc).__name__)
            i += 7


def percentiles(samples: list[float]) -> dict[str, float | int | None]:
    if not samples:
        return {"n": 0, "p50_ms": None, "p95_ms": None}
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 1), "p95_ms": round(p95 * 1000, 1)}


def start_server(args: argparse.Namespace, workdir: Path) -> tuple[subprocess.Popen[bytes], str, str, Any]:
    """`python -m rag serve` on a free loopback port with a fresh key, and the fake LLM unless one was named."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_ollama import FakeOllama, free_port

    fake = None
    ollama_url = args.ollama_url
    if not ollama_url:
        reply = " ".join(["Hàm số đồng biến trên K khi đạo hàm dương [1], theo định lí [2]."] * 4)
        fake = FakeOllama(reply=lambda messages, options: reply, token_delay_s=args.token_delay).start()
        ollama_url = fake.url
    keys = workdir / "keys.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    added = subprocess.run([sys.executable, "-m", "rag", "keys", "add", "load-test", "--keys", str(keys)], env=env,
                           capture_output=True, text=True, check=True)
    key = added.stdout.split()[-1]
    port = free_port()
    command = [sys.executable, "-m", "rag", "serve", "--port", str(port), "--keys", str(keys), "--index", str(args.index),
               "--ollama-url", ollama_url, "--database-url", f"sqlite:///{workdir / 'log.db'}",
               "--api-rate-limit-per-minute", "1000000", "--min-score=-1"]
    server = subprocess.Popen(command, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read().decode() if server.stderr else ''}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return server, url, key, fake
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise SystemExit("the server did not become ready in 180 s")
        time.sleep(0.2)


def run(url: str, key: str, model: str, clients: int, duration: float, search_share: float) -> dict[str, Any]:
    results = Results()
    searchers = round(search_share * clients)
    deadline = time.monotonic() + duration
    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(n, url, key, model, deadline, n < searchers, results))
               for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done = len(results.search_s) + len(results.answer_s)
    return {"clients": clients, "duration_s": round(elapsed, 1), "requests_ok": done,
            "throughput_rps": round(done / elapsed, 2), "search": percentiles(results.search_s),
            "time_to_first_token": percentiles(results.first_token_s), "answer_total": percentiles(results.answer_s),
            "errors": dict(results.errors), "error_count": sum(results.errors.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server")
    target.add_argument("--index", type=Path, help="start `python -m rag serve` over this index")
    parser.add_argument("--key", default=os.environ.get("VIMATH_API_KEY", ""), help="API key for --url")
    parser.add_argument("--model", default="vimath-tutor")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds")
    parser.add_argument("--search-share", type=float, default=0.5, help="share of the clients that search")
    parser.add_argument("--ollama-url", help="a real LLM for --index (default: the fake one)")
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds between the fake LLM's tokens")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    server = fake = None
    with tempfile.TemporaryDirectory(prefix="vimath-load-") as tmp:
        try:
            if args.index:
                server, url, key, fake = start_server(args, Path(tmp))
            else:
                url, key = args.url.rstrip("/"), args.key
            report = run(url, key, args.model, args.clients, args.duration, args.search_share)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
            if fake is not None:
                fake.stop()
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(f"{report['clients']} clients, {report['duration_s']} s: {report['requests_ok']} requests, "
              f"{report['throughput_rps']} req/s, errors {report['error_count']} {report['errors'] or ''}")
        for name in ("search", "time_to_first_token", "answer_total"):
            p = report[name]
            print(f"  {name:20} n={p['n']:<5} p50 {p['p50_ms']} ms  p95 {p['p95_ms']} ms")
    return 0 if report["error_count"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
