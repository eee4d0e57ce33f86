"""The HTTP API in process (FastAPI's test client) against the fake Ollama: routes, records, errors and limits."""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any, Iterator

import pytest
from api_testing import CITING_REPLY, ListRanker, api_settings, make_app, sse_events
from fake_ollama import FakeOllama, free_port
from fastapi.testclient import TestClient

from rag.answering import Tutor
from rag.api.keys import KeyStore
from rag.conversation_log import ConversationLog
from rag.retrieval import Searcher


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        server.reply = lambda messages, options: CITING_REPLY
        yield server


@pytest.fixture
def keyed(tmp_path: Path) -> tuple[KeyStore, str]:
    store = KeyStore(tmp_path / "keys.json")
    return store, store.add("moodle")


def client_for(tmp_path: Path, url: str, ranker: ListRanker | None = None, *, auth_required: bool = True,
               **extra: Any) -> TestClient:
    return TestClient(make_app(api_settings(tmp_path, url, **extra), ranker, auth_required=auth_required),
                      raise_server_exceptions=False)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def logged(tmp_path: Path) -> list:
    log = ConversationLog(f"sqlite:///{tmp_path / 'log.db'}")
    try:
        return log.exchanges()
    finally:
        log.close()


def error_of(response) -> dict[str, Any]:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "code"}, body
    assert "Traceback" not in response.text
    return body["error"]


# --- search --------------------------------------------------------------------------------------------------------


def test_search_ranks_chunks_with_source_heading_page_and_scores(tmp_path, fake, keyed):
    store, key = keyed
    ranker = ListRanker()
    with client_for(tmp_path, fake.url, ranker) as client:
        decomposed = unicodedata.normalize("NFD", "Hàm số đồng biến khi nào?")
        response = client.post("/v1/search", json={"question": decomposed, "k": 2}, headers=bearer(key))
        assert response.status_code == 200, response.text
        body = response.json()
        only_cuc_tri = client.post("/v1/search", headers=bearer(key),
                                   json={"question": "cực đại", "filters": {"source": "lop12/02-cuc-tri.md"}}).json()
    assert ranker.queries[0] == unicodedata.normalize("NFC", decomposed)  # NFC at the boundary
    assert body["query"] == ranker.queries[0] and body["k"] == 2
    first, second = body["results"]
    assert (first["rank"], first["id"], first["source"], first["page"]) == (1, "id0", "lop12/01-tinh-don-dieu.md", 3)
    assert second["heading_path"] == "Bài 1. Tính đơn điệu › Định lí" and second["page"] == 4
    assert first["score"] > second["score"] and first["scores"]["rrf"] > second["scores"]["rrf"]
    assert first["text"].startswith("Định nghĩa 1.") and first["metadata"]["id"] == "id0"
    assert [r["source"] for r in only_cuc_tri["results"]] == ["lop12/02-cuc-tri.md"]
    assert only_cuc_tri["results"][0]["page"] is None


# --- ask -------------------------------------------------------------------------------------------------------------


def test_ask_returns_the_cli_record_and_logs_the_key_name(tmp_path, fake, keyed):
    store, key = keyed
    with client_for(tmp_path, fake.url) as client:
        response = client.post("/v1/ask", json={"question": "Khi nào hàm số đồng biến?", "conversation_id": "lop12a-7"},
                               headers=bearer(key))
    assert response.status_code == 200, response.text
    record = response.json()
    direct = Tutor(Searcher(ListRanker()), api_settings(tmp_path, fake.url)).stream("Khi nào hàm số đồng biến?")
    list(direct)
    expected = direct.answer.to_record()
    assert set(record) == set(expected) | {"conversation_id", "exchange_id"}
    for name in ("question", "standalone_question", "status", "text", "cited", "cited_ids", "invalid_citations",
                 "retrieved", "context_size", "model", "prompt_version"):
        assert record[name] == expected[name], name
    assert record["status"] == "ok" and record["cited"] == [2, 1] and record["cited_ids"] == ["id1", "id0"]
    [row] = logged(tmp_path)
    assert (row.id, row.conversation_id, row.client) == (record["exchange_id"], "lop12a-7", "moodle")
    assert [c.cited for c in row.chunks] == [True, True, False]


def test_ask_stream_sends_retrieval_then_deltas_then_the_record(tmp_path, fake, keyed):
    store, key = keyed
    with client_for(tmp_path, fake.url) as client:
        with client.stream("POST", "/v1/ask", json={"question": "Khi nào hàm số đồng biến?", "stream": True},
                           headers=bearer(key)) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response.iter_lines())
    names = [name for name, _ in events]
    assert names[0] == "retrieval" and names[-1] == "done" and set(names[1:-1]) == {"delta"} and len(names) > 5
    retrieval = json.loads(events[0][1])
    assert [c["metadata"]["id"] for c in retrieval["retrieved"]] == ["id0", "id1", "id2"]
    text = "".join(json.loads(data)["text"] for name, data in events if name == "delta")
    done = json.loads(events[-1][1])
    assert text == done["text"] == CITING_REPLY
    assert done["cited_ids"] == ["id1", "id0"] and done["status"] == "ok" and done["exchange_id"] == logged(tmp_path)[0].id


def test_follow_up_history_reaches_the_llm(tmp_path, fake, keyed):
    store, key = keyed
    history = [{"question": "Hàm số đồng biến là gì?", "answer": "Là hàm số tăng trên K [1]."}]
    with client_for(tmp_path, fake.url) as client:
        response = client.post("/v1/ask", headers=bearer(key),
                               json={"question": "Còn nghịch biến thì sao?", "history": history})
    assert response.status_code == 200, response.text
    chats = [body for path, body in fake.requests if path == "/api/chat"]
    contents = [m["content"] for m in chats[-1]["messages"]]
    assert "Hàm số đồng biến là gì?" in contents and "Là hàm số tăng trên K [1]." in contents


def test_not_covered_is_an_answer_without_the_llm(tmp_path, fake, keyed):
    store, key = keyed
    with client_for(tmp_path, fake.url, ListRanker(score=0.3)) as client:
        record = client.post("/v1/ask", json={"question": "Thủ đô của Pháp?"}, headers=bearer(key)).json()
    assert record["status"] == "not_covered" and record["text"] == "" and record["notice"]
    assert not [p for p, _ in fake.requests if p == "/api/chat"]


# --- errors ----------------------------------------------------------------------------------------------------------


def test_keys_are_required_checked_and_revocable(tmp_path, fake, keyed):
    store, key = keyed
    with client_for(tmp_path, fake.url) as client:
        question = {"question": "đạo hàm"}
        missing = client.post("/v1/search", json=question)
        wrong = client.post("/v1/search", json=question, headers=bearer(key + "x"))
        basic = client.post("/v1/search", json=question, headers={"Authorization": f"Basic {key}"})
        ok = client.post("/v1/search", json=question, headers=bearer(key))
        store.revoke("moodle")
        revoked = client.post("/v1/search", json=question, headers=bearer(key))
        other = store.add("zalo-bot")
        models = client.get("/v1/models", headers=bearer(other))
        assert client.get("/healthz").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert client.get("/docs").status_code == 200
    assert {"/v1/search", "/v1/ask", "/v1/chat/completions", "/v1/models", "/healthz", "/readyz"} <= set(paths)
    assert ok.status_code == 200
    for response, code in ((missing, "missing_api_key"), (wrong, "invalid_api_key"), (basic, "missing_api_key"),
                           (revoked, "invalid_api_key")):
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
        assert error_of(response)["code"] == code
    assert key not in missing.text + wrong.text
    assert models.json()["data"][0]["id"] == "vimath-tutor"


def test_anonymous_callers_are_logged_as_anonymous(tmp_path, fake):
    with client_for(tmp_path, fake.url, auth_required=False) as client:
        assert client.post("/v1/ask", json={"question": "đồng biến"}).status_code == 200
    assert logged(tmp_path)[0].client == "anonymous"


def test_rate_limit_is_per_key(tmp_path, fake, keyed):
    store, key = keyed
    other = store.add("lms")
    with client_for(tmp_path, fake.url, api_rate_limit_per_minute=2) as client:
        codes = [client.post("/v1/search", json={"question": "đạo hàm"}, headers=bearer(key)).status_code for _ in range(2)]
        limited = client.post("/v1/search", json={"question": "đạo hàm"}, headers=bearer(key))
        other_key = client.post("/v1/search", json={"question": "đạo hàm"}, headers=bearer(other))
    assert codes == [200, 200] and other_key.status_code == 200
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert error_of(limited)["code"] == "rate_limited"


def test_oversized_and_malformed_bodies_get_clear_errors(tmp_path, fake, keyed):
    store, key = keyed
    with client_for(tmp_path, fake.url, api_max_body_bytes=2048, api_max_question_chars=50) as client:
        big = client.post("/v1/ask", json={"question": "x" * 5000}, headers=bearer(key))

        def chunked() -> Iterator[bytes]:
            yield b'{"question": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        big_chunked = client.post("/v1/ask", content=chunked(), headers={**bearer(key), "Content-Type": "application/json"})
        broken = client.post("/v1/ask", content=b'{"question": "thi', headers={**bearer(key), "Content-Type": "application/json"})
        wrong_type = client.post("/v1/ask", json={"question": "đạo hàm", "k": "năm"}, headers=bearer(key))
        blank = client.post("/v1/ask", json={"question": "  "}, headers=bearer(key))
        long_question = client.post("/v1/ask", json={"question": "đạo hàm " * 10}, headers=bearer(key))
        unknown_route = client.get("/v1/nothing", headers=bearer(key))
    assert big.status_code == 413 and error_of(big)["code"] == "request_too_large"
    assert big_chunked.status_code == 413 and "2048" in error_of(big_chunked)["message"]
    assert broken.status_code == 400 and error_of(broken)["code"] == "invalid_json"
    assert wrong_type.status_code == 422 and "k" in error_of(wrong_type)["message"]
    assert blank.status_code == 422 and "empty" in error_of(blank)["message"]
    assert long_question.status_code == 422 and error_of(long_question)["code"] == "question_too_long"
    assert unknown_route.status_code == 404 and "/docs" in error_of(unknown_route)["message"]
    assert not fake.requests


def test_unknown_model_is_404(tmp_path, fake, keyed):
    store, key = keyed
    with client_for(tmp_path, fake.url) as client:
        response = client.post("/v1/chat/completions", headers=bearer(key),
                               json={"model": "gpt-4o", "messages": [{"role": "user", "content": "đạo hàm"}]})
        no_question = client.post("/v1/chat/completions", headers=bearer(key),
                                  json={"model": "vimath-tutor", "messages": [{"role": "system", "content": "Be nice"}]})
    assert response.status_code == 404 and error_of(response)["code"] == "model_not_found"
    assert "vimath-tutor" in error_of(response)["message"]
    assert no_question.status_code == 400 and error_of(no_question)["code"] == "invalid_messages"


def test_llm_down_is_503_with_the_retrieval_kept(tmp_path, keyed):
    store, key = keyed
    with client_for(tmp_path, f"http://127.0.0.1:{free_port()}") as client:
        ask = client.post("/v1/ask", json={"question": "đồng biến"}, headers=bearer(key))
        completion = client.post("/v1/chat/completions", headers=bearer(key),
                                 json={"model": "vimath-tutor", "stream": True,
                                       "messages": [{"role": "user", "content": "đồng biến"}]})
        with client.stream("POST", "/v1/ask", json={"question": "đồng biến", "stream": True}, headers=bearer(key)) as sse:
            events = sse_events(sse.iter_lines())
    assert ask.status_code == 503 and error_of(ask)["code"] == "llm_unreachable"
    assert "ollama serve" in error_of(ask)["message"] and len(ask.json()["answer"]["retrieved"]) == 3
    assert completion.status_code == 503 and completion.headers["content-type"] == "application/json"
    assert error_of(completion)["code"] == "llm_unreachable" and completion.json()["vimath"]["retrieved"]
    assert [name for name, _ in events] == ["retrieval", "error", "done"]
    assert json.loads(events[1][1])["error"]["code"] == "llm_unreachable"
    assert json.loads(events[2][1])["status"] == "llm_unreachable"
    assert [row.status for row in logged(tmp_path)] == ["llm_unreachable"] * 3


def test_llm_that_hangs_is_504(tmp_path, fake, keyed):
    store, key = keyed
    fake.first_token_delay_s = 5.0
    with client_for(tmp_path, fake.url, llm_timeout_s=0.5) as client:
        response = client.post("/v1/chat/completions", headers=bearer(key),
                               json={"model": "vimath-tutor", "messages": [{"role": "user", "content": "đồng biến"}]})
    assert response.status_code == 504 and error_of(response)["code"] == "timeout"


def test_unexpected_errors_are_json_without_details(tmp_path, fake, keyed):
    store, key = keyed
    with client_for(tmp_path, fake.url, ListRanker(fail=True)) as client:
        response = client.post("/v1/search", json={"question": "đạo hàm"}, headers=bearer(key))
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal_error" and "incident" in error["message"]
    assert "secret internal detail" not in response.text and "RuntimeError" not in response.text


def test_cors_is_closed_unless_origins_are_configured(tmp_path, fake, keyed):
    preflight = {"Origin": "https://lms.truong.edu.vn", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with client_for(tmp_path, fake.url) as client:
        closed = client.options("/v1/search", headers=preflight)
    with client_for(tmp_path, fake.url, api_cors_origins=["https://lms.truong.edu.vn"]) as client:
        open_ = client.options("/v1/search", headers=preflight)
        other = client.options("/v1/search", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in closed.headers
    assert open_.headers["access-control-allow-origin"] == "https://lms.truong.edu.vn"
    assert "access-control-allow-origin" not in other.headers


def test_readiness_reports_index_embedder_and_llm(tmp_path, fake):
    with client_for(tmp_path, fake.url) as client:
        up = client.get("/readyz")
    with client_for(tmp_path, f"http://127.0.0.1:{free_port()}") as client:
        down = client.get("/readyz")
    with client_for(tmp_path, f"http://127.0.0.1:{free_port()}", api_require_llm=True) as client:
        required = client.get("/readyz")
    assert up.status_code == 200 and up.json()["mode"] == "full" and up.json()["llm"]["model_available"]
    assert down.status_code == 200 and down.json()["mode"] == "retrieval_only" and down.json()["ready"]
    assert required.status_code == 503 and required.json()["ready"] is False


# --- OpenAI format ---------------------------------------------------------------------------------------------------


def test_chat_completion_carries_sources_in_text_and_extra_field(tmp_path, fake, keyed):
    store, key = keyed
    earlier = "Là hàm số tăng [1].\n\n---\n**Nguồn:**\n- [1] lop12/01-tinh-don-dieu.md"
    messages = [{"role": "system", "content": "You are helpful"},
                {"role": "user", "content": "Hàm số đồng biến là gì?"},
                {"role": "assistant", "content": earlier},
                {"role": "user", "content": [{"type": "text", "text": "Điều kiện đủ là gì?"}]}]
    fake.reply = lambda msgs, options: ("Hàm số đồng biến" if "Học sinh:" in msgs[-1]["content"] else CITING_REPLY)
    with client_for(tmp_path, fake.url) as client:
        response = client.post("/v1/chat/completions", headers={**bearer(key), "X-Conversation-Id": "owui-1"},
                               json={"model": "vimath-tutor", "messages": messages, "temperature": 0.9})
    assert response.status_code == 200, response.text
    body = response.json()
    content = body["choices"][0]["message"]["content"]
    assert content.startswith(CITING_REPLY)
    assert "**Nguồn:**\n- [2] lop12/01-tinh-don-dieu.md, trang 4 — Bài 1. Tính đơn điệu › Định lí" in content
    extra = body["vimath"]
    assert [(c["number"], c["id"]) for c in extra["citations"]] == [(2, "id1"), (1, "id0")]
    assert extra["conversation_id"] == "owui-1" and extra["status"] == "ok"
    answer_messages = [m for m in fake.last("/api/chat")["messages"]]
    assert "Là hàm số tăng [1]." in [m["content"] for m in answer_messages]  # history without the sources section
    assert not any("Nguồn" in m["content"] for m in answer_messages)
    assert not any(m["content"] == "You are helpful" for m in answer_messages)


def test_conversation_log_gains_the_client_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the exchanges table as the first release created it
        db.execute("CREATE TABLE exchanges (id INTEGER PRIMARY KEY, conversation_id VARCHAR(64), created_at DATETIME, "
                   "question TEXT, standalone_question TEXT, answer_text TEXT, status VARCHAR(32), notice TEXT, "
                   "model VARCHAR(200), prompt_version VARCHAR(200), timings JSON, details JSON, best_score FLOAT)")
        db.execute("INSERT INTO exchanges VALUES (1, 'c', '2026-01-01 00:00:00', 'q', 'q', 'a', 'ok', '', 'm', 'p', "
                   "'{}', '{}', 0.9)")
    log = ConversationLog(f"sqlite:///{path}")
    try:
        [old] = log.exchanges()
        assert old.client is None and old.question == "q"
        from rag.answering import Answer

        new_id = log.record("c2", Answer(question="q2", standalone_question="q2"), client="zalo-bot")
        assert {r.id: r.client for r in log.exchanges()} == {1: None, new_id: "zalo-bot"}
        assert "client" in ConversationLog.to_csv(log.exchanges()).splitlines()[0]
    finally:
        log.close()
    ConversationLog(f"sqlite:///{path}").close()  # opening an upgraded log again changes nothing
