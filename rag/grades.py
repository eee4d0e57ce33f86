"""Which school grade a lesson file belongs to, so a student's search can stay within their grade.

Two sources, the teacher's word first:
1. A `.vimath.toml` file in the file's folder or any folder above it (up to the folder ingested), with `grade = 10`
   (the nearest one wins; `grade = 0` says "no grade" for a folder of shared material). Hidden, so ingestion never
   reads it as a lesson.
2. The folder or file names, deepest first: `lop10/`, `Lớp 10/`, `lop-10`, `khoi10`, `khối 11`, `grade_10`,
   `toan-10-…`, `g12`, or a folder named just `10`.
Unknown stays None, and such material is searched with every grade.
The same sidecar may name the textbook series (`book = "…"`, rag/books.py), which reads it and walks the folders
through the helpers here.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath
from typing import Any, Callable, TypeVar

import tomllib

from rag.errors import VimathError
from rag.normalize import nfc

T = TypeVar("T")
SIDECAR = ".vimath.toml"
GRADES = range(1, 13)
_NAMED = re.compile(r"(?:^|[^a-z0-9])(?:(?:lop|khoi|grade|class|toan)[\s_.-]*(1[0-2]|[1-9])|g[\s_.-]?(1[0-2]))(?![0-9])")
_BARE = re.compile(r"^(1[0-2])$")  # a folder named just "10"; "1" is more likely a chapter than a grade


class SidecarError(VimathError, ValueError):
    """A `.vimath.toml` sidecar cannot be used (ingestion reports the file it covers as failed, with this message)."""


class GradeError(SidecarError):
    """A sidecar names an impossible grade."""


def fold_name(name: str) -> str:
    """Lower case without Vietnamese tone marks ("Lớp 10" → "lop 10", "Khối" → "khoi"); names only, so the
    accents are simply dropped (the BM25 analyzer has its own folding, a layer above)."""
    decomposed = unicodedata.normalize("NFD", nfc(name).lower().replace("đ", "d"))
    return "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")


def grade_from_name(name: str) -> int | None:
    """The grade a single folder or file name states ("lop10", "Lớp 11", "toan-12-hinh"), else None."""
    folded = fold_name(PurePosixPath(name).stem if "." in name else name)
    bare = _BARE.match(folded.strip())
    if bare:
        return int(bare.group(1))
    named = _NAMED.search(folded)
    return int(named.group(1) or named.group(2)) if named else None


def sidecar_value(folder: Path, key: str, error: type[SidecarError], example: str) -> tuple[bool, Any]:
    """(found, value) of `key` in the folder's .vimath.toml, the value as TOML gave it (the caller validates it);
    `error` and `example` make an unreadable sidecar an error that says what to write (e.g. `grade = 10`)."""
    sidecar = folder / SIDECAR
    if not sidecar.is_file():
        return False, None
    try:
        data = tomllib.loads(sidecar.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{sidecar}: not valid TOML ({exc}); write e.g. {example}") from exc
    return (True, data[key]) if key in data else (False, None)


def grade_from_sidecar(folder: Path) -> tuple[bool, int | None]:
    """(found, grade) from the folder's .vimath.toml; grade None when it says 0 or names no grade."""
    found, grade = sidecar_value(folder, "grade", GradeError, "grade = 10")
    if not found:
        return False, None
    if grade == 0:
        return True, None
    if not isinstance(grade, int) or isinstance(grade, bool) or grade not in GRADES:
        raise GradeError(f"{folder / SIDECAR}: grade must be a whole number from 1 to 12 (or 0 for none), not {grade!r}")
    return True, grade


def sidecar_folders(path: Path, source: str) -> list[Path]:
    """The folders whose sidecar may speak for a file stored as `source` (its path relative to the folder ingested)
    and read from disk at `path`: its own folder first, up to the folder ingested."""
    parts = PurePosixPath(source).parts
    root = ingested_folder(path, source)
    folders = [path.parent]
    while folders[-1] != root and len(folders) <= len(parts):
        folders.append(folders[-1].parent)
    return folders


def ingested_folder(path: Path, source: str) -> Path:
    """The folder ingested, from a file's path on disk and its stored name."""
    root = path
    for _ in PurePosixPath(source).parts:
        root = root.parent
    return root


def names_deepest_first(path: Path, source: str) -> list[str]:
    """The file's name, its folders' names, then the folder ingested's own name: where names may state a scope."""
    return [*reversed(PurePosixPath(source).parts), ingested_folder(path, source).name]


def infer_scope(path: Path, source: str, from_sidecar: Callable[[Path], tuple[bool, T | None]],
                from_name: Callable[[str], T | None]) -> T | None:
    """What the teacher's sidecar says, nearest first, else what the names say, deepest first (a grade, a book)."""
    for folder in sidecar_folders(path, source):
        found, value = from_sidecar(folder)
        if found:
            return value
    for name in names_deepest_first(path, source):
        value = from_name(name)
        if value is not None:
            return value
    return None


def infer_grade(path: Path, source: str) -> int | None:
    """The grade of a file stored as `source` (its path relative to the folder ingested), read from disk at `path`."""
    return infer_scope(path, source, grade_from_sidecar, grade_from_name)
