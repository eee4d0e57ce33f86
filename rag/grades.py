"""Which school grade a lesson file belongs to, so a student's search can stay within their grade.

Two sources, the teacher's word first:
1. A `.vimath.toml` file in the file's folder or any folder above it (up to the folder ingested), with `grade = 10`
   (the nearest one wins; `grade = 0` says "no grade" for a folder of shared material). Hidden, so ingestion never
   reads it as a lesson.
2. The folder or file names, deepest first: `lop10/`, `Lớp 10/`, `lop-10`, `khoi10`, `khối 11`, `grade_10`,
   `toan-10-…`, `g12`, or a folder named just `10`.
Unknown stays None, and such material is searched with every grade.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath

import tomllib

from rag.errors import VimathError
from rag.normalize import nfc

SIDECAR = ".vimath.toml"
GRADES = range(1, 13)
_NAMED = re.compile(r"(?:^|[^a-z0-9])(?:(?:lop|khoi|grade|class|toan)[\s_.-]*(1[0-2]|[1-9])|g[\s_.-]?(1[0-2]))(?![0-9])")
_BARE = re.compile(r"^(1[0-2])$")  # a folder named just "10"; "1" is more likely a chapter than a grade


class GradeError(VimathError, ValueError):
    """A sidecar names an impossible grade."""


def _fold(name: str) -> str:
    """Lower case without Vietnamese tone marks ("Lớp 10" → "lop 10", "Khối" → "khoi"); names only, so the
    accents are simply dropped (the BM25 analyzer has its own folding, a layer above)."""
    decomposed = unicodedata.normalize("NFD", nfc(name).lower().replace("đ", "d"))
    return "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")


def grade_from_name(name: str) -> int | None:
    """The grade a single folder or file name states ("lop10", "Lớp 11", "toan-12-hinh"), else None."""
    folded = _fold(PurePosixPath(name).stem if "." in name else name)
    bare = _BARE.match(folded.strip())
    if bare:
        return int(bare.group(1))
    named = _NAMED.search(folded)
    return int(named.group(1) or named.group(2)) if named else None


def grade_from_sidecar(folder: Path) -> tuple[bool, int | None]:
    """(found, grade) from the folder's .vimath.toml; grade None when it says 0 or names no grade."""
    sidecar = folder / SIDECAR
    if not sidecar.is_file():
        return False, None
    try:
        data = tomllib.loads(sidecar.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GradeError(f"{sidecar}: not valid TOML ({exc}); write e.g. grade = 10") from exc
    if "grade" not in data:
        return False, None
    grade = data["grade"]
    if grade == 0:
        return True, None
    if not isinstance(grade, int) or isinstance(grade, bool) or grade not in GRADES:
        raise GradeError(f"{sidecar}: grade must be a whole number from 1 to 12 (or 0 for none), not {grade!r}")
    return True, grade


def infer_grade(path: Path, source: str) -> int | None:
    """The grade of a file stored as `source` (its path relative to the folder ingested), read from disk at `path`."""
    parts = PurePosixPath(source).parts
    root = path
    for _ in parts:
        root = root.parent
    folders = [path.parent]
    while folders[-1] != root and len(folders) <= len(parts):
        folders.append(folders[-1].parent)
    for folder in folders:  # the teacher's sidecar, nearest first
        found, grade = grade_from_sidecar(folder)
        if found:
            return grade
    names = [*reversed(parts), root.name]  # the file, its folders, then the folder ingested itself
    for name in names:
        grade = grade_from_name(name)
        if grade is not None:
            return grade
    return None
