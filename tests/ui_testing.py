"""Shared by the UI tests: one small lesson index per test session, built with the bundled embedder."""
from __future__ import annotations

from pathlib import Path

from rag.ingestion import IngestJob, discover
from rag.settings import Settings
from rag.workspace import open_index

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "data" / "lessons"
# Three short lessons keep the build well under a minute on two cores.
LESSON_FILES = ("lop12/01-tinh-don-dieu.md", "lop12/04-tiem-can.md", "lop12/08-tich-phan.md")
COLLECTION = "vimath_ui_test"


def build_test_index(folder: Path) -> Path:
    """Build the index under `folder` unless an earlier test module of this session already did; returns its path."""
    index_dir, done = folder / "index", folder / "built"
    if done.exists():
        return index_dir
    settings = Settings(index_dir=index_dir, embedder="bundled", collection=COLLECTION, chroma_host=None)
    index, embeddings = open_index(settings, announce=False)
    files, _ = discover([LESSONS / name for name in LESSON_FILES])
    report = IngestJob(index, embeddings).run(files)
    assert report.counts()["added"] == len(LESSON_FILES), report.summary()
    done.write_text(report.summary(), encoding="utf-8")
    return index_dir


def ui_env(index_dir: Path, database_url: str, ollama_url: str) -> dict[str, str]:
    """The VIMATH_* variables that point the app at the test index, log and (fake) Ollama."""
    return {
        "VIMATH_INDEX_DIR": str(index_dir),
        "VIMATH_COLLECTION": COLLECTION,
        "VIMATH_DATABASE_URL": database_url,
        "VIMATH_OLLAMA_URL": ollama_url,
        "VIMATH_CONFIG": str(index_dir.parent / "no-config.toml"),
        "HF_HUB_OFFLINE": "1",
    }
