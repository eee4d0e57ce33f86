"""The LLM behind the tutor: a registry of providers (Ollama, OpenAI-compatible servers), each with its chat model,
its status check and what its failures mean to a student.

A new provider is one entry in PROVIDERS: a factory, a status check, a classifier of its exceptions and the words the
student reads. The answering chain only sees a LangChain chat model and the `Failure` values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Callable

import httpx

from rag.settings import Settings

if TYPE_CHECKING:  # langchain-core costs ~0.4 s to import; settings validation and `rag search` never need it
    from langchain_core.language_models import BaseChatModel

_STATUS_TIMEOUT_S = 3.0
_CONNECT_TIMEOUT_S = 5.0


class Failure(str, Enum):
    UNREACHABLE = "llm_unreachable"
    MODEL_MISSING = "model_missing"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    ERROR = "llm_error"


class FirstTokenTimeout(TimeoutError):
    """The server accepted the request but wrote nothing within llm_first_token_timeout_s."""


class TotalTimeout(TimeoutError):
    """The answer was still being written after llm_timeout_s."""


@dataclass(frozen=True)
class LLMStatus:
    """Whether the provider answers at the configured address, and which models it serves."""

    url: str
    reachable: bool
    models: list[str] = field(default_factory=list)
    error: str | None = None
    failure: Failure | None = None  # why it is not usable, when it is not

    def has_model(self, model: str) -> bool:
        return any(m == model or m == f"{model}:latest" for m in self.models)


OllamaStatus = LLMStatus  # the name the UI and the API used before there was more than one provider


@dataclass(frozen=True)
class Provider:
    """Everything provider-specific, in one place."""

    name: str
    label: str  # how the student reads its name
    default_url: Callable[[Settings], str]
    chat: Callable[[Settings, int, int | None], BaseChatModel]
    status: Callable[[Settings], LLMStatus]
    classify: Callable[[BaseException], Failure | None]  # None: not one of its own exceptions
    hints: dict[Failure, str]  # how to fix it, formatted with url and model


def request_timeout(settings: Settings) -> httpx.Timeout:
    """The longest wait for any byte is the first-token bound: after the first token, bytes keep coming.

    The total bound is enforced by the answering loop (a stream may trickle forever without a read timing out).
    """
    first = first_token_timeout(settings)
    return httpx.Timeout(first, connect=min(_CONNECT_TIMEOUT_S, first))


def first_token_timeout(settings: Settings) -> float:
    return min(settings.llm_first_token_timeout_s, settings.llm_timeout_s)


# --- Ollama -----------------------------------------------------------------------------------------------------

def _ollama_chat(settings: Settings, num_ctx: int, num_predict: int | None) -> BaseChatModel:
    from langchain_ollama import ChatOllama

    return ChatOllama(
        base_url=effective_url(settings),
        model=settings.effective_model(),
        temperature=settings.temperature,
        num_ctx=num_ctx,
        num_predict=num_predict or settings.answer_tokens,
        stop=list(settings.llm_stop) or None,
        client_kwargs={"timeout": request_timeout(settings)},
    )


def _ollama_status(settings: Settings) -> LLMStatus:
    import ollama

    url = effective_url(settings)
    try:
        listed = ollama.Client(host=url, timeout=_STATUS_TIMEOUT_S).list()
    except Exception as exc:  # any failure here just means "not usable now"; the message says which
        failure = classify(exc, settings=settings)
        return LLMStatus(url, False, error=failure_message(failure, settings, str(exc)), failure=failure)
    return LLMStatus(url, True, sorted(m.model for m in listed.models if m.model))


def _ollama_classify(exc: BaseException) -> Failure | None:
    import ollama

    if isinstance(exc, ollama.ResponseError) and exc.status_code == 404:
        return Failure.MODEL_MISSING
    return None


# --- OpenAI-compatible (llama.cpp's llama-server, vLLM, LM Studio, LocalAI, …) ------------------------------------

_NO_KEY = "not-needed"  # local servers ignore the key, but the client refuses to start without one


def _api_key(settings: Settings) -> str:
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key is not None else ""
    return key or _NO_KEY


def _openai_chat(settings: Settings, num_ctx: int, num_predict: int | None) -> BaseChatModel:
    from langchain_openai import ChatOpenAI

    # num_ctx is the server's to set (llama-server -c, vLLM --max-model-len); the budget still keeps within it.
    return ChatOpenAI(
        base_url=effective_url(settings),
        api_key=_api_key(settings),
        model=settings.effective_model(),
        temperature=settings.temperature,
        max_tokens=num_predict or settings.answer_tokens,
        stop=list(settings.llm_stop) or None,
        timeout=request_timeout(settings),
        max_retries=0,  # a retry would pay the timeout again; the student gets the material instead
        stream_usage=True,  # the server's own prompt token count, for the budget calibration
    )


def _openai_status(settings: Settings) -> LLMStatus:
    url = effective_url(settings)
    try:
        reply = httpx.get(f"{url.rstrip('/')}/models", timeout=_STATUS_TIMEOUT_S,
                          headers={"Authorization": f"Bearer {_api_key(settings)}"})
        reply.raise_for_status()
        data = reply.json().get("data") or []
    except Exception as exc:  # any failure here just means "not usable now"; the message says which
        failure = classify(exc, settings=settings)
        return LLMStatus(url, False, error=failure_message(failure, settings, _safe_detail(exc)), failure=failure)
    names = {str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id")}
    names |= {str(a) for m in data if isinstance(m, dict) for a in m.get("aliases") or []}
    return LLMStatus(url, True, sorted(names))


def _openai_classify(exc: BaseException) -> Failure | None:
    import openai

    if isinstance(exc, openai.APITimeoutError):  # a subclass of APIConnectionError: test it first
        return Failure.TIMEOUT
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return Failure.TIMEOUT if isinstance(cause, httpx.TimeoutException) else Failure.UNREACHABLE
    if isinstance(exc, openai.NotFoundError):
        # vLLM/LM Studio: "The model `x` does not exist"; a 404 that is not about a model is a wrong base URL
        return Failure.MODEL_MISSING if "model" in str(exc).lower() else Failure.ERROR
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 404:
        return Failure.ERROR
    return None


def _safe_detail(exc: BaseException) -> str:
    """An exception's text for the student, with no secret in it."""
    return f"{type(exc).__name__}: {exc}"


PROVIDERS: dict[str, Provider] = {
    "ollama": Provider(
        name="ollama",
        label="Ollama",
        default_url=lambda s: s.effective_ollama_url(),
        chat=_ollama_chat,
        status=_ollama_status,
        classify=_ollama_classify,
        hints={
            Failure.UNREACHABLE: "Hãy khởi động Ollama (chạy `ollama serve`) hoặc đặt đúng địa chỉ bằng "
                                 "VIMATH_OLLAMA_URL / OLLAMA_HOST.",
            Failure.MODEL_MISSING: "Hãy tải về bằng lệnh: `ollama pull {model}`.",
        },
    ),
    "openai": Provider(
        name="openai",
        label="máy chủ mô hình (chuẩn OpenAI)",
        default_url=lambda s: "http://127.0.0.1:8080/v1",
        chat=_openai_chat,
        status=_openai_status,
        classify=_openai_classify,
        hints={
            Failure.UNREACHABLE: "Hãy khởi động máy chủ (llama-server, vLLM, LM Studio, LocalAI…) hoặc đặt đúng "
                                 "địa chỉ bằng VIMATH_LLM_BASE_URL (thường kết thúc bằng /v1).",
            Failure.MODEL_MISSING: "Hãy đặt VIMATH_LLM_MODEL thành một mô hình mà máy chủ cung cấp (xem {url}/models).",
        },
    ),
}


def provider(settings: Settings) -> Provider:
    try:
        return PROVIDERS[settings.llm_provider]
    except KeyError:  # settings validate the name; this guards settings built with model_construct
        raise ValueError(f"unknown llm_provider {settings.llm_provider!r}; choose one of {', '.join(PROVIDERS)}") from None


def effective_url(settings: Settings) -> str:
    """The provider's address: llm_base_url, else the provider's own default (Ollama: ollama_url, OLLAMA_HOST)."""
    url = settings.llm_base_url or provider(settings).default_url(settings)
    return (url if "://" in url else f"http://{url}").rstrip("/")


def chat_model(settings: Settings, num_ctx: int, num_predict: int | None = None) -> BaseChatModel:
    """The configured provider's chat model with the context size the prompt needs."""
    return provider(settings).chat(settings, num_ctx, num_predict)


def classify(exc: BaseException, *, midway: bool = False, settings: Settings | None = None) -> Failure:
    """Which failure an exception is; one that breaks an answer already begun is an interruption."""
    if isinstance(exc, TotalTimeout):
        return Failure.TIMEOUT
    candidates = [provider(settings)] if settings is not None else list(PROVIDERS.values())
    for p in candidates:
        found = p.classify(exc)
        if found is not None:
            return Failure.INTERRUPTED if midway and found is Failure.ERROR else found
    if isinstance(exc, (ConnectionError, httpx.ConnectError)) and not midway:
        return Failure.UNREACHABLE
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return Failure.TIMEOUT
    return Failure.INTERRUPTED if midway else Failure.ERROR


def failure_message(failure: Failure, settings: Settings, detail: str = "") -> str:
    """What to tell the student, in Vietnamese, and how to fix it."""
    p = provider(settings)
    url, model = effective_url(settings), settings.effective_model()
    hint = p.hints.get(failure, "").format(url=url, model=model)
    first, total = first_token_timeout(settings), settings.llm_timeout_s
    messages = {
        Failure.UNREACHABLE: f"Không kết nối được tới {p.label} tại {url}. {hint}",
        Failure.MODEL_MISSING: f"{p.label[0].upper()}{p.label[1:]} tại {url} chưa có mô hình {model}. {hint}",
        Failure.TIMEOUT: f"{p.label[0].upper()}{p.label[1:]} tại {url} không trả lời kịp (chờ chữ đầu tiên tối đa "
                         f"{first:g} giây, cả câu trả lời tối đa {total:g} giây). Máy có thể đang bận hoặc mô hình quá "
                         f"lớn; hãy thử lại hoặc tăng VIMATH_LLM_FIRST_TOKEN_TIMEOUT_S / VIMATH_LLM_TIMEOUT_S.",
        Failure.INTERRUPTED: f"Câu trả lời bị gián đoạn giữa chừng do lỗi kết nối với {p.label}; phần đã viết được giữ "
                             f"lại bên trên.",
        Failure.ERROR: f"{p.label[0].upper()}{p.label[1:]} báo lỗi: {detail}".strip(),
    }
    return messages[failure].replace("  ", " ").strip() + " Trong lúc chờ, đây là các đoạn tài liệu liên quan nhất."


def llm_status(settings: Settings) -> LLMStatus:
    """Whether the configured provider answers, asked with a short timeout."""
    return provider(settings).status(settings)


ollama_status = llm_status  # kept for callers written before providers
