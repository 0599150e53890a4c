"""The CNP check: the one identifier that links for sure must be checked for sure.

Known codes are built here with their check digit computed independently of `check_digit`
(the rule written again below); the property tests walk every kind of mistake a registration
desk makes: one wrong digit, two swapped, a code copied from another patient.
"""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage.patients.cnp import InvalidCnp, agrees, check_digit, parse, valid_for


def with_check(first12: str) -> str:
    """The rule of SR 13170, written again: weights 279146358279, sum mod 11, 10 -> 1."""
    total = sum(int(a) * int(b) for a, b in zip(first12, "279146358279", strict=True))
    return first12 + ("1" if total % 11 == 10 else str(total % 11))


@st.composite
def cnps(draw: st.DrawFn) -> str:
    s = draw(st.sampled_from("123456"))
    century = {"1": 1900, "2": 1900, "3": 1800, "4": 1800, "5": 2000, "6": 2000}[s]
    born = draw(st.dates(date(century, 1, 1), date(century + 99, 12, 31)))
    county = draw(st.sampled_from([f"{n:02d}" for n in range(1, 47)] + ["51", "52", "70"]))
    seq = draw(st.integers(1, 999))
    return with_check(f"{s}{born:%y%m%d}{county}{seq:03d}")


def test_a_known_code_gives_its_holders_sex_and_birth_date() -> None:
    code = with_check("285031707001")  # a woman born 1985-03-17, registered in county 07 (Botoșani)
    cnp = parse(code)
    assert cnp.sex == "F" and cnp.birth_date == date(1985, 3, 17)
    assert parse(with_check("503122912345")).birth_date == date(2003, 12, 29)
    assert parse(with_check("399010140001")).birth_date == date(1899, 1, 1)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "13 digits"),
        ("12345678901234", "13 digits"),
        ("18501011234ab", "13 digits"),
        ("１８５０１０１２２１１４４", "13 digits"),  # full-width digits are digits to str.isdigit
        (with_check("085010112345"), "start with 0"),
        (with_check("185023012345"), "no such birth date"),  # 30 February
        (with_check("185130112345"), "no such birth date"),  # month 13
        (with_check("185010199345"), "county"),
        (with_check("185010147345"), "county"),
        (with_check("185010112000"), "000"),
    ],
)
def test_what_is_not_a_cnp_says_why(value: str, why: str) -> None:
    with pytest.raises(InvalidCnp, match=why):
        parse(value)


def test_a_wrong_check_digit_is_refused() -> None:
    code = with_check("185010112345")
    wrong = code[:12] + str((int(code[12]) + 1) % 10)
    with pytest.raises(InvalidCnp, match="check digit"):
        parse(wrong)


@given(cnps())
def test_every_well_formed_code_is_accepted_and_its_check_digit_recomputed(code: str) -> None:
    assert parse(code).value == code and check_digit(code[:12]) == code[12]


@given(cnps(), st.integers(0, 11), st.integers(1, 9))
def test_one_wrong_digit_is_caught_unless_the_remainders_1_and_10_collide(code: str, pos: int, delta: int) -> None:
    """A single substituted digit changes the weighted sum mod 11 (11 is prime, every weight is
    1-9): only the rule's own 10 -> 1 folds two remainders onto one check digit."""
    changed = code[:pos] + str((int(code[pos]) + delta) % 10) + code[pos + 1 :]
    try:
        parse(changed)
    except InvalidCnp:
        return
    weights = "279146358279"
    before = sum(int(a) * int(b) for a, b in zip(code[:12], weights, strict=True)) % 11
    after = sum(int(a) * int(b) for a, b in zip(changed[:12], weights, strict=True)) % 11
    assert {before, after} == {1, 10}


@given(cnps(), st.integers(0, 10))
def test_swapped_neighbours_are_caught_or_are_the_same_digit(code: str, pos: int) -> None:
    swapped = code[:pos] + code[pos + 1] + code[pos] + code[pos + 2 :]
    if swapped == code:
        return
    try:
        parse(swapped)
    except InvalidCnp:
        return
    # the weights of two neighbours differ, so a swap changes the sum; again only 1 <-> 10 folds
    weights = "279146358279"
    sums = [sum(int(a) * int(b) for a, b in zip(c[:12], weights, strict=True)) % 11 for c in (code, swapped)]
    assert set(sums) == {1, 10} or pos == 11


def test_the_code_must_agree_with_the_patients_sex_and_birth_date() -> None:
    cnp = parse(with_check("285031707001"))
    assert agrees(cnp, sex="F", birth_date="19850317") is None
    assert agrees(cnp, sex="", birth_date="") is None  # nothing said, nothing contradicted
    assert agrees(cnp, sex="O", birth_date="") is None
    assert "woman" in (agrees(cnp, sex="M", birth_date="19850317") or "")
    assert "19850317" in (agrees(cnp, sex="F", birth_date="19850318") or "")
    assert valid_for(cnp.value, sex="M", birth_date="") is None
    assert valid_for(cnp.value, sex="F", birth_date="19850317") == cnp


def test_a_foreigners_code_has_no_century_and_matches_on_the_rest_of_the_date() -> None:
    cnp = parse(with_check("780010107001"))  # a foreign resident, male, born ..80-01-01
    assert cnp.sex == "M" and cnp.birth_date is None
    assert agrees(cnp, sex="M", birth_date="19800101") is None
    assert agrees(cnp, sex="M", birth_date="19800102") is not None
    assert parse(with_check("900022907001")).sex is None  # 29 February exists in 2000
