"""A damaged chroma.sqlite3: one line that says how to rebuild, and --rebuild that sets the damaged folder aside."""
from __future__ import annotations

from pathlib import Path

import pytest

from ingest.__main__ import main as ingest_main
from rag.__main__ import main as rag_main
from rag.index import REBUILD_COMMAND, IndexDamaged, LessonIndex, make_client
from rag.settings import Settings, load_settings

LESSON = "lop12/04-tiem-can.md"


@pytest.fixture
def damaged(tmp_path: Path, tiny_st_model: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A real small index whose chroma.sqlite3 was then overwritten with garbage."""
    monkeypatch.chdir(tmp_path)
    lessons = tmp_path / "lessons"
    (lessons / "lop12").mkdir(parents=True)
    (lessons / LESSON).write_bytes((Path(__file__).resolve().parents[1] / "data" / "lessons" / LESSON).read_bytes())
    index_dir = tmp_path / "index"
    assert ingest_main([str(lessons), "--index", str(index_dir), "--embedder", str(tiny_st_model), "--quiet"]) == 0
    (index_dir / "chroma.sqlite3").write_bytes(b"this is not a database\n" * 512)
    return load_settings(index_dir=index_dir, embedder=str(tiny_st_model))


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_library_raises_index_damaged_every_time(damaged: Settings) -> None:
    for _ in range(2):  # the second open must not meet chromadb's half-started cached store
        with pytest.raises(IndexDamaged, match="damaged") as caught:
            make_client(damaged)
        assert REBUILD_COMMAND in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(IndexDamaged):
        LessonIndex.open(damaged, identity=None, create=False)  # type: ignore[arg-type]  # fails before it is used


def test_search_and_ingest_say_it_in_one_line(damaged: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rag_main(["search", "tiệm cận đứng", "--index", str(damaged.index_dir)]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "damaged" in line and f"{REBUILD_COMMAND} --index {damaged.index_dir}" in line
    assert ingest_main([str(tmp_path / "lessons"), "--index", str(damaged.index_dir), "--embedder", damaged.embedder, "--quiet"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "damaged" in line and "--rebuild" in line


def test_rebuild_sets_the_damaged_index_aside_and_builds_a_new_one(damaged: Settings, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = ingest_main([str(tmp_path / "lessons"), "--index", str(damaged.index_dir), "--embedder", damaged.embedder,
                        "--rebuild", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("index.damaged-")]
    assert str(aside) in err
    assert (aside / "chroma.sqlite3").read_bytes().startswith(b"this is not a database")  # kept, not deleted
    assert rag_main(["search", "tiệm cận đứng", "--json", "--index", str(damaged.index_dir)]) == 0
    assert LESSON in capsys.readouterr().out
