#!/usr/bin/env bash
# Ingest benchmark ("[1/7] Ingest foundation"): C-STORE of the 1 GB CT set (2,000 instances of
# 512x512, 4 patients x one 500-instance study) by dcmtk's storescu, into an empty server, side by
# side with the Orthanc 1.10 reference of ../shared/bench in the same run.
#
#   make dev && bash benchmarks/ingest.sh
#
# Configurations (CONFIGS, words "AxW" = A parallel storescu associations, W SCP processes of ours):
#   1x1  one storescu over the whole set                  ours --dicom-workers 1   (target >= 1.2x Orthanc inst/s)
#   2x2  two storescu in parallel, P0001+P0002 / P0003+P0004, ours --dicom-workers 2   (target >= 1.5x)
#   2x1  the same two storescu, ours --dicom-workers 1     (for information)
#   import  `pacs import -j 0` (every core) of the set from disk, against Orthanc's 1-association
#           C-STORE of the same repetition                        (target >= 2x Orthanc inst/s)
# Orthanc has no worker setting: it runs the same client side (A associations) in every pair.
# Each repetition runs every configuration as a pair, Orthanc first then ours, each from an empty
# server (orthanc.sh wipe + start; a fresh --data-dir for ours), and checks afterwards that the server
# holds all 2,000 instances (else the run is marked invalid and left out of the medians).
# TCP_NODELAY=1 is exported for everything (Debian's dcmtk leaves Nagle on without it).
#
# Output: raw rows in benchmarks/results/ingest-<UTC stamp>.tsv (+ server/client logs in the
# folder of the same name) and a Markdown table of medians on stdout (also saved as .md).
#
# Settings (environment):
#   PACS_BIN        our server        (default $REPO/.venv/bin/pacs, else `pacs` on PATH)
#   REPS            repetitions       (default 3)
#   CONFIGS         configurations    (default "1x1 2x2 2x1 import")
#   BENCH_SHARED    Orthanc harness   (default $REPO/../shared/bench)
#   BENCH_DATA      data folder       (default /tmp/bench-data; dataset $BENCH_DATA/ct2000, created if missing,
#                                      Orthanc's storage $BENCH_DATA/orthanc, ours $BENCH_DATA/pacs-ingest)
#   BENCH_PY        python with pydicom+numpy, only to create the dataset (default /tmp/bench-venv/bin/python)
#   PACS_DICOM_PORT / PACS_HTTP_PORT   ports of ours (default 11400 / 8400); Orthanc uses 4242 / 8042
set -euo pipefail

export TCP_NODELAY=1
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BENCH_SHARED=${BENCH_SHARED:-$(cd "$(dirname "$0")/../../shared/bench" && pwd)}
export BENCH_DATA=${BENCH_DATA:-/tmp/bench-data}
BENCH_PY=${BENCH_PY:-/tmp/bench-venv/bin/python}
REPS=${REPS:-3}
CONFIGS=${CONFIGS:-"1x1 2x2 2x1 import"}
PACS_DICOM_PORT=${PACS_DICOM_PORT:-11400}
PACS_HTTP_PORT=${PACS_HTTP_PORT:-8400}
ORTHANC_DICOM_PORT=4242
ORTHANC_HTTP=http://127.0.0.1:8042
DATASET=$BENCH_DATA/ct2000
PACS_DIR=$BENCH_DATA/pacs-ingest
EXPECTED=2000
SCU_AET=BENCHSCU

# shellcheck source=benchmarks/lib.sh
source "$HERE/lib.sh"   # log, die, port_busy, pacs_start, pacs_stop
now() { date +%s.%N; }

if [ -z "${PACS_BIN:-}" ]; then
  if [ -x "$REPO/.venv/bin/pacs" ]; then PACS_BIN=$REPO/.venv/bin/pacs
  else PACS_BIN=$(command -v pacs) || die "no pacs executable: run 'make dev' or set PACS_BIN"; fi
fi
[ -x "$PACS_BIN" ] || die "PACS_BIN=$PACS_BIN is not executable"
[ -f "$BENCH_SHARED/orthanc.sh" ] || die "no Orthanc harness at $BENCH_SHARED (set BENCH_SHARED)"
for tool in storescu curl jq ss python3; do command -v "$tool" >/dev/null || die "$tool not found (bash $BENCH_SHARED/orthanc.sh install)"; done
command -v Orthanc >/dev/null || bash "$BENCH_SHARED/orthanc.sh" install

# ---------------------------------------------------------------- dataset
if [ ! -d "$DATASET" ]; then
  [ -x "$BENCH_PY" ] || BENCH_PY=$BENCH_PY bash "$BENCH_SHARED/orthanc.sh" install
  log "creating $DATASET"
  "$BENCH_PY" "$BENCH_SHARED/make_dataset.py" --patients 4 --studies 1 --series 2 --instances 250 --seed 1 --out "$DATASET"
fi
FILES=$(find "$DATASET" -name '*.dcm' -type f | wc -l)
[ "$FILES" = "$EXPECTED" ] || die "$DATASET has $FILES .dcm files, expected $EXPECTED"
BYTES=$(find "$DATASET" -name '*.dcm' -type f -printf '%s\n' | awk '{s+=$1} END {printf "%d", s}')
mapfile -t PATIENTS < <(find "$DATASET" -mindepth 1 -maxdepth 1 -type d | sort)

# ---------------------------------------------------------------- output
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$REPO/benchmarks/results
TSV=$RESULTS/ingest-$STAMP.tsv
LOGS=$RESULTS/ingest-$STAMP
mkdir -p "$LOGS"
printf 'started_utc\trep\tconfig\tserver\tassociations\tworkers\tfiles\tbytes\twall_s\tinst_s\tMB_s\tcpu_s\tcount\tblobs\tscu_rc\tvalid\tcommit\tloadavg1\tcpu_by_pid\n' > "$TSV"

commit() {
  local c; c=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  # uncommitted changes to the server code (benchmarks/ itself does not count)
  if [ -n "$(git -C "$REPO" status --porcelain -- pacs storage gateway fhir_adapter pyproject.toml 2>/dev/null)" ]; then c=$c-dirty; fi
  echo "$c"
}

# ---------------------------------------------------------------- CPU of a process group
TCK=$(getconf CLK_TCK)
group_pids() { ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g {print $1}'; }
cpu_snapshot() { # PGID -> "pid ticks" lines; ticks = utime+stime+cutime+cstime (reaped children count too)
  local p
  for p in $(group_pids "$1"); do
    { sed 's/.*) //' "/proc/$p/stat" 2>/dev/null || true; } | awk -v p="$p" 'NF > 15 {print p, $12 + $13 + $14 + $15}'
  done
}
cpu_delta() { # BEFORE AFTER (snapshots) -> "total_s pid:s,pid:s"
  awk -v tck="$TCK" 'NR == FNR {b[$1] = $2; tb += $2; next}
    {ta += $2; d = $2 - b[$1]; per = per (per == "" ? "" : ",") $1 ":" sprintf("%.2f", d / tck)}
    END {printf "%.2f %s\n", (ta - tb) / tck, (per == "" ? "-" : per)}' <(echo "$1") <(echo "$2")
}

# ---------------------------------------------------------------- servers
pacs_count() { # instances the server reports as stored (summed over label sets / processes)
  curl -sf -H "Authorization: Bearer $PACS_TOKEN" "http://127.0.0.1:$PACS_HTTP_PORT/metrics" \
    | awk '$1 ~ /^pacs_instances_stored_total($|\{)/ {s += $2} END {printf "%d", s}'
}

ORTHANC_UP=
orthanc_start() {
  bash "$BENCH_SHARED/orthanc.sh" wipe >/dev/null 2>&1
  port_busy "$ORTHANC_DICOM_PORT" && die "port $ORTHANC_DICOM_PORT in use by something else than our Orthanc"
  port_busy 8042 && die "port 8042 in use by something else than our Orthanc"
  bash "$BENCH_SHARED/orthanc.sh" start
  ORTHANC_UP=1
}
orthanc_stop() { bash "$BENCH_SHARED/orthanc.sh" stop; ORTHANC_UP=; }
orthanc_pgid() { local p; p=$(cat "$BENCH_DATA/orthanc/orthanc.pid"); ps -o pgid= -p "$p" | tr -d ' '; }
orthanc_count() { curl -sf "$ORTHANC_HTTP/statistics" | jq -r .CountInstances; }

cleanup() { pacs_stop; [ -z "$ORTHANC_UP" ] || orthanc_stop; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- one timed ingest
SCU_RC=0
run_clients() { # AEC PORT ASSOCIATIONS LOGPREFIX -> SCU_RC; the caller takes the time
  local aec=$1 port=$2 n=$3 logp=$4 pids=() i k rc
  if [ "$n" = 1 ]; then
    storescu -q -aet "$SCU_AET" -aec "$aec" +sd +r 127.0.0.1 "$port" "$DATASET" > "$logp.scu1.log" 2>&1 &
    pids+=($!)
  else # contiguous slices of the patients: 2 associations = P0001+P0002 and P0003+P0004
    k=$(( (${#PATIENTS[@]} + n - 1) / n ))
    for ((i = 0; i < n; i++)); do
      storescu -q -aet "$SCU_AET" -aec "$aec" +sd +r 127.0.0.1 "$port" "${PATIENTS[@]:i*k:k}" > "$logp.scu$((i + 1)).log" 2>&1 &
      pids+=($!)
    done
  fi
  SCU_RC=0
  for i in "${pids[@]}"; do rc=0; wait "$i" || rc=$?; [ "$rc" = 0 ] || SCU_RC=$rc; done
}

record() { # REP CONFIG SERVER ASSOC WORKERS WALL CPU_LINE COUNT BLOBS STARTED LOAD COMMIT
  local rep=$1 cfg=$2 server=$3 assoc=$4 workers=$5 wall=$6 cpu=$7 count=$8 blobs=$9 started=${10} load=${11} rev=${12}
  local valid=1 inst mbs
  { [ "$count" = "$EXPECTED" ] && [ "$SCU_RC" = 0 ]; } || valid=0
  inst=$(awk -v f="$FILES" -v w="$wall" 'BEGIN {printf "%.2f", f / w}')
  mbs=$(awk -v b="$BYTES" -v w="$wall" 'BEGIN {printf "%.2f", b / 1e6 / w}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.3f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$started" "$rep" "$cfg" "$server" "$assoc" "$workers" "$FILES" "$BYTES" "$wall" "$inst" "$mbs" \
    "${cpu%% *}" "$count" "$blobs" "$SCU_RC" "$valid" "$rev" "$load" "${cpu#* }" >> "$TSV"
  if [ "$valid" = 1 ]; then
    log "$server $cfg rep $rep: $(printf '%.2f' "$wall") s, $inst inst/s, $mbs MB/s, CPU ${cpu%% *} s"
  else
    log "$server $cfg rep $rep: INVALID (count $count of $EXPECTED, storescu rc $SCU_RC; logs in $LOGS)"
  fi
}

run_orthanc() { # REP CONFIG ASSOC
  local rep=$1 cfg=$2 assoc=$3 pg c0 c1 t0 t1 started load count rev
  rev=$(commit)   # of our code at the time (for the pairing), not of Orthanc
  orthanc_start
  pg=$(orthanc_pgid)
  sync
  started=$(date -u +%FT%TZ); load=$(cut -d' ' -f1 /proc/loadavg)
  c0=$(cpu_snapshot "$pg"); t0=$(now)
  run_clients ORTHANC "$ORTHANC_DICOM_PORT" "$assoc" "$LOGS/r$rep-$cfg-orthanc"
  t1=$(now); c1=$(cpu_snapshot "$pg")
  count=$(orthanc_count || echo 0)
  record "$rep" "$cfg" orthanc "$assoc" - "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
    "$(cpu_delta "$c0" "$c1")" "$count" - "$started" "$load" "$rev"
  orthanc_stop
}

run_pacs() { # REP CONFIG ASSOC WORKERS
  local rep=$1 cfg=$2 assoc=$3 workers=$4 c0 c1 t0 t1 started load count blobs rev
  rev=$(commit)   # the code the server loads at start-up
  rm -rf "$PACS_DIR"
  PACS_SERVE_FLAGS=(--dicom-workers "$workers")
  pacs_start "$PACS_DIR" "$LOGS/r$rep-$cfg-pacs.server.log"
  sync
  started=$(date -u +%FT%TZ); load=$(cut -d' ' -f1 /proc/loadavg)
  c0=$(cpu_snapshot "$PACS_PGID"); t0=$(now)
  run_clients MUNIPACS "$PACS_DICOM_PORT" "$assoc" "$LOGS/r$rep-$cfg-pacs"
  t1=$(now); c1=$(cpu_snapshot "$PACS_PGID")
  count=$(pacs_count || echo 0)
  blobs=$(find "$PACS_DIR" -path '*/objects/*' -type f 2>/dev/null | wc -l)
  record "$rep" "$cfg" pacs "$assoc" "$workers" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
    "$(cpu_delta "$c0" "$c1")" "$count" "$blobs" "$started" "$load" "$rev"
  pacs_stop
  rm -rf "$PACS_DIR"
}

run_import() { # REP: `pacs import` of the set from disk, every core (-j 0), into a fresh data dir
  local rep=$1 t0 t1 started load count blobs rev cpu out
  rev=$(commit)
  rm -rf "$PACS_DIR"; mkdir -p "$PACS_DIR"
  sync
  started=$(date -u +%FT%TZ); load=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(now)
  SCU_RC=0
  /usr/bin/time -f '%U %S' -o "$LOGS/r$rep-import.time" "$PACS_BIN" import -j 0 --data-dir "$PACS_DIR" "$DATASET" \
    > "$LOGS/r$rep-import.log" 2>&1 || SCU_RC=$?
  t1=$(now)
  cpu=$(awk '{printf "%.2f", $1 + $2}' "$LOGS/r$rep-import.time")
  out=$(tr -s ' ' < "$LOGS/r$rep-import.log")
  count=$(grep -o 'stored │ [0-9]*' <<< "$out" | grep -o '[0-9]*$' || echo 0)
  blobs=$(find "$PACS_DIR" -path '*/objects/*' -type f 2>/dev/null | wc -l)
  record "$rep" import pacs 0 "$(nproc)" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
    "$cpu -" "$count" "$blobs" "$started" "$load" "$rev"
  rm -rf "$PACS_DIR"
}

# ---------------------------------------------------------------- main
for cfg in $CONFIGS; do
  [[ $cfg =~ ^[1-9]x[1-9]$ || $cfg == import ]] || die "bad configuration '$cfg' (want AxW, e.g. 2x2, or import)"
done
log "dataset $DATASET: $FILES files, $BYTES bytes; pacs $PACS_BIN @ $(commit); REPS=$REPS CONFIGS='$CONFIGS'; nproc $(nproc)"
log "raw results: $TSV"
find "$DATASET" -name '*.dcm' -type f -exec cat {} + > /dev/null   # same warm page cache for every run
for rep in $(seq 1 "$REPS"); do
  for cfg in $CONFIGS; do
    if [ "$cfg" = import ]; then  # against Orthanc's one-association C-STORE, in the same repetition
      run_orthanc "$rep" import 1
      run_import "$rep"
      continue
    fi
    run_orthanc "$rep" "$cfg" "${cfg%x*}"
    run_pacs "$rep" "$cfg" "${cfg%x*}" "${cfg#*x}"
  done
done

python3 "$HERE/_stats.py" "$TSV" | tee "${TSV%.tsv}.md"
