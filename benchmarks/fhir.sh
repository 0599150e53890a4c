#!/usr/bin/env bash
# FHIR R4 benchmark ("[8/10]"): ImagingStudy search by patient and by date range, against the same
# question through QIDO-RS, with ~200 and ~100,000 studies indexed, on SQLite and PostgreSQL.
#
#   bash benchmarks/fhir.sh                      # phases search profile table, every size, every backend
#   BACKENDS=sqlite SIZES=200 bash benchmarks/fhir.sh search table
#   TSV=benchmarks/results/fhir-<stamp>.tsv bash benchmarks/fhir.sh table   # table of an earlier run
#
# Phases (each on every backend of BACKENDS and size of SIZES in turn):
#   search  benchmarks/gen_index.py --instances INSTANCES_<size> --orgs ORGS --shared SHARED (reused
#           with --reuse when the database already holds exactly that, else generated with --reset);
#           the identities the patient index holds queued are linked first in this process (as
#           access.sh does), so no server's linker works during the timing; then
#           `fhir_vs_qido.py pick`: the patients (the identity of ORG with the most studies, the
#           500-instance "big study"'s patient left out; and a typical one, the first with the median
#           number of studies of ORG's patients) and how many studies the date range holds.
#           Then ONE `pacs serve` on the index (audit on, as deployed; no rate limits) and, as the
#           admin (DIR/admin-token) and as a clinician of ORG (`pacs token`), two groups of requests,
#           each checked first (HTTP 200, the same set of Study Instance UIDs in every request of
#           the group), then WARMUP rounds and RUNS timed rounds, every request of a group once a
#           round, the order rotating round by round (`fhir_vs_qido.py time`, one httpx.Client,
#           keep-alive, for all):
#             patient  FHIR  /fhir/ImagingStudy?patient=Patient/<identity id>&_count=PAGE
#                      QIDO  /dicomweb/studies?PatientID=<id>&IssuerOfPatientID=urn:pacs:org:<org>&limit=PAGE
#                            (the same question: matched across the person's linked identities,
#                            storage/query/linked.py, as FHIR's patient= is)
#                      QIDO  /dicomweb/studies?PatientID=<id>&limit=PAGE (the ID as sent; the same
#                            answer here, the generated patient IDs being unique)
#             patient-typical  the same three for the typical patient
#             date     FHIR  /fhir/ImagingStudy?started=geFROM&started=leTO&_count=PAGE
#                      QIDO  /dicomweb/studies?StudyDate=FROM-TO&limit=PAGE
#           With the server stopped, `fhir_vs_qido.py pieces`: each FHIR search in this process,
#           piece by piece (study page, series + instances, COUNT of `total`, fhir.resources
#           validation of each ImagingStudy, the searchset Bundle built and validated again, JSON
#           body), and the QIDO-RS search of the same question, median of PIECE_RUNS after 5
#           warm-ups: $LOGS/pieces.jsonl.
#   profile one server (PROFILE_BACKEND on PROFILE_SIZE, after the search phase picked its patients),
#           py-spy (`py-spy record -r 200 -f raw --nonblocking`, PROFILE_SECS) while one path is asked
#           back to back (`fhir_vs_qido.py load`): FHIR by the typical patient as admin and as the
#           clinician, QIDO-RS of the same as the clinician, FHIR by date as admin; each profile
#           summarized (`fhir_vs_qido.py summarize`: the share of the request path's samples under
#           validation, the page's queries, the COUNT, the JSON body, the audit record):
#           $LOGS/profile-<case>.txt (raw, for flamegraph.pl) and $LOGS/profile.jsonl.
#   table   Markdown of the TSV (also saved as .md)
#
# Output: benchmarks/results/fhir-<UTC stamp>.tsv (record.sh's columns: one row per measurement,
# all samples), .md, .meta (commit, machine, load, the busiest processes) and a folder with the
# server logs, the generator's output, the picks and the pieces. results/ is git-ignored.
#
# Settings (environment):
#   PACS_BIN      our server (default $REPO/.venv/bin/pacs); its venv's python (PACS_PY) runs the helpers
#   BACKENDS      ("sqlite postgresql"); postgresql runs when PG_URL is set or the dev server of
#                 /tmp/work/pg.url answers, else it is skipped with a message
#   PG_URL        a PostgreSQL server (SQLAlchemy URL). Its own database is left alone: the script
#                 makes pacs_bench_fhir_<size> on it (kept between runs)
#   SIZES ("200 100k"); INSTANCES_200 (4000: 200 studies), INSTANCES_100k (2000000: ~104,700 studies)
#   ORGS (8) SHARED (0.01) SEED (7); REUSE (1; 0 = always generate afresh)
#   ORG           the clinician's organization (spital-municipal: ~1/ORGS of the studies, plus shares)
#   RANGE_200 ("2019-01-01 2020-12-31"), RANGE_100k ("2020-01-01 2020-01-05"): the date range
#   PAGE (100): FHIR _count and QIDO limit (FHIR's default is 20, at most 100; QIDO's is all)
#   RUNS (200) WARMUP (20) PIECE_RUNS (30)
#   PROFILE_BACKEND (sqlite) PROFILE_SIZE (100k) PROFILE_SECS (18); PYSPY (the venv's py-spy; skipped without)
#   BENCH_DATA    (/tmp/bench-data): pacs-fhir-<size>-<backend> (data folders; SQLite's index.db)
#   PACS_DICOM_PORT / PACS_HTTP_PORT  first ports tried (11420 / 8420); the next free ones are taken
#   TSV           append to this TSV instead of a new one
#
# Every server runs with PACS_HTTP_RATE_LIMIT=0 and PACS_DICOM_RATE_LIMIT=0: RUNS back-to-back
# requests of one token exceed the default 50 per second, and this measures latency, not the limiter.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
export BENCH_DATA=${BENCH_DATA:-/tmp/bench-data}
BACKENDS=${BACKENDS:-"sqlite postgresql"}
SIZES=${SIZES:-"200 100k"}
INSTANCES_200=${INSTANCES_200:-4000}
INSTANCES_100k=${INSTANCES_100k:-2000000}
RANGE_200=${RANGE_200:-"2019-01-01 2020-12-31"}
RANGE_100k=${RANGE_100k:-"2020-01-01 2020-01-05"}
PG_URL=${PG_URL:-}
ORGS=${ORGS:-8}
SHARED=${SHARED:-0.01}
SEED=${SEED:-7}
REUSE=${REUSE:-1}
ORG=${ORG:-spital-municipal}
PAGE=${PAGE:-100}
RUNS=${RUNS:-200}
WARMUP=${WARMUP:-20}
PIECE_RUNS=${PIECE_RUNS:-30}
PROFILE_BACKEND=${PROFILE_BACKEND:-sqlite}
PROFILE_SIZE=${PROFILE_SIZE:-100k}
PROFILE_SECS=${PROFILE_SECS:-18}
PACS_DICOM_PORT=${PACS_DICOM_PORT:-11420}
PACS_HTTP_PORT=${PACS_HTTP_PORT:-8420}

# shellcheck source=benchmarks/lib.sh
source "$HERE/lib.sh"   # log, die, port_busy, pacs_start, pacs_stop

if [ -z "${PACS_BIN:-}" ]; then
  if [ -x "$REPO/.venv/bin/pacs" ]; then PACS_BIN=$REPO/.venv/bin/pacs
  else PACS_BIN=$(command -v pacs) || die "no pacs executable: run 'make dev' or set PACS_BIN"; fi
fi
[ -x "$PACS_BIN" ] || die "PACS_BIN=$PACS_BIN is not executable"
PACS_PY=${PACS_PY:-$(dirname "$PACS_BIN")/python}
[ -x "$PACS_PY" ] || die "no python at $PACS_PY (set PACS_PY)"
PYSPY=${PYSPY:-$(dirname "$PACS_BIN")/py-spy}
for tool in curl jq ss python3; do command -v "$tool" >/dev/null || die "$tool not found"; done

free_port() { local p=$1; while port_busy "$p"; do p=$((p + 1)); done; echo "$p"; }
PACS_HTTP_PORT=$(free_port "$PACS_HTTP_PORT"); PACS_DICOM_PORT=$(free_port "$PACS_DICOM_PORT")

# ---------------------------------------------------------------- output
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$REPO/benchmarks/results
TSV=${TSV:-$RESULTS/fhir-$STAMP.tsv}
LOGS=${TSV%.tsv}
mkdir -p "$LOGS"
# shellcheck source=benchmarks/record.sh
source "$HERE/record.sh"   # now, commit, fingerprint, record; REV

trap pacs_stop EXIT
trap 'exit 130' INT TERM

py() { PYTHONPATH=$REPO "$PACS_PY" - "$@"; }
helper() { PYTHONPATH=$REPO "$PACS_PY" "$HERE/fhir_vs_qido.py" "$@"; }

pg_reachable() { # URL
  py "$1" <<'PY' >/dev/null 2>&1
import sys
import psycopg
from sqlalchemy.engine import make_url
u = make_url(sys.argv[1])
psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database, connect_timeout=3).close()
PY
}

pg_database() { # URL NAME: make database NAME on URL's server (when missing); print its URL
  py "$@" <<'PY'
import sys
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url
u, name = make_url(sys.argv[1]), sys.argv[2]
if name == u.database:
    sys.exit(f"refusing to use the URL's own database {name}")
with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database,
                     autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
print(u.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False))
PY
}

# ---------------------------------------------------------------- indexes
# index_setup BACKEND SIZE: DIR (the server's data folder), URL (the index); 1 if skipped
DIR= URL=
resolve_pg() {
  if [ -z "$PG_URL" ] && [ -s /tmp/work/pg.url ]; then PG_URL=$(cat /tmp/work/pg.url); fi
  [ -n "$PG_URL" ] || { log "postgresql: no PG_URL and no /tmp/work/pg.url: skipped"; return 1; }
  pg_reachable "$PG_URL" || { log "postgresql: $(sed 's#//[^@]*@#//***@#' <<< "$PG_URL") does not answer: skipped"; return 1; }
}
index_setup() {
  DIR=$BENCH_DATA/pacs-fhir-$2-$1
  case $1 in
    sqlite) URL=sqlite:///$DIR/index.db ;;
    postgresql)
      resolve_pg || return 1
      URL=$(pg_database "$PG_URL" "pacs_bench_fhir_$2") || die "cannot make database pacs_bench_fhir_$2" ;;
    *) die "unknown backend $1 (sqlite, postgresql)" ;;
  esac
  mkdir -p "$DIR"
}
ensure_index() { # BACKEND SIZE: reused when it holds exactly the data asked for
  local backend=$1 size=$2 summary t0 t1 var="INSTANCES_$2" gl
  local instances=${!var:?no INSTANCES_$2}
  local args=(--database-url "$URL" --instances "$instances" --orgs "$ORGS" --shared "$SHARED" --seed "$SEED")
  gl=$LOGS/gen-$size-$backend.log
  t0=$(now)
  if [ "$REUSE" = 1 ] && summary=$("$PACS_PY" "$HERE/gen_index.py" "${args[@]}" --reuse 2>> "$gl" | tail -1) \
     && [ -n "$summary" ]; then
    :
  else
    [ "$REUSE" = 1 ] && log "$backend $size: the index does not hold that data (see $gl): generating afresh"
    [ "$backend" = sqlite ] && rm -f "$DIR"/index.db "$DIR"/index.db-wal "$DIR"/index.db-shm
    log "$backend $size: generating $instances instances, $ORGS organizations, $SHARED shared"
    summary=$("$PACS_PY" "$HERE/gen_index.py" "${args[@]}" --reset 2>> "$gl" | tail -1) \
      || { tail -20 "$gl" >&2; die "gen_index.py failed on $backend"; }
  fi
  t1=$(now)
  echo "$summary" > "$LOGS/gen-$size-$backend.json"
  record generate "gen_index.py --instances $instances --orgs $ORGS --shared $SHARED" "$backend $size" wall s \
    "$(jq -r '.counts | "\(.studies) studies, \(.series) series, \(.instances) instances, \(.patient_identities) identities, \(.shares) shares"' <<< "$summary")" - ok \
    "$(jq -r 'if .reused then "reused" else "generated: \(.seconds_total) s" end' <<< "$summary")" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"
  drain_links "$backend $size"
}

drain_links() { # LABEL: link what the patient index has queued, so that no server's linker works
  # in the background of a measurement (as access.sh's drain_links)
  local out n secs
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
  record link "patient index: queued identities linked before the server starts" "$1" wall s "$n identities" - ok "" "$secs"
}

# ---------------------------------------------------------------- timing
# timed BACKEND SIZE CALLER KIND TOKEN LABEL=PATH...: one group, alternating; one TSV row per path
timed() {
  local backend=$1 size=$2 caller=$3 kind=$4 token=$5 out line label path status n total bytes same vals note
  shift 5
  local -a pairs=()
  for line in "$@"; do pairs+=(--pair "${line%%=*} ${line#*=}"); done
  out=$LOGS/time-$size-$backend-$caller-$kind.jsonl
  helper time --base "http://127.0.0.1:$PACS_HTTP_PORT" --token "$token" --warmup "$WARMUP" --runs "$RUNS" \
    "${pairs[@]}" > "$out" || die "fhir_vs_qido.py time failed ($out)"
  while IFS= read -r line; do
    label=$(jq -r .label <<< "$line"); path=$(jq -r .path <<< "$line"); status=$(jq -r .status <<< "$line")
    n=$(jq -r .matches <<< "$line"); total=$(jq -r '.total // empty' <<< "$line"); bytes=$(jq -r .bytes <<< "$line")
    same=$(jq -r .same_uids <<< "$line"); vals=$(jq -r '.values | map(tostring) | join(" ")' <<< "$line")
    if [ "$status" != 200 ]; then status="HTTP $status"; elif [ "$same" != true ]; then status="different studies"; else status=ok; fi
    note="httpx keep-alive, $WARMUP warm-up rounds, order rotating; $path"
    # shellcheck disable=SC2086
    record search "$size $kind $label" "$backend" "$caller" ms "$n studies${total:+, total $total}" "$bytes" "$status" "$note" $vals
  done < "$out"
}

phase_search() {
  local backend size range from to pick pid id issuer clin who token var kind
  for backend in $BACKENDS; do
    for size in $SIZES; do
      index_setup "$backend" "$size" || continue
      ensure_index "$backend" "$size"
      var="RANGE_$size"; range=${!var:?no RANGE_$size}; read -r from to <<< "$range"
      pick=$(helper pick --database-url "$URL" --org "$ORG" --from "$from" --to "$to") || die "pick failed on $backend $size"
      echo "$pick" > "$LOGS/pick-$size-$backend.json"
      issuer=$(jq -r .issuer <<< "$pick")
      log "$backend $size: patient identity $(jq -r .identity <<< "$pick") ($(jq -r .patient_id <<< "$pick"), $issuer):" \
          "$(jq -r .studies_of_patient <<< "$pick") studies; typical: $(jq -r .typical_identity <<< "$pick"), $(jq -r .typical_studies <<< "$pick") studies;" \
          "$from..$to: $(jq -r .range_studies_admin <<< "$pick") studies, $(jq -r .range_studies_org <<< "$pick") of $ORG's"
      PACS_PGID=
      pacs_start "$DIR" "$LOGS/pacs-$size-$backend.log" "PACS_DATA_DIR=$DIR" "PACS_DATABASE_URL=$URL" \
        PACS_HTTP_RATE_LIMIT=0 PACS_DICOM_RATE_LIMIT=0
      REV=$(commit)
      clin=$(env "PACS_DATA_DIR=$DIR" "PACS_DATABASE_URL=$URL" "$PACS_BIN" token --org "$ORG" --role clinician --ttl 8h --data-dir "$DIR") \
        || die "pacs token --org $ORG failed"
      for who in admin clinician; do
        if [ "$who" = admin ]; then token=$PACS_TOKEN; else token=$clin; fi
        for kind in patient patient-typical; do
          if [ "$kind" = patient ]; then id=$(jq -r .identity <<< "$pick"); pid=$(jq -r .patient_id <<< "$pick")
          else id=$(jq -r .typical_identity <<< "$pick"); pid=$(jq -r .typical_patient_id <<< "$pick"); fi
          timed "$backend" "$size" "$who" "$kind" "$token" \
            "fhir=/fhir/ImagingStudy?patient=Patient/$id&_count=$PAGE" \
            "qido=/dicomweb/studies?PatientID=$pid&IssuerOfPatientID=$issuer&limit=$PAGE" \
            "qido-id-only=/dicomweb/studies?PatientID=$pid&limit=$PAGE"
        done
        timed "$backend" "$size" "$who" date "$token" \
          "fhir=/fhir/ImagingStudy?started=ge$from&started=le$to&_count=$PAGE" \
          "qido=/dicomweb/studies?StudyDate=${from//-/}-${to//-/}&limit=$PAGE"
      done
      pacs_stop
      id=$(jq -r .identity <<< "$pick"); pid=$(jq -r .patient_id <<< "$pick")
      for who in admin "$ORG"; do
        helper pieces --database-url "$URL" --org "$who" --runs "$PIECE_RUNS" \
          --fhir "patient=Patient/$id&_count=$PAGE" --qido "PatientID=$pid&IssuerOfPatientID=$issuer&limit=$PAGE" \
          | jq -c --arg s "$size" --arg b "$backend" --arg k patient '. + {size: $s, backend: $b, kind: $k}' >> "$LOGS/pieces.jsonl" \
          || log "pieces failed: $backend $size $who patient"
        helper pieces --database-url "$URL" --org "$who" --runs "$PIECE_RUNS" \
          --fhir "started=ge$from&started=le$to&_count=$PAGE" --qido "StudyDate=${from//-/}-${to//-/}&limit=$PAGE" \
          | jq -c --arg s "$size" --arg b "$backend" --arg k date '. + {size: $s, backend: $b, kind: $k}' >> "$LOGS/pieces.jsonl" \
          || log "pieces failed: $backend $size $who date"
      done
    done
  done
}

# profile: py-spy on one server (PROFILE_BACKEND, PROFILE_SIZE) while one path is asked back to back
phase_profile() {
  local pick clin admin case name who path base loader
  command -v "$PYSPY" >/dev/null || { log "profile: no py-spy ($PYSPY): skipped"; return 0; }
  index_setup "$PROFILE_BACKEND" "$PROFILE_SIZE" || return 0
  [ -s "$LOGS/pick-$PROFILE_SIZE-$PROFILE_BACKEND.json" ] || die "profile: run the search phase first (no pick-$PROFILE_SIZE-$PROFILE_BACKEND.json)"
  pick=$(cat "$LOGS/pick-$PROFILE_SIZE-$PROFILE_BACKEND.json")
  local from to var="RANGE_$PROFILE_SIZE"; read -r from to <<< "${!var}"
  PACS_PGID=
  pacs_start "$DIR" "$LOGS/pacs-profile-$PROFILE_SIZE-$PROFILE_BACKEND.log" "PACS_DATA_DIR=$DIR" "PACS_DATABASE_URL=$URL" \
    PACS_HTTP_RATE_LIMIT=0 PACS_DICOM_RATE_LIMIT=0
  REV=$(commit)
  admin=$PACS_TOKEN
  clin=$(env "PACS_DATA_DIR=$DIR" "PACS_DATABASE_URL=$URL" "$PACS_BIN" token --org "$ORG" --role clinician --ttl 8h --data-dir "$DIR")
  base=http://127.0.0.1:$PACS_HTTP_PORT
  for case in \
    "fhir-typical-admin admin /fhir/ImagingStudy?patient=Patient/$(jq -r .typical_identity <<< "$pick")&_count=$PAGE" \
    "fhir-typical-clinician clinician /fhir/ImagingStudy?patient=Patient/$(jq -r .typical_identity <<< "$pick")&_count=$PAGE" \
    "qido-typical-clinician clinician /dicomweb/studies?PatientID=$(jq -r .typical_patient_id <<< "$pick")&IssuerOfPatientID=$(jq -r .issuer <<< "$pick")&limit=$PAGE" \
    "fhir-date-admin admin /fhir/ImagingStudy?started=ge$from&started=le$to&_count=$PAGE"; do
    read -r name who path <<< "$case"
    local token=$admin; [ "$who" = admin ] || token=$clin
    helper load --base "$base" --token "$token" --path "$path" --seconds 2 > /dev/null   # warm
    helper load --base "$base" --token "$token" --path "$path" --seconds $((PROFILE_SECS + 4)) > "$LOGS/profile-$name.load.json" &
    loader=$!
    sleep 1
    "$PYSPY" record -p "$PACS_PGID" -r 200 -d "$PROFILE_SECS" -f raw --nonblocking -o "$LOGS/profile-$name.txt" \
      > "$LOGS/profile-$name.pyspy.log" 2>&1 || log "py-spy failed: $LOGS/profile-$name.pyspy.log"
    wait "$loader" || die "profile $name: the load failed"
    helper summarize "$LOGS/profile-$name.txt" | jq -c --arg n "$name" --arg p "$path" --slurpfile l "$LOGS/profile-$name.load.json" \
      '. + {case: $n, path: $p, backend: "'"$PROFILE_BACKEND"'", size: "'"$PROFILE_SIZE"'", requests: $l[0].requests}' >> "$LOGS/profile.jsonl"
    log "profile $name: $(tail -1 "$LOGS/profile.jsonl" | jq -c .percent)"
  done
  pacs_stop
}

phase_table() {
  python3 - "$TSV" "$LOGS" <<'PY' | tee "${TSV%.tsv}.md"
import csv, json, os, statistics, sys
tsv, logs = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(tsv, newline=""), delimiter="\t"))
def vals(r): return [float(x) for x in r["values"].split()] if r["values"].strip() else []
def q(v, p):
    v = sorted(v); k = (len(v) - 1) * p; lo = int(k); hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)
def f(x): return f"{x:.1f}" if x < 100 else f"{x:.0f}"
out, notes = [], []
for r in rows:
    if r["phase"] == "generate":
        notes.append(f"- {r['server']}: {r['results']} ({r['note']})")
    if r["phase"] == "link":
        notes.append(f"- {r['server']}: {r['results']} linked before the server started ({r['values']} s)")
search = {}
for r in rows:
    if r["phase"] == "search":
        size, kind, label = r["test"].split(" ")
        search.setdefault((size, r["server"], r["metric"], kind), {})[label] = r
out += ["| size | backend | caller | query | studies (FHIR total) | FHIR p50 / p95 ms | QIDO | QIDO p50 / p95 ms | FHIR / QIDO p50 | target ≤ 1.5x | target p50 < 30 ms at 100k |",
        "|---|---|---|---|---|---:|---|---:|---:|---|---|"]
for (size, backend, caller, kind), by in search.items():
    fr = by.get("fhir")
    fv = vals(fr) if fr else []
    for label, r in by.items():
        if label == "fhir":
            continue
        qv = vals(r)
        if fv and qv:
            ratio = q(fv, .5) / q(qv, .5)
            met = "**met**" if ratio <= 1.5 else "**NOT met**"
            p30 = ("**met**" if q(fv, .5) < 30 else f"**NOT met** ({q(fv, .5) / 30:.1f}x)") if size == "100k" else "-"
            cells = f"{f(q(fv, .5))} / {f(q(fv, .95))} | {label} | {f(q(qv, .5))} / {f(q(qv, .95))} | {ratio:.2f} | {met} | {p30}"
        else:
            cells = f"n/a | {label} | n/a | n/a | {(fr or r)['status']} | -"
        res = fr["results"] if fr else r["results"]
        out.append(f"| {size} | {backend} | {caller} | {kind} | {res} | {cells} |")
        if (fr and fr["status"] != "ok") or r["status"] != "ok":
            notes.append(f"- {size} {backend} {caller} {kind} {label}: FHIR {fr['status'] if fr else 'missing'}, QIDO {r['status']}")
profile = os.path.join(logs, "profile.jsonl")
if os.path.exists(profile):
    out += ["", "py-spy (200 Hz, --nonblocking) of the server while one path is asked back to back: share of the request path's samples under each piece (inclusive).", ""]
    for line in open(profile):
        p = json.loads(line)
        parts = ", ".join(f"{k} {v} %" for k, v in p["percent"].items())
        out.append(f"- {p['size']} {p['backend']} `{p['case']}` ({p['requests']} requests, {p['samples']} samples): {parts}; "
                   f"database driver {p['percent_in_database_driver']} %")
pieces = os.path.join(logs, "pieces.jsonl")
if os.path.exists(pieces):
    out += ["", "In process, without HTTP (median of the runs, ms): the FHIR route's pieces, and the QIDO-RS search of the same question.", "",
            "| size | backend | caller | query | studies / series / instances | study page | series + instances | COUNT (total) | ImagingStudy validation | Bundle built (validated) | JSON body | FHIR sum | QIDO search + body |",
            "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for line in open(pieces):
        p = json.loads(line)
        s = p["page_total_ms"] + p["count_ms"] + p["validate_ms"] + p["bundle_ms"] + p["serialize_ms"]
        caller = "admin" if p["caller"] == "admin" else "clinician"
        out.append(f"| {p['size']} | {p['backend']} | {caller} | {p['kind']} | {p['studies']} / {p['series']} / {p['instances']} (total {p['total']}) | "
                   f"{p['study_page_ms']:.2f} | {p['members_ms']:.2f} | {p['count_ms']:.2f} | {p['validate_ms']:.2f} | {p['bundle_ms']:.2f} | {p['serialize_ms']:.2f} | "
                   f"{s:.1f} | {p['qido_search_ms'] + p['qido_serialize_ms']:.2f} |")
revs = sorted({r["commit"] for r in rows})
loads = [float(r["loadavg1"]) for r in rows if r["loadavg1"]]
if loads:
    notes.append(f"- pacs commit(s): {', '.join(revs)}; load average (1 min) at the rows: "
                 f"{min(loads):.2f}-{max(loads):.2f}, median {statistics.median(loads):.2f} (2 cores)")
sys.stdout.write("\n".join(out) + "\n\n" + "\n".join(notes) + "\n")
PY
}

# ---------------------------------------------------------------- main
busiest() { # the other work on the machine: top's second frame (CPU over 1 s), 5 busiest processes
  top -b -n 2 -d 1 -o %CPU 2>/dev/null | awk '/^top -/ {f++} f == 2' | sed -n '7,12p' || true
}
PHASES=("$@")
[ ${#PHASES[@]} -gt 0 ] || PHASES=(search profile table)
for p in "${PHASES[@]}"; do
  case $p in search|profile|table) ;; *) die "unknown phase $p (search profile table)" ;; esac
done
{
  echo "started_utc=$(date -u +%FT%TZ)"
  echo "commit=$REV fingerprint=$(fingerprint)"
  echo "phases=${PHASES[*]} BACKENDS=$BACKENDS SIZES=$SIZES INSTANCES_200=$INSTANCES_200 INSTANCES_100k=$INSTANCES_100k ORGS=$ORGS SHARED=$SHARED SEED=$SEED ORG=$ORG RANGE_200=$RANGE_200 RANGE_100k=$RANGE_100k PAGE=$PAGE RUNS=$RUNS WARMUP=$WARMUP PIECE_RUNS=$PIECE_RUNS PROFILE=$PROFILE_BACKEND/$PROFILE_SIZE/${PROFILE_SECS}s"
  echo "nproc=$(nproc) loadavg=$(cut -d' ' -f1-3 /proc/loadavg) cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "busiest processes at start (top, 1 s):"; busiest
} >> "${TSV%.tsv}.meta"
log "pacs $PACS_BIN @ $REV; phases ${PHASES[*]}; ports HTTP $PACS_HTTP_PORT DICOM $PACS_DICOM_PORT; raw results: $TSV"
for p in "${PHASES[@]}"; do
  log "=== phase $p (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  "phase_$p"
done
{ echo "finished_utc=$(date -u +%FT%TZ) loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"; echo "busiest processes at the end (top, 1 s):"; busiest; } >> "${TSV%.tsv}.meta"
