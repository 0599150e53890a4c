"""Character sets: strict decoding at ingest, and the folded form names are searched by.

pydicom decodes text leniently (a wrong byte becomes U+FFFD with a warning); an archive must
not index a mangled name, so ingest checks every text value strictly first and refuses an
object whose bytes do not decode in the character set it declares (PS3.5 6.1, PS3.3
C.12.1.1.2), or that declares a character set no one knows.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from pydicom.charset import CODES_TO_ENCODINGS, ESC, default_encoding, handled_encodings, python_encoding

from storage.errors import BadCharset

TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "PN", "UC", "UT"})
_FRAGMENTS = re.compile(rb"(^[^\x1b]+|[\x1b][^\x1b]*)")
# Letters that Unicode does not decompose into a base letter plus marks.
_EXTRA_FOLDS = str.maketrans(
    {
        "Ł": "L",
        "ł": "l",
        "Ø": "O",
        "ø": "o",
        "Đ": "D",
        "đ": "d",
        "Æ": "AE",
        "æ": "ae",
        "Œ": "OE",
        "œ": "oe",
        "ı": "i",
        "Þ": "TH",
        "þ": "th",
    }
)


def python_encodings(specific_character_set: Sequence[str] | str | None) -> list[str]:
    """Map (0008,0005) to Python codecs, refusing values pydicom does not know."""
    if isinstance(specific_character_set, str):
        terms = [specific_character_set]
    else:
        terms = list(specific_character_set or [])
    if not terms:
        return [default_encoding]
    if not terms[0]:
        terms[0] = "ISO_IR 6"
    encodings = []
    for term in terms:
        term = term.strip()
        if term not in python_encoding:
            raise BadCharset(f"unknown Specific Character Set {term!r}")
        encodings.append(python_encoding[term])
    return encodings


def check_decodes(value: bytes, encodings: Sequence[str], what: str) -> None:
    """Raise BadCharset unless `value` decodes strictly in `encodings`.

    Mirrors pydicom's ISO 2022 handling (escape sequences switch the code element) but
    never falls back to replacement characters.
    """
    try:
        if ESC not in value:
            value.decode(encodings[0])
            return
        for fragment in _FRAGMENTS.findall(value):
            if not fragment.startswith(ESC):
                fragment.decode(encodings[0])
                continue
            seq_len = 4 if fragment.startswith((b"\x1b$(", b"\x1b$)")) else 3
            encoding = CODES_TO_ENCODINGS.get(fragment[:seq_len])
            if encoding is None or (encoding not in encodings and encoding != default_encoding):
                raise BadCharset(f"{what}: escape sequence to a character set not declared in (0008,0005)")
            (fragment if encoding in handled_encodings else fragment[seq_len:]).decode(encoding)
    except UnicodeError as exc:
        reason = getattr(exc, "reason", exc)
        raise BadCharset(f"{what}: bytes do not decode as {'/'.join(encodings)} ({reason})") from None


def fold(text: str) -> str:
    """Upper case without diacritics, so ŞTEFĂNESCU, Ştefănescu and STEFANESCU compare equal.

    Both Romanian forms (ş with cedilla, ș with comma below) lose their mark; compatibility
    decomposition (NFKD) also folds full-width Latin letters that Japanese systems send.
    Only the Latin/Greek/Cyrillic combining diacritics (U+0300-U+036F) are dropped: the kana
    voicing marks change the word, so だ stays だ.
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_EXTRA_FOLDS))
    stripped = "".join(c for c in decomposed if not "\u0300" <= c <= "\u036f")
    return unicodedata.normalize("NFC", stripped).upper()
