"""The provider registry and the OpenAI-compatible path (llama-server, vLLM, …) against the suite's OpenAI-protocol
server: the same streaming, timeouts, failure messages and status as the Ollama path."""
from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from fake_ollama import FakeOllama, free_port
from fake_openai import FakeOpenAI
from pydantic import ValidationError
from test_answering import CHUNKS, ListRanker

from rag.answering import Tutor, ask
from rag.llm import PROVIDERS, Failure, classify, effective_url, llm_status
from rag.retrieval import Searcher
from rag.settings import Settings

MODEL = "qwen2.5:7b-instruct"


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


def openai_settings(url: str, **extra: Any) -> Settings:
    return Settings(**{"llm_provider": "openai", "llm_base_url": url, "min_score": 0.5, "top_k": 3, **extra})


def openai_tutor(url: str, **extra: Any) -> Tutor:
    return Tutor(Searcher(ListRanker(CHUNKS)), openai_settings(url, **extra))


def test_every_provider_is_one_complete_registry_entry():
    assert set(PROVIDERS) == {"ollama", "openai"}
    for name, p in PROVIDERS.items():
        assert p.name == name and callable(p.chat) and callable(p.status) and callable(p.classify)
        assert {Failure.UNREACHABLE, Failure.MODEL_MISSING} <= set(p.hints)


def test_unknown_provider_lists_the_valid_choices():
    with pytest.raises(ValidationError, match="ollama, openai"):
        Settings(llm_provider="vllm")


def test_provider_urls_default_per_provider(monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert effective_url(Settings()) == "http://127.0.0.1:11434"
    assert effective_url(Settings(llm_provider="openai")) == "http://127.0.0.1:8080/v1"
    assert effective_url(Settings(llm_provider="openai", llm_base_url="localhost:1234/v1/")) == "http://localhost:1234/v1"


def test_openai_server_streams_an_answer_with_citations(server):
    server.reply = lambda messages, options: "Hàm số đồng biến khi $f'(x) > 0$ [2], theo định nghĩa [1]."
    t = openai_tutor(server.url)
    stream = t.stream("Khi nào hàm số đồng biến?")
    deltas = list(stream)
    answer = stream.answer
    assert len(deltas) > 3 and "".join(deltas) == answer.text
    assert answer.status == "ok" and answer.cited == [2, 1]
    body = server.chat_requests()[-1]
    assert body["stream"] is True and body["model"] == MODEL and body["max_completion_tokens"] == t.settings.answer_tokens
    assert body["messages"][0]["role"] == "system" and "Khi nào hàm số đồng biến?" in body["messages"][-1]["content"]
    # the server's own count of the prompt comes back for the budget calibration
    assert answer.prompt_tokens and answer.prompt_tokens > 0 and answer.completion_tokens == len(deltas)


def test_llm_model_names_the_model_at_the_provider(server):
    server.models = ["qwen-1.5b"]
    server.reply = lambda messages, options: "Đúng vậy [1]."
    answer = ask(openai_tutor(server.url, llm_model="qwen-1.5b"), "hàm số đồng biến?")
    assert answer.status == "ok" and answer.model == "qwen-1.5b"


def test_openai_unreachable_says_where_and_how():
    url = f"http://127.0.0.1:{free_port()}/v1"
    answer = ask(openai_tutor(url), "hàm số đồng biến?")
    assert answer.status == "llm_unreachable" and url in answer.notice and "VIMATH_LLM_BASE_URL" in answer.notice
    assert len(answer.retrieved) == 3 and answer.text == ""


def test_openai_missing_model(server):
    server.models = ["llama3"]
    answer = ask(openai_tutor(server.url), "hàm số đồng biến?")
    assert answer.status == "model_missing" and MODEL in answer.notice and "VIMATH_LLM_MODEL" in answer.notice


def test_openai_hanging_server_is_bounded_by_the_first_token_timeout(server):
    server.first_token_delay_s = 10.0
    started = time.perf_counter()
    answer = ask(openai_tutor(server.url, llm_first_token_timeout_s=0.5, llm_timeout_s=30), "hàm số đồng biến?")
    assert answer.status == "timeout" and "0.5 giây" in answer.notice
    assert time.perf_counter() - started < 5 and len(server.chat_requests()) == 1  # no retry paying it again


def test_openai_total_timeout_keeps_the_partial_answer(server):
    server.reply = lambda messages, options: " ".join(f"từ{i}" for i in range(60))
    server.token_delay_s = 0.1
    answer = ask(openai_tutor(server.url, llm_first_token_timeout_s=5, llm_timeout_s=2.0), "hàm số đồng biến?")
    # stopped after about 2 s of a 6 s answer, with what was written so far
    assert answer.status == "timeout" and answer.text.startswith("từ0 từ1") and "từ59" not in answer.text


def test_openai_broken_stream_keeps_the_partial_answer(server):
    server.reply = lambda messages, options: "Một hai ba bốn năm sáu bảy tám [1]"
    server.break_after_chunks = 3
    stream = openai_tutor(server.url).stream("hàm số đồng biến?")
    deltas = list(stream)
    answer = stream.answer
    assert answer.status == "interrupted" and answer.text == "".join(deltas) == "Một hai ba"
    assert "gián đoạn" in answer.notice


def test_openai_api_key_is_sent_and_never_shown(server, caplog):
    server.api_key = "sk-very-secret-123"
    server.reply = lambda messages, options: "Đúng [1]."
    caplog.set_level(logging.DEBUG)
    settings = openai_settings(server.url, llm_api_key="sk-very-secret-123")
    answer = ask(Tutor(Searcher(ListRanker(CHUNKS)), settings), "hàm số đồng biến?")
    assert answer.status == "ok"
    assert server.headers[-1]["authorization"] == "Bearer sk-very-secret-123"
    assert "sk-very-secret" not in repr(settings) + settings.model_dump_json() + str(answer.to_record()) + caplog.text
    wrong = openai_settings(server.url, llm_api_key="sk-wrong-key-456")
    bad = ask(Tutor(Searcher(ListRanker(CHUNKS)), wrong), "hàm số đồng biến?")
    assert bad.status == "llm_error" and "sk-wrong" not in bad.notice


def test_openai_status_lists_models_and_reports_failures(server):
    server.models = ["a-model", MODEL]
    status = llm_status(openai_settings(server.url))
    assert status.reachable and status.has_model(MODEL) and status.models == sorted(["a-model", MODEL])
    down = llm_status(openai_settings(f"http://127.0.0.1:{free_port()}/v1"))
    assert not down.reachable and down.failure is Failure.UNREACHABLE and "Không kết nối được" in (down.error or "")


def test_openai_status_of_a_hanging_server_is_a_timeout(server):
    server.models_delay_s = 10
    started = time.perf_counter()
    status = llm_status(openai_settings(server.url))
    assert not status.reachable and status.failure is Failure.TIMEOUT and time.perf_counter() - started < 6


def test_ollama_status_is_the_same_shape():
    with FakeOllama(models=[MODEL]) as fake:
        status = llm_status(Settings(ollama_url=fake.url))
    assert status.reachable and status.has_model(MODEL) and status.failure is None


def test_classify_knows_both_providers_exceptions():
    import httpx
    import ollama
    import openai

    request = httpx.Request("POST", "http://x/v1/chat/completions")
    assert classify(openai.APITimeoutError(request)) is Failure.TIMEOUT
    assert classify(openai.APIConnectionError(request=request)) is Failure.UNREACHABLE
    assert classify(ollama.ResponseError("model not found", 404)) is Failure.MODEL_MISSING
    assert classify(httpx.RemoteProtocolError("cut"), midway=True) is Failure.INTERRUPTED


def test_config_shows_the_provider_and_hides_the_key(monkeypatch, capsys):
    from rag.__main__ import main as rag_main

    monkeypatch.setenv("VIMATH_LLM_PROVIDER", "openai")
    monkeypatch.setenv("VIMATH_LLM_API_KEY", "sk-config-secret-789")
    assert rag_main(["config", "--llm-base-url", "http://127.0.0.1:9/v1"]) == 0
    out = capsys.readouterr().out
    assert "sk-config-secret" not in out and "(set)" in out
    assert "llm (effective)    = http://127.0.0.1:9/v1 (provider openai" in out
