"""A long-lived process keeps answering, and sees new content within seconds, while another process ingests.

The searcher threads run here; `python -m ingest` (edit, --prune, --rebuild) runs as a real subprocess on the same
embedded index, as when `streamlit run` (or the API) serves while a teacher re-ingests the lessons.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator

import pytest
from fake_ollama import FakeOllama
from streamlit.testing.v1 import AppTest
from ui_testing import COLLECTION, ROOT, ui_env

from rag.ingestion import IngestJob, discover
from rag.retrieval import Filters, Searcher
from rag.settings import Settings
from rag.workspace import open_index, open_searcher

LESSONS = ROOT / "data" / "lessons"
FILES = ("lop12/04-tiem-can.md", "lop12/03-gtln-gtnn.md")
QUESTIONS = ["Tiệm cận đứng của đồ thị hàm số là gì?", "Cách tìm giá trị lớn nhất của hàm số trên một đoạn",
             "tiem can ngang", "giá trị nhỏ nhất"]
# A section no lesson has: its made-up word can only be found once the edit is ingested.
NEW_WORD = "quasimodulo"
NEW_SECTION = f"\n\n## 9. Định lí {NEW_WORD}\n\nHàm số {NEW_WORD} có tiệm cận xiên khi bậc tử lớn hơn bậc mẫu đúng một đơn vị.\n"
SEEN_WITHIN_S = 10.0
pytestmark = pytest.mark.slow  # three real ingests with the bundled embedder


def settings_for(index_dir: Path, method: str = "hybrid") -> Settings:
    return Settings(index_dir=index_dir, collection=COLLECTION, embedder="bundled", chroma_host=None, retrieval_method=method)


def build(folder: Path) -> tuple[Path, Path]:
    """A two-lesson index under `folder`, built in this process; returns (lessons, index folder)."""
    lessons, index_dir = folder / "lessons", folder / "index"
    for name in FILES:
        (lessons / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(LESSONS / name, lessons / name)
    index, embeddings = open_index(settings_for(index_dir), announce=False)
    files, _ = discover([lessons])
    assert IngestJob(index, embeddings).run(files).counts()["added"] == len(FILES)
    return lessons, index_dir


def ingest(lessons: Path, index_dir: Path, *flags: str) -> None:
    """`python -m ingest` in another process, as a teacher runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "ingest", str(lessons), "--index", str(index_dir), "--collection",
                           COLLECTION, "--embedder", "bundled", "--quiet", *flags], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr


class Students:
    """Threads asking questions through the searchers in a loop, keeping every error."""

    def __init__(self, searchers: list[Searcher], threads: int = 4) -> None:
        self.searchers = searchers
        self.errors: list[str] = []
        self.asked = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(n,), daemon=True) for n in range(threads)]

    def _loop(self, n: int) -> None:
        turn = n
        while not self._stop.is_set():
            searcher = self.searchers[turn % len(self.searchers)]
            try:
                searcher.search(QUESTIONS[turn % len(QUESTIONS)], 5)
                self.asked += 1
            except Exception:  # every error counts, whatever its type
                self.errors.append(traceback.format_exc())
            turn += 1

    def __enter__(self) -> Students:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def seen_within(check: Callable[[], bool], seconds: float = SEEN_WITHIN_S) -> float | None:
    """Seconds until `check()` held, or None if it did not within `seconds`."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if check():
            return time.monotonic() - started
        time.sleep(0.2)
    return None


@pytest.fixture
def live(tmp_path: Path) -> tuple[Path, Path]:
    return build(tmp_path)


def test_searchers_keep_answering_and_follow_edit_prune_and_rebuild_by_another_process(live: tuple[Path, Path]) -> None:
    lessons, index_dir = live
    dense = open_searcher(settings_for(index_dir, "dense"), announce=False)
    hybrid = open_searcher(settings_for(index_dir, "hybrid"), announce=False)
    new_text = f"Định lí {NEW_WORD}: hàm số {NEW_WORD} có tiệm cận xiên khi bậc tử lớn hơn bậc mẫu đúng một đơn vị."

    def has_new(searcher: Searcher, query: str, word: str = NEW_WORD) -> bool:
        return any(word in hit.text for hit in searcher.search(query, 5))

    with Students([dense, hybrid]) as students:
        time.sleep(1.0)
        edited = lessons / FILES[0]
        edited.write_text(edited.read_text(encoding="utf-8") + NEW_SECTION, encoding="utf-8")
        ingest(lessons, index_dir)
        assert seen_within(lambda: has_new(hybrid, NEW_WORD)) is not None, "BM25 did not see the edit"
        assert seen_within(lambda: has_new(dense, new_text)) is not None, "dense search did not see the edit"

        (lessons / FILES[1]).unlink()
        ingest(lessons, index_dir, "--prune")
        gone = Filters(source=FILES[1])
        assert seen_within(lambda: not dense.search(QUESTIONS[1], 5, filters=gone)
                           and not hybrid.search(QUESTIONS[1], 5, filters=gone)) is not None, "the pruned file is still found"

        edited.write_text(edited.read_text(encoding="utf-8").replace(NEW_WORD, "ultramodulo"), encoding="utf-8")
        ingest(lessons, index_dir, "--rebuild")
        assert seen_within(lambda: has_new(hybrid, "ultramodulo", "ultramodulo") and not has_new(hybrid, NEW_WORD)) is not None
        time.sleep(1.0)
    assert students.asked > 0
    assert not students.errors, f"{len(students.errors)} errors while another process ingested:\n{students.errors[0]}"


def test_reopening_in_the_same_process_gives_the_new_content(live: tuple[Path, Path]) -> None:
    """What "Nạp lại chỉ mục" does: a searcher opened after another process's ingest sees it (no stale system)."""
    lessons, index_dir = live
    open_searcher(settings_for(index_dir), announce=False).search(QUESTIONS[0], 3)
    edited = lessons / FILES[0]
    edited.write_text(edited.read_text(encoding="utf-8") + NEW_SECTION, encoding="utf-8")
    ingest(lessons, index_dir)
    again = open_searcher(settings_for(index_dir, "dense"), announce=False)
    assert any(NEW_WORD in hit.text for hit in again.search(NEW_SECTION, 3))


@pytest.fixture
def app_env(live: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for name in [n for n in os.environ if n.startswith("VIMATH_")] + ["OLLAMA_HOST"]:
        monkeypatch.delenv(name, raising=False)
    with FakeOllama(reply=lambda messages, options: "Theo tài liệu [1].") as fake:
        values = {**ui_env(live[1], f"sqlite:///{tmp_path / 'log.db'}", fake.url), "VIMATH_EMBEDDER": "bundled"}
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        yield values


def test_the_chat_answers_before_and_after_an_external_ingest(live: tuple[Path, Path], app_env: dict[str, str]) -> None:
    import ui.common
    from rag.conversation_log import ConversationLog

    ui.common.reload_resources()  # this process's cached resources belong to other tests' indexes
    lessons, index_dir = live
    at = AppTest.from_file(str(ROOT / "ui" / "app.py"), default_timeout=120).run()
    at.chat_input[0].set_value(QUESTIONS[0]).run()
    assert not at.exception, at.exception
    edited = lessons / FILES[0]
    edited.write_text(edited.read_text(encoding="utf-8") + NEW_SECTION, encoding="utf-8")
    ingest(lessons, index_dir)  # every chunk of the edited lesson gets a new id: the old ones are gone
    for question in QUESTIONS:  # the session that was open, on the resources this process opened before
        at.chat_input[0].set_value(question).run()
        assert not at.exception, at.exception
    fresh = AppTest.from_file(str(ROOT / "ui" / "app.py"), default_timeout=120).run()  # a new session (no history
    fresh.chat_input[0].set_value(f"Định lí {NEW_WORD} nói gì?").run()  # to condense the question with)
    assert not fresh.exception, fresh.exception
    exchanges = ConversationLog(app_env["VIMATH_DATABASE_URL"]).exchanges()
    assert len(exchanges) == len(QUESTIONS) + 2
    assert {row.status for row in exchanges} <= {"ok", "not_covered"}, [(row.status, row.notice) for row in exchanges]
    newest = max(exchanges, key=lambda row: row.id)
    assert any(NEW_WORD in chunk.heading for chunk in newest.chunks), "the new section is not among the chunks"
    ui.common.reload_resources()
