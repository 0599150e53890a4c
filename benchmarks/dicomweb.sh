#!/usr/bin/env bash
# DICOMweb benchmark ("[2/7]"): QIDO-RS, WADO-RS (retrieve, metadata, frames, rendered) side by side
# with the Orthanc 1.10 + DICOMweb plugin reference of ../shared/bench, same data, same clients, one
# run; then the same QIDO-RS queries against 1,000,000 generated index rows on SQLite and PostgreSQL.
#
#   bash benchmarks/dicomweb.sh                  # all phases: load qido wado scale table
#   bash benchmarks/dicomweb.sh qido wado table  # on what an earlier `load` left in place
#   RUNS=100 bash benchmarks/dicomweb.sh frames table  # frame raw / rendered only
#
# Phases:
#   load   Orthanc: wipe, start, storescu ct2000 then fill (as orthanc_baseline.sh ingest+fill left it:
#          208 studies, 4,044 instances). Ours: fresh data dir, `pacs import` of the same two folders.
#          Both must then hold 208 studies / 4,044 instances.
#   check  start ours and check /dicomweb/studies answers JSON (exit 3 if not)
#   qido   the QIDO-RS queries of orthanc_baseline.sh, same URLs on both (Orthanc /dicom-web, ours
#          /dicomweb): curl time_total over RUNS after 2 warm-ups, and hyperfine (client wall incl.
#          curl start) as the baseline did; the result counts of both servers are compared.
#   wado   study retrieve (multipart/related; type="application/dicom"; transfer-syntax=*) cold and
#          warm; study metadata cold and warm; series retrieve, single instance, series metadata;
#          frame 1 raw (multipart octet-stream, transfer-syntax=*), rendered image/jpeg and image/png,
#          these three with Orthanc and ours alternating request by request.
#   frames only the frame and rendered tests of `wado` (quick: ~1 min with RUNS=100)
#          Cold = the server stopped, every file of its storage and index evicted from the page
#          cache (evict_cache.py, posix_fadvise DONTNEED), started again, first request timed.
#          Orthanc and ours alternate run by run.
#   scale  for each backend in SCALE_BACKENDS: benchmarks/gen_index.py writes SCALE_INSTANCES rows
#          (~50k studies x 20, plus one 500-instance CT study), ours serves that index, and the QIDO
#          queries are timed (p50, p95 over RUNS). PostgreSQL: ../shared/tools/start-postgres.sh
#          --dir $PG_DIR --port $PG_PORT (stopped again at the end, data kept).
#   table  Markdown table of the TSV (also saved as .md)
#
# Output: benchmarks/results/dicomweb-<UTC stamp>.tsv (one row per test and server: all samples,
# median, p95, min, max, result count, bytes, load average), .md (the table), .meta (commit,
# machine, versions) and a folder with the server logs. results/ is git-ignored.
#
# Settings (environment):
#   PACS_BIN         our server (default $REPO/.venv/bin/pacs, else `pacs` on PATH); its venv's python
#                    runs gen_index.py (PACS_PY to override)
#   RUNS             latency repetitions (default 20); XFER_RUNS cold repetitions (3); WARM_RUNS warm
#                    study retrieves (5, as orthanc_baseline.sh)
#   SCALE_INSTANCES  (1000000)  SCALE_BACKENDS ("sqlite postgresql")  SCALE_REUSE=1 keeps a generated
#                    database that already has SCALE_INSTANCES rows (default: generate afresh)
#   PG_DIR / PG_PORT (/tmp/bench-pg / 55499)
#   BENCH_SHARED (../shared/bench), BENCH_DATA (/tmp/bench-data; datasets ct2000 + fill, created when
#   missing with BENCH_PY), PACS_DICOM_PORT / PACS_HTTP_PORT (11400 / 8400); Orthanc uses 4242 / 8042
#   TSV              append to this TSV instead of a new one (to run phases in several invocations)
set -euo pipefail

export TCP_NODELAY=1
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BENCH_SHARED=${BENCH_SHARED:-$(cd "$HERE/../../shared/bench" && pwd)}
TOOLS=$(cd "$BENCH_SHARED/../tools" 2>/dev/null && pwd || true)
export BENCH_DATA=${BENCH_DATA:-/tmp/bench-data}
BENCH_PY=${BENCH_PY:-/tmp/bench-venv/bin/python}
RUNS=${RUNS:-20}
XFER_RUNS=${XFER_RUNS:-3}
WARM_RUNS=${WARM_RUNS:-5}
SCALE_INSTANCES=${SCALE_INSTANCES:-1000000}
SCALE_BACKENDS=${SCALE_BACKENDS:-"sqlite postgresql"}
SCALE_REUSE=${SCALE_REUSE:-0}
PG_DIR=${PG_DIR:-/tmp/bench-pg}
PG_PORT=${PG_PORT:-55499}
PACS_DICOM_PORT=${PACS_DICOM_PORT:-11400}
PACS_HTTP_PORT=${PACS_HTTP_PORT:-8400}
ORTHANC_DICOM_PORT=4242
ORTHANC_HTTP=http://127.0.0.1:8042
ORTHANC_DW=$ORTHANC_HTTP/dicom-web
ORTHANC_DB=$BENCH_DATA/orthanc/db
PACS_HTTP=http://127.0.0.1:$PACS_HTTP_PORT
PACS_DW=$PACS_HTTP/dicomweb
PACS_DIR=$BENCH_DATA/pacs-dicomweb
SETS=("$BENCH_DATA/ct2000" "$BENCH_DATA/fill")
EXPECT_STUDIES=208
EXPECT_INSTANCES=4044
SCU_AET=BENCHSCU
ACCEPT_DICOM='Accept: multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_OCTET='Accept: multipart/related; type="application/octet-stream"; transfer-syntax=*'

# shellcheck source=benchmarks/lib.sh
source "$HERE/lib.sh"   # log, die, port_busy, pacs_start, pacs_stop

if [ -z "${PACS_BIN:-}" ]; then
  if [ -x "$REPO/.venv/bin/pacs" ]; then PACS_BIN=$REPO/.venv/bin/pacs
  else PACS_BIN=$(command -v pacs) || die "no pacs executable: run 'make dev' or set PACS_BIN"; fi
fi
[ -x "$PACS_BIN" ] || die "PACS_BIN=$PACS_BIN is not executable"
PACS_PY=${PACS_PY:-$(dirname "$PACS_BIN")/python}
[ -f "$BENCH_SHARED/orthanc.sh" ] || die "no Orthanc harness at $BENCH_SHARED (set BENCH_SHARED)"
for tool in storescu curl jq ss hyperfine python3; do
  command -v "$tool" >/dev/null || die "$tool not found (bash $BENCH_SHARED/orthanc.sh install)"
done
command -v Orthanc >/dev/null || bash "$BENCH_SHARED/orthanc.sh" install

# ---------------------------------------------------------------- output
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$REPO/benchmarks/results
TSV=${TSV:-$RESULTS/dicomweb-$STAMP.tsv}
LOGS=${TSV%.tsv}
mkdir -p "$LOGS"
# shellcheck source=benchmarks/record.sh
source "$HERE/record.sh"   # now, commit, fingerprint, record, orthanc_start, orthanc_stop, evict; REV

# ---------------------------------------------------------------- servers
PG_STARTED=
cleanup() {
  pacs_stop
  [ -z "$ORTHANC_UP" ] || orthanc_stop
  [ -z "$PG_STARTED" ] || bash "$TOOLS/stop-postgres.sh" --dir "$PG_DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- requests
# base URL and credentials per server: "orthanc" or "pacs" (ours)
base_of() { if [ "$1" = orthanc ]; then echo "$ORTHANC_DW"; else echo "$PACS_DW"; fi; }
AUTH=()
set_auth() { if [ "$1" = orthanc ]; then AUTH=(); else AUTH=(-H "Authorization: Bearer $PACS_TOKEN"); fi; }

# probe SERVER PATH [curl args]: one request, body kept; sets P_CODE P_BYTES P_TYPE P_COUNT
# (JSON: array length; multipart: number of parts; else -)
probe() {
  local server=$1 path=$2 out line boundary; shift 2
  set_auth "$server"
  out=$(mktemp "${TMPDIR:-/tmp}/dw-probe.XXXXXX")
  line=$(curl -s -g -o "$out" -w '%{http_code}\t%{size_download}\t%{content_type}' "${AUTH[@]}" "$@" "$(base_of "$server")/$path" || true)
  IFS=$'\t' read -r P_CODE P_BYTES P_TYPE <<< "$line"
  P_COUNT=-
  if [ "$P_CODE" = 200 ]; then
    case $P_TYPE in
      *json*) P_COUNT=$(jq 'if type == "array" then length else 1 end' "$out" 2>/dev/null || echo invalid-json) ;;
      multipart/*)
        boundary=$(sed -n 's/.*boundary="\{0,1\}\([^";]*\)"\{0,1\}.*/\1/p' <<< "$P_TYPE")
        [ -z "$boundary" ] || P_COUNT=$(( $(grep -a -o -F -- "--$boundary" "$out" | wc -l) - 1 )) ;;
      *) P_COUNT=1 ;;  # a single body (image/jpeg, application/dicom...)
    esac
  elif [ -s "$out" ]; then
    log "$server $path -> HTTP $P_CODE: $(head -c 300 "$out")"
  fi
  rm -f "$out"
}

# times SERVER PATH N [curl args]: N values of curl time_total in ms (one per line); fails on non-200
times_ms() {
  local server=$1 path=$2 n=$3 i line; shift 3
  set_auth "$server"
  for i in $(seq 1 "$n"); do
    line=$(curl -sf -g -o /dev/null -w '%{time_total}' "${AUTH[@]}" "$@" "$(base_of "$server")/$path") || return 1
    awk -v t="$line" 'BEGIN {printf "%.3f\n", t * 1000}'
  done
}

# latency PHASE TEST SERVER PATH [curl args]: probe, 2 warm-ups, RUNS timed (curl time_total)
latency() {
  local phase=$1 test=$2 server=$3 path=$4 vals; shift 4
  probe "$server" "$path" "$@"
  if [ "$P_CODE" != 200 ]; then
    record "$phase" "$test" "$server" "latency (curl time_total)" ms "$P_COUNT" "$P_BYTES" "HTTP $P_CODE" "$P_TYPE"; return
  fi
  times_ms "$server" "$path" 2 "$@" > /dev/null || true
  vals=$(times_ms "$server" "$path" "$RUNS" "$@") || { record "$phase" "$test" "$server" "latency (curl time_total)" ms "$P_COUNT" "$P_BYTES" "failed" "a timed request failed"; return; }
  # shellcheck disable=SC2086
  record "$phase" "$test" "$server" "latency (curl time_total)" ms "$P_COUNT" "$P_BYTES" ok "$P_TYPE" $vals
}

# wall PHASE TEST SERVER PATH [curl args]: hyperfine (curl process included), RUNS runs, 2 warm-ups
wall() {
  local phase=$1 test=$2 server=$3 path=$4 json vals; shift 4
  set_auth "$server"
  json=$(mktemp "${TMPDIR:-/tmp}/dw-hf.XXXXXX")  # holds the command line (token): removed below
  if hyperfine --shell=none --warmup 2 --runs "$RUNS" --style none --export-json "$json" \
       "$(printf '%q ' curl -sf -g -o /dev/null "${AUTH[@]}" "$@" "$(base_of "$server")/$path")" > /dev/null 2>&1; then
    vals=$(jq -r '.results[0].times[] * 1000' "$json")
    # shellcheck disable=SC2086
    record "$phase" "$test" "$server" "latency (client wall, hyperfine)" ms "${P_COUNT:--}" "${P_BYTES:--}" ok "" $vals
  else
    record "$phase" "$test" "$server" "latency (client wall, hyperfine)" ms - - failed "hyperfine failed"
  fi
  rm -f "$json"
}

restart_cold() { # SERVER: stop, evict its storage + index from the page cache, start
  if [ "$1" = orthanc ]; then
    orthanc_stop >/dev/null 2>&1; evict "$ORTHANC_DB" 2>/dev/null; orthanc_start >/dev/null 2>&1
  else
    pacs_stop; evict "$PACS_DIR" 2>/dev/null; pacs_start "$PACS_DIR" "$LOGS/pacs.log"
  fi
}

ensure_servers() { # both up on what `load` left
  [ -d "$PACS_DIR" ] || die "no $PACS_DIR: run the load phase first"
  [ -n "$ORTHANC_UP" ] || orthanc_start
  [ -n "$PACS_PGID" ] || pacs_start "$PACS_DIR" "$LOGS/pacs.log"
}

# ---------------------------------------------------------------- dataset (same as orthanc_baseline.sh data)
ensure_data() {
  if [ ! -d "$BENCH_DATA/ct2000" ] || [ ! -d "$BENCH_DATA/fill" ]; then
    [ -x "$BENCH_PY" ] || BENCH_PY=$BENCH_PY bash "$BENCH_SHARED/orthanc.sh" install
    BENCH_PY=$BENCH_PY bash "$BENCH_SHARED/orthanc.sh" data
  fi
  local n; n=$(find "${SETS[@]}" -name '*.dcm' -type f | wc -l)
  [ "$n" = "$EXPECT_INSTANCES" ] || die "${SETS[*]} hold $n .dcm files, expected $EXPECT_INSTANCES"
}
big_study() { jq -r '.studies[0].StudyInstanceUID' "$BENCH_DATA/ct2000.manifest.json"; }
big_series() { jq -r '.studies[0].series[0].SeriesInstanceUID' "$BENCH_DATA/ct2000.manifest.json"; }

check_routes() { # exit 3 unless ours answers QIDO with JSON
  probe pacs studies
  if [ "$P_CODE" != 200 ] || [[ $P_TYPE != *json* ]] || [ "$P_COUNT" = invalid-json ]; then
    log "GET $PACS_DW/studies -> HTTP $P_CODE ($P_TYPE): DICOMweb routes not ready"; return 3
  fi
  log "GET $PACS_DW/studies -> 200 $P_TYPE, $P_COUNT studies"
}

pacs_counts() { # "studies instances" through QIDO (ours answers up to 1000 studies)
  set_auth pacs
  curl -sf -g "${AUTH[@]}" "$PACS_DW/studies?includefield=NumberOfStudyRelatedInstances&limit=1000" \
    | jq -r '"\(length) \([.[] | .["00201208"].Value[0] // 0] | add // 0)"'
}
orthanc_counts() { curl -sf "$ORTHANC_HTTP/statistics" | jq -r '"\(.CountStudies) \(.CountInstances)"'; }

# ---------------------------------------------------------------- phases
phase_load() {
  ensure_data
  local t0 t1 counts files=$EXPECT_INSTANCES bytes
  bytes=$(find "${SETS[@]}" -name '*.dcm' -type f -printf '%s\n' | awk '{s+=$1} END {printf "%d", s}')
  find "${SETS[@]}" -name '*.dcm' -type f -exec cat {} + > /dev/null   # same warm input for both
  # Orthanc, as orthanc_baseline.sh left it: ct2000 then fill over C-STORE
  bash "$BENCH_SHARED/orthanc.sh" wipe >/dev/null 2>&1   # stops the Orthanc of its pid file first
  ORTHANC_UP=
  orthanc_start
  t0=$(now)
  storescu -q -aet "$SCU_AET" -aec ORTHANC +sd +r 127.0.0.1 "$ORTHANC_DICOM_PORT" "${SETS[@]}" > "$LOGS/load-orthanc-storescu.log" 2>&1 \
    || die "storescu to Orthanc failed (see $LOGS/load-orthanc-storescu.log)"
  t1=$(now)
  counts=$(orthanc_counts)
  record load "load: ct2000 + fill" orthanc "instances/s" inst/s "$counts" "$bytes" \
    "$([ "$counts" = "$EXPECT_STUDIES $EXPECT_INSTANCES" ] && echo ok || echo "count mismatch")" \
    "storescu, 1 association; studies instances = $counts" "$(awk -v f="$files" -v a="$t0" -v b="$t1" 'BEGIN {print f / (b - a)}')"
  [ "$counts" = "$EXPECT_STUDIES $EXPECT_INSTANCES" ] || die "Orthanc holds $counts (studies instances), expected $EXPECT_STUDIES $EXPECT_INSTANCES"
  # ours: the same files through `pacs import` (the ingest pipeline of C-STORE and STOW-RS)
  pacs_stop
  rm -rf "$PACS_DIR"
  mkdir -p "$PACS_DIR"   # a new archive: `pacs import` works only on a data folder that exists
  # the studies belong to the benchmark's organization, whose workstation (dimse.sh) queries them:
  # an import without --org is held unassigned, which only admins (the QIDO token) see
  "$PACS_BIN" org add bench --name "Benchmark workstation" --data-dir "$PACS_DIR" > "$LOGS/load-org-add.log" 2>&1 \
    || die "pacs org add failed (see $LOGS/load-org-add.log)"
  t0=$(now)
  "$PACS_BIN" import --org bench --data-dir "$PACS_DIR" "${SETS[@]}" > "$LOGS/load-pacs-import.log" 2>&1 \
    || die "pacs import failed (see $LOGS/load-pacs-import.log)"
  t1=$(now)
  pacs_start "$PACS_DIR" "$LOGS/pacs.log"
  check_routes || die "DICOMweb routes of ours do not answer: cannot go on"
  counts=$(pacs_counts)
  record load "load: ct2000 + fill" pacs "instances/s" inst/s "$counts" "$bytes" \
    "$([ "$counts" = "$EXPECT_STUDIES $EXPECT_INSTANCES" ] && echo ok || echo "count mismatch")" \
    "pacs import; studies instances = $counts" "$(awk -v f="$files" -v a="$t0" -v b="$t1" 'BEGIN {print f / (b - a)}')"
  [ "$counts" = "$EXPECT_STUDIES $EXPECT_INSTANCES" ] || die "ours holds $counts (studies instances), expected $EXPECT_STUDIES $EXPECT_INSTANCES"
}

phase_check() {
  [ -n "$PACS_PGID" ] || pacs_start "${CHECK_DIR:-$PACS_DIR}" "$LOGS/pacs.log"
  check_routes
}

qido_queries() { # the URLs of orthanc_baseline.sh phase_qido
  local st=$1 se=$2
  printf '%s\n' "studies?PatientName=SMITH*" "studies?StudyDate=20180101-20201231" "studies?limit=50" "studies" \
    "studies?limit=50&includefield=ModalitiesInStudy&includefield=NumberOfStudyRelatedInstances" \
    "studies/$st/series" "studies/$st/instances" "studies/$st/series/$se/instances"
}
label() { local l=${1//$2/\{500-inst study\}}; [ -z "${3:-}" ] || l=${l//$3/\{250-inst series\}}; echo "$l"; }

phase_qido() {
  ensure_servers
  local st se q server
  st=$(big_study); se=$(big_series)
  while read -r q; do
    for server in orthanc pacs; do
      latency qido "qido: GET $(label "$q" "$st" "$se")" "$server" "$q"
      wall qido "qido: GET $(label "$q" "$st" "$se")" "$server" "$q"
    done
  done < <(qido_queries "$st" "$se")
}

phase_wado() {
  ensure_servers
  local st se inst r server t cold_note="restart + storage and index evicted from the page cache"
  st=$(big_study); se=$(big_series)
  inst=$(frame_instance)
  log "instance for single-instance, frame and rendered tests: $inst"
  local -A vals=() meta=()
  # study retrieve, cold: Orthanc and ours alternate
  for r in $(seq 1 "$XFER_RUNS"); do
    for server in orthanc pacs; do
      restart_cold "$server"
      t=$(times_ms "$server" "studies/$st" 1 -H "$ACCEPT_DICOM") || t=
      vals[$server]+="$t "
    done
  done
  for server in orthanc pacs; do
    probe "$server" "studies/$st" -H "$ACCEPT_DICOM"
    # shellcheck disable=SC2086
    record wado "wado-rs: study 500 inst, cold" "$server" wall ms "$P_COUNT" "$P_BYTES" "HTTP $P_CODE" "$cold_note; $P_TYPE" ${vals[$server]}
    # shellcheck disable=SC2086
    record wado "wado-rs: study 500 inst, cold" "$server" throughput MB/s "$P_COUNT" "$P_BYTES" "HTTP $P_CODE" "" \
      $(for t in ${vals[$server]}; do awk -v b="$P_BYTES" -v t="$t" 'BEGIN {print b / 1e6 / (t / 1000)}'; done)
    meta[$server]="$P_COUNT $P_BYTES $P_CODE"
  done
  # study retrieve, warm (after one warm-up each)
  vals=()
  for server in orthanc pacs; do times_ms "$server" "studies/$st" 1 -H "$ACCEPT_DICOM" > /dev/null || true; done
  for r in $(seq 1 "$WARM_RUNS"); do
    for server in orthanc pacs; do
      t=$(times_ms "$server" "studies/$st" 1 -H "$ACCEPT_DICOM") || t=
      vals[$server]+="$t "
    done
  done
  for server in orthanc pacs; do
    read -r P_COUNT P_BYTES P_CODE <<< "${meta[$server]}"
    # shellcheck disable=SC2086
    record wado "wado-rs: study 500 inst, warm" "$server" wall ms "$P_COUNT" "$P_BYTES" "HTTP $P_CODE" "" ${vals[$server]}
    # shellcheck disable=SC2086
    record wado "wado-rs: study 500 inst, warm" "$server" throughput MB/s "$P_COUNT" "$P_BYTES" "HTTP $P_CODE" "" \
      $(for t in ${vals[$server]}; do awk -v b="$P_BYTES" -v t="$t" 'BEGIN {print b / 1e6 / (t / 1000)}'; done)
  done
  # study metadata, cold then warm
  vals=()
  for r in $(seq 1 "$XFER_RUNS"); do
    for server in orthanc pacs; do
      restart_cold "$server"
      t=$(times_ms "$server" "studies/$st/metadata" 1) || t=
      vals[$server]+="$t "
    done
  done
  for server in orthanc pacs; do
    probe "$server" "studies/$st/metadata"
    # shellcheck disable=SC2086
    record wado "wado-rs: study metadata 500 inst, cold" "$server" "latency (curl time_total)" ms "$P_COUNT" "$P_BYTES" \
      "HTTP $P_CODE" "$cold_note" ${vals[$server]}
  done
  for server in orthanc pacs; do
    latency wado "wado-rs: study metadata 500 inst, warm" "$server" "studies/$st/metadata"
    wall wado "wado-rs: study metadata 500 inst, warm" "$server" "studies/$st/metadata"
  done
  for server in orthanc pacs; do
    latency wado "wado-rs: series 250 inst, warm" "$server" "studies/$st/series/$se" -H "$ACCEPT_DICOM"
  done
  for server in orthanc pacs; do
    latency wado "wado-rs: single instance, warm" "$server" "studies/$st/series/$se/instances/$inst" -H "$ACCEPT_DICOM"
  done
  for server in orthanc pacs; do
    latency wado "wado-rs: series metadata 250 inst, warm" "$server" "studies/$st/series/$se/metadata"
  done
  frame_tests wado "studies/$st/series/$se/instances/$inst/frames/1"
}

frame_instance() { # the instance of the single-instance, frame and rendered tests: Orthanc's first of the series
  curl -sf "$ORTHANC_DW/studies/$(big_study)/series/$(big_series)/instances" | jq -r '.[0]["00080018"].Value[0]'
}

# frame_tests PHASE FRAME_PATH: frame raw (multipart octet-stream), rendered image/jpeg and image/png.
# Orthanc and ours alternate request by request (RUNS each, after a probe and 2 warm-ups), so a load
# spike from elsewhere on the machine hits both alike: these are latencies of a few ms.
frame_tests() {
  local phase=$1 path=$2 spec name accept suffix server r t failed
  local -A vals=() meta=()
  for spec in "frame 1 raw (octet-stream)|$ACCEPT_OCTET|" "frame 1 rendered JPEG|Accept: image/jpeg|/rendered" \
              "frame 1 rendered PNG|Accept: image/png|/rendered"; do
    IFS='|' read -r name accept suffix <<< "$spec"
    vals=(); meta=(); failed=
    for server in orthanc pacs; do
      probe "$server" "$path$suffix" -H "$accept"
      meta[$server]="$P_COUNT|$P_BYTES|$P_CODE|$P_TYPE"
      times_ms "$server" "$path$suffix" 2 -H "$accept" > /dev/null || true
    done
    for r in $(seq 1 "$RUNS"); do
      for server in orthanc pacs; do
        if t=$(times_ms "$server" "$path$suffix" 1 -H "$accept"); then vals[$server]+="$t "; else failed+=" $server"; fi
      done
    done
    for server in orthanc pacs; do
      IFS='|' read -r P_COUNT P_BYTES P_CODE P_TYPE <<< "${meta[$server]}"
      if [ "$P_CODE" != 200 ]; then
        record "$phase" "wado-rs: $name" "$server" "latency (curl time_total)" ms "$P_COUNT" "$P_BYTES" "HTTP $P_CODE" "$P_TYPE"
      elif [[ $failed == *" $server"* ]]; then
        record "$phase" "wado-rs: $name" "$server" "latency (curl time_total)" ms "$P_COUNT" "$P_BYTES" failed "a timed request failed"
      else
        # shellcheck disable=SC2086
        record "$phase" "wado-rs: $name" "$server" "latency (curl time_total)" ms "$P_COUNT" "$P_BYTES" ok \
          "$P_TYPE; interleaved with the other server" ${vals[$server]}
      fi
    done
  done
}

phase_frames() { # the frame part of `wado` alone, on what `load` left
  ensure_servers
  local inst
  inst=$(frame_instance)
  log "instance for the frame and rendered tests: $inst"
  frame_tests frames "studies/$(big_study)/series/$(big_series)/instances/$inst/frames/1"
}

scale_queries() { # the QIDO queries at scale; a lower-case name with diacritics checks the folding
  printf '%s\n' "studies?PatientName=SMITH*" "studies?PatientName=%C8%99tef%C4%83nescu%5Eioana*" \
    "studies?StudyDate=20180101-20201231" "studies?limit=50" "studies" "studies/$1/series" "studies/$1/instances"
}

phase_scale() {
  [ -f "$HERE/gen_index.py" ] || die "no $HERE/gen_index.py"
  [ -x "$PACS_PY" ] || die "no python at $PACS_PY (set PACS_PY)"
  pacs_stop
  [ -z "$ORTHANC_UP" ] || orthanc_stop   # Orthanc plays no part here: keep the machine quiet
  local backend dir url q summary big t0 t1 env=() gen_args
  for backend in $SCALE_BACKENDS; do
    dir=$BENCH_DATA/pacs-scale-$backend
    mkdir -p "$dir"
    case $backend in
      sqlite)
        url=sqlite:///$dir/index.db; env=()
        [ "$SCALE_REUSE" = 1 ] || rm -f "$dir"/index.db "$dir"/index.db-wal "$dir"/index.db-shm ;;
      postgresql)
        [ -n "$TOOLS" ] && [ -f "$TOOLS/start-postgres.sh" ] || die "no ../shared/tools/start-postgres.sh"
        url=$(bash "$TOOLS/start-postgres.sh" --dir "$PG_DIR" --port "$PG_PORT") || die "PostgreSQL did not start"
        PG_STARTED=1
        env=("PACS_DATABASE_URL=$url") ;;
      *) die "unknown backend $backend (sqlite, postgresql)" ;;
    esac
    gen_args=(--database-url "$url" --instances "$SCALE_INSTANCES")
    if [ "$SCALE_REUSE" = 1 ]; then gen_args+=(--reuse); else gen_args+=(--reset); fi
    log "$backend: generating $SCALE_INSTANCES instance rows ($PACS_PY benchmarks/gen_index.py ${gen_args[*]/#postgresql*/URL})"
    t0=$(now)
    summary=$("$PACS_PY" "$HERE/gen_index.py" "${gen_args[@]}" 2> "$LOGS/gen-$backend.log" | tail -1) \
      || { tail -20 "$LOGS/gen-$backend.log" >&2; die "gen_index.py failed on $backend"; }
    t1=$(now)
    echo "$summary" > "$LOGS/gen-$backend.json"
    big=$(jq -r .big_study <<< "$summary")
    record scale "generate: $SCALE_INSTANCES instance rows" "pacs-$backend" "rows/s" inst/s \
      "$(jq -r '.counts | "\(.studies) studies, \(.series) series, \(.instances) instances"' <<< "$summary")" - ok \
      "$(jq -r 'if .reused then "reused" else "gen_index.py, \(.seconds_total) s" end' <<< "$summary")" \
      "$(awk -v n="$SCALE_INSTANCES" -v a="$t0" -v b="$t1" 'BEGIN {print n / (b - a)}')"
    pacs_start "$dir" "$LOGS/pacs-scale-$backend.log" "${env[@]}"
    while read -r q; do
      latency scale "qido 1M: GET $(label "$q" "$big")" "pacs-$backend" "$q"
    done < <(scale_queries "$big")
    pacs_stop
    if [ "$backend" = postgresql ]; then bash "$TOOLS/stop-postgres.sh" --dir "$PG_DIR" >/dev/null; PG_STARTED=; fi
  done
}

phase_table() {
  python3 - "$TSV" "$HERE" <<'PY' | tee "${TSV%.tsv}.md"
import csv, statistics, sys
from urllib.parse import unquote
sys.path.insert(0, sys.argv[2])
from _stats import cell  # "median (min-max)"

rows = list(csv.DictReader(open(sys.argv[1], newline=""), delimiter="\t"))
def vals(r): return [float(x) for x in r["values"].split()] if r["values"].strip() else []
def digits(v): return 1 if not v or statistics.median(v) >= 10 else 2
def fmt(v): return cell(v, digits(v)) if v else "n/a"
# test -> (metric, better, factor, issue figure for Orthanc): ours must be <= factor x Orthanc
# (lower is better) or >= factor x Orthanc (higher is better), Orthanc as measured in this run
TARGETS = {
    "qido: GET /studies?PatientName=SMITH*": ("latency (curl time_total)", "lower", 0.5, "8.0"),
    "qido: GET /studies?StudyDate=20180101-20201231": ("latency (curl time_total)", "lower", 0.1, "67.8"),
    "qido: GET /studies": ("latency (curl time_total)", "lower", 0.1, "235"),
    "qido: GET /studies/{500-inst study}/instances": ("latency (curl time_total)", "lower", 0.1, "448"),
    "wado-rs: study metadata 500 inst, warm": ("latency (curl time_total)", "lower", 0.1, "460"),
    "wado-rs: study metadata 500 inst, cold": ("latency (curl time_total)", "lower", 0.1, "764"),
    "wado-rs: study 500 inst, warm": ("throughput", "higher", 1.0, "964"),
    "wado-rs: study 500 inst, cold": ("throughput", "higher", 1.0, "417"),
    "wado-rs: frame 1 raw (octet-stream)": ("latency (curl time_total)", "lower", 1.0, "3.6"),
    "wado-rs: frame 1 rendered JPEG": ("latency (curl time_total)", "lower", 1.0, "6.2"),
    "wado-rs: frame 1 rendered PNG": ("latency (curl time_total)", "lower", 1 / 3, "63"),
}
by = {}
order = []
for r in rows:
    t = r["test"].replace("qido: GET ", "qido: GET /")
    k = (r["phase"], t, r["metric"])
    if k not in order:
        order.append(k)
    by.setdefault(k, {})[r["server"]] = r

out = ["| test | metric | unit | Orthanc | ours | ours / Orthanc | results (Orthanc / ours) | target | verdict |",
       "|---|---|---|---:|---:|---:|---|---|---|"]
notes = []
for (phase, test, metric) in order:
    if phase not in ("qido", "wado", "frames", "load"):
        continue
    s = by[(phase, test, metric)]
    o, p = s.get("orthanc"), s.get("pacs")
    ov, pv = (vals(o) if o else []), (vals(p) if p else [])
    ratio = statistics.median(pv) / statistics.median(ov) if ov and pv else None
    target, verdict = "", ""
    t = TARGETS.get(test)
    if t and t[0] == metric:
        f = t[2]
        bound = f"{'<=' if t[1] == 'lower' else '>='} {('1/3' if abs(f - 1 / 3) < 1e-9 else f'{f:g}')} x Orthanc"
        target = f"{bound} (Orthanc anchor {t[3]})"
        if ratio is None:
            verdict = "not measured"
        else:
            ok = ratio <= f if t[1] == "lower" else ratio >= f
            verdict = "**met**" if ok else "**NOT met**"
    rc = f"{o['results'] if o else '-'} / {p['results'] if p else '-'}"
    if o and p and o["results"] != p["results"] and phase != "load":
        rc += " (mismatch)"
        notes.append(f"- {test}: Orthanc returned {o['results']} results, ours {p['results']}")
    for srv, r in (("Orthanc", o), ("ours", p)):
        if r and r["status"] not in ("ok", "HTTP 200"):
            notes.append(f"- {test} ({metric}), {srv}: {r['status']} {r['note']}".rstrip())
    unit = (o or p)["unit"]
    out.append(f"| {test} | {metric} | {unit} | {fmt(ov)} | {fmt(pv)} | {'n/a' if ratio is None else f'{ratio:.3g}'} "
               f"| {rc} | {target} | {verdict} |")

scale = [(k, by[k]) for k in order if k[0] == "scale"]
if scale:
    out += ["", "| query (1M instances) | backend | results | p50 ms | p95 ms | min-max ms | target p50 < 20 ms |",
            "|---|---|---|---:|---:|---:|---|"]
    for (phase, test, metric), s in scale:
        for srv, r in s.items():
            v = vals(r)
            if test.startswith("generate"):
                notes.append(f"- {srv}: {test}: {r['results']}; {r['note']}, {float(r['median']):,.0f} rows/s")
                continue
            verdict = "n/a" if not v else ("**met**" if statistics.median(v) < 20 else "**NOT met**")
            if r["status"] not in ("ok",):
                verdict = f"{r['status']}"
            out.append(f"| {unquote(test.removeprefix('qido 1M: '))} | {srv.removeprefix('pacs-')} | {r['results']} "
                       f"| {r['median']} | {r['p95']} | {r['min']}-{r['max']} | {verdict} |")
revs = sorted({r["commit"] for r in rows})
loads = [float(r["loadavg1"]) for r in rows if r["loadavg1"]]
notes.append(f"- pacs commit(s): {', '.join(revs)}; load average (1 min) at the rows: "
             f"{min(loads):.2f}-{max(loads):.2f}, median {statistics.median(loads):.2f}" if loads else "")
sys.stdout.write("\n".join(out) + "\n\n" + "\n".join(n for n in notes if n) + "\n")
PY
}

# ---------------------------------------------------------------- main
PHASES=("$@")
[ ${#PHASES[@]} -gt 0 ] || PHASES=(load qido wado scale table)
for p in "${PHASES[@]}"; do
  case $p in load|check|qido|wado|frames|scale|table) ;; *) die "unknown phase $p (load check qido wado frames scale table)" ;; esac
done
{
  echo "started_utc=$(date -u +%FT%TZ)"
  echo "commit=$REV fingerprint=$(fingerprint)"
  echo "phases=${PHASES[*]} RUNS=$RUNS XFER_RUNS=$XFER_RUNS WARM_RUNS=$WARM_RUNS SCALE_INSTANCES=$SCALE_INSTANCES SCALE_BACKENDS=$SCALE_BACKENDS"
  echo "nproc=$(nproc) loadavg=$(cut -d' ' -f1-3 /proc/loadavg) cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "orthanc=$(dpkg-query -W -f '${Version}' orthanc 2>/dev/null) dicomweb=$(dpkg-query -W -f '${Version}' orthanc-dicomweb 2>/dev/null) curl=$(curl --version | head -1 | cut -d' ' -f2) hyperfine=$(hyperfine --version | cut -d' ' -f2)"
} >> "${TSV%.tsv}.meta"
log "pacs $PACS_BIN @ $REV; phases ${PHASES[*]}; RUNS=$RUNS; raw results: $TSV"
for p in "${PHASES[@]}"; do
  log "=== phase $p (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  "phase_$p"
done
echo "finished_utc=$(date -u +%FT%TZ) loadavg=$(cut -d' ' -f1-3 /proc/loadavg)" >> "${TSV%.tsv}.meta"
