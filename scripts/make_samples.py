"""Regenerate data/samples/: a PDF and a DOCX made from sample lessons, for the loader tests and teachers' trials."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
PDF_LESSON = ROOT / "data/lessons/lop12/01-tinh-don-dieu.md"
DOCX_LESSON = ROOT / "data/lessons/lop12/07-nguyen-ham.md"


def _plain(line: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"\1", line)


def make_pdf(lesson: Path, out: Path) -> None:
    from xml.sax.saxutils import escape

    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.platypus import Paragraph, SimpleDocTemplate

    pdfmetrics.registerFont(TTFont("DejaVu", str(FONT)))
    body = ParagraphStyle("body", fontName="DejaVu", fontSize=11, leading=15, spaceAfter=8)
    title = ParagraphStyle("title", parent=body, fontSize=15, leading=20)
    paragraphs = [p.strip() for p in lesson.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    story = [Paragraph(escape(_plain(p.lstrip("# "))), title if p.startswith("#") else body) for p in paragraphs]
    SimpleDocTemplate(str(out), pagesize=A4, title=lesson.stem).build(story)


def make_docx(lesson: Path, out: Path) -> None:
    import docx

    document = docx.Document()
    for para in (p.strip() for p in lesson.read_text(encoding="utf-8").split("\n\n") if p.strip()):
        level = len(para) - len(para.lstrip("#"))
        if level:
            document.add_heading(para[level:].strip(), level=level)
        else:
            document.add_paragraph(_plain(para))
    document.save(str(out))


if __name__ == "__main__":
    out_dir = ROOT / "data/samples"
    out_dir.mkdir(exist_ok=True)
    make_pdf(PDF_LESSON, out_dir / f"{PDF_LESSON.stem}.pdf")
    make_docx(DOCX_LESSON, out_dir / f"{DOCX_LESSON.stem}.docx")
    print(f"wrote {sorted(p.name for p in out_dir.iterdir())}")
