# shellcheck shell=bash
# Shared by the side-by-side benchmarks (dicomweb.sh, dimse.sh): the result TSV and its rows, the
# commit a row was measured at, and the reference Orthanc of ../shared/bench started and stopped.
#
# Needs REPO, TSV, BENCH_SHARED, ORTHANC_DICOM_PORT set by the sourcing script; defines REV.

now() { date +%s.%N; }

COLUMNS_TSV='started_utc\tphase\ttest\tserver\tmetric\tunit\tn\tmedian\tp95\tmin\tmax\tresults\tbytes\tstatus\tnote\tcommit\tloadavg1\tvalues\n'
[ -s "$TSV" ] || printf "$COLUMNS_TSV" > "$TSV"

commit() { # short HEAD, -dirty when the server code differs from it (benchmarks/ itself does not count)
  local c; c=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$REPO" status --porcelain -- pacs storage gateway fhir_adapter pyproject.toml 2>/dev/null)" ]; then c=$c-dirty; fi
  echo "$c"
}
fingerprint() { # content hash of the uncommitted server files, to tell two -dirty states apart
  (cd "$REPO" && git ls-files -m -o --exclude-standard -- pacs storage gateway fhir_adapter pyproject.toml \
     | grep -v '__pycache__' | sort | xargs -r sha1sum | sha1sum | cut -c1-10)
}
REV=$(commit)

# record PHASE TEST SERVER METRIC UNIT RESULTS BYTES STATUS NOTE v1 v2 ...
record() {
  local phase=$1 test=$2 server=$3 metric=$4 unit=$5 results=$6 bytes=$7 status=$8 note=$9; shift 9
  python3 - "$TSV" "$phase" "$test" "$server" "$metric" "$unit" "$results" "$bytes" "$status" "$note" \
    "$REV" "$(cut -d' ' -f1 /proc/loadavg)" "$@" <<'PY'
import statistics, sys, datetime
tsv, phase, test, server, metric, unit, results, nbytes, status, note, rev, load, *vals = sys.argv[1:]
v = sorted(float(x) for x in vals)
def q(p):  # linear interpolation between closest ranks (numpy's default)
    if not v: return ""
    k = (len(v) - 1) * p; lo = int(k); hi = min(lo + 1, len(v) - 1)
    return f"{v[lo] + (v[hi] - v[lo]) * (k - lo):.4g}"
row = [datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), phase, test, server, metric, unit,
       str(len(v)), f"{statistics.median(v):.4g}" if v else "", q(0.95), f"{v[0]:.4g}" if v else "",
       f"{v[-1]:.4g}" if v else "", results, nbytes, status, note, rev, load, " ".join(vals)]
with open(tsv, "a") as f:
    f.write("\t".join(x.replace("\t", " ") for x in row) + "\n")
PY
  if [ $# -gt 0 ]; then
    log "$server | $test | $metric: median $(printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}') $unit (n=$#, results $results, status $status)"
  else
    log "$server | $test | $metric: NOT MEASURED (status $status) $note"
  fi
}

# ---------------------------------------------------------------- servers

ORTHANC_UP=
orthanc_start() {
  if [ -z "$ORTHANC_UP" ]; then
    port_busy 8042 && die "port 8042 in use (another Orthanc? stop it: bash $BENCH_SHARED/orthanc.sh stop)"
    port_busy "$ORTHANC_DICOM_PORT" && die "port $ORTHANC_DICOM_PORT in use"
  fi
  bash "$BENCH_SHARED/orthanc.sh" start
  ORTHANC_UP=1
}
orthanc_stop() { bash "$BENCH_SHARED/orthanc.sh" stop; ORTHANC_UP=; }

evict() { python3 "$BENCH_SHARED/evict_cache.py" "$@"; }
