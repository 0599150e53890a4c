"""Link a labelled CSV of identities through the patient index's own code, and score it.

    .venv/bin/python benchmarks/linkage/evaluate.py --csv /tmp/linkage.csv --json /tmp/linkage.json

The rows go into a fresh SQLite index migrated by the project's migrations
(`storage.index.migrate.upgrade`), in arrival order, `--batch` per write transaction through
`storage.patients.identities.upsert` (which queues each new identity, as ingest does), and after
each batch `storage.patients.linker.link_pending` runs until the queue is empty, as a
`pacs serve`'s linker would between two ingests. Then `patient_identities.person_id` and the open
`link_candidates` are read back and compared with `truth_person`.

How the counts are made (README.md "How the counts are made"):

* a true pair is two identities of one `truth_person` (every pair, so a person with 4
  identities has 6);
* an automatic pair is two identities with the same `person_id` after linking; it is true or
  false by the truth; precision = true automatic pairs / automatic pairs;
* a true pair is found for review when it is not automatic and an open candidate (a, b) has a
  in the person of one and b in the person of the other: accepting that one candidate joins
  the two (`direct`); `after review` also counts pairs that a reviewer who accepts every true
  candidate and rejects every false one would join (persons connected by true candidates);
* recall (auto + queue) = (automatic true pairs + direct review pairs) / true pairs;
* the review queue is the number of open candidates (pairs), also given per 100 identities;
  a candidate is true when its two identities are one truth person.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import select  # noqa: E402

from storage.index.db import Database  # noqa: E402
from storage.index.migrate import upgrade  # noqa: E402
from storage.index.models import LinkCandidate, PatientIdentity  # noqa: E402
from storage.patients import identities, linker  # noqa: E402
from storage.patients.model import Model  # noqa: E402


def _other_ids(text: str) -> tuple[tuple[str, str], ...]:
    """A row's `other_ids` ("ISSUER=VALUE;..."), as OtherPatientIDsSequence items (value, issuer)."""
    items = (part.split("=", 1) for part in text.split(";") if "=" in part)
    return tuple((value, issuer) for issuer, value in items)


def load(
    db: Database, rows: list[dict[str, str]], model: Model, batch: int
) -> tuple[dict[int, dict[str, str]], float, float]:  # noqa: E501
    """Insert and link `rows`; {identity id: row}, seconds inserting, seconds linking."""
    by_id: dict[int, dict[str, str]] = {}
    inserting = linking = 0.0
    for start in range(0, len(rows), batch):
        t0 = time.perf_counter()
        with db.write_conn() as conn:
            for row in rows[start : start + batch]:
                key = identities.IdentityKey(
                    row.get("issuer_kind") or identities.DICOM, row["issuer"], row["patient_id"]
                )
                demographics = identities.Demographics(
                    row["patient_name"],
                    row["birth_date"],
                    row["sex"],
                    row.get("address", ""),
                    row.get("national_id", ""),
                    _other_ids(row.get("other_ids", "")),
                )
                by_id[identities.upsert(conn, key, demographics)] = row
        t1 = time.perf_counter()
        while linker.link_pending(db, model, limit=10_000):
            pass
        t2 = time.perf_counter()
        inserting += t1 - t0
        linking += t2 - t1
        done = min(start + batch, len(rows))
        if done % (batch * 20) == 0 or done == len(rows):
            sys.stderr.write(f"  {done}/{len(rows)} linked, {done / max(linking, 1e-9):.0f} identities/s\n")
    return by_id, inserting, linking


def score(
    by_id: dict[int, dict[str, str]], person_of: dict[int, int], candidates: list[tuple[int, int, str]]
) -> dict[str, Any]:  # noqa: E501
    """Pairs, precision, recall and the review queue (see the module's docstring)."""
    truth = {i: row["truth_person"] for i, row in by_id.items()}
    members: dict[int, list[int]] = defaultdict(list)
    for i, p in person_of.items():
        members[p].append(i)
    by_truth: dict[str, list[int]] = defaultdict(list)
    for i, t in truth.items():
        by_truth[t].append(i)
    auto_true = auto_false = 0
    false_pairs: list[tuple[int, int]] = []
    for ids in members.values():
        for a, b in combinations(ids, 2):
            if truth[a] == truth[b]:
                auto_true += 1
            else:
                auto_false += 1
                false_pairs.append((a, b))
    true_pairs = sum(len(ids) * (len(ids) - 1) // 2 for ids in by_truth.values())
    # persons joined by one open candidate (direct), and by true candidates (after review)
    joined: set[tuple[int, int]] = set()
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    cand_true = 0
    for a, b, _ in candidates:
        pa, pb = person_of[a], person_of[b]
        joined.add((min(pa, pb), max(pa, pb)))
        if truth[a] == truth[b]:
            cand_true += 1
            parent[find(pa)] = find(pb)
    direct = after_review = 0
    missed: list[tuple[int, int]] = []
    for ids in by_truth.values():
        for a, b in combinations(ids, 2):
            pa, pb = person_of[a], person_of[b]
            if pa == pb:
                continue
            if (min(pa, pb), max(pa, pb)) in joined:
                direct += 1
            else:
                missed.append((a, b))
            if find(pa) == find(pb):
                after_review += 1
    n = len(by_id)
    auto = auto_true + auto_false
    persons = len(members)
    mixed = sum(1 for ids in members.values() if len({truth[i] for i in ids}) > 1)
    return {
        "identities": n,
        "truth_persons": len(by_truth),
        "true_pairs": true_pairs,
        "auto_pairs": auto,
        "auto_true": auto_true,
        "auto_false": auto_false,
        "auto_precision": auto_true / auto if auto else 1.0,
        "auto_recall": auto_true / true_pairs if true_pairs else 1.0,
        "review_direct_true_pairs": direct,
        "recall_auto_plus_queue": (auto_true + direct) / true_pairs if true_pairs else 1.0,
        "recall_after_review": (auto_true + after_review) / true_pairs if true_pairs else 1.0,
        "missed_pairs": len(missed),
        "queue": len(candidates),
        "queue_true": cand_true,
        "queue_false": len(candidates) - cand_true,
        "queue_pct_of_identities": 100 * len(candidates) / n if n else 0.0,
        "queue_identities_pct": 100 * len({x for a, b, _ in candidates for x in (a, b)}) / n if n else 0.0,
        "persons": persons,
        "persons_with_two_truths": mixed,
        "_false_pairs": false_pairs,
        "_missed": missed,
    }


def read_back(db: Database) -> tuple[dict[int, int], list[tuple[int, int, str]]]:
    """Each identity's person, and the open candidates with their reasons (the fields' levels)."""
    with db.read() as session:
        rows = session.execute(select(PatientIdentity.id, PatientIdentity.person_id)).all()
        person_of = {row.id: row.person_id for row in rows}
        candidates = []
        for a, b, reasons in session.execute(
            select(LinkCandidate.identity_a, LinkCandidate.identity_b, LinkCandidate.reasons).where(
                LinkCandidate.status == "open"
            )
        ):
            levels = " ".join(f"{r['field']}={r['level']}" for r in json.loads(reasons or "[]"))
            candidates.append((a, b, levels))
    return person_of, candidates


def queue_causes(
    by_id: dict[int, dict[str, str]], candidates: list[tuple[int, int, str]], top: int = 8
) -> dict[str, list[Any]]:  # noqa: E501
    """The commonest field levels of the true and the false candidates (why a pair is in review)."""
    out: dict[str, Counter[str]] = {"true": Counter(), "false": Counter()}
    for a, b, levels in candidates:
        out["true" if by_id[a]["truth_person"] == by_id[b]["truth_person"] else "false"][levels] += 1
    return {k: [[levels, n] for levels, n in c.most_common(top)] for k, c in out.items()}


def say(text: str) -> None:
    """One line (or block) of the report on standard output."""
    sys.stdout.write(text + "\n")


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "storage"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty(storage)" if dirty.stdout.strip() else "")


def table(label: str, r: dict[str, Any]) -> str:
    head = ("| set | identities | true pairs | auto pairs (false) | precision auto | recall auto | "
            "recall auto+queue | recall after review | queue (false) | queue % ids | ms/identity |")  # fmt: skip
    line = "|" + "---|" * 11
    row = (
        f"| {label} | {r['identities']:,} | {r['true_pairs']:,} | {r['auto_pairs']:,} ({r['auto_false']}) | "
        f"{r['auto_precision']:.4f} | {r['auto_recall']:.4f} | {r['recall_auto_plus_queue']:.4f} | "
        f"{r['recall_after_review']:.4f} | {r['queue']:,} ({r['queue_false']}) | {r['queue_pct_of_identities']:.2f} | "
        f"{r['ms_per_identity']:.1f} |"
    )
    return "\n".join([head, line, row])


def run(
    rows: list[dict[str, str]], *, db_dir: Path | None, model: Model, batch: int
) -> tuple[dict[str, Any], dict[int, dict[str, str]]]:  # noqa: E501
    with tempfile.TemporaryDirectory(prefix="linkage-") as tmp:
        folder = db_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "index.sqlite"
        if path.exists():
            raise SystemExit(f"{path} exists: give an empty --db folder")
        db = Database.connect(f"sqlite:///{path}", pool_size=2)
        try:
            upgrade(db.engine)
            by_id, inserting, linking = load(db, rows, model, batch)
            person_of, candidates = read_back(db)
        finally:
            db.dispose()
    result = score(by_id, person_of, candidates)
    result["queue_causes"] = queue_causes(by_id, candidates)
    result.update(
        link_at=model.link_at,
        review_at=model.review_at,
        seconds_inserting=round(inserting, 2),
        seconds_linking=round(linking, 2),
        ms_per_identity=1000 * linking / len(rows) if rows else 0.0,
        batch=batch,
        commit=git_commit(),
    )
    return result, by_id


def describe(by_id: dict[int, dict[str, str]], result: dict[str, Any], limit: int) -> str:
    """The false automatic pairs and a sample of missed pairs, with the generator's noise notes."""
    out = []
    for title, pairs in (("false automatic links", result["_false_pairs"]), ("missed true pairs", result["_missed"])):
        notes: Counter[str] = Counter()
        for a, b in pairs:
            for word in set((by_id[a].get("noise", "") + " " + by_id[b].get("noise", "")).split()):
                if not word.startswith("twin-of") and "diacritics" not in word:
                    notes[word] += 1
        out.append(f"{title}: {len(pairs)}; noise notes: {dict(notes.most_common(12))}")
        for a, b in pairs[:limit]:
            for i in (a, b):
                r = by_id[i]
                who = f"{r['truth_person']:>6} {r['issuer']:<16} {r['patient_name']:<34} {r['birth_date']:<8}"
                what = f"{r['sex']:<1} {r['national_id']:<13} {r['address'][:50]:<50} [{r.get('noise', '')}]"
                out.append(f"   {who} {what}")
            out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument(
        "--db", type=Path, default=None, help="an empty folder for the SQLite index (default: a temp dir)"
    )
    parser.add_argument("--link-at", type=float, default=None)
    parser.add_argument("--review-at", type=float, default=None)
    parser.add_argument("--batch", type=int, default=100, help="identities per ingest transaction before linking")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--label", default=None)
    parser.add_argument("--show", type=int, default=0, help="print this many false and missed pairs")
    args = parser.parse_args(argv)
    with args.csv.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    defaults = Model()
    model = Model(
        link_at=defaults.link_at if args.link_at is None else args.link_at,
        review_at=defaults.review_at if args.review_at is None else args.review_at,
    )
    result, by_id = run(rows, db_dir=args.db, model=model, batch=args.batch)
    say(table(args.label or args.csv.name, result))
    if args.show:
        say(describe(by_id, result, args.show))
        for kind, causes in result["queue_causes"].items():
            say(f"{kind} candidates, commonest levels: " + "; ".join(f"{n} x [{levels}]" for levels, n in causes))
    if args.json:
        public = {k: v for k, v in result.items() if not k.startswith("_")}
        public.update(csv=str(args.csv), label=args.label or args.csv.name)
        args.json.write_text(json.dumps(public, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
