#!/usr/bin/env bash
# The compose topology without containers, for tests and for sites without Docker: PostgreSQL
# and an S3 server (../shared/tools: Debian's postgresql and Ceph RGW), two SCP processes
# (`pacs serve --only dicom`) behind HAProxy, two gateway processes (`--only http`) behind nginx
# with TLS, all from Debian's packages, with the same HAProxy and nginx files as
# docker-compose.yml (deploy/haproxy/haproxy.cfg, deploy/nginx/pacs.conf.template).
#
#   deploy/local-cluster.sh start DIR     start everything (idempotent per piece), print settings
#   deploy/local-cluster.sh stop DIR      stop everything started in DIR (DIR stays)
#   deploy/local-cluster.sh restart-one DIR NAME   SIGTERM and start again one of: scp1 scp2 gw1 gw2
#
# `start` prints KEY=VALUE lines (also in DIR/cluster.env):
#   CLUSTER_DICOM=127.0.0.1:PORT   HAProxy's DICOM port (AE title MUNIPACS)
#   CLUSTER_URL=https://127.0.0.1:PORT   nginx (a development certificate: DIR/certs/dev.crt)
#   CLUSTER_SCP1/2, CLUSTER_GW1/2, their *_HTTP ports, CLUSTER_DATABASE_URL, CLUSTER_S3_*
#
# Settings (environment):
#   CLUSTER_PORT_BASE  first of the ports used (default 21100): +0 HAProxy, +1 nginx, +10..+13
#                      the SCPs (DICOM, HTTP), +20/+21 the gateways, +30 PostgreSQL (+31), +40 S3 (+41)
#   PACS_BIN           the pacs executable (default: the repository's .venv/bin/pacs, else on PATH)
#   PACS_TOOLS         ../shared/tools (start-postgres.sh, start-s3.sh)
#   CLUSTER_S3_ENDPOINT  the S3 endpoint the archive uses, if not the server's own (a relay)
#   PACS_*             passed on to every archive process (PACS_SHUTDOWN_GRACE, PACS_LOG_LEVEL...)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TOOLS=${PACS_TOOLS:-$(cd "$REPO/.." && pwd)/shared/tools}
if [ -z "${PACS_BIN:-}" ]; then
  if [ -x "$REPO/.venv/bin/pacs" ]; then PACS_BIN=$REPO/.venv/bin/pacs; else PACS_BIN=$(command -v pacs); fi
fi
PY=$(dirname "$PACS_BIN")/python

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "local-cluster: $*" >&2; exit 2; }

[ $# -ge 2 ] || { usage; exit 2; }
ACTION=$1
DIR=$(mkdir -p "$2" && cd "$2" && pwd)
BASE=${CLUSTER_PORT_BASE:-21100}
LB_DICOM=$((BASE)) NGINX=$((BASE + 1))
SCP1=$((BASE + 10)) SCP1_HTTP=$((BASE + 11)) SCP2=$((BASE + 12)) SCP2_HTTP=$((BASE + 13))
GW1=$((BASE + 20)) GW2=$((BASE + 21)) PG_PORT=$((BASE + 30)) S3_PORT=$((BASE + 40))

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ----- the pieces --------------------------------------------------------------------------------

start_backends() {
  DATABASE_URL=$(bash "$TOOLS/start-postgres.sh" --dir "$DIR/pg" --port "$PG_PORT")
  local s3_env
  s3_env=$(bash "$TOOLS/start-s3.sh" --dir "$DIR/s3" --port "$S3_PORT" --store bluestore)
  eval "$s3_env"
  S3_ENDPOINT=${CLUSTER_S3_ENDPOINT:-$S3_ENDPOINT}  # a relay a test puts in between, to cut it
  export PACS_DATABASE_URL=$DATABASE_URL
  export PACS_STORAGE_URL="s3://pacs?endpoint=$S3_ENDPOINT&region=us-east-1"
  export PACS_S3_ACCESS_KEY=$S3_ACCESS_KEY PACS_S3_SECRET_KEY=$S3_SECRET_KEY
  # every process signs and verifies the same tokens: one secret for the cluster, made once
  [ -s "$DIR/jwt-secret" ] || "$PY" -c 'import secrets; print(secrets.token_urlsafe(48))' > "$DIR/jwt-secret"
  chmod 600 "$DIR/jwt-secret"
  PACS_JWT_SECRET=$(cat "$DIR/jwt-secret")
  export PACS_JWT_SECRET
  export PACS_PUBLIC_URL="https://127.0.0.1:$NGINX"
  export PACS_FORWARDED_ALLOW_IPS=127.0.0.1
}

# start_pacs NAME ONLY DICOM_PORT HTTP_PORT: one archive process, in its own session (its SCP
# workers and linker with it), ready when its /readyz answers
start_pacs() {
  local name=$1 only=$2 dicom=$3 http=$4
  alive "$DIR/$name.pid" && return 0
  setsid "$PACS_BIN" serve --only "$only" --data-dir "$DIR/$name" --dicom-port "$dicom" --http-port "$http" \
    >> "$DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/$name.pid"
}

wait_ready() {
  local name=$1 http=$2 deadline=$((SECONDS + 120))
  until curl -fs -o /dev/null "http://127.0.0.1:$http/readyz"; do
    alive "$DIR/$name.pid" || die "$name exited; see $DIR/$name.log"
    [ $SECONDS -lt $deadline ] || die "$name not ready after 120 s; see $DIR/$name.log"
    sleep 0.2
  done
}

stop_pid() {  # SIGTERM the process group, then SIGKILL after the grace period and 10 s more
  local file=$1 pid deadline
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + ${PACS_SHUTDOWN_GRACE:-30} + 10))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

start_haproxy() {
  alive "$DIR/haproxy.pid" && return 0
  PACS_LB_BIND="127.0.0.1:$LB_DICOM" PACS_SCP_1="127.0.0.1:$SCP1" PACS_SCP_2="127.0.0.1:$SCP2" \
    PACS_SCP_1_HEALTH=$SCP1_HTTP PACS_SCP_2_HEALTH=$SCP2_HTTP \
    haproxy -D -p "$DIR/haproxy.pid" -f "$HERE/haproxy/haproxy.cfg" >> "$DIR/haproxy.log" 2>&1
}

start_nginx() {
  alive "$DIR/nginx/nginx.pid" && return 0
  mkdir -p "$DIR/nginx/tmp"
  "$PY" "$HERE/dev_cert.py" "$DIR/certs" localhost > /dev/null
  # the OHIF viewer is docker-compose.yml's; here `/` answers from the first gateway (a 404)
  PACS_GATEWAY_1="127.0.0.1:$GW1" PACS_GATEWAY_2="127.0.0.1:$GW2" PACS_VIEWER="127.0.0.1:$GW1" \
    PACS_TLS_PORT="127.0.0.1:$NGINX" PACS_TLS_DIR="$DIR/certs" PACS_OHIF_CONFIG="$HERE/ohif/app-config.js" \
    envsubst '${PACS_GATEWAY_1} ${PACS_GATEWAY_2} ${PACS_VIEWER} ${PACS_TLS_PORT} ${PACS_TLS_DIR} ${PACS_OHIF_CONFIG}' \
    < "$HERE/nginx/pacs.conf.template" > "$DIR/nginx/pacs.conf"
  cat > "$DIR/nginx/nginx.conf" <<EOF
# deploy/local-cluster.sh: nginx's own settings for a process run by a user in $DIR; the server
# itself is deploy/nginx/pacs.conf.template, filled in (pacs.conf)
worker_processes 1;
pid $DIR/nginx/nginx.pid;
error_log $DIR/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log $DIR/nginx/access.log;
    client_body_temp_path $DIR/nginx/tmp/body;
    proxy_temp_path $DIR/nginx/tmp/proxy;
    fastcgi_temp_path $DIR/nginx/tmp/fastcgi;
    uwsgi_temp_path $DIR/nginx/tmp/uwsgi;
    scgi_temp_path $DIR/nginx/tmp/scgi;
    include $DIR/nginx/pacs.conf;
}
EOF
  nginx -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf"
}

pacs_of() {  # NAME -> "ONLY DICOM HTTP"
  case $1 in
    scp1) echo "dicom $SCP1 $SCP1_HTTP" ;;
    scp2) echo "dicom $SCP2 $SCP2_HTTP" ;;
    gw1) echo "http $((BASE + 14)) $GW1" ;;
    gw2) echo "http $((BASE + 15)) $GW2" ;;
    *) die "no process $1 (scp1 scp2 gw1 gw2)" ;;
  esac
}

settings() {
  cat <<EOF
CLUSTER_DICOM=127.0.0.1:$LB_DICOM
CLUSTER_URL=https://127.0.0.1:$NGINX
CLUSTER_CA=$DIR/certs/dev.crt
CLUSTER_SCP1=127.0.0.1:$SCP1
CLUSTER_SCP1_HTTP=127.0.0.1:$SCP1_HTTP
CLUSTER_SCP2=127.0.0.1:$SCP2
CLUSTER_SCP2_HTTP=127.0.0.1:$SCP2_HTTP
CLUSTER_GW1=127.0.0.1:$GW1
CLUSTER_GW2=127.0.0.1:$GW2
CLUSTER_DATABASE_URL=$PACS_DATABASE_URL
CLUSTER_STORAGE_URL=$PACS_STORAGE_URL
CLUSTER_S3_ENDPOINT=$S3_ENDPOINT
CLUSTER_S3_ACCESS_KEY=$PACS_S3_ACCESS_KEY
CLUSTER_S3_SECRET_KEY=$PACS_S3_SECRET_KEY
CLUSTER_JWT_SECRET_FILE=$DIR/jwt-secret
CLUSTER_PG_DIR=$DIR/pg
CLUSTER_PG_PORT=$PG_PORT
EOF
}

# ----- actions -----------------------------------------------------------------------------------

case $ACTION in
  start)
    command -v haproxy > /dev/null || die "haproxy is missing: apt-get install haproxy"
    command -v nginx > /dev/null || die "nginx is missing: apt-get install nginx"
    command -v envsubst > /dev/null || die "envsubst is missing: apt-get install gettext-base"
    start_backends
    # all four at once: the index is migrated once, under PostgreSQL's advisory lock, and the
    # processes that wait for it find it current
    for name in scp1 scp2 gw1 gw2; do
      read -r only dicom http <<< "$(pacs_of "$name")"
      start_pacs "$name" "$only" "$dicom" "$http"
    done
    for name in scp1 scp2 gw1 gw2; do
      read -r only dicom http <<< "$(pacs_of "$name")"
      wait_ready "$name" "$http"
    done
    start_haproxy
    start_nginx
    settings | tee "$DIR/cluster.env"
    ;;
  restart-one)
    [ $# -ge 3 ] || die "restart-one DIR NAME"
    start_backends > /dev/null
    read -r only dicom http <<< "$(pacs_of "$3")"
    stop_pid "$DIR/$3.pid"
    start_pacs "$3" "$only" "$dicom" "$http"
    wait_ready "$3" "$http"
    ;;
  stop)
    [ -s "$DIR/nginx/nginx.pid" ] && nginx -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" -s quit 2>/dev/null || true
    stop_pid "$DIR/haproxy.pid"
    for name in gw1 gw2 scp1 scp2; do stop_pid "$DIR/$name.pid"; done
    bash "$TOOLS/stop-s3.sh" --dir "$DIR/s3" > /dev/null 2>&1 || true
    bash "$TOOLS/stop-postgres.sh" --dir "$DIR/pg" > /dev/null 2>&1 || true
    ;;
  *) usage; exit 2 ;;
esac
