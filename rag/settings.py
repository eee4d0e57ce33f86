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

from rag.ranking import DEFAULT_METHOD, METHODS, check_method  # light: imports no ranker

ENV_PREFIX = "VIMATH_"
DEFAULT_CONFIG_FILE = Path("vimath.toml")
DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"


class Settings(BaseSettings):
    """Effective configuration of the tutor."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    embedder: str = Field("auto", description="auto | bundled | a Hugging Face id | a local model path")
    hub_timeout_s: float = Field(3.0, description="how long `auto` waits for the Hugging Face hub")
    embed_batch_size: int = Field(16, ge=1)
    index_dir: Path = Field(Path("vimath_index"), description="folder of the embedded Chroma index")
    chroma_host: str | None = Field(None, description="Chroma server host; set it to use a server")
    chroma_port: int = 8000
    collection: str = Field("vimath_lessons", min_length=3, max_length=512)
    top_k: int = Field(5, ge=1, le=100)
    # Calibrated with bench/calibrate_guard.py on the sample lessons and the bundled embedder; recalibrate for another.
    min_score: float = Field(0.815, description="best-chunk cosine under which the material is said not to cover a question")
    retrieval_method: str = Field(DEFAULT_METHOD, description="one of " + " | ".join(METHODS) + " (rag.ranking)")
    ollama_url: str | None = Field(None, description="defaults to $OLLAMA_HOST, then " + DEFAULT_OLLAMA_URL)
    ollama_model: str = "qwen2.5:7b-instruct"
    temperature: float = 0.2
    num_ctx: int = Field(8192, ge=512, description="largest context the model may be given")
    answer_tokens: int = Field(1024, ge=64, description="tokens reserved for the answer")
    llm_timeout_s: float = 120.0
    history_turns: int = Field(4, ge=0)
    database_url: str = "sqlite:///vimath_log.db"
    teacher_password: SecretStr | None = None

    @field_validator("retrieval_method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        return check_method(value)

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
