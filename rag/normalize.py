"""Unicode normalisation of Vietnamese text: every boundary calls `nfc`."""
from __future__ import annotations

import unicodedata


def nfc(text: str) -> str:
    """Text in Unicode NFC, so composed and decomposed Vietnamese compare, hash and tokenise alike."""
    return unicodedata.normalize("NFC", text)
