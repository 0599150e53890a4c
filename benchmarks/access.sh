#!/usr/bin/env bash
# Access control and audit benchmark ("[6/10]"): what per-organization visibility costs QIDO-RS on
# 1,000,000 generated index rows, and what the per-request audit trail costs queries and ingest.
#
#   bash benchmarks/access.sh                    # all phases: qido audit table, on every backend
#   BACKENDS=sqlite bash benchmarks/access.sh qido table
#   TSV=benchmarks/results/access-<stamp>.tsv bash benchmarks/access.sh table   # table of an earlier run
#
# Phases (each on every backend of BACKENDS in turn):
#   qido   benchmarks/gen_index.py --instances INSTANCES --orgs ORGS --shared SHARED (reused with
#          --reuse when the database already holds exactly that, else generated with --reset), then
#          `pacs serve` on it (audit on, as deployed) and QIDO-RS latency, p50 / p95 of RUNS requests
#          after WARMUP, for (a) studies?PatientName=NAME and (b) studies?limit=1000, each as a
#          clinician of ORG (token from `pacs token`) and as the admin (DIR/admin-token). Then, with
#          the server stopped, the SQL of each search, rebuilt by storage/query/search.py exactly as
#          the route builds it, with its plan (SQLite EXPLAIN QUERY PLAN and a timed run; PostgreSQL
#          EXPLAIN (ANALYZE, BUFFERS)): $LOGS/plan-<backend>-<caller>-<query>.txt.
#   audit  ROUNDS rounds, each with two servers side by side, PACS_AUDIT=true (`on`) and
#          PACS_AUDIT=false (`off`), started together and stopped together, every request
#          alternating between them (on first, then off first, ...) so that the machine's other work
#          hits both alike:
#            QIDO    the name query as clinician and admin, both servers on the 1M index (`off` with a
#                    data folder of its own), WARMUP then AUDIT_RUNS requests each;
#            STOW-RS INGEST_N small CT instances (tests/kit/dicom_factory.py ct_dataset, 64x64, 10
#                    studies), one POST /dicomweb/studies per instance (admin token), each file to
#                    both servers in turn, each into a fresh archive of its own; then the same files
#                    STOW_BATCH to a request (a modality's or a migration's body), fresh archives again;
#            C-STORE the same files (and CSTORE_SETS - 1 more sets like them, UIDs of their own) by
#                    dcmtk storescu, one association per set and server (fresh archives again), the
#                    servers alternating set by set.
#          Every run checks what it left: the instances stored, and the audit_records rows written
#          (one per request or per study and association when on, none when off).
#   table  Markdown of the TSV (also saved as .md)
#
# Output: benchmarks/results/access-<UTC stamp>.tsv (record.sh's columns: one row per measurement,
# all samples), .md, .meta (commit, machine, load, the busiest processes) and a folder with the
# server logs, the generator's output and the plans. results/ is git-ignored.
#
# Settings (environment):
#   PACS_BIN      our server (default $REPO/.venv/bin/pacs, else `pacs` on PATH); its venv's python
#                 (PACS_PY) runs gen_index.py and the helpers below
#   BACKENDS      ("sqlite postgresql"); postgresql runs when PG_URL is set or the dev server of
#                 /tmp/work/pg.url answers, else it is skipped with a message
#   PG_URL        a PostgreSQL server (SQLAlchemy URL). Its own database is left alone: the script
#                 makes PG_DB (the 1M index, kept between runs) and PG_DB_ingest_on / _off (made
#                 afresh for every ingest run) on that server: the URL's user must be allowed CREATE DATABASE
#   PG_DB         (pacs_bench_access)
#   INSTANCES (1000000) ORGS (20) SHARED (0.01) SEED (7); REUSE (1; 0 = always generate afresh)
#   ORG           the clinician's organization (spital-municipal: ~1/ORGS of the studies, plus shares)
#   NAME          the name query's value (POPESCU*: the most frequent family name, ~6 % of studies)
#   RUNS (200) WARMUP (20) ROUNDS (4) AUDIT_RUNS (200) INGEST_N (300) CSTORE_SETS (3)
#   STOW_BATCH (10): instances per request of the second STOW-RS measure (bodies made from set 1's
#                 files, STOW_BATCH consecutive files of one study each)
#   BENCH_DATA    (/tmp/bench-data): pacs-access-sqlite (the 1M index and its data folder),
#                 pacs-access-postgresql (data folder), *-off (the `off` server's data folders),
#                 pacs-access-ingest-on / -off (made afresh for every ingest run),
#                 access-ct<INGEST_N> (the CT files and their STOW-RS bodies, made once)
#   PACS_DICOM_PORT / PACS_HTTP_PORT  first ports tried (11410 / 8410); the next free ones are taken,
#                 two of each (`on`, `off`)
#   TSV           append to this TSV instead of a new one
#
# Every server runs with PACS_HTTP_RATE_LIMIT=0 and PACS_DICOM_RATE_LIMIT=0: RUNS back-to-back
# requests of one token exceed the default 50 per second, and this measures latency, not the limiter.
set -euo pipefail

export TCP_NODELAY=1
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
export BENCH_DATA=${BENCH_DATA:-/tmp/bench-data}
BACKENDS=${BACKENDS:-"sqlite postgresql"}
PG_URL=${PG_URL:-}
PG_DB=${PG_DB:-pacs_bench_access}
INSTANCES=${INSTANCES:-1000000}
ORGS=${ORGS:-20}
SHARED=${SHARED:-0.01}
SEED=${SEED:-7}
REUSE=${REUSE:-1}
ORG=${ORG:-spital-municipal}
NAME=${NAME:-POPESCU*}
RUNS=${RUNS:-200}
WARMUP=${WARMUP:-20}
ROUNDS=${ROUNDS:-4}
AUDIT_RUNS=${AUDIT_RUNS:-200}
INGEST_N=${INGEST_N:-300}
CSTORE_SETS=${CSTORE_SETS:-3}
STOW_BATCH=${STOW_BATCH:-10}
PACS_DICOM_PORT=${PACS_DICOM_PORT:-11410}
PACS_HTTP_PORT=${PACS_HTTP_PORT:-8410}
PACS_AET=MUNIPACS
SCU_AET=ACCESSSCU
CT_DIR=$BENCH_DATA/access-ct$INGEST_N
INGEST_DIR=$BENCH_DATA/pacs-access-ingest
Q_NAME="studies?PatientName=$NAME"
Q_PAGE="studies?limit=1000"

# shellcheck source=benchmarks/lib.sh
source "$HERE/lib.sh"   # log, die, port_busy, pacs_start, pacs_stop

if [ -z "${PACS_BIN:-}" ]; then
  if [ -x "$REPO/.venv/bin/pacs" ]; then PACS_BIN=$REPO/.venv/bin/pacs
  else PACS_BIN=$(command -v pacs) || die "no pacs executable: run 'make dev' or set PACS_BIN"; fi
fi
[ -x "$PACS_BIN" ] || die "PACS_BIN=$PACS_BIN is not executable"
PACS_PY=${PACS_PY:-$(dirname "$PACS_BIN")/python}
[ -x "$PACS_PY" ] || die "no python at $PACS_PY (set PACS_PY)"
for tool in storescu curl jq ss python3; do command -v "$tool" >/dev/null || die "$tool not found"; done

free_port() { local p=$1; while port_busy "$p"; do p=$((p + 1)); done; echo "$p"; }
HTTP_ON=$(free_port "$PACS_HTTP_PORT"); HTTP_OFF=$(free_port $((HTTP_ON + 1)))
DICOM_ON=$(free_port "$PACS_DICOM_PORT"); DICOM_OFF=$(free_port $((DICOM_ON + 1)))

# ---------------------------------------------------------------- output
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$REPO/benchmarks/results
TSV=${TSV:-$RESULTS/access-$STAMP.tsv}
LOGS=${TSV%.tsv}
mkdir -p "$LOGS"
# shellcheck source=benchmarks/record.sh
source "$HERE/record.sh"   # now, commit, fingerprint, record; REV

# the servers, by name (`on`, `off`: see server_start below)
declare -A S_HTTP=([on]=$HTTP_ON [off]=$HTTP_OFF) S_DICOM=([on]=$DICOM_ON [off]=$DICOM_OFF)
declare -A S_PGID=() S_ADMIN=() S_CLIN=() S_DW=()
cleanup() { local s; for s in on off; do server_stop "$s"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- python helpers (the server's venv)
py() { PYTHONPATH=$REPO "$PACS_PY" - "$@"; }

pg_reachable() { # URL
  py "$1" <<'PY' >/dev/null 2>&1
import sys
import psycopg
from sqlalchemy.engine import make_url
u = make_url(sys.argv[1])
psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database, connect_timeout=3).close()
PY
}

pg_database() { # URL NAME [fresh]: make database NAME on URL's server (dropped first when fresh); print its URL
  py "$@" <<'PY'
import sys
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url
u, name, fresh = make_url(sys.argv[1]), sys.argv[2], sys.argv[3:] == ["fresh"]
if name == u.database:
    sys.exit(f"refusing to use the URL's own database {name}")
with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database,
                     autocommit=True) as conn:
    if fresh:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
print(u.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False))
PY
}

count_rows() { # URL: "instances audit_records" (0 for a table not there yet)
  py "$1" <<'PY'
import sys
from sqlalchemy import create_engine, inspect, text
e = create_engine(sys.argv[1])
with e.connect() as c:
    have = set(inspect(c).get_table_names())
    print(*(c.scalar(text(f"SELECT count(*) FROM {t}")) if t in have else 0 for t in ("instances", "audit_records")))
e.dispose()
PY
}

explain() { # URL PATH_AND_QUERY CALLER(admin|org id) -> the statement, its plan, its execution time (last line: ms)
  py "$REPO" "$@" <<'PY'
import sys, time
from urllib.parse import parse_qsl
repo, url, path_query, caller = sys.argv[1:5]
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from gateway.dicomweb.qido import parse_params
from storage.access.context import Channel, Context
from storage.access.principal import Principal, Role
from storage.query.keys import STUDY
from storage.query.search import _PLANNERS, MAX_RESULTS

# the statement `search` runs for this request: same parameters parser, planner, limit and offset
query, limit, offset, _ = parse_params(parse_qsl(path_query.partition("?")[2], keep_blank_values=True), STUDY)
if caller == "admin":
    principal = Principal(sub="admin", org=None, roles=frozenset({Role.ADMIN}))
else:
    principal = Principal(sub=f"clinician@{caller}", org=caller, roles=frozenset({Role.CLINICIAN}))
engine = create_engine(url)
pg = engine.dialect.name == "postgresql"
size = MAX_RESULTS if limit is None else min(limit, MAX_RESULTS)
with Session(engine) as session:
    plan = _PLANNERS[STUDY](query, Context(principal, Channel.DICOMWEB, "127.0.0.1"), session, "")
    # as compiled for psycopg (pyformat), a literal % is already doubled: run as is, shown single
    run = str(plan.page(size + 1, offset).compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    print(run.replace("%%", "%") if pg else run)
    conn = session.connection()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        n = len(conn.exec_driver_sql(run).all())
        times.append((time.perf_counter() - t0) * 1000)
    if pg:
        print("-- EXPLAIN (ANALYZE, BUFFERS)")
        lines = [r[0] for r in conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + run)]
        print("\n".join(lines))
        ms = next(float(x.split(":")[1].split()[0]) for x in lines if x.startswith("Execution Time"))
        print(f"-- {n} rows; fetched by the client in {sorted(times)[2]:.2f} ms (median of 5)")
    else:
        print("-- EXPLAIN QUERY PLAN")
        for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + run):
            print(f"{row[0]:>4} {row[1]:>4} {row[3]}")
        ms = sorted(times)[2]
        print(f"-- {n} rows; executed and fetched in {ms:.2f} ms (median of 5)")
print(f"{ms:.3f}")
engine.dispose()
PY
}

make_ct() { # CT_DIR: CSTORE_SETS sets of INGEST_N CT files (10 studies, 64x64, UIDs of their own);
  # set 1 (files/) also as one STOW-RS body per file (bodies/); sets 2.. in files-2/, files-3/, ...
  local k
  for k in $(seq 1 "$CSTORE_SETS"); do
    [ -f "$CT_DIR/.done-$k" ] && continue
    py "$REPO" "$CT_DIR" "$INGEST_N" "$k" <<'PY'
import importlib.util, sys
from pathlib import Path
repo, out, n, k = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
spec = importlib.util.spec_from_file_location("dicom_factory", f"{repo}/tests/kit/dicom_factory.py")
f = importlib.util.module_from_spec(spec); spec.loader.exec_module(f)
BOUNDARY = "access-bench-boundary"
files = out / ("files" if k == 1 else f"files-{k}")
bodies = out / "bodies"
files.mkdir(parents=True, exist_ok=True)
if k == 1:
    bodies.mkdir(parents=True, exist_ok=True)
studies = 10
per = (n + studies - 1) // studies
for s in range(studies):
    st, se = f.uid(), f.uid()
    for j in range(per):
        i = s * per + j
        if i >= n:
            break
        ds = f.ct_dataset(study_uid=st, series_uid=se, patient_id=f"ACC-{k}-{s + 1:03d}",
                          patient_name=f"BENCH^ACCESS{k}-{s + 1}", rows=64, columns=64, instance_number=j + 1)
        data = f.to_bytes(ds)
        (files / f"{i + 1:04d}.dcm").write_bytes(data)
        if k == 1:
            part = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            (bodies / f"{i + 1:04d}.body").write_bytes(part + data + f"\r\n--{BOUNDARY}--\r\n".encode())
(out / f".done-{k}").write_text(BOUNDARY + "\n")
PY
  done
}

# ---------------------------------------------------------------- backends
# backend_setup BACKEND: DIR (data folder of the 1M index's server), URL (the index); 1 if skipped
DIR= URL=
resolve_pg() {
  if [ -z "$PG_URL" ] && [ -s /tmp/work/pg.url ]; then PG_URL=$(cat /tmp/work/pg.url); fi
  [ -n "$PG_URL" ] || { log "postgresql: no PG_URL and no /tmp/work/pg.url: skipped"; return 1; }
  pg_reachable "$PG_URL" || { log "postgresql: $(sed 's#//[^@]*@#//***@#' <<< "$PG_URL") does not answer: skipped"; return 1; }
}
backend_setup() {
  case $1 in
    sqlite) DIR=$BENCH_DATA/pacs-access-sqlite; URL=sqlite:///$DIR/index.db ;;
    postgresql)
      resolve_pg || return 1
      DIR=$BENCH_DATA/pacs-access-postgresql; URL=$(pg_database "$PG_URL" "$PG_DB") || die "cannot make database $PG_DB" ;;
    *) die "unknown backend $1 (sqlite, postgresql)" ;;
  esac
  mkdir -p "$DIR"
}
declare -A GENERATED=()
ensure_index() { # BACKEND: the 1M index, reused when it holds exactly the data asked for
  local backend=$1 summary t0 t1 args=(--database-url "$URL" --instances "$INSTANCES" --orgs "$ORGS" --shared "$SHARED" --seed "$SEED")
  [ -z "${GENERATED[$backend]:-}" ] || return 0
  t0=$(now)
  if [ "$REUSE" = 1 ] && summary=$("$PACS_PY" "$HERE/gen_index.py" "${args[@]}" --reuse 2>> "$LOGS/gen-$backend.log" | tail -1) \
     && [ -n "$summary" ]; then
    :
  else
    [ "$REUSE" = 1 ] && log "$backend: the index does not hold that data (see $LOGS/gen-$backend.log): generating afresh"
    [ "$backend" = sqlite ] && rm -f "$DIR"/index.db "$DIR"/index.db-wal "$DIR"/index.db-shm
    log "$backend: generating $INSTANCES instances, $ORGS organizations, $SHARED shared (a few minutes)"
    summary=$("$PACS_PY" "$HERE/gen_index.py" "${args[@]}" --reset 2>> "$LOGS/gen-$backend.log" | tail -1) \
      || { tail -20 "$LOGS/gen-$backend.log" >&2; die "gen_index.py failed on $backend"; }
  fi
  t1=$(now)
  echo "$summary" > "$LOGS/gen-$backend.json"
  record generate "gen_index.py --instances $INSTANCES --orgs $ORGS --shared $SHARED" "$backend" wall s \
    "$(jq -r '.counts | "\(.studies) studies, \(.instances) instances, \(.organizations) orgs, \(.study_owners) owners, \(.shares) shares"' <<< "$summary")" - ok \
    "$(jq -r 'if .reused then "reused" else "generated: \(.seconds_total) s" end' <<< "$summary")" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"
  GENERATED[$backend]=1
  drain_links "$backend"
}

drain_links() { # BACKEND: link what the patient index has queued (an index upgraded to 0009 queues
  # every identity it held), so that no server's linker works in the background of a measurement
  local out
  out=$(py "$URL" <<'PY'
import sys, time
from storage.index.db import Database
from storage.index.migrate import upgrade
from storage.patients.linker import link_pending
from storage.patients.model import Model
db = Database.connect(sys.argv[1])
upgrade(db.engine)
t0, done = time.perf_counter(), 0
while True:
    n = link_pending(db, Model(), limit=5000)
    done += n
    if n == 0:
        break
print(f"{done} {time.perf_counter() - t0:.1f}")
db.dispose()
PY
  ) || die "linking the queued identities failed on $1"
  read -r n secs <<< "$out"
  [ "$n" = 0 ] || record link "patient index: identities queued by the upgrade, linked" "$1" wall s "$n identities" - ok "" "$secs"
}

# ---------------------------------------------------------------- servers
# Up to two at once, named `on` and `off` (PACS_AUDIT=true / false), each with its own ports, data
# folder and process group (lib.sh's pacs_start / pacs_stop, one at a time). The qido phase runs `on`
# alone; the audit phase runs both and alternates every request between them, so whatever else the
# machine does hits both alike.
server_start() { # NAME DIR LOGNAME [VAR=value ...]: PACS_AUDIT from NAME, no rate limits
  local name=$1 dir=$2 logname=$3; shift 3
  PACS_HTTP_PORT=${S_HTTP[$name]} PACS_DICOM_PORT=${S_DICOM[$name]} PACS_PGID=
  mkdir -p "$dir"
  pacs_start "$dir" "$LOGS/$logname.log" "PACS_DATA_DIR=$dir" "PACS_AUDIT=$([ "$name" = on ] && echo true || echo false)" \
    PACS_HTTP_RATE_LIMIT=0 PACS_DICOM_RATE_LIMIT=0 "$@"
  S_PGID[$name]=$PACS_PGID S_ADMIN[$name]=$PACS_TOKEN S_DW[$name]=http://127.0.0.1:${S_HTTP[$name]}/dicomweb S_CLIN[$name]=
  PACS_PGID=
  REV=$(commit)   # the rows after this start were measured at this commit (another may land meanwhile)
}
mint_clinician() { # NAME DIR [VAR=value ...]: a clinician token of ORG for that server
  local name=$1 dir=$2; shift 2
  S_CLIN[$name]=$(env "PACS_DATA_DIR=$dir" "$@" "$PACS_BIN" token --org "$ORG" --role clinician --ttl 8h --data-dir "$dir") \
    || die "pacs token --org $ORG failed (is $ORG one of the generated organizations?)"
}
server_stop() { PACS_PGID=${S_PGID[$1]:-}; pacs_stop; S_PGID[$1]=; }
start_index_server() { # NAME BACKEND LOGNAME: a server on the 1M index (`off` gets a data folder of its own)
  local dir=$DIR; [ "$1" = on ] || dir=$DIR-$1
  server_start "$1" "$dir" "$3" "PACS_DATABASE_URL=$URL"
  mint_clinician "$1" "$dir" "PACS_DATABASE_URL=$URL"
}

# ---------------------------------------------------------------- requests
token_of() { if [ "$2" = admin ]; then echo "${S_ADMIN[$1]}"; else echo "${S_CLIN[$1]}"; fi; }
caller_label() { if [ "$1" = admin ]; then echo admin; else echo "clinician $ORG"; fi; }

# times_ms SERVER WHO PATH N: N values of curl time_total in ms, one per line; fails on a non-2xx
times_ms() {
  local token i t; token=$(token_of "$1" "$2")
  for i in $(seq 1 "$4"); do
    t=$(curl -sf -g -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $token" "${S_DW[$1]}/$3") || return 1
    awk -v t="$t" 'BEGIN {printf "%.3f\n", t * 1000}'
  done
}
# probe SERVER WHO PATH: P_CODE P_COUNT P_BYTES of one request
probe() {
  local token out line; token=$(token_of "$1" "$2"); out=$(mktemp "${TMPDIR:-/tmp}/access-probe.XXXXXX")
  line=$(curl -s -g -o "$out" -w '%{http_code}\t%{size_download}' -H "Authorization: Bearer $token" "${S_DW[$1]}/$3" || true)
  IFS=$'\t' read -r P_CODE P_BYTES <<< "$line"
  P_COUNT=$(jq 'length' "$out" 2>/dev/null || echo -)
  [ "$P_CODE" = 200 ] || log "$1 $2 $3 -> HTTP $P_CODE: $(head -c 300 "$out")"
  rm -f "$out"
}

# latency BACKEND WHO PATH: on server `on`: probe, WARMUP, RUNS timed
latency() {
  local backend=$1 who=$2 path=$3 metric vals note="audit on; curl time_total after $WARMUP warm-ups"
  metric=$(caller_label "$who")
  probe on "$who" "$path"
  if [ "$P_CODE" != 200 ]; then
    record qido "GET $path" "$backend" "$metric" ms "$P_COUNT" "$P_BYTES" "HTTP $P_CODE" "$note"; return
  fi
  times_ms on "$who" "$path" "$WARMUP" > /dev/null || true
  vals=$(times_ms on "$who" "$path" "$RUNS") || { record qido "GET $path" "$backend" "$metric" ms "$P_COUNT" "$P_BYTES" failed "a timed request failed; $note"; return; }
  # shellcheck disable=SC2086
  record qido "GET $path" "$backend" "$metric" ms "$P_COUNT" "$P_BYTES" ok "$note" $vals
}

# paired_latency BACKEND WHO PATH ROUND: servers `on` and `off`, WARMUP then AUDIT_RUNS requests
# each, alternating request by request (on first in odd requests, off first in even ones)
paired_latency() {
  local backend=$1 who=$2 path=$3 round=$4 i s t order status
  local -A vals=() code=() count=() bytes=() failed=()
  for s in on off; do probe "$s" "$who" "$path"; code[$s]=$P_CODE count[$s]=$P_COUNT bytes[$s]=$P_BYTES; done
  for i in $(seq 1 "$WARMUP"); do for s in on off; do times_ms "$s" "$who" "$path" 1 > /dev/null || true; done; done
  for i in $(seq 1 "$AUDIT_RUNS"); do
    if ((i % 2)); then order="on off"; else order="off on"; fi
    for s in $order; do
      if t=$(times_ms "$s" "$who" "$path" 1); then vals[$s]+="$t "; else failed[$s]=1; fi
    done
  done
  for s in on off; do
    status=ok
    [ "${code[$s]}" = 200 ] || status="HTTP ${code[$s]}"
    [ -z "${failed[$s]:-}" ] || status="a timed request failed"
    # shellcheck disable=SC2086
    record audit "GET $path" "$backend" "$(caller_label "$who"), audit=$s" ms "${count[$s]}" "${bytes[$s]}" "$status" \
      "round $round; curl time_total, alternating request by request with audit=$([ $s = on ] && echo off || echo on)" ${vals[$s]}
  done
}

# ---------------------------------------------------------------- phases
phase_qido() {
  local backend who q tag ms
  for backend in $BACKENDS; do
    backend_setup "$backend" || continue
    ensure_index "$backend"
    start_index_server on "$backend" "pacs-qido-$backend"
    for q in "$Q_NAME" "$Q_PAGE"; do
      for who in clinician admin; do latency "$backend" "$who" "$q"; done
    done
    server_stop on
    for q in "$Q_NAME" "$Q_PAGE"; do
      for who in clinician admin; do
        tag=$([ "$q" = "$Q_PAGE" ] && echo page || echo name)
        explain "$URL" "$q" "$([ "$who" = admin ] && echo admin || echo "$ORG")" > "$LOGS/plan-$backend-$who-$tag.txt" 2>&1 \
          || { log "EXPLAIN failed: $LOGS/plan-$backend-$who-$tag.txt"; continue; }
        ms=$(tail -1 "$LOGS/plan-$backend-$who-$tag.txt")
        record plan "GET $q" "$backend" "$(caller_label "$who")" ms - - ok "plan-$backend-$who-$tag.txt" "$ms"
      done
    done
  done
}

declare -A INGEST_URL=() VALS=() BAD=()
BOUNDARY_USED=
fresh_ingest_archives() { # BACKEND: empty data folders (and databases) for `on` and `off`; sets INGEST_URL[on|off]
  local s
  for s in on off; do
    rm -rf "$INGEST_DIR-$s"; mkdir -p "$INGEST_DIR-$s"
    if [ "$1" = postgresql ]; then
      INGEST_URL[$s]=$(pg_database "$PG_URL" "${PG_DB}_ingest_$s" fresh) || die "cannot make database ${PG_DB}_ingest_$s"
    else
      INGEST_URL[$s]=sqlite:///$INGEST_DIR-$s/index.db
    fi
  done
}
start_ingest_servers() { # BACKEND LOGNAME
  local s
  for s in on off; do server_start "$s" "$INGEST_DIR-$s" "$2-$s" "PACS_DATABASE_URL=${INGEST_URL[$s]}"; done
}
ingest_counts() { # BACKEND TEST METRIC STATUS NOTE VALUES...: the row of one server, with what its archive holds
  local s=$1 backend=$2 test=$3 metric=$4 status=$5 note=$6 inst aud; shift 6
  read -r inst aud <<< "$(count_rows "${INGEST_URL[$s]}")"
  [ "$inst" = "${INGEST_EXPECT:-$INGEST_N}" ] || status="$status; $inst of ${INGEST_EXPECT:-$INGEST_N} instances stored"
  record audit "$test" "$backend" "$metric, audit=$s" ms "$inst instances, $aud audit rows" - "$status" "$note" "$@"
}

make_batches() { # BOUNDARY: set 1's files as STOW-RS bodies of STOW_BATCH instances ($CT_DIR/batches-N/)
  local dir=$CT_DIR/batches-$STOW_BATCH
  [ -f "$dir/.done" ] && return 0
  py "$CT_DIR/files" "$dir" "$STOW_BATCH" "$1" <<'PY'
import sys
from pathlib import Path
files, out, n, boundary = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
out.mkdir(parents=True, exist_ok=True)
names = sorted(files.glob("*.dcm"))  # 10 studies of consecutive files: a batch stays in one study
for k in range(0, len(names), n):
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
                    for p in names[k:k + n])
    (out / f"{k // n + 1:04d}.body").write_bytes(body + f"--{boundary}--\r\n".encode())
(out / ".done").write_text("")
PY
}

# stow_paired NAME BODIES...: POST each body to both servers in turn (alternating which goes first);
# VALS[on|off] get the curl times (ms), BAD[on|off] the first non-200
stow_paired() {
  local k f s order code t; shift
  local -a files=("$@")
  for k in "${!files[@]}"; do
    f=${files[$k]}
    if ((k % 2)); then order="off on"; else order="on off"; fi
    for s in $order; do
      IFS=$'\t' read -r code t <<< "$(curl -s -o /dev/null -w '%{http_code}\t%{time_total}' -X POST \
        -H "Authorization: Bearer ${S_ADMIN[$s]}" -H "Accept: application/dicom+json" \
        -H "Content-Type: multipart/related; type=\"application/dicom\"; boundary=$BOUNDARY_USED" \
        --data-binary "@$f" "${S_DW[$s]}/studies")"
      [ "$code" = 200 ] || BAD[$s]="HTTP $code"
      VALS[$s]+="$(awk -v t="$t" 'BEGIN {printf "%.3f", t * 1000}') "
    done
  done
}

phase_audit() {
  local backend r s before after expected who f k code t order boundary rc t0 t1
  local -a bodies batches
  make_ct
  boundary=$(head -1 "$CT_DIR/.done-1")
  mapfile -t bodies < <(find "$CT_DIR/bodies" -name '*.body' | sort)
  [ "${#bodies[@]}" = "$INGEST_N" ] || die "$CT_DIR holds ${#bodies[@]} bodies, expected $INGEST_N"
  make_batches "$boundary"
  mapfile -t batches < <(find "$CT_DIR/batches-$STOW_BATCH" -name '*.body' | sort)
  for backend in $BACKENDS; do
    backend_setup "$backend" || continue
    ensure_index "$backend"
    for r in $(seq 1 "$ROUNDS"); do
      # QIDO on the 1M index: both servers on the same index, requests alternating
      start_index_server on "$backend" "pacs-audit-qido-$backend-on"
      start_index_server off "$backend" "pacs-audit-qido-$backend-off"
      read -r _ before <<< "$(count_rows "$URL")"
      for who in clinician admin; do paired_latency "$backend" "$who" "$Q_NAME" "$r"; done
      read -r _ after <<< "$(count_rows "$URL")"
      server_stop on; server_stop off
      expected=$((2 * (1 + WARMUP + AUDIT_RUNS)))
      record audit-check "audit rows written by the QIDO requests (expected $expected from audit=on, 0 from off)" "$backend" \
        "both servers" rows "$((after - before))" - "$([ $((after - before)) = "$expected" ] && echo ok || echo mismatch)" "round $r" "$((after - before))"
      # STOW-RS, one instance per request, the same file to both (fresh archives), alternating
      fresh_ingest_archives "$backend"
      start_ingest_servers "$backend" "pacs-audit-stow-$backend"
      VALS=() BAD=() BOUNDARY_USED=$boundary
      stow_paired one "${bodies[@]}"
      for s in on off; do
        # shellcheck disable=SC2086
        ingest_counts "$s" "$backend" "STOW-RS 1 instance per request" "per request" "${BAD[$s]:-ok}" \
          "round $r; curl time_total, alternating request by request with the other server" ${VALS[$s]}
      done
      server_stop on; server_stop off
      # STOW-RS, STOW_BATCH instances per request (the same files, fresh archives again)
      fresh_ingest_archives "$backend"
      start_ingest_servers "$backend" "pacs-audit-stowbatch-$backend"
      VALS=() BAD=()
      stow_paired batch "${batches[@]}"
      for s in on off; do
        # shellcheck disable=SC2086
        ingest_counts "$s" "$backend" "STOW-RS $STOW_BATCH instances per request" "per request" "${BAD[$s]:-ok}" \
          "round $r; curl time_total, alternating request by request with the other server" ${VALS[$s]}
      done
      server_stop on; server_stop off
      # C-STORE, one association per server and set (fresh archives), alternating: on first for odd set + round
      fresh_ingest_archives "$backend"
      start_ingest_servers "$backend" "pacs-audit-cstore-$backend"
      local -A walls=() cbad=()
      for k in $(seq 1 "$CSTORE_SETS"); do
        if (((r + k) % 2 == 0)); then order="on off"; else order="off on"; fi
        for s in $order; do
          rc=0
          t0=$(now)
          storescu -q -aet "$SCU_AET" -aec "$PACS_AET" +sd +r 127.0.0.1 "${S_DICOM[$s]}" "$CT_DIR/$([ "$k" = 1 ] && echo files || echo "files-$k")" \
            > "$LOGS/storescu-$backend-r$r-set$k-$s.log" 2>&1 || rc=$?
          t1=$(now)
          [ "$rc" = 0 ] || cbad[$s]="storescu exit $rc"
          walls[$s]+="$(awk -v a="$t0" -v b="$t1" -v n="$INGEST_N" 'BEGIN {print (b - a) * 1000 / n}') "
        done
      done
      for s in on off; do
        # shellcheck disable=SC2086
        INGEST_EXPECT=$((INGEST_N * CSTORE_SETS)) ingest_counts "$s" "$backend" "C-STORE $INGEST_N instances, 1 association" "wall per instance" \
          "${cbad[$s]:-ok}" "round $r; storescu wall / $INGEST_N, $CSTORE_SETS sets of files, the servers alternating" ${walls[$s]}
      done
      server_stop on; server_stop off
    done
  done
}

phase_table() {
  python3 - "$TSV" "$LOGS" <<'PY' | tee "${TSV%.tsv}.md"
import csv, os, statistics, sys
from urllib.parse import unquote
tsv, logs = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(tsv, newline=""), delimiter="\t"))
def vals(r): return [float(x) for x in r["values"].split()] if r["values"].strip() else []
def q(v, p):
    v = sorted(v); k = (len(v) - 1) * p; lo = int(k); hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)
def f(x): return f"{x:.2f}" if x < 100 else f"{x:.0f}"
out, notes = [], []

gen = [r for r in rows if r["phase"] == "generate"]
for r in gen:
    notes.append(f"- {r['server']}: {r['results']} ({r['note']})")

qido = [r for r in rows if r["phase"] == "qido"]
plans = {(r["test"], r["server"], r["metric"]): r for r in rows if r["phase"] == "plan"}
if qido:
    out += ["| backend | query | caller | results | p50 ms | p95 ms | SQL alone ms | target p50 < 20 ms |",
            "|---|---|---|---:|---:|---:|---:|---|"]
    for r in qido:
        v = vals(r)
        p = plans.get((r["test"], r["server"], r["metric"]))
        sql = p["median"] if p else "n/a"
        if not v:
            verdict = r["status"]
        else:
            p50 = statistics.median(v)
            verdict = "**met**" if p50 < 20 else f"**NOT met**: +{p50 - 20:.{1 if p50 >= 21 else 2}f} ms ({p50 / 20:.2f}x)"
        out.append(f"| {r['server']} | {unquote(r['test'])} | {r['metric']} | {r['results']} | "
                   f"{f(q(v, .5)) if v else 'n/a'} | {f(q(v, .95)) if v else 'n/a'} | {sql} | {verdict} |")
    out.append("")
    out.append("SQL alone: the search's statement outside the server (SQLite: executed and fetched, median of 5; "
               "PostgreSQL: EXPLAIN ANALYZE execution time); plans in the log folder, summarized below.")
    out.append("")
    for (test, backend, caller), p in plans.items():
        path = os.path.join(logs, p["note"])
        if not os.path.exists(path):
            continue
        text = open(path).read().splitlines()
        start = next((i for i, l in enumerate(text) if l.startswith("-- EXPLAIN")), None)
        if start is None:
            continue
        body = [l.rstrip() for l in text[start + 1:-1] if l.strip() and not l.lstrip().startswith(("Buffers", "Planning", "Heap Fetches", "Heap Blocks", "Recheck"))]
        out.append(f"`{backend}` {unquote(test)}, {caller}:")
        out.append("```")
        out += body
        out.append("```")
    out.append("")

audit = [r for r in rows if r["phase"] == "audit"]
if audit:
    groups = {}
    for r in audit:
        metric, _, mode = r["metric"].rpartition(", audit=")
        groups.setdefault((r["server"], r["test"], metric), {}).setdefault(mode, []).append(r)
    out += ["| backend | measure | unit | audit on (per round) | audit off (per round) | on - off | on / off | target < 5 % |",
            "|---|---|---|---|---|---:|---:|---|"]
    for (backend, test, metric), modes in groups.items():
        stats = [("median", statistics.median)]
        if test.startswith("STOW"):  # the cost per instance stored: the mean of the requests
            stats.append(("mean", statistics.fmean))
        for stat, fn in stats:
            cells, mid = {}, {}
            for mode in ("on", "off"):
                rs = modes.get(mode, [])
                pooled = [x for r in rs for x in vals(r)]
                per_round = [fn(vals(r)) for r in rs if vals(r)]
                mid[mode] = fn(pooled) if pooled else None
                cells[mode] = f"{f(mid[mode])} ({', '.join(f(x) for x in per_round)})" if pooled else "n/a"
                if stat == "median":
                    for r in rs:
                        if r["status"] != "ok":
                            notes.append(f"- {backend} {test} {r['metric']} {r['note']}: {r['status']}")
            if mid["on"] is not None and mid["off"]:
                d, ratio = mid["on"] - mid["off"], mid["on"] / mid["off"]
                verdict = "**met**" if ratio < 1.05 else f"**NOT met** (+{(ratio - 1) * 100:.1f} %)"
                dc, rc = f"{d:+.2f}", f"{ratio:.3f}"
            else:
                dc = rc = verdict = "n/a"
            label = f"{unquote(test.removeprefix('GET '))}, {metric}"
            if len(stats) > 1:
                label += f" ({stat})"
            out.append(f"| {backend} | {label} | ms | {cells['on']} | {cells['off']} | {dc} | {rc} | {verdict} |")
    checks = [r for r in rows if r["phase"] == "audit-check"]
    if checks:
        by = {}
        for r in checks:
            by.setdefault((r["server"], r["test"]), []).append(f"{r['results']} ({r['status']})")
        notes += [f"- {b}: {t}: {', '.join(v)}" for (b, t), v in by.items()]
    stores = sorted({f"{r['server']} {r['test']} {r['metric'].rpartition(', ')[2]}: {r['results']}" for r in audit if not r["test"].startswith("GET")})
    notes.append("- stored per ingest run: " + "; ".join(stores))

revs = sorted({r["commit"] for r in rows})
loads = [float(r["loadavg1"]) for r in rows if r["loadavg1"]]
if loads:
    notes.append(f"- pacs commit(s): {', '.join(revs)}; load average (1 min) at the rows: "
                 f"{min(loads):.2f}-{max(loads):.2f}, median {statistics.median(loads):.2f} (2 cores)")
sys.stdout.write("\n".join(out) + "\n" + "\n".join(notes) + "\n")
PY
}

# ---------------------------------------------------------------- main
busiest() { # the other work on the machine: top's second frame (CPU over 1 s), 5 busiest processes
  top -b -n 2 -d 1 -o %CPU 2>/dev/null | awk '/^top -/ {f++} f == 2' | sed -n '7,12p' || true
}
PHASES=("$@")
[ ${#PHASES[@]} -gt 0 ] || PHASES=(qido audit table)
for p in "${PHASES[@]}"; do
  case $p in qido|audit|table) ;; *) die "unknown phase $p (qido audit table)" ;; esac
done
{
  echo "started_utc=$(date -u +%FT%TZ)"
  echo "commit=$REV fingerprint=$(fingerprint)"
  echo "phases=${PHASES[*]} BACKENDS=$BACKENDS INSTANCES=$INSTANCES ORGS=$ORGS SHARED=$SHARED ORG=$ORG NAME=$NAME RUNS=$RUNS WARMUP=$WARMUP ROUNDS=$ROUNDS AUDIT_RUNS=$AUDIT_RUNS INGEST_N=$INGEST_N CSTORE_SETS=$CSTORE_SETS STOW_BATCH=$STOW_BATCH"
  echo "nproc=$(nproc) loadavg=$(cut -d' ' -f1-3 /proc/loadavg) cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "busiest processes at start (top, 1 s):"; busiest
} >> "${TSV%.tsv}.meta"
log "pacs $PACS_BIN @ $REV; phases ${PHASES[*]}; ports HTTP $HTTP_ON/$HTTP_OFF DICOM $DICOM_ON/$DICOM_OFF; raw results: $TSV"
for p in "${PHASES[@]}"; do
  log "=== phase $p (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  "phase_$p"
done
{ echo "finished_utc=$(date -u +%FT%TZ) loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"; echo "busiest processes at the end (top, 1 s):"; busiest; } >> "${TSV%.tsv}.meta"
