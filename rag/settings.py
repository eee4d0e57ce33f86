"""All settings of vimath-tutor, read once: defaults < config file < VIMATH_* env vars < CLI flags."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from rag.backends import DEFAULT_BACKEND, NAMES, check_backend  # light: imports no engine
from rag.ranking import DEFAULT_METHOD, METHODS, check_method  # light: imports no ranker

ENV_PREFIX = "VIMATH_"
DEFAULT_CONFIG_FILE = Path("vimath.toml")
DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
# Where a small model that runs past its answer goes next: the prompt's own labels and fences (seen with a 1.5B
# model: the answer went on with "Câu hỏi của học sinh: …"). At most 4: OpenAI's API accepts no more.
DEFAULT_STOP = ("\nCâu hỏi của học sinh:", "<tài_liệu", "</tài_liệu>", "\nTài liệu:")


class Settings(BaseSettings):
    """Effective configuration of the tutor."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    embedder: str = Field("auto", description="auto | bundled | a Hugging Face id | a local model path")
    hub_timeout_s: float = Field(3.0, description="how long `auto` waits for the Hugging Face hub")
    embed_backend: str = Field(DEFAULT_BACKEND, description="what computes the vectors: " + " | ".join(NAMES) + " (rag.backends)")
    embed_batch_size: int = Field(16, ge=1)
    max_file_mb: float = Field(20.0, gt=0, description="lesson files larger than this (MB) are refused by ingest; the rest goes on")
    index_dir: Path = Field(Path("vimath_index"), description="folder of the embedded Chroma index")
    chroma_host: str | None = Field(None, description="Chroma server host; set it to use a server")
    chroma_port: int = 8000
    collection: str = Field("vimath_lessons", min_length=3, max_length=512)
    top_k: int = Field(5, ge=1, le=100)
    # On the test split (hybrid, bundled embedder) the first correct chunk was at rank 1-3 for 53 of the 62 questions
    # whose correct chunk is in the top 5; ranks 4-5 cost 40 % more prompt for 9 more (bench/answer_eval.py).
    context_chunks: int = Field(3, ge=1, le=100, description="most chunks given to the model (the UI still shows top_k)")
    # Calibrated with bench/calibrate_guard.py on the sample lessons and the bundled embedder; recalibrate for another.
    min_score: float = Field(0.815, description="best-chunk cosine under which the material is said not to cover a question")
    retrieval_method: str = Field(DEFAULT_METHOD, description="one of " + " | ".join(METHODS) + " (rag.ranking)")
    llm_provider: str = Field("ollama", description="ollama | openai (llama.cpp's llama-server, vLLM, LM Studio, LocalAI)")
    llm_base_url: str | None = Field(None, description="the provider's address; ollama: ollama_url, openai: http://127.0.0.1:8080/v1")
    llm_api_key: SecretStr | None = Field(None, description="for servers that want one; never printed or logged")
    llm_model: str | None = Field(None, description="the model's name at the provider; defaults to ollama_model")
    ollama_url: str | None = Field(None, description="defaults to $OLLAMA_HOST, then " + DEFAULT_OLLAMA_URL)
    ollama_model: str = "qwen2.5:7b-instruct"
    temperature: float = 0.2
    num_ctx: int = Field(8192, ge=512, description="largest context the model may be given")
    # bench/answer_eval.py with a real 1.5B model: the longest good answer took 328 tokens; answers that ran into a
    # 384-token cap were copying or looping. 512 leaves room for a worked solution and halves a runaway's cost.
    answer_tokens: int = Field(512, ge=64, description="tokens reserved for the answer (num_predict)")
    # Sized for a small model on a school's CPU (bench/answer_eval.py, Qwen2.5-1.5B on one core): reading a 1,000–
    # 1,500-token prompt took 30–66 s before the first token, and an answer up to 130 s in all. At 60/120 s, 9 of 30
    # in-scope questions timed out and the student got nothing; a GPU server answers far within these.
    llm_timeout_s: float = Field(300.0, gt=0, description="longest time for a whole answer")
    # A server that accepts the connection but never answers is noticed after this, not after llm_timeout_s.
    llm_first_token_timeout_s: float = Field(150.0, gt=0, description="longest wait for the first token")
    # Stops an answer that copies the material, repeats itself or echoes the prompt (rag/degenerate.py).
    degenerate_guard: bool = True
    llm_stop: tuple[str, ...] = Field(DEFAULT_STOP, description="stop sequences sent to the model")
    history_turns: int = Field(4, ge=0)
    database_url: str = "sqlite:///vimath_log.db"
    teacher_password: SecretStr | None = None
    # The HTTP API (`python -m rag serve`, rag/api/).
    api_keys_file: Path = Field(Path("vimath_api_keys.json"), description="API keys (names and SHA-256 hashes only)")
    api_allow_anonymous: bool = Field(False, description="serve without keys; refused unless bound to a loopback address")
    api_cors_origins: list[str] = Field(default_factory=list, description="browser origins allowed to call the API (none by default)")
    api_rate_limit_per_minute: int = Field(60, ge=1, description="requests per minute per API key")
    api_max_body_bytes: int = Field(256 * 1024, ge=1024, description="largest request body accepted")
    api_max_question_chars: int = Field(2000, ge=10)
    api_max_history_turns: int = Field(50, ge=0, description="earlier exchanges a request may carry (the tutor uses the latest history_turns)")
    api_generation_slots: int = Field(2, ge=1, description="answers generated by the LLM at once")
    api_generation_queue: int = Field(16, ge=0, description="answers waiting for a slot beyond which requests are refused (503)")
    api_queue_timeout_s: float = Field(60.0, gt=0, description="longest wait for a generation slot before 503")
    api_retrieval_workers: int = Field(4, ge=1, description="threads for retrieval, apart from generation")
    api_model_name: str = Field("vimath-tutor", min_length=1, description="the model name of the OpenAI-compatible endpoint")
    api_require_llm: bool = Field(False, description="/readyz fails while the LLM is unreachable (else retrieval-only is ready)")

    @field_validator("embed_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return check_backend(value)

    @field_validator("retrieval_method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        return check_method(value)

    @field_validator("llm_provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        from rag.llm import PROVIDERS  # the registry is the one list of providers

        name = value.strip().lower()
        if name not in PROVIDERS:
            raise ValueError(f"unknown LLM provider {value!r}; choose one of: {', '.join(PROVIDERS)}")
        return name

    def effective_model(self) -> str:
        return self.llm_model or self.ollama_model

    def effective_ollama_url(self) -> str:
        """Ollama's address: the setting, else Ollama's own OLLAMA_HOST, else its default."""
        url = self.ollama_url or os.environ.get("OLLAMA_HOST") or DEFAULT_OLLAMA_URL
        return url if "://" in url else f"http://{url}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, _config_file())


def _config_file() -> Path:
    return Path(os.environ.get(f"{ENV_PREFIX}CONFIG", DEFAULT_CONFIG_FILE))


def load_settings(**cli: Any) -> Settings:
    """Settings with CLI values (None means 'not given') on top of the other sources."""
    return Settings(**{k: v for k, v in cli.items() if v is not None})


def provenance(settings: Settings, **cli: Any) -> dict[str, str]:
    """Where each effective value came from: cli, env, the config file, or default."""
    env = EnvSettingsSource(Settings)()
    config = _config_file()
    toml = TomlConfigSettingsSource(Settings, config)()
    origin: dict[str, str] = {}
    for name in Settings.model_fields:
        if cli.get(name) is not None:
            origin[name] = "cli"
        elif name in env:
            origin[name] = f"env {ENV_PREFIX}{name.upper()}"
        elif name in toml:
            origin[name] = f"file {config}"
        else:
            origin[name] = "default"
    return origin


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
