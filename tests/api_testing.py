"""What the API tests share: a service over fixed chunks, keys, and a uvicorn server on a thread."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from fake_ollama import free_port

from rag.api.app import create_app
from rag.api.keys import KeyStore
from rag.api.service import TutorService
from rag.conversation_log import ConversationLog
from rag.index import Hit
from rag.settings import Settings

CHUNKS = [
    ("lop12/01-tinh-don-dieu.md", "Bài 1. Tính đơn điệu", 3,
     "Định nghĩa 1. Hàm số $f$ đồng biến trên $K$ nếu $x_1 < x_2$ kéo theo $f(x_1) < f(x_2)$."),
    ("lop12/01-tinh-don-dieu.md", "Bài 1. Tính đơn điệu › Định lí", 4,
     "Định lí 1. Nếu $f'(x) > 0$ với mọi $x \\in K$ thì hàm số đồng biến trên $K$."),
    ("lop12/02-cuc-tri.md", "Bài 2. Cực trị", None,
     "Định nghĩa. Điểm $x_0$ là điểm cực đại của $f$ nếu $f(x) < f(x_0)$ gần $x_0$."),
]
CITING_REPLY = "Hàm số đồng biến khi $f'(x) > 0$ trên $K$ [2], theo định nghĩa [1]."


class ListRanker:
    """Fixed chunks, best first, with the filters applied; records every query it was asked."""

    def __init__(self, score: float = 0.9, fail: bool = False) -> None:
        self.hits = [Hit(f"id{i}", text, {"source": src, "heading_path": heading, "lesson": heading.split(" › ")[0],
                                          "chunk_hash": f"h{i}", "rrf": 0.03 - i * 0.001, **({"page": page} if page else {})},
                         score - i * 0.01)
                     for i, (src, heading, page, text) in enumerate(CHUNKS)]
        self.queries: list[str] = []
        self.fail = fail

    def rank(self, query: str, k: int, where: dict[str, Any] | None) -> list[Hit]:
        self.queries.append(query)
        if self.fail:
            raise RuntimeError("secret internal detail /srv/index")
        hits = self.hits
        if where and "source" in where:
            hits = [h for h in hits if h.metadata["source"] == where["source"]]
        return hits[:k]


def api_settings(tmp_path: Path, ollama_url: str, **extra: Any) -> Settings:
    return Settings(**{"ollama_url": ollama_url, "min_score": 0.5, "top_k": 3, "llm_timeout_s": 5.0,
                       "database_url": f"sqlite:///{tmp_path / 'log.db'}", "api_keys_file": tmp_path / "keys.json",
                       **extra})


def make_app(settings: Settings, ranker: ListRanker | None = None, *, auth_required: bool = True):
    service = TutorService.over(settings, ranker or ListRanker(), ConversationLog(settings.database_url))
    return create_app(service, auth_required=auth_required, keys=KeyStore(settings.api_keys_file))


class LiveServer:
    """The app under a real uvicorn on 127.0.0.1, on a thread of this process."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def sse_events(lines: Any) -> list[tuple[str | None, str]]:
    """(event, data) pairs from the lines of a Server-Sent Events body."""
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    data: list[str] = []
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            events.append((name, "\n".join(data)))
            name, data = None, []
    if data:
        events.append((name, "\n".join(data)))
    return events
