"""Settings precedence (default < config file < VIMATH_* env < CLI) and `python -m rag config`."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from rag.__main__ import main as rag_main
from rag.settings import DEFAULT_OLLAMA_URL, Settings, load_settings, provenance

LINE = re.compile(r"^(\w+)\s+= (.*?)\s*\[(.+)\]$")


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "conf" / "vimath.toml"
    path.parent.mkdir()
    path.write_text(
        'top_k = 7\nmin_score = 0.5\ntemperature = 0.7\nollama_model = "llama-from-file"\nindex_dir = "file_index"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("VIMATH_CONFIG", str(path))
    return path


def test_defaults_without_file_or_env() -> None:
    settings = load_settings()
    assert settings.top_k == Settings.model_fields["top_k"].default == 5
    assert settings.embedder == "auto" and settings.chroma_host is None
    assert set(provenance(settings).values()) == {"default"}


def test_config_file_overrides_defaults(config_file: Path) -> None:
    settings = load_settings()
    assert (settings.top_k, settings.min_score, settings.ollama_model) == (7, 0.5, "llama-from-file")
    assert settings.index_dir == Path("file_index")
    origin = provenance(settings)
    assert origin["top_k"] == f"file {config_file}" and origin["num_ctx"] == "default"


def test_env_overrides_the_file_and_cli_overrides_env(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIMATH_TOP_K", "9")
    monkeypatch.setenv("VIMATH_TEMPERATURE", "0.1")
    settings = load_settings()
    assert (settings.top_k, settings.temperature, settings.min_score) == (9, 0.1, 0.5)
    cli = {"top_k": 11, "temperature": None}
    settings = load_settings(**cli)
    assert (settings.top_k, settings.temperature, settings.min_score, settings.num_ctx) == (11, 0.1, 0.5, 8192)
    origin = provenance(settings, **cli)
    assert origin["top_k"] == "cli"
    assert origin["temperature"] == "env VIMATH_TEMPERATURE"
    assert origin["min_score"] == f"file {config_file}"
    assert origin["num_ctx"] == "default"


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIMATH_TOP_K", "0")
    with pytest.raises(ValueError):
        load_settings()
    monkeypatch.delenv("VIMATH_TOP_K")
    with pytest.raises(ValueError):
        load_settings(retrieval_method="magic")


def test_config_command_prints_every_setting_with_its_origin(config_file: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VIMATH_TOP_K", "9")
    monkeypatch.setenv("VIMATH_TEMPERATURE", "0.1")
    monkeypatch.setenv("VIMATH_TEACHER_PASSWORD", "bi-mat-123")
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert rag_main(["config", "--top-k", "11", "--index", "cli_index", "--num-ctx", "4096"]) == 0
    out = capsys.readouterr().out
    assert "bi-mat-123" not in out
    rows = {}
    for line in out.splitlines():
        match = LINE.match(line)
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} printed twice"
            rows[match.group(1)] = (match.group(2).strip(), match.group(3))
    assert set(rows) == set(Settings.model_fields)
    assert rows["top_k"] == ("11", "cli")
    assert rows["num_ctx"] == ("4096", "cli")
    assert rows["index_dir"] == ("cli_index", "cli")
    assert rows["temperature"] == ("0.1", "env VIMATH_TEMPERATURE")
    assert rows["teacher_password"] == ("(set)", "env VIMATH_TEACHER_PASSWORD")
    assert rows["min_score"] == ("0.5", f"file {config_file}")
    assert rows["ollama_model"] == ("llama-from-file", f"file {config_file}")
    assert rows["collection"] == ("vimath_lessons", "default")
    assert f"ollama (effective) = {DEFAULT_OLLAMA_URL}" in out


def test_effective_ollama_url(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert load_settings().effective_ollama_url() == DEFAULT_OLLAMA_URL
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:12345")
    assert load_settings().effective_ollama_url() == "http://127.0.0.1:12345"
    monkeypatch.setenv("OLLAMA_HOST", "https://ollama.example.test:443")
    assert load_settings().effective_ollama_url() == "https://ollama.example.test:443"
    # The tutor's own setting wins over Ollama's variable.
    assert load_settings(ollama_url="http://127.0.0.1:9999").effective_ollama_url() == "http://127.0.0.1:9999"
    monkeypatch.setenv("VIMATH_OLLAMA_URL", "127.0.0.1:8888")
    assert load_settings().effective_ollama_url() == "http://127.0.0.1:8888"
    monkeypatch.delenv("VIMATH_OLLAMA_URL")
    assert rag_main(["config"]) == 0
    assert "ollama (effective) = https://ollama.example.test:443" in capsys.readouterr().out
