#!/usr/bin/env bash
# Makes the backing services answer on their standard local ports: PostgreSQL :5432, Redis :6379,
# RabbitMQ :5672, a MongoDB-wire server :27017 and, for the suite's Redis Cluster runs, a
# three-master Redis Cluster on :6391-6393 (SecantusDB: its Rust server, built once from
# crates.io, or its Python server from PyPI as a fallback). Starts only what is not running; safe
# to run any number of times.
set -euo pipefail

MONGO_PORT="${MONGO_PORT:-27017}"
# Which MongoDB-protocol server to start when none answers: `rs` (SecantusDB's Rust server,
# built once with cargo; falls back to the Python one if that fails) or `py` (the Python one).
MONGO_SERVER="${MONGO_SERVER:-rs}"
SECANTUS_RS_VERSION="${SECANTUS_RS_VERSION:-0.5.3-beta.196}"
SECANTUS_RS_ROOT="${SECANTUS_RS_ROOT:-/opt/secantus-rs}"
SECANTUS_RS_CACHE="${SECANTUS_RS_CACHE:-2G}"
SECANTUS_VERSION="${SECANTUS_VERSION:-0.7.0b3}"
# The local Redis Cluster: three masters, no replicas (REDIS_CLUSTER_PORTS, space-separated).
REDIS_CLUSTER_PORTS="${REDIS_CLUSTER_PORTS:-6391 6392 6393}"
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

cluster_ok() { redis-cli -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }

# Three redis-server processes in cluster mode, joined into one cluster covering all 16,384
# slots. A cluster already formed (every port answering, state ok) is left as it is.
ensure_redis_cluster() {
  local ports=($REDIS_CLUSTER_PORTS) port nodes=() i
  command -v redis-server >/dev/null || apt_install redis-server
  for port in "${ports[@]}"; do
    nodes+=("127.0.0.1:$port")
    port_open "$port" && continue
    log "starting Redis Cluster node :$port"
    mkdir -p "$DATA_DIR/redis-cluster/$port" "$LOG_DIR"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
      --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 5000 --save "" \
      --appendonly no --dir "$DATA_DIR/redis-cluster/$port" \
      --logfile "$LOG_DIR/redis-cluster-$port.log"
    wait_port "Redis Cluster node" "$port" 30
  done
  cluster_ok "${ports[0]}" && { log "Redis Cluster already up"; return; }
  if [ "$(redis-cli -p "${ports[0]}" cluster info | grep -c '^cluster_known_nodes:1')" = 1 ]; then
    log "forming the Redis Cluster over ${nodes[*]}"
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
  fi
  for ((i = 0; i < 150; i++)); do
    cluster_ok "${ports[0]}" && { log "Redis Cluster is up on ${nodes[*]}"; return; }
    sleep 0.2
  done
  log "ERROR: the Redis Cluster on ${nodes[*]} did not reach state ok"
  return 1
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

# SecantusDB's Rust server (crates.io `secantus-mdb`, binary `secantusd-rs`): the default. It is
# built once with cargo into $SECANTUS_RS_ROOT and kept there, so later runs start it at once.
secantus_rs_bin() { printf '%s/bin/secantusd-rs' "$SECANTUS_RS_ROOT"; }

secantus_rs_installed() {
  local bin
  bin="$(secantus_rs_bin)"
  [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qF "$SECANTUS_RS_VERSION"
}

install_secantus_rs() {
  secantus_rs_installed && return 0
  command -v cargo >/dev/null || { log "cargo not found: cannot build secantusd-rs"; return 1; }
  log "building SecantusDB's Rust server secantus-mdb $SECANTUS_RS_VERSION into $SECANTUS_RS_ROOT"
  log "(first run only: about 8 minutes on 2 cores; later runs start it at once)"
  # WiredTiger is built from C by cmake; its bindings by bindgen, which needs libclang.
  { command -v cmake >/dev/null && ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; } ||
    apt_install cmake libclang-dev || return 1
  # The crate declares a newer rust-version than it needs; it builds with this toolchain.
  cargo install secantus-mdb --version "$SECANTUS_RS_VERSION" --locked --ignore-rust-version \
    --root "$SECANTUS_RS_ROOT" --quiet >&2 || return 1
  secantus_rs_installed
}

# SecantusDB's Python server (PyPI `secantusdb`): the fallback. It saturates one core at a few
# hundred operations a second, so the platform runs far below its figures on it.
install_secantus_py() {
  if ! command -v secantusd-py >/dev/null; then
    log "installing SecantusDB $SECANTUS_VERSION (MongoDB wire protocol) from PyPI"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      "secantusdb==$SECANTUS_VERSION" >&2
    hash -r
  fi
  command -v secantusd-py 2>/dev/null ||
    printf '%s/secantusd-py' "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
}

start_detached() { # log-file command...
  local logfile="$1"
  shift
  nohup "$@" >"$logfile" 2>&1 </dev/null &
  disown || true
}

ensure_mongo() {
  port_open "$MONGO_PORT" && { log "MongoDB-protocol server already up on :$MONGO_PORT"; return; }
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  if [ "$MONGO_SERVER" != py ] && install_secantus_rs; then
    log "starting secantusd-rs on :$MONGO_PORT (data in $DATA_DIR/secantus-rs)"
    start_detached "$LOG_DIR/secantus-rs.log" "$(secantus_rs_bin)" --host 127.0.0.1 \
      --port "$MONGO_PORT" --storage-path "$DATA_DIR/secantus-rs" --cache-size "$SECANTUS_RS_CACHE"
    wait_port "secantusd-rs" "$MONGO_PORT" 60
    return
  fi
  if [ "$MONGO_SERVER" != py ]; then
    log "WARNING: ***********************************************************************"
    log "WARNING: could not build SecantusDB's Rust server; falling back to the Python server."
    log "WARNING: It saturates one core at a few hundred MongoDB operations a second: expect"
    log "WARNING: posts and notifications to be 10-100 times slower than docs/benchmarks.md."
    log "WARNING: ***********************************************************************"
  fi
  local server
  server="$(install_secantus_py)"
  log "starting secantusd-py on :$MONGO_PORT (data in $DATA_DIR/secantus)"
  start_detached "$LOG_DIR/secantus.log" "$server" --host 127.0.0.1 --port "$MONGO_PORT" \
    --storage-path "$DATA_DIR/secantus"
  wait_port "secantusd-py" "$MONGO_PORT" 60
}

ensure_postgres
ensure_redis
ensure_redis_cluster
ensure_rabbitmq
ensure_mongo
log "all backing services are up"
