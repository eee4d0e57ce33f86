"""The answering chain through the real ChatOllama against the test suite's Ollama-protocol server."""
from __future__ import annotations

import json
from typing import Any

import pytest
from fake_chat import FakeChats
from fake_ollama import FakeOllama, free_port

from rag.answering import (
    NOT_COVERED,
    Turn,
    Tutor,
    ask,
    drop_invalid_markers,
    estimate_tokens,
    fallback_standalone,
    mark_spelled_citations,
    parse_citations,
)
from rag.index import Hit
from rag.prompts import load_prompt
from rag.retrieval import Searcher
from rag.settings import Settings

CHUNKS = [
    ("lop12/01-tinh-don-dieu.md", "Định nghĩa 1. Hàm số $f$ đồng biến trên $K$ nếu $x_1 < x_2$ kéo theo $f(x_1) < f(x_2)$."),
    ("lop12/01-tinh-don-dieu.md", "Định lí 1. Nếu $f'(x) > 0$ với mọi $x \\in K$ thì hàm số đồng biến trên $K$."),
    ("lop12/02-cuc-tri.md", "Định nghĩa. Điểm $x_0$ là điểm cực đại của $f$ nếu $f(x) < f(x_0)$ gần $x_0$."),
]


class ListRanker:
    """A ranker over fixed chunks that records the queries it was asked."""

    def __init__(self, chunks: list[tuple[str, str]], score: float = 0.9) -> None:
        self.hits = [Hit(f"id{i}", text, {"source": src, "heading_path": "Bài", "chunk_hash": f"h{i}"}, score - i * 0.01)
                     for i, (src, text) in enumerate(chunks)]
        self.queries: list[str] = []

    def rank(self, query: str, k: int, where: dict[str, Any] | None) -> list[Hit]:
        self.queries.append(query)
        return self.hits[:k]


@pytest.fixture
def fake():
    with FakeOllama() as server:
        yield server


def settings_for(url: str, **extra: Any) -> Settings:
    return Settings(**{"ollama_url": url, "min_score": 0.5, "top_k": 3, **extra})


def chat_requests(fake: FakeOllama) -> list[dict[str, Any]]:
    return [body for path, body in fake.requests if path == "/api/chat"]


def tutor(url: str, ranker: ListRanker | None = None, **extra: Any) -> tuple[Tutor, ListRanker]:
    ranker = ranker or ListRanker(CHUNKS)
    return Tutor(Searcher(ranker), settings_for(url, **extra)), ranker


def test_parse_citations_orders_valid_and_flags_invalid():
    assert parse_citations("a [2] b [1, 3] c [7] d [2][0]", 3) == ([2, 1, 3], [7, 0])
    assert parse_citations("không có trích dẫn", 3) == ([], [])


def test_drop_invalid_markers_keeps_valid_numbers_only():
    assert drop_invalid_markers("x [1] y [9] z [2, 9]", 2) == "x [1] y  z [2]"


def test_an_interval_in_a_formula_is_not_a_citation():
    """"[1; 3]" inside $…$ is an interval: it was counted as citing 1 and 3, and "[0; 2]" lost its 0 to the marker filter."""
    text = r"Với $x \in [1; 3]$ và $$y \in [0; 2]$$ và \(t \in [5, 6]\), ta có [2]."
    assert parse_citations(text, 3) == ([2], [])
    assert drop_invalid_markers(text, 3) == text


@pytest.mark.parametrize(("said", "marked", "cited"), [
    ("Từ đoạn tài liệu số 1, ta có", "Từ đoạn tài liệu số 1 [1], ta có", [1]),
    ("theo đoạn số 2 [2] và tài liệu số 3.", "theo đoạn số 2 [2] và tài liệu số 3 [3].", [2, 3]),
    ("Đoạn tài liệu 2 cho biết", "Đoạn tài liệu 2 [2] cho biết", [2]),
    ("xét trên đoạn $[0; 1]$ và đoạn thẳng AB", "xét trên đoạn $[0; 1]$ và đoạn thẳng AB", []),  # an interval, a segment
])
def test_a_chunk_named_in_words_is_cited(said: str, marked: str, cited: list[int]):
    assert mark_spelled_citations(said) == marked
    assert parse_citations(mark_spelled_citations(said), 3)[0] == cited


def test_prompt_holds_numbered_chunks_and_streams(fake):
    fake.reply = lambda messages, options: "Hàm số đồng biến khi $f'(x) > 0$ [2], theo định nghĩa [1]."
    t, _ = tutor(fake.url)
    stream = t.stream("Khi nào hàm số đồng biến?")
    deltas = list(stream)
    answer = stream.answer
    assert len(deltas) > 3 and "".join(deltas) == answer.text
    messages = chat_requests(fake)[-1]["messages"]
    assert messages[0]["role"] == "system" and messages[0]["content"] == load_prompt("tutor_system").text
    user = messages[-1]["content"]
    for number, (source, text) in enumerate(CHUNKS, start=1):
        assert f'<tài_liệu số="{number}" nguồn="{source}" mục="Bài">\n{text}\n</tài_liệu>' in user
    asked = "Câu hỏi của học sinh: Khi nào hàm số đồng biến?"
    assert user.count(asked) == 1 and user.index(asked) > user.rindex("</tài_liệu>")  # after all the material
    assert answer.status == "ok" and answer.cited == [2, 1] and answer.invalid_citations == []
    assert [h.id for h in answer.cited_chunks] == ["id1", "id0"]
    assert answer.prompt_version.startswith("tutor_system@")
    assert answer.timings.retrieval_s <= answer.timings.first_token_s <= answer.timings.total_s


def test_marker_pointing_at_no_chunk_is_dropped_and_flagged():
    chats = FakeChats("Đúng vậy [1] và [5].")
    answer = ask(Tutor(Searcher(ListRanker(CHUNKS)), settings_for("http://unused"), chats), "hàm đồng biến?")
    assert answer.cited == [1] and answer.invalid_citations == [5]
    assert "[5]" not in answer.text and "[1]" in answer.text


def test_guard_refuses_without_asking_the_llm():
    chats = FakeChats()
    answer = ask(Tutor(Searcher(ListRanker(CHUNKS, score=0.3)), settings_for("http://unused"), chats), "Thủ đô của nước Pháp là gì?")
    assert answer.status == "not_covered" and answer.notice == NOT_COVERED
    assert len(answer.retrieved) == 3 and chats.prompts == []


def test_follow_up_is_condensed_by_the_llm_for_retrieval(fake):
    fake.reply = lambda messages, options: (
        "Khi nào hàm số nghịch biến?" if "Câu hỏi độc lập" in messages[-1]["content"] else "Khi $f'(x) < 0$ [2].")
    t, ranker = tutor(fake.url)
    history = [Turn("Khi nào hàm số đồng biến?", "Khi $f'(x) > 0$ [2].")]
    answer = ask(t, "còn nghịch biến thì sao?", history)
    condense_prompt = chat_requests(fake)[0]["messages"][-1]["content"]
    assert "Khi nào hàm số đồng biến?" in condense_prompt and "còn nghịch biến thì sao?" in condense_prompt
    assert ranker.queries == ["Khi nào hàm số nghịch biến?"] and answer.standalone_question == "Khi nào hàm số nghịch biến?"
    final = chat_requests(fake)[-1]["messages"]
    assert [m["role"] for m in final] == ["system", "user", "assistant", "user"]
    assert answer.history_turns_used == 1 and answer.status == "ok"


def test_follow_up_falls_back_without_llm_and_still_retrieves():
    t, ranker = tutor(f"http://127.0.0.1:{free_port()}")
    history = [Turn("Khi nào hàm số đồng biến?", "…")]
    answer = ask(t, "còn nghịch biến thì sao?", history)
    assert ranker.queries == [fallback_standalone("còn nghịch biến thì sao?", history)]
    assert "đồng biến" in ranker.queries[0] and "nghịch biến" in ranker.queries[0]
    assert answer.status == "llm_unreachable" and len(answer.retrieved) == 3


def test_context_budget_drops_chunks_never_truncates(fake):
    long_chunks = [(f"bai{i}.md", " ".join(f"hàm số $y = x^{{{i}{j}}}$ đồng biến {i}-{j}." for j in range(90))) for i in range(5)]
    t, _ = tutor(fake.url, ListRanker(long_chunks), num_ctx=4096, answer_tokens=512, top_k=5, context_chunks=5)
    answer = ask(t, "hàm số đồng biến?")
    body = chat_requests(fake)[-1]
    prompt = "".join(m["content"] for m in body["messages"])
    assert 1 <= answer.context_size < 5
    included = [text.strip() for _, text in long_chunks[: answer.context_size]]
    assert all(text in prompt for text in included)
    assert all(text.strip() not in prompt for _, text in long_chunks[answer.context_size:])
    assert estimate_tokens(prompt) + 512 <= body["options"]["num_ctx"] <= 4096
    assert len(answer.retrieved) == 5


def test_history_beyond_the_budget_is_dropped_oldest_first():
    history = [Turn(f"Câu hỏi cũ {i} " + "x" * 1500, "Trả lời " + "y" * 1500) for i in range(4)]
    chats = FakeChats("Câu hỏi độc lập về hàm số đồng biến?", "Khi $f'(x) > 0$ [2].")
    t = Tutor(Searcher(ListRanker(CHUNKS)), settings_for("http://unused", num_ctx=4096, answer_tokens=512), chats)
    answer = ask(t, "hàm số đồng biến?", history)
    assert 0 < answer.history_turns_used < 4
    contents = [str(m.content) for m in chats.prompts[-1]]
    assert any(c.startswith("Câu hỏi cũ 3") for c in contents) and not any(c.startswith("Câu hỏi cũ 0") for c in contents)


def test_unreachable_ollama_says_where_and_how(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    answer = ask(tutor(url)[0], "hàm số đồng biến?")
    assert answer.status == "llm_unreachable" and url in answer.notice and "ollama serve" in answer.notice
    assert len(answer.retrieved) == 3 and answer.text == ""


def test_missing_model_says_ollama_pull(fake):
    fake.models = ["llama3:8b"]
    answer = ask(tutor(fake.url)[0], "hàm số đồng biến?")
    assert answer.status == "model_missing" and "ollama pull qwen2.5:7b-instruct" in answer.notice
    assert len(answer.retrieved) == 3


def test_slow_server_times_out(fake):
    fake.first_token_delay_s = 3.0
    answer = ask(tutor(fake.url, llm_timeout_s=0.5)[0], "hàm số đồng biến?")
    assert answer.status == "timeout" and "0.5 giây" in answer.notice and len(answer.retrieved) == 3


def test_broken_stream_keeps_the_partial_answer(fake):
    fake.reply = lambda messages, options: "Một hai ba bốn năm sáu bảy tám [1]"
    fake.break_after_chunks = 3
    t, _ = tutor(fake.url)
    stream = t.stream("hàm số đồng biến?")
    deltas = list(stream)
    answer = stream.answer
    assert answer.status == "interrupted" and answer.text == "".join(deltas) == "Một hai ba"
    assert "gián đoạn" in answer.notice and len(answer.retrieved) == 3


def test_ollama_host_is_honoured_when_no_url_is_set(fake, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", fake.url.removeprefix("http://"))
    fake.reply = lambda messages, options: "Khi đạo hàm dương [2]."
    t = Tutor(Searcher(ListRanker(CHUNKS)), Settings(min_score=0.5))
    assert ask(t, "hàm số đồng biến?").status == "ok" and chat_requests(fake)


def test_ask_cli_json_record(fake, sample_index, capsys):
    from rag.__main__ import main

    fake.reply = lambda messages, options: "Hàm số đồng biến khi đạo hàm dương [1]."
    args = ["ask", "Khi nào hàm số đồng biến?", "--json", "--index", str(sample_index.index_dir), "--ollama-url", fake.url]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "ok" and record["cited"] == [1] and record["cited_ids"]
    assert record["retrieved"][0]["metadata"]["source"].endswith(".md")
    assert set(record["timings"]) == {"retrieval_s", "first_token_s", "total_s"}
    assert main(["ask", "Khi nào hàm số đồng biến?", "--index", str(sample_index.index_dir), "--ollama-url", f"http://127.0.0.1:{free_port()}"]) == 3
    out = capsys.readouterr().out
    assert "Không kết nối được tới Ollama" in out and "[1] lop" in out


def test_prepare_retrieves_once_before_the_generation(fake):
    fake.reply = lambda messages, options: "Khi $f'(x) > 0$ [2]."  # the default echo of the prompt is stopped as degenerate
    t, ranker = tutor(fake.url)
    stream = t.stream("Khi nào hàm số đồng biến?")
    assert stream.prepare() is True and len(stream.answer.retrieved) == 3 and not chat_requests(fake)
    assert stream.prepare() is True and len(ranker.queries) == 1  # a second call changes nothing
    text = "".join(stream)
    assert text and stream.answer.text == text and len(ranker.queries) == 1 and len(chat_requests(fake)) == 1
    assert stream.answer.timings.total_s >= stream.answer.timings.retrieval_s > 0
    covered = tutor(fake.url, min_score=0.99)[0].stream("Khi nào hàm số đồng biến?")
    assert covered.prepare() is False and list(covered) == [] and covered.answer.status == "not_covered"
