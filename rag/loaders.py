"""Loading lesson files (Markdown, plain text, PDF, DOCX) into NFC text, refusing what would become mojibake."""
from __future__ import annotations

import codecs
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rag.errors import VimathError
from rag.normalize import nfc

# Characters that TCVN3 (ABC) bytes turn into when read as Windows-1258: a sign of pre-Unicode Vietnamese fonts.
_LEGACY_FONT_MARKS = set("µ¸¶·¹¨©ª«¬®¾»¼½ÆÇ¦§¥¤")
# VNI Windows writes a Vietnamese letter as a base letter plus Latin-1 "mark" bytes (đ = ñ, ư = ö, huyền = ø, nặng = ï,
# hỏi = û...). These are the ones that are no Vietnamese letters, so genuine text has them only in foreign names.
_VNI_MARKS = set("ñÑöÖøØûÛïÏåÅäÄëËüÜæÆîÎ")
# Legacy-font text has them in 6–20 % of its letters (the 40 sample lessons converted); genuine text in ~0 %.
_LEGACY_MIN_SHARE = 0.02
_CONVERT_HINT = "convert it to Unicode (e.g. Unikey's converter: Unikey → Công cụ, source {name}, target Unicode) and save as UTF-8"
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


class LoadError(VimathError, ValueError):
    """A file that cannot be ingested; the message says why and what to do."""


@dataclass(frozen=True)
class Page:
    """Text of one page (PDF) or of the whole file (page is None)."""

    text: str
    page: int | None = None


@dataclass(frozen=True)
class LoadedDocument:
    """A lesson file's text, NFC, split into pages where the format has them."""

    path: Path
    kind: str
    pages: tuple[Page, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(p.text for p in self.pages)


def load(path: Path) -> LoadedDocument:
    """Load one file; raises LoadError with a readable reason for anything unusable."""
    suffix = path.suffix.lower()
    if suffix not in LOADERS:
        raise LoadError(f"unsupported file type {suffix or '(none)'}; use {', '.join(SUFFIXES)}")
    try:
        pages = LOADERS[suffix](path)
    except OSError as exc:
        raise LoadError(f"cannot read file: {exc.strerror or exc}") from exc
    pages = tuple(p for p in pages if p.text.strip())
    check_not_legacy_font("\n".join(p.text for p in pages))
    if not pages:
        raise LoadError("no text in file (empty" + (", or a scanned PDF without a text layer: run OCR first)" if suffix == ".pdf" else ")"))
    return LoadedDocument(path=path, kind=suffix.lstrip("."), pages=pages)


def decode_text(data: bytes) -> str:
    """Bytes of a text file as NFC str: UTF-8/16/32 with BOM, UTF-8, or Windows-1258."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _clean(data.decode(encoding, errors="strict"))
    if b"\x00" in data:
        raise LoadError("binary file (contains NUL bytes); UTF-16 text needs a byte-order mark")
    try:
        return _clean(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    try:
        text = nfc(data.decode("cp1258"))
    except UnicodeDecodeError as exc:
        raise LoadError("not UTF-8 nor Windows-1258 text; save it as UTF-8") from exc
    if sum(ch in _LEGACY_FONT_MARKS for ch in text) >= 3:
        raise LoadError(f"looks like the pre-Unicode Vietnamese font encoding TCVN3 (ABC); {_CONVERT_HINT.format(name='TCVN3 (ABC)')}")
    check_not_legacy_font(text)
    stray_marks = sum(unicodedata.category(ch) == "Mn" for ch in text)
    if stray_marks > max(2, len(text) // 200):
        raise LoadError("not UTF-8, and not valid Vietnamese Windows-1258 either; save it as UTF-8")
    return _clean(text)


def check_not_legacy_font(text: str) -> None:
    """Refuse text typed with a pre-Unicode Vietnamese font (VNI, TCVN3): it decodes without error into mojibake.

    Applies to every format, since a DOCX or PDF typed with a VNI-Times or .VnTime font holds the same characters."""
    letters = sum(ch.isalpha() for ch in text)
    for name, marks in (("VNI Windows", _VNI_MARKS), ("TCVN3 (ABC)", _LEGACY_FONT_MARKS - {"·"})):  # "·" is also math
        found = sum(ch in marks for ch in text)
        if found >= 3 and found >= _LEGACY_MIN_SHARE * letters:
            raise LoadError(f"looks like the pre-Unicode Vietnamese font encoding {name}; {_CONVERT_HINT.format(name=name)}")


def _clean(text: str) -> str:
    text = nfc(text.replace("\r\n", "\n").replace("\r", "\n"))
    controls = sum(unicodedata.category(ch) == "Cc" and ch not in "\n\t\f" for ch in text)
    if controls > max(2, len(text) // 100):
        raise LoadError("binary file (control characters), not text")
    return text


def _pdf_pages(path: Path) -> tuple[Page, ...]:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, PyPdfError

    try:
        reader = PdfReader(path)
        # A PDF with only an owner password (printing/copying restricted) opens with the empty user password.
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError("the PDF needs a password to open; save an unprotected copy (open it, then print to PDF "
                            "or remove the password in the PDF tool) and ingest that")
        return tuple(Page(_clean(page.extract_text() or ""), number) for number, page in enumerate(reader.pages, start=1))
    except LoadError:
        raise
    except DependencyError as exc:
        raise LoadError(f"cannot decrypt this PDF: {exc}; install the project's dependencies again (pip install -e .)") from exc
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LoadError(f"corrupt or unreadable PDF ({type(exc).__name__}: {exc})") from exc


def _text_pages(path: Path) -> tuple[Page, ...]:
    return (Page(decode_text(path.read_bytes())),)


def _docx_pages(path: Path) -> tuple[Page, ...]:
    return (Page(_docx_text(path)),)


def _docx_text(path: Path) -> str:
    import docx

    try:
        document = docx.Document(str(path))
    except Exception as exc:  # BadZipFile, PackageNotFoundError, lxml and KeyError share no narrower base
        raise LoadError(f"corrupt or unreadable DOCX ({type(exc).__name__}); open and re-save it in Word") from exc
    lines = [_docx_line(p.style.name if p.style is not None else "", p.text) for p in document.paragraphs]
    for table in document.tables:
        lines.extend(" | ".join(cell.text for cell in row.cells) for row in table.rows)
    return _clean("\n\n".join(line for line in lines if line.strip()))


def _docx_line(style: str, text: str) -> str:
    """A DOCX paragraph as Markdown, so headings steer the chunker as in .md files."""
    if style == "Title":
        return f"# {text}"
    if style.startswith("Heading "):
        level = style.removeprefix("Heading ").strip()
        return f"{'#' * int(level)} {text}" if level.isdigit() else text
    return text


# One entry per file format: suffix → its page reader. A new format is one function and one line here; discovery,
# the CLI's messages and the docs read the suffixes from this mapping.
LOADERS: dict[str, Callable[[Path], tuple[Page, ...]]] = {
    ".md": _text_pages,
    ".markdown": _text_pages,
    ".txt": _text_pages,
    ".pdf": _pdf_pages,
    ".docx": _docx_pages,
}
SUFFIXES: tuple[str, ...] = tuple(LOADERS)


def describe_suffixes() -> str:
    """The readable formats, for messages: ".md .markdown .txt .pdf .docx"."""
    return " ".join(SUFFIXES)
