"""The local LLM through Ollama: the chat model, whether Ollama answers, and what its failures mean to a student."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import httpx
import ollama
from langchain_ollama import ChatOllama

from rag.settings import Settings

_STATUS_TIMEOUT_S = 3.0


class Failure(str, Enum):
    UNREACHABLE = "llm_unreachable"
    MODEL_MISSING = "model_missing"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    ERROR = "llm_error"


def chat_model(settings: Settings, num_ctx: int, num_predict: int | None = None) -> ChatOllama:
    """ChatOllama with the context size the prompt needs, the configured model, temperature and timeout."""
    return ChatOllama(
        base_url=settings.effective_ollama_url(),
        model=settings.ollama_model,
        temperature=settings.temperature,
        num_ctx=num_ctx,
        num_predict=num_predict or settings.answer_tokens,
        client_kwargs={"timeout": settings.llm_timeout_s},
    )


def classify(exc: BaseException, *, midway: bool = False) -> Failure:
    """Which failure an exception from ChatOllama is; one that breaks an answer already begun is an interruption."""
    if isinstance(exc, ollama.ResponseError) and exc.status_code == 404:
        return Failure.MODEL_MISSING
    if isinstance(exc, (ConnectionError, httpx.ConnectError)):
        return Failure.UNREACHABLE
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return Failure.TIMEOUT
    return Failure.INTERRUPTED if midway else Failure.ERROR


def failure_message(failure: Failure, settings: Settings, detail: str = "") -> str:
    """What to tell the student, in Vietnamese, and how to fix it."""
    url, model = settings.effective_ollama_url(), settings.ollama_model
    messages = {
        Failure.UNREACHABLE: f"Không kết nối được tới Ollama tại {url}. Hãy khởi động Ollama (chạy `ollama serve`) "
                             f"hoặc đặt đúng địa chỉ bằng VIMATH_OLLAMA_URL / OLLAMA_HOST.",
        Failure.MODEL_MISSING: f"Ollama tại {url} chưa có mô hình {model}. Hãy tải về bằng lệnh: `ollama pull {model}`.",
        Failure.TIMEOUT: f"Ollama tại {url} không trả lời trong {settings.llm_timeout_s:g} giây. Máy có thể đang bận "
                         f"hoặc mô hình quá lớn; hãy thử lại hoặc tăng VIMATH_LLM_TIMEOUT_S.",
        Failure.INTERRUPTED: "Câu trả lời bị gián đoạn giữa chừng do lỗi kết nối với Ollama; phần đã viết được giữ lại bên trên.",
        Failure.ERROR: f"Ollama báo lỗi: {detail}".strip(),
    }
    return messages[failure] + " Trong lúc chờ, đây là các đoạn tài liệu liên quan nhất."


@dataclass(frozen=True)
class OllamaStatus:
    """Whether Ollama answers at the configured address, and which models it has."""

    url: str
    reachable: bool
    models: list[str] = field(default_factory=list)
    error: str | None = None

    def has_model(self, model: str) -> bool:
        return any(m == model or m == f"{model}:latest" for m in self.models)


def ollama_status(settings: Settings) -> OllamaStatus:
    url = settings.effective_ollama_url()
    try:
        listed = ollama.Client(host=url, timeout=_STATUS_TIMEOUT_S).list()
    except Exception as exc:  # any failure here just means "not usable now"; the message says which
        return OllamaStatus(url, False, error=failure_message(classify(exc), settings, str(exc)))
    return OllamaStatus(url, True, sorted(m.model for m in listed.models if m.model))
