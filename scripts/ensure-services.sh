#!/usr/bin/env bash
# Makes the backing services answer on their standard local ports: PostgreSQL :5432, Redis :6379,
# RabbitMQ :5672 and a MongoDB-wire server :27017 (SecantusDB, installed from PyPI when nothing
# answers there). Starts only what is not running; safe to run any number of times.
set -euo pipefail

MONGO_PORT="${MONGO_PORT:-27017}"
SECANTUS_VERSION="${SECANTUS_VERSION:-0.7.0b3}"
DATA_DIR="${INSTACLONE_DATA_DIR:-/var/lib/instaclone}"
LOG_DIR="${INSTACLONE_LOG_DIR:-/var/log/instaclone}"

log() { printf '[ensure-services] %s\n' "$*" >&2; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port seconds
  local i
  for ((i = 0; i < $3 * 5; i++)); do
    port_open "$2" && { log "$1 is up on :$2"; return 0; }
    sleep 0.2
  done
  log "ERROR: $1 did not come up on :$2 within $3 s"
  return 1
}

apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { apt-get update -qq >&2; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

ensure_postgres() {
  port_open 5432 && { log "PostgreSQL already up"; return; }
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  local version
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port PostgreSQL 5432 30
}

ensure_redis() {
  port_open 6379 && { log "Redis already up"; return; }
  command -v redis-server >/dev/null || apt_install redis-server
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port Redis 6379 30
}

ensure_rabbitmq() {
  port_open 5672 && { log "RabbitMQ already up"; return; }
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  log "starting RabbitMQ"
  rabbitmq-server -detached
  wait_port RabbitMQ 5672 120
  # The port opens slightly before the broker accepts logins.
  rabbitmqctl await_startup >/dev/null 2>&1 || true
}

ensure_mongo() {
  port_open "$MONGO_PORT" && { log "MongoDB-protocol server already up on :$MONGO_PORT"; return; }
  if ! command -v secantusd-py >/dev/null; then
    log "installing SecantusDB $SECANTUS_VERSION (MongoDB wire protocol) from PyPI"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      "secantusdb==$SECANTUS_VERSION" >&2
    hash -r
  fi
  local server
  server="$(command -v secantusd-py || true)"
  [ -n "$server" ] || server="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/secantusd-py"
  mkdir -p "$DATA_DIR/secantus" "$LOG_DIR"
  log "starting SecantusDB on :$MONGO_PORT (data in $DATA_DIR/secantus)"
  nohup "$server" --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$DATA_DIR/secantus" \
    >"$LOG_DIR/secantus.log" 2>&1 </dev/null &
  disown || true
  wait_port "SecantusDB" "$MONGO_PORT" 60
}

ensure_postgres
ensure_redis
ensure_rabbitmq
ensure_mongo
log "all backing services are up"
