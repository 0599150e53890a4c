"""The Romanian personal numeric code (CNP): the one identifier that links two identities for sure.

A CNP is 13 digits, S YY MM DD JJ NNN C (the Romanian standard SR 13170 and the population
register's rules): S gives the sex and the century of birth (1/2: 1900-1999, 3/4: 1800-1899,
5/6: 2000-2099, odd male, even female; 7/8 a foreign resident, male/female, and 9 a foreigner,
whose century the code does not say), YYMMDD the birth date, JJ the county of first registration
(01-46, 51, 52, or 70 for a registration made in any county since 2024), NNN a sequence number
(001-999) and C a check digit: the digits weighted by 279146358279, summed, modulo 11, with
10 written as 1.

DESIGN.md "Patients across institutions": identities link deterministically on a valid CNP,
two different valid CNPs never link, and an invalid one never links. "Valid" here is more than
the checksum: a hospital that typed another patient's CNP into this patient's record (a check
digit catches only one wrong digit in eleven of the other mistakes) is caught when the sex or
birth date the code carries disagrees with what the same object says of the patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

#: the issuer that names a CNP (PatientID with IssuerOfPatientID, or an OtherPatientIDsSequence item)
ISSUER = "RO-CNP"
#: its FHIR identifier system (DESIGN.md "HTTP surface")
SYSTEM = "urn:pacs:national-id:RO-CNP"

_WEIGHTS = (2, 7, 9, 1, 4, 6, 3, 5, 8, 2, 7, 9)
#: S -> (century, sex); None where the code does not say
_SEX_CENTURY: dict[str, tuple[int | None, str | None]] = {
    "1": (1900, "M"),
    "2": (1900, "F"),
    "3": (1800, "M"),
    "4": (1800, "F"),
    "5": (2000, "M"),
    "6": (2000, "F"),
    "7": (None, "M"),
    "8": (None, "F"),
    "9": (None, None),
}
_COUNTIES = frozenset({f"{n:02d}" for n in range(1, 47)} | {"51", "52", "70"})


@dataclass(frozen=True, slots=True)
class Cnp:
    """A CNP that passed every check, with what it says of its holder."""

    value: str
    sex: str | None  # "M", "F", or None (a foreigner's code, S = 9)
    #: the birth date, or None when the century is not in the code (S = 7, 8, 9)
    birth_date: date | None
    #: YYMMDD as written, for a date whose century is unknown
    birth_yymmdd: str


class InvalidCnp(ValueError):
    """Why a value is not a CNP; such an identity never links on it."""


def check_digit(first12: str) -> str:
    """The check digit of the first 12 digits of a CNP."""
    remainder = sum(int(d) * w for d, w in zip(first12, _WEIGHTS, strict=True)) % 11
    return "1" if remainder == 10 else str(remainder)


def parse(value: str) -> Cnp:
    """`value` as a CNP, with what it says of its holder.

    Raises
    ------
    InvalidCnp
        Not 13 digits, a first digit of 0, an impossible birth date, an unknown county, a
        sequence number of 000, or a wrong check digit (the message says which).
    """
    text = value.strip()
    if len(text) != 13 or not text.isascii() or not text.isdigit():
        raise InvalidCnp("a CNP is 13 digits")
    century, sex = _SEX_CENTURY.get(text[0], (None, None))
    if text[0] == "0":
        raise InvalidCnp("a CNP does not start with 0")
    yy, mm, dd = int(text[1:3]), int(text[3:5]), int(text[5:7])
    born = _birth_date(century, yy, mm, dd)
    if text[7:9] not in _COUNTIES:
        raise InvalidCnp(f"county code {text[7:9]} does not exist")
    if text[9:12] == "000":
        raise InvalidCnp("sequence number 000 is never issued")
    if check_digit(text[:12]) != text[12]:
        raise InvalidCnp("wrong check digit")
    return Cnp(text, sex, born, text[1:7])


def _birth_date(century: int | None, yy: int, mm: int, dd: int) -> date | None:
    """The birth date the code gives (None when its century is unknown), checked to exist."""
    years = [century + yy] if century is not None else [1900 + yy, 2000 + yy]
    dates = []
    for year in years:
        try:
            dates.append(date(year, mm, dd))
        except ValueError:
            continue
    if not dates:
        raise InvalidCnp(f"no such birth date: {yy:02d}-{mm:02d}-{dd:02d}")
    return dates[0] if century is not None else None


def agrees(cnp: Cnp, *, sex: str, birth_date: str) -> str | None:
    """Why `cnp` contradicts the patient's sex (DICOM M/F/O) or birth date (YYYYMMDD), or None.

    A value the object leaves empty cannot contradict: many modalities send no birth date. An
    `O` (other) sex is not contradicted either.
    """
    if cnp.sex is not None and sex in ("M", "F") and sex != cnp.sex:
        return f"the CNP is of a {'man' if cnp.sex == 'M' else 'woman'}, the patient's sex is {sex}"
    if len(birth_date) == 8 and birth_date.isdigit():
        if cnp.birth_date is not None:
            if birth_date != cnp.birth_date.strftime("%Y%m%d"):
                return f"the CNP gives birth date {cnp.birth_date:%Y%m%d}, the patient's is {birth_date}"
        elif birth_date[2:] != cnp.birth_yymmdd:
            return f"the CNP gives birth date ..{cnp.birth_yymmdd}, the patient's is {birth_date}"
    return None


def valid_for(value: str, *, sex: str, birth_date: str) -> Cnp | None:
    """The CNP `value` when it is valid and agrees with the patient's demographics, else None."""
    try:
        cnp = parse(value)
    except InvalidCnp:
        return None
    return cnp if agrees(cnp, sex=sex, birth_date=birth_date) is None else None
