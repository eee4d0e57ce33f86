"""The fake Ollama server is faithful enough for the real ChatOllama and ollama clients."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import ollama
import pydantic
import pytest
from fake_ollama import FakeOllama, free_port, split_words
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_ollama import ChatOllama

MODEL = "qwen2.5:7b-instruct"
REPLY = "Two plus two equals four, well done!"
Chat = Callable[..., ChatOllama]


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    """Serve a FakeOllama that always gives REPLY."""
    with FakeOllama(reply=lambda messages, options: REPLY) as server:
        yield server


@pytest.fixture
def chat(fake: FakeOllama) -> Iterator[Chat]:
    """Build real ChatOllama models pointed at the fake, closing their connections afterwards."""
    made: list[ChatOllama] = []

    def make(**kwargs: Any) -> ChatOllama:
        made.append(ChatOllama(**{"model": MODEL, "base_url": fake.url, **kwargs}))
        return made[-1]

    yield make
    for llm in made:
        llm._client.close()  # ChatOllama never closes its httpx client itself


def test_split_words_round_trips() -> None:
    """Word chunks keep every character of the text."""
    for text in ["", "one", " a  b\nc ", REPLY]:
        assert "".join(split_words(text)) == text
    assert split_words("a b c") == ["a", " b", " c"]


def test_stream_yields_several_chunks_joining_to_reply(fake: FakeOllama, chat: Chat) -> None:
    """Streaming gives one chunk per word, then the done chunk with metadata."""
    chunks = list(chat().stream("What is 2+2?"))
    texts = [c.content for c in chunks if c.content]
    assert texts == split_words(REPLY) and len(texts) >= 5
    assert "".join(texts) == REPLY
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert total.response_metadata["done_reason"] == "stop"
    assert total.usage_metadata is not None
    assert total.usage_metadata["output_tokens"] == len(texts)
    assert fake.last("/api/chat")["stream"] is True


def test_invoke_streams_by_default_and_without_stream(fake: FakeOllama, chat: Chat) -> None:
    """invoke aggregates the stream; invoke(stream=False) gets one JSON answer."""
    llm = chat()
    assert llm.invoke("hi").content == REPLY
    assert fake.last("/api/chat")["stream"] is True
    message = llm.invoke("hi", stream=False)
    assert message.content == REPLY
    assert message.response_metadata["done"] is True
    assert message.response_metadata["eval_count"] == len(split_words(REPLY))
    assert fake.last("/api/chat")["stream"] is False


def test_messages_options_and_keep_alive_arrive_as_sent(fake: FakeOllama, chat: Chat) -> None:
    """The request carries the messages, options.num_ctx and keep_alive ChatOllama was given."""
    seen: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []

    def reply(messages: list[dict[str, Any]], options: dict[str, Any]) -> str:
        seen.append((messages, options))
        return f"ctx {options['num_ctx']}"

    fake.reply = reply
    llm = chat(num_ctx=8192, temperature=0.0, keep_alive="10m")
    answer = llm.invoke([SystemMessage("You are a math tutor."), HumanMessage("Solve x+1=3")])
    assert answer.content == "ctx 8192"
    body = fake.last("/api/chat")
    sent = [
        {"role": "system", "content": "You are a math tutor."},
        {"role": "user", "content": "Solve x+1=3"},
    ]
    assert body["model"] == MODEL
    assert body["messages"] == sent
    assert body["options"] == {"num_ctx": 8192, "temperature": 0.0}
    assert body["keep_alive"] == "10m"
    assert seen == [(sent, {"num_ctx": 8192, "temperature": 0.0})]


def test_num_predict_truncates_with_done_reason_length(chat: Chat) -> None:
    """num_predict caps the chunks and reports done_reason "length", as Ollama does."""
    message = chat(num_predict=2).invoke("hi")
    assert message.content == "Two plus"
    assert message.response_metadata["done_reason"] == "length"


def test_unknown_model_is_a_404_response_error(chat: Chat) -> None:
    """An unknown model raises ollama.ResponseError 404 with Ollama's own text."""
    for stream in (True, False):
        with pytest.raises(ollama.ResponseError) as info:
            chat(model="llama9:70b").invoke("hi", stream=stream)
        assert info.value.status_code == 404
        assert info.value.error == 'model "llama9:70b" not found, try pulling it first'


def test_bare_model_name_means_latest(fake: FakeOllama, chat: Chat) -> None:
    """A name without a tag means ":latest", so "qwen2.5" is not "qwen2.5:7b-instruct"."""
    with pytest.raises(ollama.ResponseError):
        chat(model="qwen2.5").invoke("hi")
    fake.models.append("qwen2.5:latest")
    assert chat(model="qwen2.5").invoke("hi").content == REPLY


def test_validate_model_on_init(fake: FakeOllama, chat: Chat) -> None:
    """validate_model_on_init lists /api/tags; an unknown model fails in the constructor."""
    chat(validate_model_on_init=True)
    assert fake.requests[-1] == ("/api/tags", {})
    # The failed constructor's client cannot be closed, so keep no connection open for it.
    headers = {"Connection": "close"}
    with pytest.raises(pydantic.ValidationError, match="Model `llama9:70b` not found in Ollama"):
        chat(model="llama9:70b", validate_model_on_init=True, client_kwargs={"headers": headers})


def test_refused_connection() -> None:
    """Nothing listening: httpx.ConnectError when streaming, builtin ConnectionError otherwise."""
    llm = ChatOllama(model=MODEL, base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(httpx.ConnectError):
        llm.invoke("hi")
    with pytest.raises(ConnectionError, match="Failed to connect to Ollama"):
        llm.invoke("hi", stream=False)
    with pytest.raises(ConnectionError, match="Failed to connect to Ollama"):
        ChatOllama(model=MODEL, base_url=llm.base_url, validate_model_on_init=True)
    assert not issubclass(httpx.ConnectError, ConnectionError)


def test_slow_first_token_times_out(fake: FakeOllama, chat: Chat) -> None:
    """A server slower than the client timeout raises httpx.ReadTimeout."""
    fake.first_token_delay_s = 5.0
    llm = chat(client_kwargs={"timeout": 0.2})
    for stream in (True, False):
        with pytest.raises(httpx.ReadTimeout):
            llm.invoke("hi", stream=stream)


def test_slow_tokens_time_out_midstream(fake: FakeOllama, chat: Chat) -> None:
    """A stall between tokens raises httpx.ReadTimeout after the first chunk arrived."""
    fake.token_delay_s = 5.0
    got: list[str] = []
    with pytest.raises(httpx.ReadTimeout):
        for chunk in chat(client_kwargs={"timeout": 0.2}).stream("hi"):
            got.append(str(chunk.content))
    assert got == ["Two"]


def test_slow_tokens_within_timeout_succeed(fake: FakeOllama, chat: Chat) -> None:
    """Delays below the client timeout only slow the answer down."""
    fake.first_token_delay_s = fake.token_delay_s = 0.01
    assert chat(client_kwargs={"timeout": 2}).invoke("hi").content == REPLY


def test_broken_stream_raises_after_first_chunks(fake: FakeOllama, chat: Chat) -> None:
    """A connection cut midway yields the chunks sent, then httpx.RemoteProtocolError."""
    fake.break_after_chunks = 2
    got: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        for chunk in chat().stream("hi"):
            got.append(str(chunk.content))
    assert got == ["Two", " plus"]
    with pytest.raises(httpx.RemoteProtocolError):
        chat().invoke("hi")
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        chat().invoke("hi", stream=False)


def test_error_line_midstream_is_a_response_error(fake: FakeOllama, chat: Chat) -> None:
    """An {"error": ...} line, as Ollama sends when its runner dies, raises ResponseError."""
    fake.break_after_chunks, fake.stream_error = 1, "model runner has unexpectedly stopped"
    got: list[str] = []
    with pytest.raises(ollama.ResponseError, match="runner has unexpectedly stopped") as info:
        for chunk in chat().stream("hi"):
            got.append(str(chunk.content))
    assert got == ["Two"] and info.value.status_code == -1
    with pytest.raises(ollama.ResponseError) as info:
        chat().invoke("hi", stream=False)
    assert info.value.status_code == 500


def test_async_client_works(chat: Chat) -> None:
    """ainvoke and astream go through the same protocol."""

    async def run() -> tuple[str, list[str]]:
        llm = chat()
        message = await llm.ainvoke("hi")
        texts = [str(c.content) async for c in llm.astream("hi") if c.content]
        await llm._async_client.close()
        return str(message.content), texts

    content, texts = asyncio.run(run())
    assert content == REPLY and texts == split_words(REPLY)


def test_ollama_client_endpoints(fake: FakeOllama) -> None:
    """list, show, generate, chat and the plain endpoints answer like Ollama."""
    with ollama.Client(host=fake.url) as client:
        check_client(fake, client)
    with urllib.request.urlopen(fake.url) as response:
        assert response.read() == b"Ollama is running"
    with urllib.request.urlopen(f"{fake.url}/api/version") as response:
        assert json.load(response) == {"version": fake.version}


def check_client(fake: FakeOllama, client: ollama.Client) -> None:
    """Exercise the ollama client's calls against the fake."""
    assert [m.model for m in client.list().models] == [MODEL]
    fake.models = [MODEL, "llama3.2:3b"]
    assert [m.model for m in client.list().models] == [MODEL, "llama3.2:3b"]

    shown = client.show(MODEL)
    assert shown.modelinfo is not None and shown.modelinfo["qwen2.context_length"] == 32768
    assert shown.details is not None and shown.details.family == "qwen2"
    assert shown.capabilities == ["completion", "tools"]
    with pytest.raises(ollama.ResponseError) as info:
        client.show("nope:1b")
    assert info.value.status_code == 404

    assert client.generate(MODEL, "hi").response == REPLY
    parts = list(client.generate(MODEL, "hi", stream=True))
    assert "".join(p.response or "" for p in parts) == REPLY and parts[-1].done
    assert client.chat(MODEL, [{"role": "user", "content": "hi"}]).message.content == REPLY
    loaded = client.chat(MODEL, [], keep_alive="5m")
    assert loaded.done and loaded.done_reason == "load"


def test_server_restarts_on_a_new_port() -> None:
    """stop() frees the port and the context manager can be reused."""
    server = FakeOllama()
    with server:
        llm = ChatOllama(model=MODEL, base_url=server.url)
        assert llm.invoke("ping").content == "You said: ping"
    with pytest.raises(RuntimeError):
        _ = server.url
    with pytest.raises(httpx.ConnectError):  # stop() closed the pooled connection too
        llm.invoke("ping")
    with server:
        llm._client.close()
        llm = ChatOllama(model=MODEL, base_url=server.url)
        assert llm.invoke("pong").content == "You said: pong"
        llm._client.close()
