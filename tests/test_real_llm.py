"""The chain against a real engine (llama.cpp through xllamacpp) and real GGUF weights: opt-in and slow.

    python scripts/setup_llm.py --model smollm2      # ~98 MB, a fast "a real engine produces tokens" check
    VIMATH_TEST_GGUF=$HOME/.cache/vimath/llm/smollm2-135m-instruct-q4_1.gguf python -m pytest -m slow tests/test_real_llm.py

Skipped unless VIMATH_TEST_GGUF names a GGUF file (the weights are third-party and never a product dependency).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from test_answering import CHUNKS, ListRanker

from rag.answering import Tutor
from rag.llm import llm_status
from rag.retrieval import Searcher
from rag.settings import Settings

GGUF = os.environ.get("VIMATH_TEST_GGUF", "")
ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not GGUF or not Path(GGUF).is_file(), reason="set VIMATH_TEST_GGUF to a GGUF file (scripts/setup_llm.py)"),
]


@pytest.fixture(scope="module")
def real_server():
    pytest.importorskip("xllamacpp")
    sys.path.insert(0, str(ROOT / "bench"))
    from llm_server import serving

    with serving(Path(GGUF), threads=1, ctx=2048) as url:
        yield url


def test_a_real_engine_streams_an_answer_through_the_whole_chain(real_server):
    settings = Settings(llm_provider="openai", llm_base_url=real_server, llm_model="test", min_score=0.5, top_k=3,
                        answer_tokens=64, num_ctx=2048, llm_first_token_timeout_s=300, llm_timeout_s=600)
    assert llm_status(settings).reachable
    stream = Tutor(Searcher(ListRanker(CHUNKS)), settings).stream("Khi nào hàm số đồng biến trên một khoảng?")
    deltas = list(stream)
    answer = stream.answer
    assert answer.status in {"ok", "degenerate"}, answer.notice
    assert deltas and answer.completion_tokens and answer.timings.first_token_s is not None
    # the budget's estimate of the prompt is an upper bound of the real tokenizer's count
    assert answer.prompt_tokens and answer.prompt_tokens_estimate >= answer.prompt_tokens
    assert answer.finish_reason in {"stop", "length"}
