"""The conversation log on a real PostgreSQL, as several API processes share it: an older log gains the `client`
column while two writers open it at once. Skipped where no PostgreSQL server binaries are installed."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from fake_ollama import free_port

from rag.answering import Answer
from rag.conversation_log import ConversationLog
from rag.index import Hit

BINARIES = ("initdb", "pg_ctl", "postgres")
pytestmark = pytest.mark.skipif(not all(shutil.which(b) for b in BINARIES), reason="no PostgreSQL server binaries")


def as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture
def postgres_url() -> Iterator[str]:
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is an extra: pip install -e .[postgres]")
    # Its own folder under /tmp: pytest's folders are private to root, and the server may run as `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="vimath-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    run = {"check": True, "capture_output": True, "cwd": folder}
    try:
        subprocess.run(as_postgres(["initdb", "-D", str(data), "-U", "vimath", "--auth=trust", "-E", "UTF8"]), **run)
        subprocess.run(as_postgres(["pg_ctl", "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"]), **run)
        yield f"postgresql+psycopg://vimath@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_postgres(["pg_ctl", "-D", str(data), "-m", "immediate", "stop"]), capture_output=True, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


def answer(question: str) -> Answer:
    hit = Hit("c1", "Định lí côsin: $a^2 = b^2 + c^2 - 2bc\\cos A$.", {"source": "lop10/05.md", "heading_path": "Bài 5"}, 0.9)
    return Answer(question=question, standalone_question=question, text="Theo định lí côsin [1].", retrieved=[hit], cited=[1])


def test_two_writers_upgrade_and_share_an_old_log(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:  # the exchanges table as the first release created it, with one exchange
        db.execute(sa.text("CREATE TABLE exchanges (id SERIAL PRIMARY KEY, conversation_id VARCHAR(64), "
                           "created_at TIMESTAMP, question TEXT, standalone_question TEXT, answer_text TEXT, "
                           "status VARCHAR(32), notice TEXT, model VARCHAR(200), prompt_version VARCHAR(200), "
                           "timings JSON, details JSON, best_score FLOAT)"))
        db.execute(sa.text("INSERT INTO exchanges (conversation_id, created_at, question, standalone_question, "
                           "answer_text, status, notice, model, prompt_version, timings, details, best_score) VALUES "
                           "('c0', now(), 'cũ', 'cũ', '', 'ok', '', 'm', 'p', '{}', '{}', 0.5)"))
    engine.dispose()
    logs: list[ConversationLog] = []
    failures: list[BaseException] = []

    def open_log() -> None:
        try:
            logs.append(ConversationLog(postgres_url))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=open_log) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and len(logs) == 2
    first = logs[0].record("a", answer("Định lí côsin?"), client="moodle")
    second = logs[1].record("b", answer("Định lí sin?"), client="zalo-bot")
    for log in logs:
        rows = {r.question: r for r in log.exchanges()}
        assert {q: r.client for q, r in rows.items()} == {"cũ": None, "Định lí côsin?": "moodle", "Định lí sin?": "zalo-bot"}
        assert rows["Định lí sin?"].id == second and rows["Định lí côsin?"].id == first
        assert [c.cited for c in rows["Định lí sin?"].chunks] == [True]
        log.close()
