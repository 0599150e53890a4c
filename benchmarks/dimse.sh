#!/usr/bin/env bash
# DIMSE query/retrieve benchmark ("[3/7]"): C-ECHO, C-FIND, C-MOVE and C-GET side by side with the
# Orthanc 1.10 reference of ../shared/bench, same data (what `dicomweb.sh load` leaves: 208 studies,
# 4,044 instances on both), same dcmtk clients, TCP_NODELAY=1, one run.
#
#   bash benchmarks/dimse.sh                  # all phases: load find move table
#   bash benchmarks/dimse.sh find move table  # on what an earlier `load` left in place
#
# Phases:
#   load   `dicomweb.sh load` into the same TSV (Orthanc: storescu; ours: `pacs import`)
#   find   echoscu (association + C-ECHO: the floor) and the findscu queries of
#          orthanc_baseline.sh phase_find, hyperfine (client wall incl. process start and
#          association), RUNS runs after 2 warm-ups, Orthanc and ours one after the other per query;
#          the match counts of both are compared; then PatientName=SMITH* REPEAT times on one
#          association (findscu --repeat): the servers' per-query time without that floor
#   move   C-MOVE of the 500-instance CT study to a dcmtk storescp (AET BENCHSCP, the destination
#          Orthanc's reference configuration knows; ours has it registered with `pacs org add`), and
#          C-GET of it with getscu; XFER_RUNS runs, servers alternating; wall time and MB/s of the
#          received files
#   table  Markdown table of the TSV (also saved as .md)
#
# Settings (environment): PACS_BIN, RUNS (20), REPEAT (200), XFER_RUNS (5), BENCH_SHARED, BENCH_DATA,
# PACS_DICOM_PORT / PACS_HTTP_PORT (11400 / 8400), PACS_SERVE_FLAGS_STR (extra `pacs serve` flags,
# e.g. "--dicom-workers 2"), TSV (append to this TSV).
set -euo pipefail

export TCP_NODELAY=1
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BENCH_SHARED=${BENCH_SHARED:-$(cd "$HERE/../../shared/bench" && pwd)}
export BENCH_DATA=${BENCH_DATA:-/tmp/bench-data}
RUNS=${RUNS:-20}
REPEAT=${REPEAT:-200}
XFER_RUNS=${XFER_RUNS:-5}
PACS_DICOM_PORT=${PACS_DICOM_PORT:-11400}
PACS_HTTP_PORT=${PACS_HTTP_PORT:-8400}
ORTHANC_DICOM_PORT=4242
PACS_DIR=$BENCH_DATA/pacs-dicomweb
SCU_AET=BENCHSCU
SCP_AET=BENCHSCP      # ../shared/bench/lib.sh: Orthanc's "bench-scp" modality
SCP_PORT=11113
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
TSV=${TSV:-$REPO/benchmarks/results/dimse-$STAMP.tsv}
LOGS=${TSV%.tsv}
mkdir -p "$LOGS"

# shellcheck source=benchmarks/lib.sh
source "$HERE/lib.sh"      # log, die, port_busy, pacs_start, pacs_stop
# shellcheck source=benchmarks/record.sh
source "$HERE/record.sh"   # now, commit, record, orthanc_start, orthanc_stop, evict; REV

if [ -z "${PACS_BIN:-}" ]; then
  if [ -x "$REPO/.venv/bin/pacs" ]; then PACS_BIN=$REPO/.venv/bin/pacs
  else PACS_BIN=$(command -v pacs) || die "no pacs executable: run 'make dev' or set PACS_BIN"; fi
fi
read -r -a PACS_SERVE_FLAGS <<< "${PACS_SERVE_FLAGS_STR:-}"
for tool in echoscu findscu movescu getscu storescp hyperfine jq python3; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install dcmtk hyperfine jq)"
done

cleanup() {
  pacs_stop
  [ -z "$ORTHANC_UP" ] || orthanc_stop
  [ -z "${SCP_PID:-}" ] || kill "$SCP_PID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- servers and peers
called_of() { if [ "$1" = orthanc ]; then echo ORTHANC; else echo MUNIPACS; fi; }
port_of() { if [ "$1" = orthanc ]; then echo "$ORTHANC_DICOM_PORT"; else echo "$PACS_DICOM_PORT"; fi; }

ensure_servers() {
  [ -d "$PACS_DIR" ] || die "no $PACS_DIR: run the load phase first"
  [ -n "$ORTHANC_UP" ] || orthanc_start
  if [ -z "$PACS_PGID" ]; then
    # the benchmark's SCU and storescp: a workstation and its storage node of one organization
    "$PACS_BIN" org add bench --name "Benchmark workstation" --ae "$SCU_AET" --ae "$SCP_AET@127.0.0.1:$SCP_PORT" \
      --data-dir "$PACS_DIR" > "$LOGS/org-add.log" 2>&1 || die "pacs org add failed (see $LOGS/org-add.log)"
    pacs_start "$PACS_DIR" "$LOGS/pacs.log"
  fi
}
big_study() { jq -r '.studies[0].StudyInstanceUID' "$BENCH_DATA/ct2000.manifest.json"; }

# ---------------------------------------------------------------- phases
phase_load() { TSV=$TSV bash "$HERE/dicomweb.sh" load; }

# hf PHASE TEST SERVER NOTE cmd...: hyperfine client wall (ms), RUNS runs after 2 warm-ups
hf() {
  local phase=$1 test=$2 server=$3 note=$4 json vals; shift 4
  json=$(mktemp "${TMPDIR:-/tmp}/dimse-hf.XXXXXX")
  if hyperfine --shell=none --warmup 2 --runs "$RUNS" --style none --export-json "$json" "$(printf '%q ' "$@")" > /dev/null 2>&1; then
    vals=$(jq -r '.results[0].times[] * 1000' "$json")
    # shellcheck disable=SC2086
    record "$phase" "$test" "$server" "latency (client wall, hyperfine)" ms "$note" - ok "" $vals
    # the client process's own CPU (mean user + system): a floor under its wall time that no server lowers
    record "$phase" "$test" "$server" "client CPU (user+sys, mean)" ms "$note" - ok "" \
      "$(jq -r '(.results[0].user + .results[0].system) * 1000' "$json")"
  else
    record "$phase" "$test" "$server" "latency (client wall, hyperfine)" ms "$note" - failed "$(printf '%q ' "$@")"
  fi
  rm -f "$json"
}

find_queries() { # name|findscu keys (orthanc_baseline.sh phase_find)
  printf '%s\n' \
    "study PatientName=SMITH*|-k PatientName=SMITH*" \
    "study StudyDate=2018-2020|-k PatientName -k StudyDate=20180101-20201231" \
    "StudyDate range + computed counts|-k PatientName -k StudyDate=20180101-20201231 -k ModalitiesInStudy -k NumberOfStudyRelatedInstances -k NumberOfStudyRelatedSeries" \
    "all studies|-k PatientName"
}

phase_find() {
  ensure_servers
  local server name keys n called port
  for server in orthanc pacs; do
    hf find "dimse: echoscu (floor)" "$server" "association + C-ECHO" \
      echoscu -aet "$SCU_AET" -aec "$(called_of "$server")" 127.0.0.1 "$(port_of "$server")"
  done
  local matches
  while IFS='|' read -r name keys; do
    matches=
    for server in orthanc pacs; do
      called=$(called_of "$server"); port=$(port_of "$server")
      # shellcheck disable=SC2086
      local args=(-aet "$SCU_AET" -aec "$called" -S -k QueryRetrieveLevel=STUDY -k StudyInstanceUID -k PatientID
                  -k StudyDate -k AccessionNumber -k StudyDescription $keys 127.0.0.1 "$port")
      n=$(findscu -v "${args[@]}" 2>&1 | grep -c 'Find Response.*Pending' || true)
      # a server that answers fewer matches is not faster, it is wrong (or its caller sees less)
      [ -z "$matches" ] || [ "$n" = "$matches" ] || die "findscu $name: Orthanc $matches matches, ours $n"
      matches=$n
      hf find "dimse: findscu $name" "$server" "$n matches" findscu "${args[@]}"
    done
  done < <(find_queries)
  # the same query REPEAT times on one association: the servers' own C-FIND time, which the
  # rows above bury under the client process and the association (dcmtk: --repeat reuses it)
  for server in orthanc pacs; do
    hf find "dimse: findscu PatientName=SMITH* x$REPEAT, one association" "$server" "$REPEAT queries" \
      findscu -aet "$SCU_AET" -aec "$(called_of "$server")" -S --repeat "$REPEAT" -k QueryRetrieveLevel=STUDY \
      -k StudyInstanceUID -k PatientID -k StudyDate -k AccessionNumber -k StudyDescription -k "PatientName=SMITH*" \
      127.0.0.1 "$(port_of "$server")"
  done
}

# retrieve SERVER KIND RECV: one C-MOVE or C-GET of the big study; prints "seconds files bytes"
retrieve() {
  local server=$1 kind=$2 recv=$3 st t0 t1 called port
  st=$(big_study); called=$(called_of "$server"); port=$(port_of "$server")
  rm -rf "$recv"; mkdir -p "$recv"
  t0=$(now)
  if [ "$kind" = move ]; then
    movescu -aet "$SCU_AET" -aec "$called" -aem "$SCP_AET" -S -k QueryRetrieveLevel=STUDY -k StudyInstanceUID="$st" \
      127.0.0.1 "$port" >> "$LOGS/movescu.log" 2>&1 || log "movescu to $server failed (see $LOGS/movescu.log)"
  else
    getscu -aet "$SCU_AET" -aec "$called" -S -k QueryRetrieveLevel=STUDY -k StudyInstanceUID="$st" -od "$recv" \
      127.0.0.1 "$port" >> "$LOGS/getscu.log" 2>&1 || log "getscu from $server failed (see $LOGS/getscu.log)"
  fi
  t1=$(now)
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}') $(find "$recv" -type f | wc -l) $(du -sb "$recv" | cut -f1)"
}

phase_move() {
  ensure_servers
  local recv=$BENCH_DATA/dimse-recv kind server r s n b
  port_busy "$SCP_PORT" && die "port $SCP_PORT in use (the storescp destination)"
  mkdir -p "$recv"
  storescp -aet "$SCP_AET" -od "$recv" "$SCP_PORT" > "$LOGS/storescp.log" 2>&1 &
  SCP_PID=$!
  sleep 0.5
  for kind in move get; do
    local -A secs=() files=() bytes=()
    for server in orthanc pacs; do retrieve "$server" "$kind" "$recv" > /dev/null; done  # warm-up
    for r in $(seq 1 "$XFER_RUNS"); do
      for server in orthanc pacs; do
        read -r s n b < <(retrieve "$server" "$kind" "$recv")
        secs[$server]+="$s "; files[$server]=$n; bytes[$server]=$b
      done
    done
    for server in orthanc pacs; do
      n=${files[$server]}; b=${bytes[$server]}
      local status=ok; [ "$n" = 500 ] || status="received $n files"
      local test="c-$kind: study 500 inst -> $([ "$kind" = move ] && echo storescp || echo getscu)"
      # shellcheck disable=SC2086
      record move "$test" "$server" wall s "$n" "$b" "$status" "$n files, $b bytes received" ${secs[$server]}
      # shellcheck disable=SC2086
      record move "$test" "$server" throughput MB/s "$n" "$b" "$status" "" \
        $(for s in ${secs[$server]}; do awk -v b="$b" -v s="$s" 'BEGIN {print b / 1e6 / s}'; done)
    done
  done
  kill "$SCP_PID"; wait "$SCP_PID" 2>/dev/null || true; SCP_PID=
  rm -rf "$recv"
}

phase_table() {
  python3 - "$TSV" "$HERE" <<'PY' | tee "${TSV%.tsv}.md"
import csv, statistics, sys
sys.path.insert(0, sys.argv[2])
from _stats import cell  # "median (min-max)"

rows = [r for r in csv.DictReader(open(sys.argv[1], newline=""), delimiter="\t") if r["phase"] in ("find", "move")]
def vals(r): return [float(x) for x in r["values"].split()] if r["values"].strip() else []
# issue "[3/7]" targets: C-FIND at most half of Orthanc's latency; C-MOVE / C-GET at least its MB/s
def target(test, metric):
    if test.startswith("dimse: findscu") and metric.startswith("latency"): return ("<=", 0.5)
    if metric == "throughput": return (">=", 1.0)
    return None
by = {}
for r in rows:
    by.setdefault((r["test"], r["metric"]), {})[r["server"]] = r
out = ["| test | metric | unit | Orthanc 1.10 | ours | ours/Orthanc | results (Orthanc / ours) | target | verdict |",
       "|---|---|---|---:|---:|---:|---|---|---|"]
for (test, metric), s in by.items():
    o, p = s.get("orthanc"), s.get("pacs")
    ov, pv = (vals(o) if o else []), (vals(p) if p else [])
    ratio = statistics.median(pv) / statistics.median(ov) if ov and pv else None
    t = target(test, metric)
    verdict = "n/a" if t is None or ratio is None else (
        "**met**" if (ratio <= t[1] if t[0] == "<=" else ratio >= t[1]) else "**NOT met**")
    res = f"{o['results'] if o else '-'} / {p['results'] if p else '-'}"
    unit = (o or p)["unit"]
    digits = 1 if pv and statistics.median(pv) >= 10 else 2
    out.append(f"| {test} | {metric} | {unit} | {cell(ov, digits) if ov else 'n/a'} | {cell(pv, digits) if pv else 'n/a'} "
               f"| {'n/a' if ratio is None else f'{ratio:.3g}'} | {res} | {'' if t is None else f'{t[0]} {t[1]}x'} | {verdict} |")
# the C-FIND target against the floor: half of Orthanc's latency vs findscu's own CPU for the query
for (test, metric), s in by.items():
    if test.startswith("dimse: findscu") and "one association" not in test and metric.startswith("latency"):
        o, cpu = s.get("orthanc"), by.get((test, "client CPU (user+sys, mean)"), {}).get("orthanc")
        if o and cpu and vals(o) and vals(cpu):
            half, floor = statistics.median(vals(o)) / 2, vals(cpu)[0]
            out.append(f"\n{test}: half of Orthanc's latency is {half:.1f} ms; findscu's own CPU for it "
                       f"is {floor:.1f} ms{' (the target is below the client alone)' if half < floor else ''}.")
revs = sorted({r["commit"] for r in rows})
loads = [float(r["loadavg1"]) for r in rows if r["loadavg1"]]
out.append("")
out.append(f"pacs commit(s): {', '.join(revs)}; load average (1 min) at the rows: "
           f"{min(loads):.2f}-{max(loads):.2f}" if loads else "")
sys.stdout.write("\n".join(out) + "\n")
PY
}

# ---------------------------------------------------------------- main
PHASES=("$@")
[ ${#PHASES[@]} -gt 0 ] || PHASES=(load find move table)
for p in "${PHASES[@]}"; do
  case $p in load|find|move|table) ;; *) die "unknown phase $p (load find move table)" ;; esac
done
{
  echo "started_utc=$(date -u +%FT%TZ) commit=$REV fingerprint=$(fingerprint)"
  echo "phases=${PHASES[*]} RUNS=$RUNS XFER_RUNS=$XFER_RUNS serve_flags=${PACS_SERVE_FLAGS[*]:-none}"
  echo "nproc=$(nproc) loadavg=$(cut -d' ' -f1-3 /proc/loadavg) dcmtk=$(dpkg-query -W -f '${Version}' dcmtk 2>/dev/null)"
} >> "${TSV%.tsv}.meta"
log "pacs $PACS_BIN @ $REV; phases ${PHASES[*]}; raw results: $TSV"
for p in "${PHASES[@]}"; do
  log "=== phase $p (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  "phase_$p"
done
