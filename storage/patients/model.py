"""Whether two patient identities are one person: the CNP rule, else a Fellegi-Sunter score.

DESIGN.md "Patients across institutions". First the deterministic rule: two valid CNPs that
agree with their identities' demographics (`storage.patients.cnp.valid_for`) decide alone:
equal links, different never links, whatever else agrees (twins, namesakes). Otherwise each
field is compared into a level (exact, close, similar, different, or missing when either side
lacks it), and each level adds its weight log2(m/u) in bits: m is the chance of that level
when the two are the same person, u when they are two people (Fellegi and Sunter, 1969; the
same form as Splink's). A missing field adds nothing. The sum is compared with two thresholds:
at or above `link_at` the identities link, at or above `review_at` a reviewer decides, below
they stay apart. One guard overrides a score: two identities born the same day whose given
names share no word (twins, who share everything else) are reviewed, never linked unseen.

The default m/u are set by hand for a city's registers (documented in README "Patients across
institutions" with the arithmetic of typical cases) and the default thresholds keep a person's
name, birth date and sex agreeing, without anything more, in review: two people of a common
name born on the same day exist in a city of 300,000, and a false link shows one person's
images in another's record. An address that agrees too, or a CNP, links.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from rapidfuzz.distance import JaroWinkler
from rapidfuzz.fuzz import token_set_ratio

from storage.dicom.charset import fold
from storage.patients.cnp import Cnp
from storage.patients.names import PersonName

#: field -> level -> (m, u)
DEFAULT_WEIGHTS: dict[str, dict[str, tuple[float, float]]] = {
    "family": {"exact": (0.85, 0.005), "close": (0.08, 0.005), "similar": (0.03, 0.02), "different": (0.04, 0.97)},
    "given": {"exact": (0.88, 0.02), "close": (0.06, 0.01), "similar": (0.02, 0.03), "different": (0.04, 0.94)},
    "birth_date": {"exact": (0.95, 0.0005), "close": (0.03, 0.003), "different": (0.02, 0.9965)},
    "sex": {"exact": (0.98, 0.5), "different": (0.02, 0.5)},
    "address": {"exact": (0.6, 0.001), "similar": (0.2, 0.01), "different": (0.2, 0.989)},
    # another identifier both sides name of one issuer (an insurance number, another
    # institution's ID): agreeing is near proof; disagreeing, a slip or a reissued number
    "identifier": {"exact": (0.95, 0.000001), "different": (0.05, 0.999)},
}


@dataclass(frozen=True, slots=True)
class Model:
    """The weights and thresholds in force (`PACS_MPI_LINK_AT`, `PACS_MPI_REVIEW_AT`)."""

    link_at: float = 25.0
    review_at: float = 12.0
    weights: dict[str, dict[str, tuple[float, float]]] = field(default_factory=lambda: DEFAULT_WEIGHTS)

    def weight(self, name: str, level: str) -> float:
        m, u = self.weights[name][level]
        return math.log2(m / u)


@dataclass(frozen=True, slots=True)
class Address:
    """PatientAddress as compared: its postcode (6 digits), house number and other words."""

    postcode: str
    number: str
    words: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.postcode or self.number or self.words)


@dataclass(frozen=True, slots=True)
class Demographics:
    """What the model compares of one identity."""

    name: PersonName
    birth_date: str = ""  # YYYYMMDD, or empty
    sex: str = ""  # M, F, O, or empty
    address: Address | None = None
    #: a CNP valid and agreeing with this identity's sex and birth date (`cnp.valid_for`)
    cnp: Cnp | None = None
    #: the identifiers it is known by besides the CNP: (issuer, value), its own key among them
    #: when its issuer is a DICOM one (`storage.patients.identities.other_identifiers`)
    identifiers: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, slots=True)
class Reason:
    """One field's contribution: its level and weight in bits."""

    field: str
    level: str
    weight: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """link, review or apart; by which rule (cnp, cnp-conflict, score, twins); the score and its reasons."""

    decision: str
    rule: str
    score: float
    reasons: tuple[Reason, ...] = ()


LINK, REVIEW, APART = "link", "review", "apart"


def compare(a: Demographics, b: Demographics, model: Model | None = None) -> Verdict:
    """Whether `a` and `b` are one person, and why (see the module's docstring)."""
    model = model or Model()
    if a.cnp is not None and b.cnp is not None:
        if a.cnp.value == b.cnp.value:
            return Verdict(LINK, "cnp", math.inf)
        return Verdict(APART, "cnp-conflict", -math.inf)
    levels = {
        "family": _family_level(a.name, b.name),
        "given": _given_level(a.name, b.name),
        "birth_date": birth_date_level(a.birth_date, b.birth_date),
        "sex": _sex_level(a.sex, b.sex),
        "address": address_level(a.address, b.address),
        "identifier": identifier_level(a.identifiers, b.identifiers),
    }
    reasons = tuple(
        Reason(name, level, model.weight(name, level)) for name, level in levels.items() if level != "missing"
    )
    score = round(sum(r.weight for r in reasons), 3)
    decision = LINK if score >= model.link_at else REVIEW if score >= model.review_at else APART
    if decision == LINK and maybe_twins(a, b, levels["birth_date"]):
        return Verdict(REVIEW, "twins", score, reasons)
    return Verdict(decision, "score", score, reasons)


def maybe_twins(a: Demographics, b: Demographics, birth: str) -> bool:
    """Born the same day, with given names that share no word, or that each have a word the
    other lacks: twins share a family name, a birth date and an address, which the score counts
    as independent evidence, and their given names are often near (CRISTIAN and CRISTINA:
    Jaro-Winkler 0.975) or share one of two (ANA MARIA and ANA ELENA). Never linked unseen. One
    name that is the other's first words (ANA MARIA and ANA, a form with room for one) is not a
    twin's, nor a name whose components one sender swapped."""
    mine, theirs = set(a.name.given), set(b.name.given)
    if birth != "exact" or not (mine and theirs) or _swapped(a.name, b.name):
        return False
    return not mine & theirs or bool(mine - theirs and theirs - mine)


def contradiction(a: Demographics, b: Demographics) -> str | None:
    """Why `a` and `b` cannot be one person whatever their score says, or None: two different
    CNPs, birth dates that differ by more than a slip, or what may be twins (`maybe_twins`).

    The linker asks it of every pair a merge would join (`linker.merge_conflict`), not only of
    the pair that scored: links chain, and a record with little on it (no birth date, a given
    name cut to one word) can score high against each of two people (twins whose double names
    two senders both cut to their first word) and would join them."""
    if a.cnp is not None and b.cnp is not None and a.cnp.value != b.cnp.value:
        return "two of their identities hold different CNPs"
    birth = birth_date_level(a.birth_date, b.birth_date)
    if birth == "different":
        return "two of their identities have different birth dates"
    if maybe_twins(a, b, birth):
        return "two of their identities may be twins (one birth date, other given names)"
    return None


def _swapped(a: PersonName, b: PersonName) -> bool:
    return a.split and b.split and a.family == b.given and a.given == b.family and a.family != a.given


# ----- names ----------------------------------------------------------------------------


def token_level(a: tuple[str, ...], b: tuple[str, ...]) -> str:
    """exact (same words), close (a word in common, or one word within Jaro-Winkler 0.94),
    similar (0.88), different; missing when either side has none."""
    if not a or not b:
        return "missing"
    if sorted(a) == sorted(b):
        return "exact"
    best = max(JaroWinkler.similarity(x, y) for x in a for y in b)
    if set(a) & set(b) or best >= 0.94:
        return "close"
    return "similar" if best >= 0.88 else "different"


def _family_level(a: PersonName, b: PersonName) -> str:
    if not (a.split and b.split):  # one side sent no ^: its words may be family or given
        return _unsplit_level(a, b, "family")
    if _swapped(a, b):
        return "close"  # the components swapped by one sender
    return token_level(a.family, b.family)


def _given_level(a: PersonName, b: PersonName) -> str:
    if not (a.split and b.split):
        return _unsplit_level(a, b, "given")
    if _swapped(a, b):
        return "close"
    return token_level(a.given, b.given)


def _unsplit_level(a: PersonName, b: PersonName, part: str) -> str:
    """A name sent without ^ against the other: each part of the split one is looked for among
    the unsplit words (two unsplit names: all words, counted once, as the family)."""
    split, whole = (a, b) if a.split else (b, a)
    if not split.split:  # both unsplit
        return token_level(a.tokens, b.tokens) if part == "family" else "missing"
    mine = split.family if part == "family" else split.given
    if not mine or not whole.tokens:
        return "missing"
    level = token_level(mine, tuple(w for w in whole.tokens if w in mine) or whole.tokens)
    return "close" if level == "exact" else level  # never exact: the order was not said


# ----- birth date, sex, address ---------------------------------------------------------


def identifier_level(a: frozenset[tuple[str, str]], b: frozenset[tuple[str, str]]) -> str:
    """exact: an identifier of one issuer on both sides with one value; different: both name
    identifiers of an issuer, none the same; missing: no issuer in common."""
    if a & b:
        return "exact"
    if {issuer for issuer, _ in a} & {issuer for issuer, _ in b}:
        return "different"
    return "missing"


def birth_date_level(a: str, b: str) -> str:
    """exact; close: one digit differs, two neighbouring digits swapped, or day and month
    swapped (a US-order entry); different; missing unless both are 8 digits."""
    if not (_is_date(a) and _is_date(b)):
        return "missing"
    if a == b:
        return "exact"
    if sum(x != y for x, y in zip(a, b, strict=True)) == 1:
        return "close"
    if a[:4] + a[6:8] + a[4:6] == b:
        return "close"
    diff = [i for i in range(8) if a[i] != b[i]]
    if len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]:
        return "close"
    return "different"


def _is_date(value: str) -> bool:
    return len(value) == 8 and value.isascii() and value.isdigit()


def _sex_level(a: str, b: str) -> str:
    if a not in ("M", "F") or b not in ("M", "F"):
        return "missing"
    return "exact" if a == b else "different"


_POSTCODE = re.compile(r"\b(\d{6})\b")
_NUMBER = re.compile(r"\b(\d{1,4}[A-Z]?)\b")
#: words of a Romanian address that say what, not where
_ADDRESS_NOISE = frozenset(
    {"STR", "STRADA", "BD", "BLD", "BDUL", "BULEVARDUL", "CALEA", "SOS", "SOSEAUA", "ALEEA", "NR", "BL", "SC", "AP",
     "ET", "JUD", "JUDETUL", "MUN", "MUNICIPIUL", "ORAS", "COM", "COMUNA", "SAT", "SECTOR", "ROMANIA", "RO"}
)  # fmt: skip
MAX_ADDRESS = 256


def parse_address(text: str) -> Address | None:
    """PatientAddress (free text, `^` or commas between parts) as compared; None when empty."""
    folded = fold(text[:MAX_ADDRESS]).replace("^", " ")
    postcode = next(iter(_POSTCODE.findall(folded)), "")
    rest = folded.replace(postcode, " ") if postcode else folded
    number = next(iter(_NUMBER.findall(rest)), "")
    words = tuple(w for w in re.split(r"[^A-Z]+", rest) if len(w) > 1 and w not in _ADDRESS_NOISE)
    address = Address(postcode, number, words[:16])
    return None if address.empty else address


def address_level(a: Address | None, b: Address | None) -> str:
    """exact: the same house (number and postcode, or number and the same street words);
    similar: the same postcode or mostly the same words; different; missing unless both sides
    have words or both a postcode (a lone house number says nothing)."""
    if a is None or b is None:
        return "missing"
    words = token_set_ratio(" ".join(a.words), " ".join(b.words)) if a.words and b.words else None
    same_postcode = bool(a.postcode) and a.postcode == b.postcode
    if words is None and not (a.postcode and b.postcode):
        return "missing"
    same_number = bool(a.number) and a.number == b.number
    if same_number and (same_postcode or (words is not None and words >= 90)):
        return "exact"
    if same_postcode or (words is not None and words >= 80):
        return "similar"
    return "different"
