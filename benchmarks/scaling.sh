#!/usr/bin/env bash
# Scale-out benchmark ("[9/10] Deploy and scale out"): C-STORE ingest instances/s and QIDO-RS
# requests/s with 1, 2 and 4 processes of each service (`pacs serve --only dicom` and
# `--only http`) on PostgreSQL + S3 (Ceph RGW), against ONE `pacs serve` (both services) on
# SQLite + filesystem; with the CPU seconds of our processes, of PostgreSQL and of Ceph per
# instance and per request, the machine's busy CPU and the disk's flushes.
#
#   make dev && bash benchmarks/scaling.sh                 # ~5 min on 2 cores (REPS=3: 15 min)
#   PROCS="1 2" BASELINE=0 bash benchmarks/scaling.sh      # a subset
#   TSV=benchmarks/results/scaling-<stamp>.tsv bash benchmarks/scaling.sh table
#
# For every configuration, from empty:
#   sqlite-fs  P=1: one `pacs serve` (DICOM + HTTP, --dicom-workers 1) on a fresh --data-dir.
#   pg-s3      P in PROCS: a fresh database pacs_scale_<P> on our own PostgreSQL 15 (started once,
#              `start-postgres.sh --durable`: fsync and synchronous_commit on, as in production), a
#              fresh Ceph RGW (`start-s3.sh --store bluestore`, restarted with --purge for every P:
#              a fresh store and bucket), then P `--only dicom` and P `--only http` processes
#              started together (each its own --data-dir and process group, one PACS_JWT_SECRET).
#   Every archive process runs with PACS_HTTP_RATE_LIMIT=0 PACS_DICOM_RATE_LIMIT=0.
# Then:
#   ingest     the CT set (DATASET: 2,000 instances of 512x512, 4 patients, 1,052 MB) by dcmtk
#              storescu (+sd +r, TCP_NODELAY=1), C = max(2, P) associations in parallel, the sorted
#              file list cut in C contiguous slices, association j sent straight to SCP process
#              j mod P (no HAProxy: this measures the archive, not the proxy). Wall = the senders'.
#              Checked afterwards: every storescu exited 0 and QIDO-RS counts 2,000 instances.
#   qido-all   `studies?limit=100` (every study: 4 here), K=QIDO_CLIENTS client threads of
#              scaling_load.py (one keep-alive connection each, client i on gateway i mod P), the
#              admin token, QIDO_WARMUP s not counted then QIDO_SECONDS s counted.
#   qido-pid   `studies?PatientID=PID000002` (1 study), the same way.
# For each measure: CPU seconds (user+sys, reaped children too, from /proc/PID/stat) of the SCP
# processes' groups, of the gateways' groups, of PostgreSQL (the postmaster and its children), of
# Ceph (mon, osd, rgw), of the load client (qido), the machine's busy and iowait CPU seconds
# (/proc/stat), and the disk's write requests, MB written and flushes (/proc/diskstats).
#
# Output: benchmarks/results/scaling-<UTC stamp>.tsv (one row per measure), .md (the table),
# .meta (commit, machine, load, busiest processes) and a folder with the server, storescu and
# PostgreSQL/Ceph logs. results/ is git-ignored.
#
# Settings (environment):
#   PACS_BIN      our server (default $REPO/.venv/bin/pacs, else `pacs` on PATH)
#   PROCS         processes per service on PostgreSQL + S3 ("1 2 4")
#   BASELINE      1: also the SQLite + filesystem baseline (first) (1)
#   REPS          repetitions of every configuration (1)
#   QIDO_CLIENTS (8) QIDO_SECONDS (20) QIDO_WARMUP (2)
#   BENCH_DATA    (/tmp/bench-data): the dataset $BENCH_DATA/ct2000 (made by ../shared/bench when
#                 missing, as in ingest.sh); DATASET overrides it (any folder of .dcm files)
#   WORK          (/tmp/bench-scale): data folders of the archive processes, PostgreSQL in WORK/pg
#                 (PG_PORT 19310), Ceph in /tmp/bench-scale-s3 (S3_DIR; S3_PORT 19300 and 19301)
#   PORT_BASE     (11500): SCP i: DICOM PORT_BASE+i, HTTP (health) 8500+i; gateway i: HTTP 8510+i;
#                 the baseline: DICOM PORT_BASE+20, HTTP 8520
#   KEEP          1: leave PostgreSQL and Ceph running at the end (0: stopped, Ceph purged)
set -euo pipefail

export TCP_NODELAY=1
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TOOLS=${PACS_TOOLS:-$(cd "$REPO/.." && pwd)/shared/tools}
BENCH_SHARED=${BENCH_SHARED:-$(cd "$REPO/.." && pwd)/shared/bench}
export BENCH_DATA=${BENCH_DATA:-/tmp/bench-data}
BENCH_PY=${BENCH_PY:-/tmp/bench-venv/bin/python}
DATASET=${DATASET:-$BENCH_DATA/ct2000}
PROCS=${PROCS:-"1 2 4"}
BASELINE=${BASELINE:-1}
REPS=${REPS:-1}
QIDO_CLIENTS=${QIDO_CLIENTS:-8}
QIDO_SECONDS=${QIDO_SECONDS:-20}
QIDO_WARMUP=${QIDO_WARMUP:-2}
WORK=${WORK:-/tmp/bench-scale}
PG_DIR=$WORK/pg
PG_PORT=${PG_PORT:-19310}
S3_DIR=${S3_DIR:-/tmp/bench-scale-s3}
S3_PORT=${S3_PORT:-19300}
PORT_BASE=${PORT_BASE:-11500}
HTTP_BASE=${HTTP_BASE:-8500}
KEEP=${KEEP:-0}
SCU_AET=SCALESCU
PACS_AET=MUNIPACS
Q_ALL="studies?limit=100"
Q_PID="studies?PatientID=PID000002"

# shellcheck source=benchmarks/lib.sh
source "$HERE/lib.sh"   # log, die, port_busy

if [ -z "${PACS_BIN:-}" ]; then
  if [ -x "$REPO/.venv/bin/pacs" ]; then PACS_BIN=$REPO/.venv/bin/pacs
  else PACS_BIN=$(command -v pacs) || die "no pacs executable: run 'make dev' or set PACS_BIN"; fi
fi
[ -x "$PACS_BIN" ] || die "PACS_BIN=$PACS_BIN is not executable"
PACS_PY=${PACS_PY:-$(dirname "$PACS_BIN")/python}
LOAD=("$PACS_PY" "$HERE/scaling_load.py")
for tool in storescu curl ss psql python3 awk; do command -v "$tool" >/dev/null || die "$tool not found"; done

commit() { # short HEAD, -dirty when the server code differs from it (benchmarks/ itself does not count)
  local c; c=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$REPO" status --porcelain -- pacs storage gateway fhir_adapter pyproject.toml 2>/dev/null)" ]; then c=$c-dirty; fi
  echo "$c"
}
busiest() { top -b -n 2 -d 1 -o %CPU 2>/dev/null | awk '/^top -/ {f++} f == 2' | sed -n '7,12p' || true; }

# ---------------------------------------------------------------- table only
if [ "${1:-}" = table ]; then
  [ -n "${TSV:-}" ] || die "table: set TSV"
  "${LOAD[@]}" table "$TSV" | tee "${TSV%.tsv}.md"
  exit 0
fi

# ---------------------------------------------------------------- dataset
if [ ! -d "$DATASET" ]; then
  [ "$DATASET" = "$BENCH_DATA/ct2000" ] || die "no dataset at $DATASET"
  [ -x "$BENCH_PY" ] || BENCH_PY=$BENCH_PY bash "$BENCH_SHARED/orthanc.sh" install
  log "creating $DATASET"
  "$BENCH_PY" "$BENCH_SHARED/make_dataset.py" --patients 4 --studies 1 --series 2 --instances 250 --seed 1 --out "$DATASET"
fi
mapfile -t FILES < <(find "$DATASET" -name '*.dcm' -type f | sort)
NFILES=${#FILES[@]}
[ "$NFILES" -gt 0 ] || die "no .dcm files in $DATASET"
BYTES=$(printf '%s\0' "${FILES[@]}" | xargs -0 stat -c %s | awk '{s += $1} END {printf "%d", s}')

# ---------------------------------------------------------------- output
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$REPO/benchmarks/results
TSV=${TSV:-$RESULTS/scaling-$STAMP.tsv}
LOGS=${TSV%.tsv}
mkdir -p "$LOGS" "$WORK"
COLS=(started_utc rep config procs phase clients wall_s n rate unit MB_s p50_ms p95_ms
      cpu_dicom_s cpu_http_s cpu_pg_s cpu_ceph_s cpu_client_s busy_s iowait_s ncpu
      dev_writes dev_MB dev_flushes count valid commit loadavg1 cpu_by_process note)
[ -s "$TSV" ] || (IFS=$'\t'; echo "${COLS[*]}") > "$TSV"
row() { # name=value ... -> one TSV row in COLS order (missing = empty)
  local -A v=(); local kv out=() c
  for kv in "$@"; do v[${kv%%=*}]=${kv#*=}; done
  for c in "${COLS[@]}"; do out+=("${v[$c]:-}"); done
  (IFS=$'\t'; echo "${out[*]}") >> "$TSV"
}

# ---------------------------------------------------------------- CPU, disk
TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
DEV=$(df --output=source "$WORK" | tail -1 | sed 's#^/dev/##')
group_pids() { ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g {print $1}'; }
ticks_of() { # PID... -> "pid ticks" (utime+stime+cutime+cstime)
  local p
  for p in "$@"; do
    { sed 's/.*) //' "/proc/$p/stat" 2>/dev/null || true; } | awk -v p="$p" 'NF > 15 {print p, $12 + $13 + $14 + $15}'
  done
}
cpu_delta() { # BEFORE AFTER -> seconds (a process gone in between counts in its parent's cutime)
  awk -v tck="$TCK" 'NR == FNR {tb += $2; next} {ta += $2} END {printf "%.2f\n", (ta - tb) / tck}' \
    <(echo "$1") <(echo "$2")
}
per_pid() { # BEFORE AFTER NAME -> "NAME:pid=s,..." of the pids that used >= 0.05 s
  awk -v tck="$TCK" -v name="$3" 'NR == FNR {b[$1] = $2; next}
    {d = ($2 - b[$1]) / tck; if (d >= 0.05) per = per (per == "" ? "" : ",") $1 "=" sprintf("%.2f", d)}
    END {printf "%s:%s", name, (per == "" ? "-" : per)}' <(echo "$1") <(echo "$2")
}
stat_cpu() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9, $6}' /proc/stat; }   # busy iowait ticks
disk() { awk -v d="$DEV" '$3 == d {print $8, $10, ($19 == "" ? 0 : $19)}' /proc/diskstats; }  # writes sectors flushes

# the pids of each kind, now (the groups of our archive processes; PostgreSQL; Ceph)
DICOM_GROUPS=() HTTP_GROUPS=()
pids_dicom() { local g; for g in "${DICOM_GROUPS[@]}"; do group_pids "$g"; done; }
pids_http() { local g; for g in "${HTTP_GROUPS[@]}"; do group_pids "$g"; done; }
pids_pg() {
  local pm
  [ -s "$PG_DIR/data/postmaster.pid" ] || return 0
  pm=$(head -n1 "$PG_DIR/data/postmaster.pid")
  echo "$pm"; ps -o pid= --ppid "$pm" || true
}
pids_ceph() { local f; for f in "$S3_DIR"/run/mon.a.pid "$S3_DIR"/run/osd.0.pid "$S3_DIR"/run/client.rgw.a.pid; do [ -s "$f" ] && head -n1 "$f"; done; return 0; }

declare -A SNAP=()
snapshot() { # KEY: CPU of every kind, machine, disk, time
  local k=$1
  SNAP[$k.t0]=$(date +%s.%N)
  SNAP[$k.dicom]=$(ticks_of $(pids_dicom)); SNAP[$k.http]=$(ticks_of $(pids_http))
  SNAP[$k.pg]=$(ticks_of $(pids_pg)); SNAP[$k.ceph]=$(ticks_of $(pids_ceph))
  SNAP[$k.stat]=$(stat_cpu); SNAP[$k.disk]=$(disk); SNAP[$k.t1]=$(date +%s.%N)
}
measures() { # KEY0 KEY1 -> name=value pairs for row()
  local a=$1 b=$2 kind
  local -a sa sb da db
  read -r -a sa <<< "${SNAP[$a.stat]}"; read -r -a sb <<< "${SNAP[$b.stat]}"
  read -r -a da <<< "${SNAP[$a.disk]:-0 0 0}"; read -r -a db <<< "${SNAP[$b.disk]:-0 0 0}"
  for kind in dicom http pg ceph; do
    printf 'cpu_%s_s=%s\n' "$kind" "$(cpu_delta "${SNAP[$a.$kind]}" "${SNAP[$b.$kind]}")"
  done
  printf 'cpu_by_process=%s %s %s\n' "$(per_pid "${SNAP[$a.dicom]}" "${SNAP[$b.dicom]}" dicom)" \
    "$(per_pid "${SNAP[$a.http]}" "${SNAP[$b.http]}" http)" "$(per_pid "${SNAP[$a.ceph]}" "${SNAP[$b.ceph]}" ceph)"
  awk -v a="${sa[0]}" -v b="${sb[0]}" -v t="$TCK" 'BEGIN {printf "busy_s=%.2f\n", (b - a) / t}'
  awk -v a="${sa[1]}" -v b="${sb[1]}" -v t="$TCK" 'BEGIN {printf "iowait_s=%.2f\n", (b - a) / t}'
  echo "dev_writes=$((db[0] - da[0]))"
  awk -v a="${da[1]}" -v b="${db[1]}" 'BEGIN {printf "dev_MB=%.1f\n", (b - a) * 512 / 1e6}'
  echo "dev_flushes=$((db[2] - da[2]))"
  echo "ncpu=$NCPU"
  awk -v a="${SNAP[$a.t1]}" -v b="${SNAP[$b.t0]}" 'BEGIN {printf "wall_s=%.3f\n", b - a}'  # end of A's reads to start of B's
}

# ---------------------------------------------------------------- archive processes
declare -A PGID=()   # name -> process group (= pid: started with setsid)
proc_start() { # NAME DATA_DIR DICOM_PORT HTTP_PORT ONLY(-|dicom|http) VAR=value...
  local name=$1 dir=$2 dicom=$3 http=$4 only=$5 pid; shift 5
  local flags=(--data-dir "$dir" --dicom-port "$dicom" --http-port "$http")
  [ "$only" = - ] || flags+=(--only "$only")
  port_busy "$http" && die "port $http already in use"
  [ "$only" = http ] || ! port_busy "$dicom" || die "port $dicom already in use"
  rm -rf "$dir"; mkdir -p "$dir"
  setsid env "$@" PACS_HTTP_RATE_LIMIT=0 PACS_DICOM_RATE_LIMIT=0 "$PACS_BIN" serve "${flags[@]}" \
    >> "$LOGS/$CFG_TAG-$name.log" 2>&1 < /dev/null &
  pid=$!
  PGID[$name]=$pid
  echo "$name $pid" >> "$LOGS/pids"
}
proc_wait() { # NAME HTTP_PORT [DICOM_PORT]
  local name=$1 http=$2 dicom=${3:-} i
  for i in $(seq 1 1800); do
    kill -0 "${PGID[$name]}" 2>/dev/null || { tail -20 "$LOGS/$CFG_TAG-$name.log" >&2; die "$name exited during start-up"; }
    if curl -sf -o /dev/null "http://127.0.0.1:$http/readyz" && { [ -z "$dicom" ] || port_busy "$dicom"; }; then return 0; fi
    sleep 0.1
  done
  tail -20 "$LOGS/$CFG_TAG-$name.log" >&2; die "$name not ready after 180 s"
}
procs_stop() { # every archive process we started, by its recorded group; SIGTERM, then SIGKILL
  local name g i alive
  for name in "${!PGID[@]}"; do kill -TERM -- "-${PGID[$name]}" 2>/dev/null || true; done
  for i in $(seq 1 300); do
    alive=0
    for name in "${!PGID[@]}"; do kill -0 -- "-${PGID[$name]}" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for name in "${!PGID[@]}"; do
    g=${PGID[$name]}
    if kill -0 -- "-$g" 2>/dev/null; then log "$name (group $g) still alive after 30 s: SIGKILL"; kill -KILL -- "-$g" 2>/dev/null || true; fi
    wait "$g" 2>/dev/null || true
  done
  PGID=(); DICOM_GROUPS=(); HTTP_GROUPS=()
}

# ---------------------------------------------------------------- PostgreSQL and Ceph
PG_URL=
pg_up() {
  PG_URL=$(bash "$TOOLS/start-postgres.sh" --dir "$PG_DIR" --port "$PG_PORT" --durable 2> "$LOGS/pg-start.log") \
    || { cat "$LOGS/pg-start.log" >&2; die "PostgreSQL did not start"; }
  local fs; fs=$(PGPASSWORD=pacs psql -X -qtA -h 127.0.0.1 -p "$PG_PORT" -U pacs -d postgres -c 'SHOW fsync' -c 'SHOW synchronous_commit' | tr '\n' ' ')
  log "PostgreSQL $PG_URL (fsync, synchronous_commit: $fs)"
}
pg_fresh_db() { # NAME -> URL of a new empty database NAME on our cluster
  PGPASSWORD=pacs PGOPTIONS="-c client_min_messages=warning" psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U pacs -d postgres -v ON_ERROR_STOP=1 \
    -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1 OWNER pacs" -c CHECKPOINT >&2
  echo "${PG_URL%/*}/$1"
}
S3_ENDPOINT= S3_ACCESS_KEY= S3_SECRET_KEY=
s3_fresh() { # a fresh, empty Ceph RGW store (bluestore: bounded RAM)
  bash "$TOOLS/stop-s3.sh" --dir "$S3_DIR" --purge >> "$LOGS/s3-start.log" 2>&1 || true
  local env
  env=$(bash "$TOOLS/start-s3.sh" --dir "$S3_DIR" --port "$S3_PORT" --store bluestore --max-bytes $((6 * 1024 * 1024 * 1024)) 2>> "$LOGS/s3-start.log") \
    || { tail -20 "$LOGS/s3-start.log" >&2; die "Ceph RGW did not start"; }
  eval "$env"
  log "Ceph RGW at $S3_ENDPOINT (bluestore, fresh)"
}

cleanup() {
  procs_stop
  if [ "$KEEP" != 1 ]; then
    [ -d "$S3_DIR" ] && { cp -r "$S3_DIR/log" "$LOGS/ceph-log-last" 2>/dev/null || true; bash "$TOOLS/stop-s3.sh" --dir "$S3_DIR" --purge > /dev/null 2>&1 || true; }
    [ -d "$PG_DIR" ] && { cp "$PG_DIR/postgres.log" "$LOGS/postgres.log" 2>/dev/null || true; bash "$TOOLS/stop-postgres.sh" --dir "$PG_DIR" --purge > /dev/null 2>&1 || true; }
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- one configuration
CFG_TAG=
run_config() { # REP CONFIG(sqlite-fs|pg-s3) P
  local rep=$1 cfg=$2 P=$3 i name token_file started load rev C
  local -a bases=() scps=()
  CFG_TAG=r$rep-$cfg-$P
  rev=$(commit)
  log "=== $cfg, $P process(es) per service, rep $rep (load $(cut -d' ' -f1-3 /proc/loadavg))"
  if [ "$cfg" = sqlite-fs ]; then
    proc_start base "$WORK/sqlite-fs" $((PORT_BASE + 20)) $((HTTP_BASE + 20)) -
    proc_wait base $((HTTP_BASE + 20)) $((PORT_BASE + 20))
    DICOM_GROUPS=("${PGID[base]}")   # both services in one process: counted as "dicom"
    scps=($((PORT_BASE + 20))); bases=("http://127.0.0.1:$((HTTP_BASE + 20))")
    token_file=$WORK/sqlite-fs/admin-token
  else
    s3_fresh
    local db_url secret env_common
    db_url=$(pg_fresh_db "pacs_scale_$P")
    secret=$("$PACS_PY" -c 'import secrets; print(secrets.token_urlsafe(48))')
    env_common=(PACS_DATABASE_URL="$db_url" PACS_STORAGE_URL="s3://pacs-scale-$P?endpoint=$S3_ENDPOINT&region=us-east-1"
                PACS_S3_ACCESS_KEY="$S3_ACCESS_KEY" PACS_S3_SECRET_KEY="$S3_SECRET_KEY" PACS_JWT_SECRET="$secret")
    for ((i = 1; i <= P; i++)); do   # all at once: the index is migrated once, under the advisory lock
      proc_start "scp$i" "$WORK/pg-s3-scp$i" $((PORT_BASE + i)) $((HTTP_BASE + i)) dicom "${env_common[@]}"
      proc_start "gw$i" "$WORK/pg-s3-gw$i" $((PORT_BASE + 10 + i)) $((HTTP_BASE + 10 + i)) http "${env_common[@]}"
    done
    for ((i = 1; i <= P; i++)); do
      proc_wait "scp$i" $((HTTP_BASE + i)) $((PORT_BASE + i)); proc_wait "gw$i" $((HTTP_BASE + 10 + i))
      DICOM_GROUPS+=("${PGID[scp$i]}"); HTTP_GROUPS+=("${PGID[gw$i]}")
      scps+=($((PORT_BASE + i))); bases+=("http://127.0.0.1:$((HTTP_BASE + 10 + i))")
    done
    token_file=$WORK/pg-s3-gw1/admin-token
  fi
  log "up: ${#PGID[@]} archive process(es) (groups ${PGID[*]})"
  sleep 3   # start-up work (linkers, sweepers, first pool connections) out of the way

  # ---- ingest
  C=$(( P > 2 ? P : 2 ))
  local per=$(( (NFILES + C - 1) / C )) pids=() rc scu_rc=0 count studies valid
  sync
  started=$(date -u +%FT%TZ); load=$(cut -d' ' -f1 /proc/loadavg)
  snapshot i0
  for ((i = 0; i < C; i++)); do
    timeout 1200 storescu -q -aet "$SCU_AET" -aec "$PACS_AET" +sd +r 127.0.0.1 "${scps[i % ${#scps[@]}]}" \
      "${FILES[@]:i*per:per}" > "$LOGS/$CFG_TAG-scu$((i + 1)).log" 2>&1 &
    pids+=($!)
  done
  for i in "${pids[@]}"; do rc=0; wait "$i" || rc=$?; [ "$rc" = 0 ] || scu_rc=$rc; done
  snapshot i1
  read -r count studies < <("${LOAD[@]}" count --base "${bases[0]}" --token-file "$token_file" || echo "0 0")
  valid=1; { [ "$count" = "$NFILES" ] && [ "$scu_rc" = 0 ]; } || valid=0
  local -a m; mapfile -t m < <(measures i0 i1)
  local wall; wall=$(printf '%s\n' "${m[@]}" | sed -n 's/^wall_s=//p')
  row started_utc="$started" rep="$rep" config="$cfg" procs="$P" phase=ingest clients="$C" n="$NFILES" \
    rate="$(awk -v n="$NFILES" -v w="$wall" 'BEGIN {printf "%.2f", n / w}')" unit=inst/s \
    MB_s="$(awk -v b="$BYTES" -v w="$wall" 'BEGIN {printf "%.2f", b / 1e6 / w}')" "${m[@]}" \
    count="$count" valid="$valid" commit="$rev" loadavg1="$load" note="storescu rc $scu_rc; $studies studies"
  log "$cfg P=$P ingest: $NFILES files in ${wall} s = $(awk -v n="$NFILES" -v w="$wall" 'BEGIN {printf "%.1f", n / w}') inst/s; counted $count; $(printf '%s ' "${m[@]}" | grep -o 'cpu_[a-z]*_s=[0-9.]*\|busy_s=[0-9.]*\|dev_flushes=[0-9]*' | tr '\n' ' ')"

  # ---- QIDO-RS
  local shape path out bargs=() b
  for b in "${bases[@]}"; do bargs+=(--base "$b"); done
  for shape in qido-all qido-pid; do
    if [ "$shape" = qido-all ]; then path=$Q_ALL; else path=$Q_PID; fi
    started=$(date -u +%FT%TZ); load=$(cut -d' ' -f1 /proc/loadavg)
    "${LOAD[@]}" qido "${bargs[@]}" --path "$path" --token-file "$token_file" --clients "$QIDO_CLIENTS" \
      --seconds "$QIDO_SECONDS" --warmup "$QIDO_WARMUP" > "$LOGS/$CFG_TAG-$shape.json" &
    local lp=$!
    sleep "$(awk -v w="$QIDO_WARMUP" 'BEGIN {print w + 0.2}')"; snapshot q0
    sleep "$QIDO_SECONDS"; snapshot q1
    wait "$lp" || die "the QIDO client failed (see $LOGS/$CFG_TAG-$shape.json)"
    out=$(cat "$LOGS/$CFG_TAG-$shape.json")
    mapfile -t m < <(measures q0 q1)
    j() { echo "$out" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
    valid=1; [ "$(j errors)" = 0 ] && [ "$(j requests)" -gt 0 ] || valid=0
    # the client's window is its own (QIDO_SECONDS from its clock); the snapshots' wall is within ~0.1 s of it
    row started_utc="$started" rep="$rep" config="$cfg" procs="$P" phase="$shape" clients="$QIDO_CLIENTS" \
      n="$(j requests)" rate="$(j rps)" unit=req/s p50_ms="$(j p50_ms)" p95_ms="$(j p95_ms)" \
      cpu_client_s="$(j client_cpu_s)" "${m[@]}" count="$(j results)" valid="$valid" commit="$rev" loadavg1="$load" \
      note="$path; errors $(j errors) $(j statuses); $(j gateways) gateway(s)"
    log "$cfg P=$P $shape: $(j rps) req/s, p50 $(j p50_ms) ms, p95 $(j p95_ms) ms, $(j results) results, errors $(j errors); $(printf '%s ' "${m[@]}" | grep -o 'cpu_[a-z]*_s=[0-9.]*\|busy_s=[0-9.]*' | tr '\n' ' ')"
  done
  procs_stop
  rm -rf "$WORK"/sqlite-fs "$WORK"/pg-s3-*
}

# ---------------------------------------------------------------- main
for p in $PROCS; do [[ $p =~ ^[1-9]$ ]] || die "PROCS: 1..9 processes per service, not '$p'"; done
{
  echo "started_utc=$(date -u +%FT%TZ)"
  echo "commit=$(commit)"
  echo "PROCS=$PROCS BASELINE=$BASELINE REPS=$REPS QIDO_CLIENTS=$QIDO_CLIENTS QIDO_SECONDS=$QIDO_SECONDS QIDO_WARMUP=$QIDO_WARMUP DATASET=$DATASET files=$NFILES bytes=$BYTES device=$DEV"
  echo "nproc=$NCPU loadavg=$(cut -d' ' -f1-3 /proc/loadavg) cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) mem=$(free -g | awk '/^Mem/ {print $2}')G"
  echo "storescu: $(storescu --version 2>&1 | head -1)"
  echo "busiest processes at start (top, 1 s):"; busiest
} >> "${TSV%.tsv}.meta"
log "dataset $DATASET: $NFILES files, $BYTES bytes; pacs $PACS_BIN @ $(commit); PROCS='$PROCS' BASELINE=$BASELINE REPS=$REPS; nproc $NCPU"
log "raw results: $TSV"
printf '%s\0' "${FILES[@]}" | xargs -0 cat > /dev/null   # the same warm page cache for every run
pg_up
for rep in $(seq 1 "$REPS"); do
  [ "$BASELINE" = 1 ] && run_config "$rep" sqlite-fs 1
  for P in $PROCS; do run_config "$rep" pg-s3 "$P"; done
done
{ echo "finished_utc=$(date -u +%FT%TZ) loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"; echo "busiest processes at the end (top, 1 s):"; busiest; } >> "${TSV%.tsv}.meta"
"${LOAD[@]}" table "$TSV" | tee "${TSV%.tsv}.md"
