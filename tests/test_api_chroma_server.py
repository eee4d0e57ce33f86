"""The API over a Chroma server: two services (as two API processes would) share one server's index and one log."""
from __future__ import annotations

from pathlib import Path

from api_testing import api_settings
from fake_ollama import FakeOllama
from fastapi.testclient import TestClient
from test_ingest import SMALL, chroma_server, ingest  # noqa: F401  (chroma_server: a real `chroma run`)

from rag.api.app import create_app
from rag.api.keys import KeyStore
from rag.api.service import TutorService
from rag.conversation_log import ConversationLog


def test_two_api_services_share_one_chroma_server_and_one_log(chroma_server: int, lessons_copy: Path, tiny_st_model: Path,  # noqa: F811
                                                              tmp_path: Path) -> None:
    server = {"chroma_host": "127.0.0.1", "chroma_port": chroma_server}
    assert ingest(lessons_copy, "--chroma-host", "127.0.0.1", "--chroma-port", chroma_server, "--embedder", tiny_st_model, "--quiet") == 0
    keys = KeyStore(tmp_path / "keys.json")
    key = keys.add("lms")
    with FakeOllama() as llm:
        settings = api_settings(tmp_path, llm.url, min_score=-1.0, retrieval_method="dense", **server)
        services = [TutorService.open(settings) for _ in range(2)]
        try:
            clients = [TestClient(create_app(s, keys=keys), raise_server_exceptions=False) for s in services]
            for client in clients:
                ready = client.get("/readyz")
                assert ready.status_code == 200 and ready.json()["index"]["ok"] and ready.json()["embedder"]["ok"], ready.text
                found = client.post("/v1/search", json={"question": "đường tiệm cận đứng", "k": 3},
                                    headers={"Authorization": f"Bearer {key}"})
                assert found.status_code == 200, found.text
                hits = found.json()["results"]
                assert 1 <= len(hits) <= 3 and all(h["source"] in SMALL for h in hits)
                asked = client.post("/v1/ask", json={"question": "Tiệm cận đứng là gì?"}, headers={"Authorization": f"Bearer {key}"})
                assert asked.status_code == 200, asked.text
        finally:
            for service in services:
                service.close()
    log = ConversationLog(settings.database_url)
    try:
        assert len(log.exchanges()) == 2  # both services wrote to the one log
    finally:
        log.close()
