#!/usr/bin/env bash
# Patient index benchmark ("Linking 100,000 identities: time per identity, total, and the ingest
# rate with linking on versus off", target: ingest with linking on within 5% of off).
#
#   make dev && bash benchmarks/linking.sh               # both phases
#   PHASES=ingest bash benchmarks/linking.sh             # only the on/off ingest
#   PHASES=link LINK_IDENTITIES=50000 bash benchmarks/linking.sh
#
# Phase "ingest": the first INGEST_COUNT (2,000) identities of the generated CSV as one small CT
# instance each (benchmarks/linkage/to_dicom.py: 64x64 16-bit, own study and series, PatientID,
# IssuerOfPatientID for the dicom-kind issuers, name, birth date, sex, address, the CNP as an
# OtherPatientIDsSequence item issued RO-CNP), C-STORE by dcmtk storescu into an EMPTY server
# (fresh --data-dir, SQLite) started with PACS_MPI_INTERVAL=2 ("on") or 3600 ("off": the linker
# takes its first turn at start-up on an empty queue and does not run again during the
# measurement; the link_queue insert in the ingest transaction is paid in both modes).
# Before the server starts, four organizations are registered in the data dir with one AE each
# (`pacs org add ID --ae AET --from 127.0.0.1`): CLINIC-A/CLINICA, CLINIC-B/CLINICB, LAB-C/LABC
# (the CSV's org-kind issuers: their identities land in their org's namespace, as in the CSV)
# and bench-hosp/BENCHHOSP, which sends the rows that carry their IssuerOfPatientID.
# A client stream sends the four sender folders one after the other (one storescu association
# each, 4 in all); CONFIGS "1" = one stream, ours --dicom-workers 1; "2" = two streams in
# parallel over the two halves (rows dealt round-robin), ours --dicom-workers 2.
# The time is the wall time of the clients (storescu answers after the server's commit).
# After it: instances stored (/metrics, as ingest.sh) and index rows (sqlite3 on index.db);
# the link_queue length; for "on", the seconds from the last C-STORE response until link_queue is
# empty (sqlite3 every 0.5 s), then identities, persons with 2+ identities, open candidates.
# Repetitions alternate the modes (on, off, off, on, on, off, ... per configuration).
#
# Phase "link": benchmarks/linkage/evaluate.py (SQLite, the project's code path: upsert in
# batches of 100, link_pending until the queue is empty after each batch) on the first
# LINK_IDENTITIES rows of the CSV; its progress lines are time-stamped into the log, so the
# identities/s of each 2,000 can be read off.
#
# Output: benchmarks/results/linking-<UTC stamp>.tsv (one row per ingest run), .md (medians),
# and a folder of the same name with the server/storescu logs and the evaluate.py output.
#
# Settings (environment):
#   PACS_BIN         our server (default $REPO/.venv/bin/pacs)
#   PY               python with pydicom (default $REPO/.venv/bin/python)
#   PHASES           "ingest link" (default)
#   REPS             repetitions per mode and configuration (default 3)
#   CONFIGS          "1 2" (default): parallel client streams = --dicom-workers
#   INGEST_COUNT     identities ingested (default 2000)
#   LINK_IDENTITIES  identities linked by evaluate.py (default 100000)
#   ON_INTERVAL / OFF_INTERVAL   PACS_MPI_INTERVAL of the two modes (default 2 / 3600)
#   BENCH_DATA       data folder (default /tmp/bench-data): CSV $BENCH_DATA/linkage-100k.csv
#                    (generate.py --identities 100000 --seed 7, created if missing), DICOM set
#                    $BENCH_DATA/linkage-dicom-<INGEST_COUNT>, server data $BENCH_DATA/pacs-linking
#   PACS_DICOM_PORT / PACS_HTTP_PORT   (default 11400 / 8400)
set -euo pipefail

export TCP_NODELAY=1
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
export BENCH_DATA=${BENCH_DATA:-/tmp/bench-data}
PACS_BIN=${PACS_BIN:-$REPO/.venv/bin/pacs}
PY=${PY:-$REPO/.venv/bin/python}
PHASES=${PHASES:-"ingest link"}
REPS=${REPS:-3}
CONFIGS=${CONFIGS:-"1 2"}
INGEST_COUNT=${INGEST_COUNT:-2000}
LINK_IDENTITIES=${LINK_IDENTITIES:-100000}
ON_INTERVAL=${ON_INTERVAL:-2}
OFF_INTERVAL=${OFF_INTERVAL:-3600}
PACS_DICOM_PORT=${PACS_DICOM_PORT:-11400}
PACS_HTTP_PORT=${PACS_HTTP_PORT:-8400}
CSV=$BENCH_DATA/linkage-100k.csv
DATASET=$BENCH_DATA/linkage-dicom-$INGEST_COUNT
PACS_DIR=$BENCH_DATA/pacs-linking
PACS_AET=MUNIPACS
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-900}
SENDERS=(dicom CLINIC-A CLINIC-B LAB-C)
declare -A AE_OF=([dicom]=BENCHHOSP [CLINIC-A]=CLINICA [CLINIC-B]=CLINICB [LAB-C]=LABC)
declare -A ORG_OF=([dicom]=bench-hosp [CLINIC-A]=CLINIC-A [CLINIC-B]=CLINIC-B [LAB-C]=LAB-C)

# shellcheck source=benchmarks/lib.sh
source "$HERE/lib.sh"   # log, die, port_busy, pacs_start, pacs_stop
now() { date +%s.%N; }

[ -x "$PACS_BIN" ] || die "PACS_BIN=$PACS_BIN is not executable (make dev)"
[ -x "$PY" ] || die "PY=$PY is not executable"
for tool in storescu curl sqlite3 ss awk; do command -v "$tool" >/dev/null || die "$tool not found"; done

commit() {
  local c; c=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$REPO" status --porcelain -- pacs storage gateway fhir_adapter pyproject.toml 2>/dev/null)" ]; then c=$c-dirty; fi
  echo "$c"
}

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$REPO/benchmarks/results
TSV=$RESULTS/linking-$STAMP.tsv
LOGS=$RESULTS/linking-$STAMP
mkdir -p "$LOGS"

# ---------------------------------------------------------------- data
mkdir -p "$BENCH_DATA"
if [ ! -f "$CSV" ]; then
  log "creating $CSV"
  "$PY" "$HERE/linkage/generate.py" --identities 100000 --seed 7 --out "$CSV"
fi

# ---------------------------------------------------------------- CPU of a process group (as ingest.sh)
TCK=$(getconf CLK_TCK)
group_pids() { ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g {print $1}'; }
cpu_snapshot() {
  local p
  for p in $(group_pids "$1"); do
    { sed 's/.*) //' "/proc/$p/stat" 2>/dev/null || true; } | awk -v p="$p" 'NF > 15 {print p, $12 + $13 + $14 + $15}'
  done
}
cpu_delta() { # BEFORE AFTER -> total seconds
  awk -v tck="$TCK" 'NR == FNR {tb += $2; next} {ta += $2} END {printf "%.2f\n", (ta - tb) / tck}' <(echo "$1") <(echo "$2")
}

# ---------------------------------------------------------------- ingest phase
sql() { sqlite3 -readonly "$PACS_DIR/index.db" "$1" 2>/dev/null || echo NA; }
pacs_count() {
  curl -sf -H "Authorization: Bearer $PACS_TOKEN" "http://127.0.0.1:$PACS_HTTP_PORT/metrics" \
    | awk '$1 ~ /^pacs_instances_stored_total($|\{)/ {s += $2} END {printf "%d", s}'
}

register_orgs() { # DIR
  local s
  for s in "${SENDERS[@]}"; do
    "$PACS_BIN" org add "${ORG_OF[$s]}" --name "bench ${ORG_OF[$s]}" --ae "${AE_OF[$s]}" --from 127.0.0.1 \
      --data-dir "$1" >> "$LOGS/org-add.log" 2>&1 || die "pacs org add ${ORG_OF[$s]} failed (see $LOGS/org-add.log)"
  done
}

SCU_RC=0
stream() { # PART LOGPREFIX: the four senders one after the other (PART "" = all rows)
  local part=$1 logp=$2 s dir rc=0
  for s in "${SENDERS[@]}"; do
    dir=$DATASET/$s${part:+/p$part}
    [ -d "$dir" ] || continue
    storescu -q -aet "${AE_OF[$s]}" -aec "$PACS_AET" +sd +r 127.0.0.1 "$PACS_DICOM_PORT" "$dir" \
      >> "$logp.scu${part:-1}.log" 2>&1 || rc=$?
  done
  return "$rc"
}
run_clients() { # STREAMS LOGPREFIX -> SCU_RC
  local n=$1 logp=$2 pids=() i rc
  if [ "$n" = 1 ]; then stream "" "$logp" & pids+=($!)
  else for ((i = 1; i <= n; i++)); do stream "$i" "$logp" & pids+=($!); done; fi
  SCU_RC=0
  for i in "${pids[@]}"; do rc=0; wait "$i" || rc=$?; [ "$rc" = 0 ] || SCU_RC=$rc; done
}

run_ingest() { # REP MODE STREAMS
  local rep=$1 mode=$2 n=$3 interval c0 c1 t0 t1 t2 wall inst cpu count rows queue drain=NA started load rev valid=1
  local idents=NA multi=NA cands=NA logp=$LOGS/r$rep-$mode-$n
  [ "$mode" = on ] && interval=$ON_INTERVAL || interval=$OFF_INTERVAL
  rev=$(commit)
  rm -rf "$PACS_DIR"; mkdir -p "$PACS_DIR"
  register_orgs "$PACS_DIR"
  PACS_SERVE_FLAGS=(--dicom-workers "$n")
  pacs_start "$PACS_DIR" "$logp.server.log" "PACS_MPI_INTERVAL=$interval"
  sleep 1; sync
  started=$(date -u +%FT%TZ); load=$(cut -d' ' -f1 /proc/loadavg)
  c0=$(cpu_snapshot "$PACS_PGID"); t0=$(now)
  run_clients "$n" "$logp"
  t1=$(now); c1=$(cpu_snapshot "$PACS_PGID")
  queue=$(sql "select count(*) from link_queue")
  if [ "$mode" = on ]; then
    while :; do
      q=$(sql "select count(*) from link_queue")
      [ "$q" = 0 ] && { t2=$(now); drain=$(awk -v a="$t1" -v b="$t2" 'BEGIN {printf "%.1f", b - a}'); break; }
      awk -v a="$t1" -v b="$(now)" -v m="$DRAIN_TIMEOUT" 'BEGIN {exit !(b - a > m)}' && { drain=timeout; break; }
      sleep 0.5
    done
    idents=$(sql "select count(*) from patient_identities where issuer_kind <> 'none'")
    multi=$(sql "select count(*) from (select person_id from patient_identities where person_id is not null group by person_id having count(*) > 1)")
    cands=$(sql "select count(*) from link_candidates where status = 'open'")
  fi
  count=$(pacs_count || echo 0)
  rows=$(sql "select count(*) from instances")
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
  inst=$(awk -v f="$INGEST_COUNT" -v w="$wall" 'BEGIN {printf "%.2f", f / w}')
  cpu=$(cpu_delta "$c0" "$c1")
  { [ "$count" = "$INGEST_COUNT" ] && [ "$rows" = "$INGEST_COUNT" ] && [ "$SCU_RC" = 0 ]; } || valid=0
  grep -qE ' (ERROR|CRITICAL) |Traceback' "$logp.server.log" && log "errors in $logp.server.log"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$started" "$rep" "$mode" \
    "$interval" "$n" "$INGEST_COUNT" "$wall" "$inst" "$cpu" "$count" "$rows" "$SCU_RC" "$valid" "$queue" "$drain" \
    "$idents" "$multi" "$cands" "$load" "$rev" >> "$TSV"
  log "$mode x$n rep $rep: $wall s, $inst inst/s, CPU $cpu s, stored $count/$rows, queue at end $queue, drain $drain s, identities $idents, persons 2+ $multi, open candidates $cands$([ "$valid" = 1 ] || echo ', INVALID')"
  pacs_stop
  rm -rf "$PACS_DIR"
}

medians() { # the Markdown table of medians from the TSV
  "$PY" - "$TSV" <<'EOF'
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t") if r["valid"] == "1"]
def med(xs):
    return statistics.median(xs) if xs else float("nan")
def span(xs):
    return f"{min(xs):.1f}-{max(xs):.1f}" if xs else "-"
print("| clients x SCP processes | mode | runs | inst/s median (min-max) | wall s | server CPU s | queue left at end | link queue empty after (s) |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
out = {}
for n in sorted({r["streams"] for r in rows}):
    for mode in ("off", "on"):
        rs = [r for r in rows if r["streams"] == n and r["mode"] == mode]
        if not rs:
            continue
        ips = [float(r["inst_s"]) for r in rs]
        drains = [float(r["drain_s"]) for r in rs if r["drain_s"] not in ("NA", "timeout")]
        out[(n, mode)] = med(ips)
        print(f"| {n} x {n} | {mode} | {len(rs)} | {med(ips):.1f} ({span(ips)}) | {med([float(r['wall_s']) for r in rs]):.2f} | "
              f"{med([float(r['cpu_s']) for r in rs]):.1f} | {med([int(r['queue_at_end']) for r in rs]):.0f} | "
              f"{(f'{med(drains):.1f} ({span(drains)})' if drains else '-')} |")
print()
for n in sorted({r["streams"] for r in rows}):
    if (n, "on") in out and (n, "off") in out:
        ratio = out[(n, "on")] / out[(n, "off")]
        verdict = "met" if ratio >= 0.95 else "NOT met"
        print(f"- {n} x {n}: on / off = {out[(n, 'on')]:.1f} / {out[(n, 'off')]:.1f} = **{ratio:.3f}** (target >= 0.95: {verdict})")
EOF
}

if [[ " $PHASES " == *" ingest "* ]]; then
  if [ ! -d "$DATASET" ] || [ "$(find "$DATASET" -name '*.dcm' | wc -l)" != "$INGEST_COUNT" ]; then
    rm -rf "$DATASET"
    log "creating $DATASET"
    "$PY" "$HERE/linkage/to_dicom.py" --csv "$CSV" --count "$INGEST_COUNT" --out "$DATASET" --parts 2
  fi
  printf 'started_utc\trep\tmode\tinterval\tstreams\tfiles\twall_s\tinst_s\tcpu_s\tcount\trows\tscu_rc\tvalid\tqueue_at_end\tdrain_s\tidentities\tpersons_2plus\topen_candidates\tloadavg1\tcommit\n' > "$TSV"
  trap 'pacs_stop' EXIT
  trap 'exit 130' INT TERM
  log "ingest: $DATASET ($INGEST_COUNT files, $(du -sh "$DATASET" | cut -f1)); pacs @ $(commit); REPS=$REPS CONFIGS='$CONFIGS'; on=$ON_INTERVAL s, off=$OFF_INTERVAL s"
  find "$DATASET" -name '*.dcm' -type f -exec cat {} + > /dev/null   # warm page cache
  for rep in $(seq 1 "$REPS"); do
    if (( rep % 2 )); then order="on off"; else order="off on"; fi
    for n in $CONFIGS; do
      for mode in $order; do run_ingest "$rep" "$mode" "$n"; done
    done
  done
  medians | tee "${TSV%.tsv}.md"
  log "raw rows: $TSV"
fi

# ---------------------------------------------------------------- linking phase
if [[ " $PHASES " == *" link "* ]]; then
  part=$CSV
  if [ "$LINK_IDENTITIES" != 100000 ]; then
    part=$BENCH_DATA/linkage-100k-first$LINK_IDENTITIES.csv
    head -n $((LINK_IDENTITIES + 1)) "$CSV" > "$part"
  fi
  out=$LOGS/evaluate-$LINK_IDENTITIES
  log "link: evaluate.py on $LINK_IDENTITIES identities ($part), progress in $out.progress; uptime: $(uptime)"
  t0=$(now)
  "$PY" "$HERE/linkage/evaluate.py" --csv "$part" --json "$out.json" --label "seed 7, first $LINK_IDENTITIES" \
    2> >(while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done > "$out.progress") | tee "$out.md"
  t1=$(now)
  log "link: $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", b - a}') s wall in all; uptime: $(uptime)"
  # identities/s of each 2,000, by the wall clock of the progress lines (inserting + linking; the
  # cumulative linking-only rate evaluate.py prints is rounded to an integer, too coarse to difference)
  awk '$3 == "linked," && $5 == "identities/s" {
         split($2, a, "/"); done = a[1]; t = $1
         if (pd != "") printf "%7d  cumulative (linking only) %4d/s  last %5d: %6.1f/s (wall)\n", done, $4, done - pd, (done - pd) / (t - pt)
         pd = done; pt = t }' "$out.progress" | tee "$out.rates"
fi
