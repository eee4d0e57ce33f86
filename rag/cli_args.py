"""Command-line flags shared by every CLI, mapped onto settings fields (flags win over env and file)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rag.backends import NAMES
from rag.settings import Settings, load_settings

_FLAGS: dict[str, dict[str, Any]] = {
    "index_dir": {"flags": ["--index"], "type": Path, "metavar": "DIR", "help": "index folder (embedded Chroma)"},
    "embedder": {"flags": ["--embedder"], "help": "auto | bundled | Hugging Face id | model folder"},
    "embed_backend": {"flags": ["--embed-backend"], "choices": NAMES, "help": "what computes the vectors (default auto)"},
    "chroma_host": {"flags": ["--chroma-host"], "metavar": "HOST", "help": "use a Chroma server"},
    "chroma_port": {"flags": ["--chroma-port"], "type": int, "metavar": "PORT"},
    "collection": {"flags": ["--collection"], "metavar": "NAME"},
}


def add_settings_args(parser: argparse.ArgumentParser, *extra: str) -> None:
    """Add the index/embedder flags, plus any other settings fields named in `extra` as --field-name."""
    for name, spec in _FLAGS.items():
        spec = dict(spec)
        parser.add_argument(*spec.pop("flags"), dest=name, default=None, **spec)
    for name in extra:
        if name in _FLAGS:  # already added above, with its own flag name
            continue
        field = Settings.model_fields[name]
        kind = field.annotation if field.annotation in (int, float, str) else str
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=field.description)


def cli_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (None = not given)."""
    return {k: v for k, v in vars(args).items() if k in Settings.model_fields}


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(**cli_values(args))
