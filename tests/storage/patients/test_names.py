"""Names as the patient index compares them: the spellings one person arrives with fold to one form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage.patients.names import MAX_TOKENS, PersonName, block_key, parse, tokens


@pytest.mark.parametrize(
    "spelling",
    [
        "POPESCU^ANA MARIA",
        "Popescu^Ana-Maria",
        "popescu^ana^maria",  # the second given name sent as the middle name
        "POPESCU^ANA.MARIA",
        "Popescu^Ana Maria^^Dr.",  # a prefix is not compared
        "POPESCU^ANA MARIA=ポペスク^アナ",  # only the alphabetic group
    ],
)
def test_one_persons_spellings_fold_to_one_name(spelling: str) -> None:
    assert parse(spelling) == PersonName(("POPESCU",), ("ANA", "MARIA"))


def test_diacritics_both_romanian_s_forms_and_case_fold() -> None:
    assert parse("Ştefănescu^Ion") == parse("ȘTEFĂNESCU^ION") == parse("STEFANESCU^ION")
    assert parse("Ţurcanu^Ioana").family == ("TURCANU",)


def test_particles_and_titles_are_dropped_and_double_family_names_kept() -> None:
    assert parse("van der Berg^Jan").family == ("BERG",)
    assert parse("Popescu-Ionescu^Elena").family == ("POPESCU", "IONESCU")
    assert tokens("Dr. Ion") == ("ION",)


def test_a_name_without_components_is_kept_whole_and_marked_unsplit() -> None:
    name = parse("POPESCU ANA")
    assert name == PersonName(("POPESCU", "ANA"), (), split=False)
    assert parse("").empty and parse("^").empty


def test_block_key_is_the_first_family_word_cut_to_eight_letters() -> None:
    assert block_key(parse("Ştefănescu-Pop^Ion")) == "STEFANES"
    assert block_key(parse("^Ion")) == "ION"
    assert block_key(parse("")) == ""


def test_full_width_separators_fold_into_separators() -> None:
    assert parse("POPESCU ＾ANA").tokens == ("POPESCU", "ANA")  # a full-width ^ is a word break, not a letter


@given(st.text(max_size=500))
def test_any_text_gives_a_bounded_name_without_separators(text: str) -> None:
    name = parse(text)
    assert len(name.family) <= MAX_TOKENS and len(name.given) <= MAX_TOKENS
    assert all(token and not any(c in token for c in " -.,^=") for token in name.tokens)
