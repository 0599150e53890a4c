# shellcheck shell=bash
# Shared by benchmarks/ingest.sh and benchmarks/dicomweb.sh: logging, and our server started in
# its own process group (so stopping the group stops its SCP workers too), ready when /readyz
# answers; the admin token it writes is kept in PACS_TOKEN.
#
# Needs PACS_BIN, PACS_DICOM_PORT, PACS_HTTP_PORT. Extra `pacs serve` flags: PACS_SERVE_FLAGS (array).

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
port_busy() { [ -n "$(ss -Hltn "sport = :$1")" ]; }

PACS_PGID=
PACS_TOKEN=
PACS_SERVE_FLAGS=()

pacs_start() { # DATA_DIR LOG [VAR=value ...]  (the VAR=value pairs go into the server's environment)
  local dir=$1 logf=$2 pid i; shift 2
  port_busy "$PACS_DICOM_PORT" && die "port $PACS_DICOM_PORT already in use"
  port_busy "$PACS_HTTP_PORT" && die "port $PACS_HTTP_PORT already in use"
  setsid env "$@" "$PACS_BIN" serve --data-dir "$dir" --dicom-port "$PACS_DICOM_PORT" --http-port "$PACS_HTTP_PORT" \
    "${PACS_SERVE_FLAGS[@]}" >> "$logf" 2>&1 < /dev/null &
  pid=$!
  PACS_PGID=$(ps -o pgid= -p "$pid" | tr -d ' ')
  [ "$PACS_PGID" = "$pid" ] || die "pacs (pid $pid) is not a process group leader (pgid $PACS_PGID)"
  for i in $(seq 1 900); do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$logf" >&2; die "pacs exited during start-up"; }
    if curl -sf -o /dev/null "http://127.0.0.1:$PACS_HTTP_PORT/readyz"; then
      PACS_TOKEN=$(cat "$dir/admin-token")
      log "pacs up (pgid $PACS_PGID, ${i}00 ms, data $dir, flags: ${PACS_SERVE_FLAGS[*]:-none})"; return
    fi
    sleep 0.1
  done
  tail -20 "$logf" >&2; die "pacs not ready after 90 s"
}

pacs_stop() {
  [ -n "$PACS_PGID" ] || return 0
  local i
  kill -TERM -- "-$PACS_PGID" 2>/dev/null || true
  for i in $(seq 1 300); do kill -0 -- "-$PACS_PGID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 -- "-$PACS_PGID" 2>/dev/null; then
    log "pacs group $PACS_PGID still alive after 30 s: SIGKILL"; kill -KILL -- "-$PACS_PGID" 2>/dev/null || true
  fi
  wait "$PACS_PGID" 2>/dev/null || true
  PACS_PGID=
}
