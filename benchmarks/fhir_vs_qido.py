#!/usr/bin/env python3
"""Helpers of benchmarks/fhir.sh: FHIR ImagingStudy search against the same question through QIDO-RS.

    python benchmarks/fhir_vs_qido.py pick   --database-url URL --org ORG --from 2020-01-01 --to 2020-01-03
    python benchmarks/fhir_vs_qido.py time   --base http://127.0.0.1:8420 --token T --warmup 20 --runs 200 \\
        --pair 'fhir /fhir/ImagingStudy?...' --pair 'qido /dicomweb/studies?...' ...
    python benchmarks/fhir_vs_qido.py pieces --database-url URL --org ORG|admin --fhir 'patient=...' --qido '...'

pick    the patient of the by-patient queries: of the identities owned by ORG (patients are dealt
        to the organizations in turn, so ORG's clinician sees all their studies), the one with the
        most studies (ties: the lowest id), leaving out the patient of gen_index.py's 500-instance
        "big study" (an outlier made on purpose for another benchmark), and a typical one (the
        first with the median number of studies of ORG's patients); and how many studies the date range holds, for the
        admin and for ORG (owned or shared to it). One JSON line.
time    one httpx.Client (keep-alive, one connection) for every request. First each path once:
        it must answer 200, and the Study Instance UIDs must be the same set in every request of a
        group (FHIR: the ImagingStudy ids of the searchset's entries; QIDO: 0020000D); then WARMUP
        rounds and RUNS timed rounds, a round being each path once in turn, the order rotating
        round by round (FHIR first, then QIDO first, ...), so the machine's other work hits them
        alike. A request's time: from sending to the last byte of the body read (perf_counter).
        One JSON line per path: label, path, status, matches, total (FHIR's), bytes, values (ms).
pieces  what one FHIR search costs, piece by piece, in this process against the same index (no
        HTTP): the route's own steps (fhir_adapter/router.py search_imaging_studies: the study
        page, its series and instances, the COUNT of `total`, each ImagingStudy validated by
        fhir.resources, the searchset Bundle built (fhir_adapter/bundle.py: validated again, with
        every resource in it), its body serialized by the stdlib json as JSONResponse does), and the
        QIDO-RS search of the same question (storage.query.search.search and its orjson body).
        Median of RUNS after WARMUP. One JSON line.
load    one path, back to back on one connection, for SECONDS (the load a profiler samples).
summarize  a py-spy raw profile of the server: the share of the request path's samples spent
        under each piece (validation and dump of the ImagingStudies, of the Bundle, the page's
        queries, the COUNT, the QIDO search, the JSON body, the audit record; inclusive, so they
        may overlap) and in the database driver. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install


def _out(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def cmd_pick(args: argparse.Namespace) -> None:
    from sqlalchemy import create_engine, func, or_, select

    from storage.index.models import PatientIdentity, Share, Study, StudyOwner

    engine = create_engine(args.database_url)
    low, high = args.date_from.replace("-", ""), args.date_to.replace("-", "")
    with engine.connect() as c:
        # the first study is gen_index.py's 500-instance CT: its patient is an outlier, left out
        big = select(Study.identity_id).where(Study.study_uid == args.big_study).scalar_subquery()
        counts = (
            select(Study.identity_id, func.count().label("n"))
            .join(StudyOwner, StudyOwner.study_id == Study.id)
            .where(StudyOwner.org_id == args.org, Study.identity_id != big)
            .group_by(Study.identity_id)
            .subquery()
        )
        row = c.execute(
            select(
                PatientIdentity.id,
                PatientIdentity.patient_id,
                PatientIdentity.issuer_kind,
                PatientIdentity.issuer,
                PatientIdentity.person_id,
                counts.c.n,
            )
            .join(counts, counts.c.identity_id == PatientIdentity.id)
            .order_by(counts.c.n.desc(), PatientIdentity.id)
            .limit(1)
        ).one()
        per_patient = [n for (n,) in c.execute(select(counts.c.n))]
        typical_n = round(statistics.median(per_patient)) if per_patient else 0
        typical = c.execute(
            select(PatientIdentity.id, PatientIdentity.patient_id, counts.c.n)
            .join(counts, counts.c.identity_id == PatientIdentity.id)
            .where(counts.c.n == typical_n)
            .order_by(PatientIdentity.id)
            .limit(1)
        ).one()
        in_range = Study.study_date.between(low, high)
        admin_range = c.scalar(select(func.count()).select_from(Study).where(in_range))
        shared = select(Share.study_id).where(Share.to_org == args.org, Share.revoked_at.is_(None))
        owned = select(StudyOwner.study_id).where(StudyOwner.org_id == args.org)
        org_range = c.scalar(
            select(func.count()).select_from(Study).where(in_range, or_(Study.id.in_(owned), Study.id.in_(shared)))
        )
        totals = {
            "studies": c.scalar(select(func.count()).select_from(Study)),
            "identities": c.scalar(select(func.count()).select_from(PatientIdentity)),
            "identities_with_person": c.scalar(
                select(func.count()).select_from(PatientIdentity).where(PatientIdentity.person_id.is_not(None))
            ),
        }
    engine.dispose()
    issuer = {"org": "urn:pacs:org:"}.get(row.issuer_kind, "") + row.issuer
    _out(
        {
            "identity": row.id,
            "patient_id": row.patient_id,
            "issuer": issuer,
            "person_id": row.person_id,
            "studies_of_patient": row.n,
            "org_patients": len(per_patient),
            "typical_identity": typical.id,
            "typical_patient_id": typical.patient_id,
            "typical_studies": typical.n,
            "org_median_studies_per_patient": statistics.median(per_patient) if per_patient else 0,
            "range": [low, high],
            "range_studies_admin": admin_range,
            "range_studies_org": org_range,
            **totals,
        }
    )


def _uids(label: str, body: bytes) -> tuple[list[str], int | None]:
    data = json.loads(body)
    if label.startswith("fhir"):
        if data.get("resourceType") != "Bundle":
            raise SystemExit(f"{label}: not a Bundle: {body[:300]!r}")
        uids = [
            e["resource"]["id"] for e in data.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"
        ]
        return uids, data.get("total")
    return [m["0020000D"]["Value"][0] for m in data], None


def cmd_time(args: argparse.Namespace) -> None:
    import httpx

    pairs = [p.split(" ", 1) for p in args.pair]
    headers = {"Authorization": f"Bearer {args.token}"}
    out: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=args.base, headers=headers, timeout=120) as client:
        uid_sets = []
        for label, path in pairs:
            r = client.get(path)
            info: dict[str, Any] = {"label": label, "path": path, "status": r.status_code, "bytes": len(r.content)}
            if r.status_code == 200:
                uids, total = _uids(label, r.content)
                info.update(matches=len(uids), total=total, distinct=len(set(uids)))
                uid_sets.append(set(uids))
            else:
                info.update(matches=None, total=None, error=r.text[:300])
            out[label] = info
            _err(
                f"  probe {label}: HTTP {r.status_code}, {info.get('matches')} studies"
                f"{'' if info.get('total') is None else ', total ' + str(info['total'])}, {len(r.content)} bytes"
            )
        same = len(uid_sets) == len(pairs) and all(s == uid_sets[0] for s in uid_sets)
        for info in out.values():
            info["same_uids"] = same
            info["values"] = []
        if not same:
            _err("  the groups do not answer the same Study Instance UIDs (or not 200): not timed")
            for info in out.values():
                _out(info)
            return

        def one(label: str, path: str) -> float:
            t0 = time.perf_counter()
            r = client.get(path)
            r.read()
            ms = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                raise SystemExit(f"{label}: HTTP {r.status_code} during the timing: {r.text[:300]}")
            return ms

        n = len(pairs)
        for i in range(args.warmup + args.runs):
            for k in range(n):
                label, path = pairs[(i + k) % n]
                ms = one(label, path)
                if i >= args.warmup:
                    out[label]["values"].append(round(ms, 3))
    for info in out.values():
        _out(info)


def _median(fn: Any, warmup: int, runs: int) -> tuple[float, Any]:
    for _ in range(warmup):
        fn()
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), result


def cmd_pieces(args: argparse.Namespace) -> None:
    import orjson
    from starlette.responses import JSONResponse

    from fhir_adapter import imaging_study
    from fhir_adapter.bundle import searchset
    from fhir_adapter.params import count as fhir_count
    from gateway.dicomweb.qido import parse_params
    from storage.access.context import Channel, Context
    from storage.access.principal import Principal, Role
    from storage.index.db import Database
    from storage.query import imaging
    from storage.query.keys import STUDY
    from storage.query.search import Query, search

    if args.org == "admin":
        principal = Principal(sub="admin", org=None, roles=frozenset({Role.ADMIN}))
    else:
        principal = Principal(sub=f"clinician@{args.org}", org=args.org, roles=frozenset({Role.CLINICIAN}))
    fctx = Context(principal, Channel.FHIR if hasattr(Channel, "FHIR") else Channel.DICOMWEB, "127.0.0.1")
    qctx = Context(principal, Channel.DICOMWEB, "127.0.0.1")
    db = Database.connect(args.database_url)
    fq: dict[str, list[str]] = {}
    for k, v in parse_qsl(args.fhir, keep_blank_values=True):
        fq.setdefault(k, []).append(v)
    keys, updated = imaging_study.keys_of(fq)
    subject = imaging_study.patient_of(fq)
    limit = fhir_count(fq.get("_count", []))
    wanted = Query("STUDY", keys)
    res: dict[str, Any] = {"fhir": args.fhir, "qido": args.qido, "caller": args.org}
    w, n = args.warmup, args.runs

    with db.read(per_statement=True) as session:
        from sqlalchemy import select

        conditions = [imaging.visible_to(fctx), *imaging._conditions(wanted, fctx, subject)]
        stmt = (
            select(*imaging._STUDY)
            .where(*conditions)
            .order_by(imaging.Study.study_date.desc(), imaging.Study.id.desc())
            .limit(limit + 1)
        )
        res["study_page_ms"], rows = _median(lambda: list(session.execute(stmt).all()), w, n)
        ids = [r.id for r in rows[:limit]]
        res["members_ms"], _ = _median(lambda: imaging._members(session, ids), w, n)
        res["page_total_ms"], found = _median(
            lambda: imaging.page(wanted, fctx, session=session, limit=limit, updated=updated, patient=subject), w, n
        )
        res["count_ms"], total = _median(
            lambda: imaging.count(wanted, fctx, session=session, updated=updated, patient=subject), w, n
        )
    res["studies"] = len(found.studies)
    res["series"] = sum(len(v) for v in found.series.values())
    res["instances"] = sum(len(v) for v in found.instances.values())
    res["total"] = total
    res["validate_ms"], matches = _median(lambda: [imaging_study.resource(r, found) for r in found.studies], w, n)
    own = parse_qsl(args.fhir, keep_blank_values=True)
    res["bundle_ms"], bundle = _median(
        lambda: searchset("http://127.0.0.1/fhir", "ImagingStudy", own, matches, total, None, []), w, n
    )
    res["serialize_ms"], body = _median(lambda: JSONResponse(bundle).body, w, n)
    res["fhir_bytes"] = len(body)

    qparams = parse_qsl(args.qido, keep_blank_values=True)
    query, qlimit, offset, _ = parse_params(qparams, STUDY)
    with db.read(per_statement=True) as session:
        res["qido_search_ms"], result = _median(
            lambda: search(
                query, qctx, session=session, limit=qlimit, offset=offset, base_url="http://127.0.0.1/dicomweb"
            ),
            w,
            n,
        )
    res["qido_serialize_ms"], qbody = _median(lambda: result.to_json(), w, n)
    res["qido_matches"] = len(result.matches)
    res["qido_bytes"] = len(qbody if isinstance(qbody, bytes) else orjson.dumps(qbody))
    db.dispose()
    _out(res)


def cmd_load(args: argparse.Namespace) -> None:
    import httpx

    n, end = 0, time.monotonic() + args.seconds
    with httpx.Client(base_url=args.base, headers={"Authorization": f"Bearer {args.token}"}, timeout=120) as client:
        while time.monotonic() < end:
            r = client.get(args.path)
            if r.status_code != 200:
                raise SystemExit(f"HTTP {r.status_code}: {r.text[:300]}")
            n += 1
    _out({"path": args.path, "requests": n, "seconds": args.seconds})


#: what `summarize` counts a sample in (the first frame of a stack naming it), in this order
PIECES = {
    "ImagingStudy validated and dumped (imaging_study.resource)": "resource (fhir_adapter/imaging_study.py",
    "Bundle validated and dumped (bundle.searchset)": "searchset (fhir_adapter/bundle.py",
    "study page + series/instances (imaging.page)": "page (storage/query/imaging.py",
    "COUNT for total (imaging.count)": "count (storage/query/imaging.py",
    "QIDO search (storage.query.search)": "search (storage/query/search.py",
    "JSON body (JSONResponse.render)": "render (starlette",
    "audit record": "audit",
}


def cmd_summarize(args: argparse.Namespace) -> None:
    """Inclusive share of py-spy raw samples spent under each piece, of the samples in the request
    path (a stack through fastapi or starlette: the HTTP worker threads, idle waits left out)."""
    total, inclusive, sql = 0, dict.fromkeys(PIECES, 0), 0
    for line in open(args.raw):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if "fastapi" not in stack and "starlette" not in stack:
            continue
        n = int(count)
        total += n
        for name, pattern in PIECES.items():
            if pattern in stack:
                inclusive[name] += n
        if "do_execute (sqlalchemy" in stack or "do_commit (sqlalchemy" in stack:
            sql += n
    shares = {name: round(100 * v / total, 1) for name, v in inclusive.items() if v} if total else {}
    _out(
        {
            "raw": Path(args.raw).name,
            "samples": total,
            "percent": shares,
            "percent_in_database_driver": round(100 * sql / total, 1) if total else None,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pick")
    p.add_argument("--database-url", required=True)
    p.add_argument("--org", required=True)
    p.add_argument("--from", dest="date_from", required=True)
    p.add_argument("--to", dest="date_to", required=True)
    p.add_argument("--big-study", default="1.2.826.0.1.3680043.8.498.99.1.1", help="its patient is left out")
    t = sub.add_parser("time")
    t.add_argument("--base", required=True)
    t.add_argument("--token", required=True)
    t.add_argument("--pair", action="append", required=True, help="'LABEL PATH' (labels starting fhir are FHIR)")
    t.add_argument("--warmup", type=int, default=20)
    t.add_argument("--runs", type=int, default=200)
    c = sub.add_parser("pieces")
    c.add_argument("--database-url", required=True)
    c.add_argument("--org", required=True, help="an organization's clinician, or admin")
    c.add_argument("--fhir", required=True, help="the ImagingStudy search's query string")
    c.add_argument("--qido", required=True, help="the QIDO-RS studies search's query string")
    c.add_argument("--warmup", type=int, default=5)
    c.add_argument("--runs", type=int, default=30)
    lo = sub.add_parser("load")
    lo.add_argument("--base", required=True)
    lo.add_argument("--token", required=True)
    lo.add_argument("--path", required=True)
    lo.add_argument("--seconds", type=float, default=20)
    su = sub.add_parser("summarize")
    su.add_argument("raw", help="py-spy record -f raw output")
    args = ap.parse_args()
    {"pick": cmd_pick, "time": cmd_time, "pieces": cmd_pieces, "load": cmd_load, "summarize": cmd_summarize}[args.cmd](
        args
    )


if __name__ == "__main__":
    main()
