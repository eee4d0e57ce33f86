"""A VNI Windows encoder for tests: Vietnamese text as the bytes a VNI-Times font user's files hold.

VNI writes a letter as its base letter plus Latin-1 "mark" bytes (table as in xvnkb's vni.h and Unikey's converter):
tone marks sắc ù, huyền ø, hỏi û, ngã õ, nặng ï; â ê ô as base + â/á/à/å/ã/ä (circumflex with each tone); ă as
a + ê/é/è/ú/ü/ë (breve with each tone); ơ = ô, ư = ö (then a tone mark); i with a tone is one byte í ì æ ó ò;
ỵ = î; đ = ñ. Capital letters use the capital forms of the same bytes.
"""
from __future__ import annotations

import unicodedata

_ACUTE, _GRAVE, _HOOK, _TILDE, _DOT = "\u0301", "\u0300", "\u0309", "\u0303", "\u0323"
_CIRCUMFLEX, _BREVE, _HORN = "\u0302", "\u0306", "\u031b"
_TONE = {_ACUTE: "ù", _GRAVE: "ø", _HOOK: "û", _TILDE: "õ", _DOT: "ï"}
_WITH_CIRCUMFLEX = {None: "â", _ACUTE: "á", _GRAVE: "à", _HOOK: "å", _TILDE: "ã", _DOT: "ä"}
_WITH_BREVE = {None: "ê", _ACUTE: "é", _GRAVE: "è", _HOOK: "ú", _TILDE: "ü", _DOT: "ë"}
_I_WITH_TONE = {_ACUTE: "í", _GRAVE: "ì", _HOOK: "æ", _TILDE: "ó", _DOT: "ò"}


def vni_letter(ch: str) -> str:
    """One NFC character as VNI writes it (as Latin-1 characters); anything else unchanged."""
    if ch in "đĐ":
        return "ñ" if ch == "đ" else "Ñ"
    base, *marks = unicodedata.normalize("NFD", ch)
    if not marks or not base.isascii():
        return ch
    letter = base.lower()
    tone = next((m for m in marks if m in _TONE), None)
    modifier = next((m for m in marks if m in (_CIRCUMFLEX, _BREVE, _HORN)), None)
    if modifier == _HORN:
        out = {"o": "ô", "u": "ö"}[letter] + _TONE.get(tone, "")
    elif modifier == _CIRCUMFLEX:
        out = letter + _WITH_CIRCUMFLEX[tone]
    elif modifier == _BREVE:
        out = letter + _WITH_BREVE[tone]
    elif letter == "i" and tone:
        out = _I_WITH_TONE[tone]
    elif letter == "y" and tone == _DOT:
        out = "î"
    else:
        out = letter + _TONE.get(tone, "")
    return out.upper() if base.isupper() else out


def vni_text(text: str) -> str:
    """Text as a VNI-font document shows it to Unicode software (what a DOCX typed in VNI-Times holds)."""
    return "".join(vni_letter(ch) for ch in unicodedata.normalize("NFC", text))


def vni_bytes(text: str) -> bytes:
    """Text as a VNI Windows file's bytes (characters VNI cannot write become '?')."""
    return vni_text(text).encode("latin-1", errors="replace")
