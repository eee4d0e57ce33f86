"""The index follows writes made through another client (another process's, in effect): the generation marker,
the reopen on a fresh Chroma system, the one retry on a stale-view error, and an embedder change."""
from __future__ import annotations

from pathlib import Path

import pytest
from chromadb.errors import InternalError
from word_backend import WordBackend

from rag.embeddings import E5Embeddings, EmbedderIdentity
from rag.index import GENERATION_FILE, LessonIndex, generation_stamp
from rag.settings import Settings

TEXT = "Bài 1. Hàm số › 1. Đạo hàm\n\nĐạo hàm của hàm hợp."


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(index_dir=tmp_path / "index", chroma_host=None)


@pytest.fixture
def embeddings() -> E5Embeddings:
    return E5Embeddings(WordBackend())


def write(index: LessonIndex, embeddings: E5Embeddings, chunk_id: str, text: str = TEXT) -> None:
    index.upsert([chunk_id], embeddings.encode([text], "passage"), [text], [{"source": "a.md", "chunk_hash": chunk_id}])


def test_every_write_replaces_the_marker_and_a_reader_reopens_on_the_next_read(settings: Settings, embeddings: E5Embeddings) -> None:
    reader = LessonIndex.open(settings, embeddings.identity)
    writer = LessonIndex.open(settings, embeddings.identity)
    before = generation_stamp(settings.index_dir)
    write(writer, embeddings, "one")
    assert (settings.index_dir / GENERATION_FILE).exists() and generation_stamp(settings.index_dir) != before
    assert reader.changed_elsewhere() and not writer.changed_elsewhere()  # the writer has seen its own write
    hits = reader.search(embeddings.embed_query("đạo hàm"), 3)
    assert [h.id for h in hits] == ["one"]
    assert reader.generation == 1 and not reader.changed_elsewhere()
    writer.delete_ids(["one"])
    assert reader.search(embeddings.embed_query("đạo hàm"), 3) == []


def test_a_client_opened_after_another_process_wrote_reads_the_files_afresh(settings: Settings, embeddings: E5Embeddings) -> None:
    """Chroma hands every client of a path the process's cached system; once the marker moved, it must not."""
    from rag.index import bump_generation, make_client

    first = make_client(settings)
    assert make_client(settings) is first
    bump_generation(settings.index_dir)  # what another process's write does
    fresh = make_client(settings)
    assert fresh is not first and fresh._server is not first._server  # a new Rust engine, reading the files anew


def test_a_stale_view_error_is_retried_once_on_a_fresh_client(settings: Settings, embeddings: E5Embeddings,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    index = LessonIndex.open(settings, embeddings.identity)
    write(index, embeddings, "one")
    failures = iter([InternalError("Error finding id")])

    def flaky(collection: object, *args: object, **kwargs: object) -> object:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(collection, *args, **kwargs)

    real = type(index.collection).query
    monkeypatch.setattr(type(index.collection), "query", flaky)
    assert [h.id for h in index.search(embeddings.embed_query("đạo hàm"), 3)] == ["one"]
    assert index.generation >= 1  # it reopened before the retry
    failures = iter([InternalError("Error finding id"), InternalError("Error finding id")])
    with pytest.raises(InternalError):  # a lasting failure is not hidden
        index.search(embeddings.embed_query("đạo hàm"), 3)


def test_a_rebuild_with_another_embedder_is_noticed(settings: Settings, embeddings: E5Embeddings) -> None:
    reader = LessonIndex.open(settings, embeddings.identity)
    write(reader, embeddings, "one")
    assert not reader.embedder_changed()
    other = EmbedderIdentity(spec="test-words-2", name="other words", revision="1", dimension=64)
    rebuilt = LessonIndex.open(settings, other, rebuild=True)
    write(rebuilt, embeddings, "two")
    assert not reader.embedder_changed()  # not live until committed
    rebuilt.commit()
    assert reader.embedder_changed()
