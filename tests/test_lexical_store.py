"""The persisted BM25: segmentation without scikit-learn, scores as bm25s's, nothing re-segmented on open, and a
stale, corrupt or missing snapshot rebuilt rather than trusted."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_ingest import chroma_server  # noqa: F401  (a fixture: a real `chroma run`)
from word_backend import WordBackend

import rag.ranking.bm25 as bm25
import rag.ranking.segmenter as segmenter
from rag import mathnorm
from rag.embeddings import E5Embeddings
from rag.index import LessonIndex
from rag.ingestion import IngestJob, discover
from rag.ranking.bm25 import BM25Ranker, analyze, content_key, lexical_index
from rag.ranking.lexical_store import SNAPSHOTS, BM25Matrix
from rag.settings import Settings

LESSONS = Path(__file__).resolve().parents[1] / "data" / "lessons"
QUERY = "giới hạn của dãy số"


def lesson_texts() -> list[str]:
    texts = []
    for path in sorted(LESSONS.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        texts += [text, *(line for line in text.splitlines() if line.strip())]
    return texts


def test_segmenter_gives_pyvi_output_on_every_sample_lesson() -> None:
    from pyvi import ViTokenizer

    texts = lesson_texts() + ["", "   ", "Hàm số đồng biến", "TP.HCM 3,14 a@b.vn http://x.vn ==> ..."]
    assert [segmenter.tokenize(t) for t in texts] == [ViTokenizer.tokenize(t) for t in texts]


def test_scores_read_from_the_matrix_equal_bm25s() -> None:
    import bm25s

    corpus = [analyze(t) for t in lesson_texts()[:120]]
    reference = bm25s.BM25()
    reference.index(corpus, show_progress=False)
    matrix = BM25Matrix.build([str(i) for i in range(len(corpus))], corpus)
    for query in ["đạo hàm của hàm số", "tiem can dung", "xác suất có điều kiện của biến cố", "zzz"]:
        terms = analyze(query)
        expected = reference.get_scores(terms) if any(t in reference.vocab_dict for t in terms) else np.zeros(len(corpus))
        np.testing.assert_allclose(matrix.scores(terms), expected, rtol=1e-6)


@pytest.fixture
def ingested(lessons_copy: Path, tmp_path: Path) -> tuple[LessonIndex, E5Embeddings]:
    """The four small lessons ingested by the real job (which stores terms and publishes the BM25 snapshot)."""
    embeddings = E5Embeddings(WordBackend())
    index = LessonIndex.open(Settings(index_dir=tmp_path / "index", chroma_host=None), embeddings.identity)
    files, _ = discover([lessons_copy])
    IngestJob(index, embeddings).run(files)
    bm25._cache.clear()  # as a new process: nothing in memory
    return index, embeddings


@pytest.fixture
def segmented(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the segmenter is asked to cut, from now on."""
    seen: list[str] = []
    real = segmenter.tokenize

    def spy(text: str) -> str:
        seen.append(text)
        return real(text)

    monkeypatch.setattr(segmenter, "tokenize", spy)
    return seen


def snapshots(index: LessonIndex) -> list[Path]:
    assert index.lexical_dir is not None
    return sorted((index.lexical_dir / SNAPSHOTS).iterdir())


def test_opening_an_unchanged_index_segments_no_chunk(ingested: tuple[LessonIndex, E5Embeddings], segmented: list[str]) -> None:
    index, embeddings = ingested
    ranker = BM25Ranker(index, embeddings)
    assert segmented == []
    assert ranker.rank(QUERY, 3, None)[0].source == "lop11/06-gioi-han-day-so.md"
    assert segmented == [QUERY.lower()]  # the question, and nothing else


def test_a_missing_snapshot_is_rebuilt_from_stored_terms_without_segmenting(
        ingested: tuple[LessonIndex, E5Embeddings], segmented: list[str]) -> None:
    index, _ = ingested
    expected = LexicalIndex_top(index)
    bm25._cache.clear()
    for folder in snapshots(index):
        shutil.rmtree(folder)
    assert LexicalIndex_top(index) == expected
    assert segmented == [QUERY.lower()] * 2
    assert len(snapshots(index)) == 1  # saved again for the next process


def LexicalIndex_top(index: LessonIndex) -> list[tuple[str, float]]:  # noqa: N802
    return lexical_index(index).top(QUERY, 5)


@pytest.mark.parametrize("damage", ["truncated array", "garbage manifest", "no manifest", "foreign key", "wrong ids"])
def test_a_corrupt_snapshot_is_rebuilt_never_trusted(ingested: tuple[LessonIndex, E5Embeddings], damage: str) -> None:
    index, _ = ingested
    expected = LexicalIndex_top(index)
    bm25._cache.clear()
    [folder] = snapshots(index)
    if damage == "truncated array":
        data = (folder / "data.npy").read_bytes()
        (folder / "data.npy").write_bytes(data[: len(data) // 2])
    elif damage == "garbage manifest":
        (folder / "manifest.json").write_text("{not json", encoding="utf-8")
    elif damage == "no manifest":
        (folder / "manifest.json").unlink()
    elif damage == "foreign key":
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        (folder / "manifest.json").write_text(json.dumps({**manifest, "key": "0" * 64}), encoding="utf-8")
    else:
        ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
        (folder / "ids.json").write_text(json.dumps(ids[:-1]), encoding="utf-8")
    assert LexicalIndex_top(index) == expected
    assert bm25.store_of(index).load(folder.name) is not None  # replaced by a whole one


def test_content_changed_by_another_writer_is_never_served_from_the_old_snapshot(
        ingested: tuple[LessonIndex, E5Embeddings], segmented: list[str]) -> None:
    """A chunk written without the store (an older writer, or one killed before publishing) changes the key:
    the old snapshot is not used, and only the new chunk is segmented."""
    index, embeddings = ingested
    before = content_key(index.ids(), index.recorded_embedder())
    text = "Bài 9. Số phức › 1. Định nghĩa\n\nSố phức quasimodulo có dạng $a + bi$."
    index.upsert(["new"], embeddings.encode([text], "passage"), [text], [{"source": "x.md", "chunk_hash": "h-new"}])
    assert content_key(index.ids(), index.recorded_embedder()) != before
    top = lexical_index(index).top("quasimodulo", 3)
    assert [chunk_id for chunk_id, _ in top] == ["new"]
    # only the new chunk (as the analyzer hands it over: math in canonical form) and the question were segmented
    assert segmented == [mathnorm.canonical(text).lower(), "quasimodulo"]


def test_a_half_written_snapshot_left_by_a_killed_writer_is_ignored(ingested: tuple[LessonIndex, E5Embeddings]) -> None:
    index, _ = ingested
    [folder] = snapshots(index)
    leftover = folder.parent / ".tmp-killed"
    leftover.mkdir()
    (leftover / "data.npy").write_bytes(b"\x93NUMPY")  # a writer killed mid-way never renamed it into place
    bm25._cache.clear()
    assert LexicalIndex_top(index)
    assert snapshots(index)[0] == leftover  # still there (swept after an hour), never read


def test_ingest_stores_terms_so_a_re_ingest_segments_only_changed_chunks(
        ingested: tuple[LessonIndex, E5Embeddings], lessons_copy: Path, segmented: list[str]) -> None:
    index, embeddings = ingested
    edited = lessons_copy / "lop12/04-tiem-can.md"
    edited.write_text(edited.read_text(encoding="utf-8") + "\n\n## 9. Thêm\n\nMột đoạn mới về tiệm cận xiên.\n", encoding="utf-8")
    files, _ = discover([lessons_copy])
    IngestJob(index, embeddings).run(files)
    assert segmented and all("tiệm cận xiên" in text for text in segmented)  # the new chunk(s) only


def test_a_replica_of_a_chroma_server_keeps_its_own_bm25_in_step(chroma_server: int, lessons_copy: Path, tmp_path: Path,  # noqa: F811
                                                                  monkeypatch: pytest.MonkeyPatch, segmented: list[str]) -> None:
    """Over a server there is no marker file: the replica's copy lives in its cache folder, keyed by server and
    collection, and is checked against the server's content (every FRESHNESS_S)."""
    monkeypatch.setenv("VIMATH_CACHE_DIR", str(tmp_path / "replica-cache"))
    monkeypatch.setattr(bm25, "FRESHNESS_S", 0.0)
    settings = Settings(chroma_host="127.0.0.1", chroma_port=chroma_server)
    embeddings = E5Embeddings(WordBackend())
    writer = LessonIndex.open(settings, embeddings.identity)
    files, _ = discover([lessons_copy])
    IngestJob(writer, embeddings).run(files)
    assert writer.lexical_dir is not None and writer.lexical_dir.is_relative_to(tmp_path / "replica-cache")
    bm25._cache.clear()
    segmented.clear()
    reader = BM25Ranker(LessonIndex.open(settings, embeddings.identity, create=False), embeddings)
    assert segmented == []  # the snapshot in the cache folder matched the server's content
    text = "Bài 9. Số phức › 1. Định nghĩa\n\nSố phức quasimodulo có dạng $a + bi$."
    writer.upsert(["new"], embeddings.encode([text], "passage"), [text], [{"source": "x.md", "chunk_hash": "h-new"}])
    assert [h.id for h in reader.rank("quasimodulo", 3, None)] == ["new"]


def test_search_profile_prints_each_stage(ingested: tuple[LessonIndex, E5Embeddings], monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import rag.profiling
    import rag.workspace
    from rag.__main__ import main

    index, embeddings = ingested
    monkeypatch.setattr(rag.workspace, "load_embeddings", lambda *a, **k: embeddings)
    monkeypatch.setattr(rag.profiling, "_stages", None)  # profiling is per process: start from off
    assert main(["search", QUERY, "--json", "--index", str(index.settings.index_dir), "--profile"]) == 0
    err = capsys.readouterr().err
    stages = [line.split()[1] for line in err.splitlines() if line.startswith("profile:")]
    assert stages == ["import", "index", "model", "lexical", "query", "total"], err
    assert "peak RSS" in err
