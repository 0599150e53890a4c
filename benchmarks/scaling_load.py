#!/usr/bin/env python3
"""Helpers of benchmarks/scaling.sh ("[9/10] Deploy and scale out"), standard library only.

scaling_load.py qido  --base URL [--base URL ...] --path PATH --token-file F
                      [--clients 8] [--seconds 20] [--warmup 2]
    K client threads, client i on gateway i mod P (one keep-alive connection each), send
    GET /dicomweb/PATH back to back: WARMUP s not counted, then SECONDS s counted (requests that
    finish inside the window). Every answer must be 200 with the same number of results as
    the first. Prints one JSON object: requests, errors, rps, p50/p95/mean ms, the number of
    results, the client's own CPU seconds in the window.
scaling_load.py count --base URL --token-file F
    Instances and studies the index holds: studies?limit=1000, the sum of 00201208.
    Prints "INSTANCES STUDIES".
scaling_load.py table TSV
    Two Markdown tables of a scaling TSV (ingest; QIDO-RS): medians of the valid repetitions,
    (min-max) when there are several.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import statistics
import sys
import threading
import time
from urllib.parse import urlparse

from _stats import cell  # "median (min-max)", as every benchmark table here


def out(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")


def _conn(base: str) -> tuple[http.client.HTTPConnection, str]:
    u = urlparse(base)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=60), u.path.rstrip("/")


def _get(conn: http.client.HTTPConnection, path: str, token: str) -> tuple[int, bytes]:
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"})
    resp = conn.getresponse()
    return resp.status, resp.read()


def _results(body: bytes) -> int:
    try:
        return len(json.loads(body)) if body else 0
    except ValueError:
        return -1


def qido(args: argparse.Namespace) -> None:
    token = open(args.token_file).read().strip()
    start = time.perf_counter() + 0.2  # every thread connected before the clock starts
    window0 = start + args.warmup
    window1 = window0 + args.seconds
    lat: list[list[float]] = [[] for _ in range(args.clients)]
    errors = [0] * args.clients
    statuses: dict[int, int] = {}
    expected: list[int] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        conn, prefix = _conn(args.base[i % len(args.base)])
        path = f"{prefix}/dicomweb/{args.path}"
        while time.perf_counter() < start:
            time.sleep(0.001)
        while True:
            t0 = time.perf_counter()
            if t0 >= window1:
                break
            try:
                status, body = _get(conn, path, token)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn, _ = _conn(args.base[i % len(args.base)])
                status, body = 0, b""
            t1 = time.perf_counter()
            ok = status == 200
            if ok:
                n = _results(body)
                with lock:
                    if not expected:
                        expected.append(n)
                    ok = n == expected[0]
            if not ok:
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
            if window0 <= t1 <= window1:
                if ok:
                    lat[i].append((t1 - t0) * 1000)
                else:
                    errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, window0 - time.perf_counter()))
    c0 = os.times()
    time.sleep(max(0.0, window1 - time.perf_counter()))
    c1 = os.times()
    for t in threads:
        t.join(120)
    allv = sorted(v for per in lat for v in per)

    def q(p: float) -> float:
        if not allv:
            return float("nan")
        k = (len(allv) - 1) * p
        lo = int(k)
        hi = min(lo + 1, len(allv) - 1)
        return allv[lo] + (allv[hi] - allv[lo]) * (k - lo)

    summary = {
        "requests": len(allv),
        "errors": sum(errors),
        "statuses": statuses,
        "seconds": args.seconds,
        "rps": round(len(allv) / args.seconds, 2),
        "p50_ms": round(q(0.5), 3),
        "p95_ms": round(q(0.95), 3),
        "mean_ms": round(statistics.fmean(allv), 3) if allv else None,
        "results": expected[0] if expected else None,
        "clients": args.clients,
        "gateways": len(args.base),
        "client_cpu_s": round((c1.user - c0.user) + (c1.system - c0.system), 3),
    }
    out(json.dumps(summary))


def count(args: argparse.Namespace) -> None:
    token = open(args.token_file).read().strip()
    conn, prefix = _conn(args.base[0])
    status, body = _get(conn, f"{prefix}/dicomweb/studies?limit=1000", token)
    if status != 200:
        sys.exit(f"count: HTTP {status}: {body[:200]!r}")
    studies = json.loads(body) if body else []
    total = sum(int(s.get("00201208", {}).get("Value", [0])[0]) for s in studies)
    out(total, len(studies))


def _num(r: dict[str, str], col: str) -> float:
    try:
        return float(r[col])
    except (KeyError, ValueError):
        return float("nan")


def _cell(values: list[float], digits: int = 1) -> str:
    """`_stats.cell` (the median, with min-max) of the values measured (NaN: not measured)."""
    return cell([x for x in values if x == x], digits)


def table(args: argparse.Namespace) -> None:
    """Two Markdown tables (ingest; QIDO-RS) of medians over the valid repetitions."""
    rows = list(csv.DictReader(open(args.tsv), delimiter="\t"))
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["config"], r["procs"], r["phase"]), []).append(r)

    def valid(key: tuple[str, str, str]) -> tuple[list[dict[str, str]], str]:
        rs = groups[key]
        ok = [r for r in rs if r.get("valid") == "1"]
        return ok, f"{len(ok)} of {len(rs)}"

    out(
        "| config | processes per service | senders | ingest inst/s | MB/s | SCP CPU ms/inst | gateways' CPU ms/inst "
        "| PostgreSQL CPU ms/inst | Ceph CPU ms/inst | rest of the machine ms/inst | machine busy (of all cores) "
        "| disk flushes/inst | valid runs |"
    )
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for key in groups:
        if key[2] != "ingest":
            continue
        ok, nvalid = valid(key)

        def per(col: str, ok: list[dict[str, str]] = ok) -> str:
            return _cell([_num(r, col) / _num(r, "n") * 1000 for r in ok])

        rest = [
            (_num(r, "busy_s") - sum(_num(r, c) for c in ("cpu_dicom_s", "cpu_http_s", "cpu_pg_s", "cpu_ceph_s")))
            / _num(r, "n")
            * 1000
            for r in ok
        ]
        busy = [_num(r, "busy_s") / (_num(r, "wall_s") * _num(r, "ncpu")) * 100 for r in ok]
        flushes = [_num(r, "dev_flushes") / _num(r, "n") for r in ok]
        senders = groups[key][0].get("clients", "")
        http = per("cpu_http_s") if key[0] != "sqlite-fs" else "(in the SCP's)"
        out(
            f"| {key[0]} | {key[1]} | {senders} | {_cell([_num(r, 'rate') for r in ok])} "
            f"| {_cell([_num(r, 'MB_s') for r in ok])} | {per('cpu_dicom_s')} | {http} | {per('cpu_pg_s')} "
            f"| {per('cpu_ceph_s')} | {_cell(rest)} | {_cell(busy, 0)} % | {_cell(flushes, 2)} | {nvalid} |"
        )
    out()
    out(
        "| config | processes per service | query | clients | req/s | p50 ms | p95 ms | gateway CPU ms/req "
        "| PostgreSQL CPU ms/req | client CPU ms/req | machine busy (of all cores) | disk flushes/req | valid runs |"
    )
    out("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for key in groups:
        if not key[2].startswith("qido"):
            continue
        ok, nvalid = valid(key)
        query = "studies?limit=100 (all)" if key[2] == "qido-all" else "studies?PatientID= (one)"
        # the baseline serves both in one process, counted as the SCP's
        gw = [
            (_num(r, "cpu_http_s") + (_num(r, "cpu_dicom_s") if key[0] == "sqlite-fs" else 0)) / _num(r, "n") * 1000
            for r in ok
        ]
        pg = [_num(r, "cpu_pg_s") / _num(r, "n") * 1000 for r in ok]
        client = [_num(r, "cpu_client_s") / _num(r, "n") * 1000 for r in ok]
        busy = [_num(r, "busy_s") / (_num(r, "wall_s") * _num(r, "ncpu")) * 100 for r in ok]
        flushes = [_num(r, "dev_flushes") / _num(r, "n") for r in ok]
        clients = groups[key][0].get("clients", "")
        rate = _cell([_num(r, "rate") for r in ok], 0)
        out(
            f"| {key[0]} | {key[1]} | {query} | {clients} | {rate} "
            f"| {_cell([_num(r, 'p50_ms') for r in ok])} | {_cell([_num(r, 'p95_ms') for r in ok])} | {_cell(gw, 2)} "
            f"| {_cell(pg, 2)} | {_cell(client, 2)} | {_cell(busy, 0)} % | {_cell(flushes, 2)} | {nvalid} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("qido")
    p.add_argument("--base", action="append", required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--warmup", type=float, default=2)
    p.set_defaults(fn=qido)
    p = sub.add_parser("count")
    p.add_argument("--base", action="append", required=True)
    p.add_argument("--token-file", required=True)
    p.set_defaults(fn=count)
    p = sub.add_parser("table")
    p.add_argument("tsv")
    p.set_defaults(fn=table)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
