"""Loading lesson files: encodings, refusals of what would become mojibake, PDF pages and DOCX headings."""
from __future__ import annotations

import codecs
import io
import random
import unicodedata
import zipfile
from pathlib import Path

import pytest
from vni import vni_bytes, vni_text

from rag.loaders import LoadError, load

VI = "Bài 1. Hàm số đồng biến trên khoảng K khi đạo hàm dương; nghịch biến khi đạo hàm âm. Ước lượng, tiệm cận, xác suất."
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
_TONES = {"\u0300", "\u0301", "\u0303", "\u0309", "\u0323"}


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def windows_1258(text: str) -> bytes:
    """Text as Windows-1258 writes Vietnamese: base letters precomposed (ê, ơ, ư…), tone marks combining."""
    out = []
    for ch in nfc(text):
        parts = unicodedata.normalize("NFD", ch)
        out.append(nfc("".join(c for c in parts if c not in _TONES)) + "".join(c for c in parts if c in _TONES))
    return "".join(out).encode("cp1258")


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_markdown_in_nfd_comes_out_nfc(tmp_path: Path) -> None:
    decomposed = unicodedata.normalize("NFD", VI)
    assert decomposed != VI
    doc = load(write(tmp_path, "bai.md", decomposed.encode("utf-8")))
    assert doc.text == nfc(VI) and doc.kind == "md"
    assert [p.page for p in doc.pages] == [None]


def test_windows_line_endings_become_newlines(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "bai.txt", "dòng một\r\ndòng hai\rdòng ba".encode()))
    assert doc.text == "dòng một\ndòng hai\ndòng ba"


def test_windows_1258_bytes_decode_to_nfc(tmp_path: Path) -> None:
    data = windows_1258(VI)
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert data != VI.encode("cp1258", errors="replace")  # tone marks really are combining bytes here
    assert load(write(tmp_path, "cu.md", data)).text == nfc(VI)


def test_windows_1258_with_precomposed_letters_only(tmp_path: Path) -> None:
    text = "Đơn ưu tiên: ăn ơn, cân đo, lên Hà Bái Đính."  # only letters that Windows-1258 has precomposed
    assert load(write(tmp_path, "cu.txt", text.encode("cp1258"))).text == text


@pytest.mark.parametrize("encoding,bom", [("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
                                          ("utf-8", codecs.BOM_UTF8)])
def test_text_with_a_byte_order_mark(tmp_path: Path, encoding: str, bom: bytes) -> None:
    doc = load(write(tmp_path, "bom.md", bom + VI.encode(encoding)))
    assert doc.text == VI and not doc.text.startswith("\ufeff")


def test_utf16_as_python_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "u16.txt"
    path.write_text(unicodedata.normalize("NFD", VI), encoding="utf-16")
    assert load(path).text == VI


@pytest.mark.parametrize("data", [b"", b"   \n\n\t  \n"])
def test_empty_file_is_refused(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(LoadError, match="no text"):
        load(write(tmp_path, "trong.md", data))


def test_binary_files_are_refused(tmp_path: Path) -> None:
    rng = random.Random(1258)
    noise = bytes(rng.randrange(256) for _ in range(4096))
    assert b"\x00" in noise
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00\x1f\xf3\xffa"
    no_nul = bytes(b for b in noise if b)
    for name, data in (("noise.md", noise), ("anh.md", png), ("anh.txt", png + noise), ("no-nul.txt", no_nul)):
        with pytest.raises(LoadError):
            load(write(tmp_path, name, data))


def test_tcvn3_text_is_refused_with_a_hint(tmp_path: Path) -> None:
    # "Hàm số đồng biến, các đạo hàm" typed with a TCVN3 (.VnTime) font, saved as 8-bit bytes.
    tcvn3 = "Hµm sè ®ång biÕn, c¸c ®¹o hµm. Tam gi¸c vu«ng.".encode("latin-1")
    with pytest.raises(LoadError, match="TCVN3"):
        load(write(tmp_path, "cu-tcvn3.md", tcvn3))


def test_latex_is_kept_verbatim(tmp_path: Path) -> None:
    formulas = [
        "$f'(x) > 0$",
        "$$\\int_0^1 x^2\\,dx = \\dfrac{1}{3}$$",
        "\\(\\sin^2 x + \\cos^2 x = 1\\)",
        "\\[\n\\lim_{x \\to 0} \\frac{\\sin x}{x} = 1\n\\]",
        "$\\{x \\in \\mathbb{R} \\mid x^2 - 1 \\le 0\\}$",
    ]
    text = "**Định lí.** Nếu " + formulas[0] + " thì đồng biến.\n\n" + "\n\n".join(formulas[1:]) + "\n"
    doc = load(write(tmp_path, "latex.md", text.encode("utf-8")))
    for formula in formulas:
        assert formula in doc.text


def make_pdf(pages: list[list[str]]) -> bytes:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(TTFont("DejaVuSans", str(DEJAVU)))
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer)
    for lines in pages:
        pdf.setFont("DejaVuSans", 12)
        for row, line in enumerate(lines):
            pdf.drawString(72, 780 - 20 * row, line)
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


PDF_PAGES = [
    ["Bài 1. Tính đơn điệu của hàm số", "Hàm số đồng biến trên khoảng K."],
    [],  # a blank page: skipped, but the numbering of the next pages stays true
    ["Định lí: nếu f'(x) > 0 thì hàm số đồng biến.", "Ước lượng tích phân xác định"],
]


@pytest.mark.skipif(not DEJAVU.exists(), reason="DejaVu Sans font not installed")
def test_pdf_gives_text_per_page_with_page_numbers(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "bai.pdf", make_pdf(PDF_PAGES)))
    assert doc.kind == "pdf"
    assert [p.page for p in doc.pages] == [1, 3]
    assert "Tính đơn điệu của hàm số" in doc.pages[0].text and "đồng biến trên khoảng K" in doc.pages[0].text
    assert "Ước lượng tích phân xác định" in doc.pages[1].text
    assert all(p.text == nfc(p.text) for p in doc.pages)


@pytest.mark.skipif(not DEJAVU.exists(), reason="DejaVu Sans font not installed")
def test_corrupt_pdfs_are_refused(tmp_path: Path) -> None:
    data = make_pdf(PDF_PAGES)
    rng = random.Random(7)
    for name, payload in (("cut.pdf", data[: len(data) // 2]), ("head.pdf", data[:300]),
                          ("garbage.pdf", bytes(rng.randrange(256) for _ in range(2000))),
                          ("text.pdf", VI.encode("utf-8"))):
        with pytest.raises(LoadError):
            load(write(tmp_path, name, payload))


def test_docx_headings_become_markdown_headings(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Bài 3. Giá trị lớn nhất và nhỏ nhất", level=1)
    document.add_paragraph("Giới thiệu ngắn về bài học.")
    document.add_heading("1. Định nghĩa", level=2)
    document.add_paragraph("Định nghĩa 1. Số M là giá trị lớn nhất của hàm số trên D nếu f(x) ≤ M với mọi x.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "x"
    table.rows[0].cells[1].text = "f(x)"
    path = tmp_path / "bai.docx"
    document.save(str(path))
    doc = load(path)
    lines = doc.text.split("\n\n")
    assert lines[0] == "# Bài 3. Giá trị lớn nhất và nhỏ nhất"
    assert "## 1. Định nghĩa" in lines
    assert lines.index("## 1. Định nghĩa") < lines.index("Định nghĩa 1. Số M là giá trị lớn nhất của hàm số trên D nếu f(x) ≤ M với mọi x.")
    assert "x | f(x)" in lines
    assert doc.kind == "docx" and doc.pages[0].page is None


def test_corrupt_docx_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "không phải tài liệu Word")
    for name, payload in (("garbage.docx", b"PK\x03\x04 not really a zip"), ("zip.docx", buffer.getvalue()),
                          ("empty.docx", b"")):
        with pytest.raises(LoadError):
            load(write(tmp_path, name, payload))


@pytest.mark.parametrize("name", ["anh.png", "bai.doc", "README", "slides.pptx"])
def test_unsupported_suffix_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(LoadError, match="unsupported"):
        load(write(tmp_path, name, VI.encode("utf-8")))


# --- pre-Unicode VNI, and PDF passwords (issue 10) ---------------------------------------------------------------------

LESSON_FILES = sorted((Path(__file__).resolve().parents[1] / "data" / "lessons").rglob("*.md"))


def test_vni_encoder_matches_the_vni_table() -> None:
    assert vni_text("Hàm số đồng biến") == "Haøm soá ñoàng bieán"
    assert vni_text("Ước lượng, tiệm cận, xác suất, ỵ, Ặ") == "Öôùc löôïng, tieäm caän, xaùc suaát, î, AË"


def test_every_sample_lesson_in_vni_is_refused_with_the_conversion_hint(tmp_path: Path) -> None:
    assert len(LESSON_FILES) == 40
    for lesson in LESSON_FILES:
        text = lesson.read_text(encoding="utf-8")
        with pytest.raises(LoadError, match=r"VNI Windows.*Unikey"):
            load(write(tmp_path, lesson.name, vni_bytes(text)))
        # The same text once wrongly "converted" to UTF-8 (as Notepad does), or typed in Word with a VNI font.
        with pytest.raises(LoadError, match="VNI"):
            load(write(tmp_path, "utf8-" + lesson.name, vni_text(text).encode("utf-8")))


def test_vni_typed_in_word_is_refused(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading(vni_text("Bài 7. Nguyên hàm"), level=1)
    document.add_paragraph(vni_text("Hàm số F(x) được gọi là nguyên hàm của hàm số f(x) trên khoảng K nếu F'(x) = f(x)."))
    document.save(str(tmp_path / "vni.docx"))
    with pytest.raises(LoadError, match="VNI"):
        load(tmp_path / "vni.docx")


def test_no_genuine_lesson_is_taken_for_a_legacy_font(tmp_path: Path) -> None:
    for lesson in LESSON_FILES:
        text = lesson.read_text(encoding="utf-8")
        assert load(lesson).text == nfc(text).replace("\r\n", "\n")
        assert load(write(tmp_path, "cp1258-" + lesson.name, windows_1258(text))).text == load(lesson).text
    samples = Path(__file__).resolve().parents[1] / "data" / "samples"
    for sample in samples.iterdir():
        assert len(load(sample).text) > 1000, sample
    # Foreign names (Möbius, L'Hôpital, Gödel) in a genuine lesson are no legacy font.
    names = "Dải Möbius, quy tắc L'Hôpital, định lí Gödel, hàm Müller. " * 3
    assert "Möbius" in load(write(tmp_path, "ten.md", (names + LESSON_FILES[0].read_text(encoding="utf-8")).encode())).text


def encrypted_pdf(user_password: str, algorithm: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(make_pdf(PDF_PAGES))))
    writer.encrypt(user_password=user_password, owner_password="chu-so-huu", algorithm=algorithm)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


@pytest.mark.skipif(not DEJAVU.exists(), reason="DejaVu Sans font not installed")
@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-128", "AES-256"])
def test_pdf_with_only_an_owner_password_is_read(tmp_path: Path, algorithm: str) -> None:
    doc = load(write(tmp_path, "han-che.pdf", encrypted_pdf("", algorithm)))
    assert [p.page for p in doc.pages] == [1, 3] and "Tính đơn điệu của hàm số" in doc.pages[0].text


@pytest.mark.skipif(not DEJAVU.exists(), reason="DejaVu Sans font not installed")
def test_pdf_that_needs_a_password_to_open_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="needs a password to open; save an unprotected copy"):
        load(write(tmp_path, "mat-khau.pdf", encrypted_pdf("bi-mat", "AES-256")))
