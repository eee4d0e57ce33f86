"""Which textbook series ("bộ sách") a lesson file follows, so a student's search can stay within their book.

As for grades (rag/grades.py), two sources, the teacher's word first:
1. A `.vimath.toml` file in the file's folder or any folder above it (up to the folder ingested), with
   `book = "Kết nối tri thức với cuộc sống"` (the nearest one wins; `book = ""` says "no book" for a folder of shared
   material). A value that names one of the three national series, however written ("kntt", "Cánh Diều"), is
   stored under the series' full name, so one series never splits in two.
2. The folder or file names, deepest first, without tone marks and on word boundaries: "Kết nối tri thức",
   `ket-noi-tri-thuc`, `KNTT_lop10`; "Chân trời sáng tạo", `chan-troi-sang-tao`, `ctst`; "Cánh diều", `canh-dieu`.
Unknown stays None, and such material is searched with every book.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Iterable

from rag.grades import SIDECAR, SidecarError, fold_name, infer_scope, sidecar_value
from rag.normalize import nfc

KET_NOI = "Kết nối tri thức với cuộc sống"
CHAN_TROI = "Chân trời sáng tạo"
CANH_DIEU = "Cánh diều"
SERIES = (KET_NOI, CHAN_TROI, CANH_DIEU)

_SEP = r"[\s_.-]*"
# The series' names as folded (rag.grades.fold_name) and their usual abbreviations.
_SERIES_PATTERNS = (
    (KET_NOI, rf"ket{_SEP}noi{_SEP}tri{_SEP}thuc(?:{_SEP}voi{_SEP}cuoc{_SEP}song)?|kntt"),
    (CHAN_TROI, rf"chan{_SEP}troi{_SEP}sang{_SEP}tao|ctst"),
    (CANH_DIEU, rf"canh{_SEP}dieu"),
)
# Letters on neither side, so that "kntt" inside another word is not the series; digits and separators may touch
# it ("kntt10", "KNTT_lop10"). Not \b: "_" is a word character.
_IN_NAME = [(book, re.compile(rf"(?<![a-z])(?:{pattern})(?![a-z])")) for book, pattern in _SERIES_PATTERNS]
_WHOLE = [(book, re.compile(rf"(?:{pattern})")) for book, pattern in _SERIES_PATTERNS]


class BookError(SidecarError):
    """A sidecar's book is not text, or a book asked for is not in the index."""


def book_from_name(name: str) -> str | None:
    """The series a single folder or file name states ("KNTT_lop10", "Kết-nối-tri-thức", "canh-dieu.md"), else None."""
    folded = fold_name(PurePosixPath(name).stem if "." in name else name)
    for book, pattern in _IN_NAME:
        if pattern.search(folded):
            return book
    return None


def canonical_book(value: str) -> str | None:
    """A book name as stored: NFC and stripped, a series' full name when it names one whole ("KNTT", "cánh diều");
    None when empty."""
    value = " ".join(nfc(value).split())
    if not value:
        return None
    folded = fold_name(value)
    return next((book for book, pattern in _WHOLE if pattern.fullmatch(folded)), value)


def book_from_sidecar(folder: Path) -> tuple[bool, str | None]:
    """(found, book) from the folder's .vimath.toml; book None when it says "" (shared material)."""
    found, book = sidecar_value(folder, "book", BookError, 'book = "Kết nối tri thức với cuộc sống"')
    if not found:
        return False, None
    if not isinstance(book, str):
        raise BookError(f'{folder / SIDECAR}: book must be text in quotes, e.g. book = "{KET_NOI}" '
                        f'(or book = "" for none), not {book!r}')
    return True, canonical_book(book)


def infer_book(path: Path, source: str) -> str | None:
    """The book of a file stored as `source` (its path relative to the folder ingested), read from disk at `path`."""
    return infer_scope(path, source, book_from_sidecar, book_from_name)


def _key(name: str) -> str:
    return " ".join(nfc(name).split()).casefold()


def resolve_book(name: str, books: Iterable[str]) -> str:
    """The index's book that `name` means: the same after NFC and case-folding, else the series `name` abbreviates
    ("kntt"); an unknown name is an error that lists the books the index has."""
    known = sorted(set(books))
    wanted = _key(name)
    for book in known:
        if _key(book) == wanted:
            return book
    series = canonical_book(name) or ""
    if series in known:
        return series
    if not known:
        raise BookError(f"no book {nfc(name)!r}: the index has no material with a book (a folder named e.g. "
                        f'"ket-noi-tri-thuc", or book = "…" in its {SIDECAR}, gives one; ingest again after)')
    raise BookError(f"no book {nfc(name)!r} in the index; it has: " + "; ".join(known))


def same_book(a: str | None, b: str | None) -> bool:
    """Whether two book names (as written in a file or on a command line) mean the same book."""
    if a is None or b is None:
        return a is b
    return _key(canonical_book(a) or "") == _key(canonical_book(b) or "")

