"""A person's name as the patient index compares it: folded tokens of the family and given names.

The same person reaches the archive as `POPESCU^ANA MARIA`, `Popescu^Ana-Maria`, `POPESCU ANA`
(a system that sends no `^`), `Ştefănescu^Ion` or `STEFANESCU^ION`, and after a marriage as
`IONESCU^ANA MARIA`. So a name is kept as two tuples of tokens: diacritics and case folded
(`storage.dicom.charset.fold`, both Romanian ş forms), split on spaces, hyphens, dots and
commas, particles (`DE`, `VAN`...) and titles dropped. The middle name (third component) is a
given name; prefix and suffix (fourth and fifth) are not compared. Only the first component
group counts (the alphabetic one; `=` separates ideographic and phonetic groups). A name with no
`^` and several words is ambiguous (`POPESCU ANA` or `ANA POPESCU`): it is kept as family words
only, and `storage.patients.model` compares it against both parts of the other name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from storage.dicom.charset import fold

#: words that join a family name and carry no identity of their own
PARTICLES = frozenset({"DE", "DI", "DA", "DEL", "DELLA", "DER", "DEN", "DOS", "DAS", "DU", "LA", "LE", "VAN", "VON"})
#: titles sometimes typed into a name field instead of the prefix component
TITLES = frozenset({"DR", "PROF", "ING", "EC", "AV", "JR", "SR", "MR", "MRS", "MS"})
#: between words; `^` and `=` too, which full-width forms (＾, ＝) become only once folded
_SEPARATORS = re.compile(r"[\s\-.,'’^=]+")
#: the most tokens kept of a part (a peer controls the name: every count has a bound)
MAX_TOKENS = 6


@dataclass(frozen=True, slots=True)
class PersonName:
    """Folded tokens: `family` and `given`; `split` is False when the sender gave no `^`."""

    family: tuple[str, ...]
    given: tuple[str, ...]
    split: bool = True

    @property
    def empty(self) -> bool:
        return not self.family and not self.given

    @property
    def tokens(self) -> tuple[str, ...]:
        return self.family + self.given


def tokens(text: str) -> tuple[str, ...]:
    """The comparable words of one name part, folded, without particles and titles."""
    words = (w for w in _SEPARATORS.split(fold(text)) if w)
    kept = tuple(w for w in words if w not in PARTICLES and w not in TITLES)
    return kept[:MAX_TOKENS]


def parse(person_name: str) -> PersonName:
    """The comparable form of a DICOM PN value (its first, alphabetic component group)."""
    group = person_name.split("=", 1)[0]
    if "^" not in group:
        return PersonName(tokens(group), (), split=False)
    parts = group.split("^")
    family = tokens(parts[0])
    given = tokens(" ".join(parts[1:3]))
    return PersonName(family, given)


def block_key(name: PersonName) -> str:
    """The blocking key of a name: its first family token (or first token), at most 8 letters.

    Two identities are compared only when they share a block (`storage.patients.model`): a few
    indexed lookups per new identity instead of a scan.
    """
    first = name.family[:1] or name.given[:1]
    return first[0][:8] if first else ""
