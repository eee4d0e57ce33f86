"""The API under a real uvicorn: the official `openai` client, Server-Sent Events over HTTP, a full generation
queue, a client that hangs up, and `python -m rag serve` as its own process over a real index."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest
from api_testing import CITING_REPLY, LiveServer, api_settings, make_app, sse_events
from conftest import REPO, stop_process
from fake_ollama import FakeOllama, free_port

from rag.__main__ import main as rag_main
from rag.api.keys import KeyStore
from rag.conversation_log import ConversationLog

SLOW_REPLY = " ".join(["Theo định lí [2], hàm số đồng biến."] * 6)


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        server.reply = lambda messages, options: CITING_REPLY
        yield server


def live(tmp_path: Path, fake: FakeOllama, **extra) -> tuple[LiveServer, str]:
    key = KeyStore(tmp_path / "keys.json").add("open-webui")
    return LiveServer(make_app(api_settings(tmp_path, fake.url, **extra))), key


def wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_openai_client_streams_an_answer_with_citations(tmp_path, fake):
    server, key = live(tmp_path, fake)
    with server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        assert [m.id for m in client.models.list()] == ["vimath-tutor"]
        chunks = list(client.chat.completions.create(
            model="vimath-tutor", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Khi nào hàm số đồng biến?"}]))
        whole = client.chat.completions.create(model="vimath-tutor",
                                               messages=[{"role": "user", "content": "Khi nào hàm số đồng biến?"}])
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="vmt_wrong", max_retries=0).models.list()
        with pytest.raises(openai.NotFoundError, match="vimath-tutor"):
            client.chat.completions.create(model="llama3", messages=[{"role": "user", "content": "x"}])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(CITING_REPLY) and "**Nguồn:**\n- [2] lop12/01-tinh-don-dieu.md, trang 4" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    [final] = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert final.choices[0].finish_reason == "stop"
    extra = final.model_extra["vimath"]
    assert [c["id"] for c in extra["citations"]] == ["id1", "id0"] and extra["status"] == "ok"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 3
    assert whole.choices[0].message.content == text
    assert len({c.id for c in chunks}) == 1


def test_ask_events_arrive_in_order_over_http(tmp_path, fake):
    fake.token_delay_s = 0.01
    server, key = live(tmp_path, fake)
    with server, httpx.stream("POST", f"{server.url}/v1/ask", headers={"Authorization": f"Bearer {key}"},
                              json={"question": "Khi nào hàm số đồng biến?", "stream": True}, timeout=30) as response:
        events = sse_events(response.iter_lines())
    names = [n for n, _ in events]
    assert names[0] == "retrieval" and names[-1] == "done" and names.count("delta") > 5
    assert set(names[1:-1]) == {"delta"}
    assert json.loads(events[-1][1])["cited_ids"] == ["id1", "id0"]


def test_full_queue_is_503_while_search_still_answers(tmp_path, fake):
    fake.reply = lambda messages, options: SLOW_REPLY
    fake.token_delay_s = 0.1
    server, key = live(tmp_path, fake, api_generation_slots=1, api_generation_queue=0)
    headers = {"Authorization": f"Bearer {key}"}
    seen: list[str] = []
    finished = threading.Event()

    def long_answer() -> None:
        with httpx.stream("POST", f"{server.url}/v1/ask", headers=headers, timeout=60,
                          json={"question": "đồng biến", "stream": True}) as response:
            for line in response.iter_lines():
                seen.append(line)
        finished.set()

    with server:
        worker = threading.Thread(target=long_answer)
        worker.start()
        wait_for(lambda: any(line.startswith("event: delta") for line in seen))
        refused = httpx.post(f"{server.url}/v1/ask", headers=headers, json={"question": "cực trị"}, timeout=30)
        search = httpx.post(f"{server.url}/v1/search", headers=headers, json={"question": "cực trị"}, timeout=30)
        searched_while_generating = not finished.is_set()
        worker.join(timeout=60)
        fake.reply, fake.token_delay_s = (lambda messages, options: CITING_REPLY), 0.0
        after = httpx.post(f"{server.url}/v1/ask", headers=headers, json={"question": "cực trị"}, timeout=60)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
    assert int(refused.headers["retry-after"]) > 0
    assert search.status_code == 200 and searched_while_generating
    assert after.status_code == 200


def test_waiting_too_long_for_a_slot_is_503(tmp_path, fake):
    fake.reply = lambda messages, options: SLOW_REPLY
    fake.token_delay_s = 0.05
    server, key = live(tmp_path, fake, api_generation_slots=1, api_generation_queue=1, api_queue_timeout_s=0.3)
    headers = {"Authorization": f"Bearer {key}"}
    with server:
        first = threading.Thread(target=httpx.post, args=(f"{server.url}/v1/ask",),
                                 kwargs={"headers": headers, "json": {"question": "đồng biến"}, "timeout": 60})
        first.start()
        wait_for(lambda: any(p == "/api/chat" for p, _ in fake.requests))
        waited = httpx.post(f"{server.url}/v1/ask", headers=headers, json={"question": "cực trị"}, timeout=30)
        first.join(timeout=60)
    assert waited.status_code == 503 and "slot" in waited.json()["error"]["message"]


def test_client_hanging_up_stops_the_generation_and_logs_it(tmp_path, fake):
    fake.reply = lambda messages, options: " ".join([SLOW_REPLY] * 3)
    fake.token_delay_s = 0.1
    # A slot still taken by the abandoned answer would make the next question wait 12 s, past the 5 s allowed.
    server, key = live(tmp_path, fake, api_generation_slots=1, api_generation_queue=1, api_queue_timeout_s=5)
    headers = {"Authorization": f"Bearer {key}"}
    log = ConversationLog(f"sqlite:///{tmp_path / 'log.db'}")
    with server:
        with httpx.stream("POST", f"{server.url}/v1/ask", headers=headers, timeout=30,
                          json={"question": "đồng biến", "stream": True}) as response:
            for line in response.iter_lines():
                if line.startswith("event: delta"):
                    break
        wait_for(lambda: [r.status for r in log.exchanges()] == ["interrupted"])
        fake.reply, fake.token_delay_s = (lambda messages, options: CITING_REPLY), 0.0
        again = httpx.post(f"{server.url}/v1/ask", headers=headers, json={"question": "cực trị"}, timeout=60)
    row = min(log.exchanges(), key=lambda r: r.id)
    log.close()
    assert again.status_code == 200
    assert row.status == "interrupted" and row.answer_text and row.client == "open-webui"


# --- `python -m rag serve` as its own process ------------------------------------------------------------------------


@pytest.fixture
def tiny_index(tmp_path: Path, lessons_copy: Path, tiny_st_model: Path) -> Path:
    from ingest.__main__ import main as ingest_main

    index = tmp_path / "index"
    assert ingest_main([str(lessons_copy), "--index", str(index), "--embedder", str(tiny_st_model), "--quiet"]) == 0
    return index


@pytest.mark.slow  # a process that imports torch, chromadb and uvicorn: tens of seconds on a busy machine
def test_serve_process_answers_the_openai_client(tmp_path, fake, tiny_index, capsys, monkeypatch):
    fake.reply = lambda messages, options: "Theo tài liệu [1], xem thêm [2]."
    monkeypatch.chdir(tmp_path)
    keys = tmp_path / "keys.json"
    assert rag_main(["serve", "--keys", str(keys), "--index", str(tiny_index)]) == 1
    assert "python -m rag keys add" in capsys.readouterr().err
    assert rag_main(["keys", "add", "moodle", "--keys", str(keys)]) == 0
    key = capsys.readouterr().out.split()[-1]
    assert key.startswith("vmt_") and key not in keys.read_text()
    assert rag_main(["keys", "list", "--keys", str(keys)]) == 0 and "moodle" in capsys.readouterr().out
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rag", "serve", "--port", str(port), "--keys", str(keys),
                             "--index", str(tiny_index), "--ollama-url", fake.url, "--min-score=-1",
                             "--database-url", f"sqlite:///{tmp_path / 'log.db'}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 120)
        assert httpx.get(f"{url}/docs", timeout=10).status_code == 200
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        chunks = list(client.chat.completions.create(model="vimath-tutor", stream=True,
                                                     messages=[{"role": "user", "content": "Tiệm cận ngang là gì?"}]))
    finally:
        stop_process(proc)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    extra = [c for c in chunks if c.choices and c.choices[0].finish_reason][0].model_extra["vimath"]
    assert text.startswith("Theo tài liệu [1], xem thêm [2].") and "**Nguồn:**" in text
    assert [c["number"] for c in extra["citations"]] == [1, 2]
    for citation in extra["citations"]:
        assert (tmp_path / "lessons" / citation["source"]).is_file() and citation["source"] in text
    log = ConversationLog(f"sqlite:///{tmp_path / 'log.db'}")
    assert [(r.client, r.status) for r in log.exchanges()] == [("moodle", "ok")]
    log.close()
