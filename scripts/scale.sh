#!/usr/bin/env bash
# A local scale-out of the platform: HAProxy in front of SCALE_HUBS realtime-hub replicas (3) and
# SCALE_REPLICAS replicas of every REST part (2), each replica its own `instaclone --only PART`
# process, all on this machine's backing services.
#
#   scripts/scale.sh up        build, start every replica and the balancer, wait until ready
#   scripts/scale.sh status    each replica's pid and port, and what the balancer thinks of it
#   scripts/scale.sh signal PART INDEX SIGNAL    e.g. `signal hub 2 TERM` (drain) or `KILL` (crash)
#   scripts/scale.sh start PART INDEX            start a stopped replica again
#   scripts/scale.sh down      stop everything (SIGTERM: replicas drain)
#
# Public ports (SCALE_BASE_PORT, 7000 by default): the API and web app on BASE (the gateways),
# the hub on BASE+1 (WebSocket and SSE), HAProxy's stats page on BASE+2. Replicas listen on
# BASE+10+... and reach each other only through the balancer's internal listeners (BASE+3..6).
# State (pids, logs, keys, haproxy.cfg) lives in SCALE_DIR (.scale/). SCALE_BIN runs a prebuilt
# binary instead of building one; other settings come from the environment as for `instaclone`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIR=${SCALE_DIR:-$ROOT/.scale}
HUBS=${SCALE_HUBS:-3}
REPLICAS=${SCALE_REPLICAS:-2}
BASE=${SCALE_BASE_PORT:-7000}
PARTS=(auth users posts notifications gateway hub)
say() { echo "[scale] $*"; }

# Where replica INDEX (1-based) of PART listens.
port_of() {
    local part=$1 index=$2 slot
    case $part in
        auth) slot=0 ;; users) slot=1 ;; posts) slot=2 ;; notifications) slot=3 ;; gateway) slot=4 ;;
        hub) echo $((BASE + 100 + index)); return ;;
    esac
    echo $((BASE + 10 + slot * 10 + index))
}
# The balancer's listener in front of PART.
balancer_port() {
    case $1 in
        gateway) echo "$BASE" ;; hub) echo $((BASE + 1)) ;;
        auth) echo $((BASE + 3)) ;; users) echo $((BASE + 4)) ;; posts) echo $((BASE + 5)) ;;
        notifications) echo $((BASE + 6)) ;;
    esac
}
count_of() { if [ "$1" = hub ]; then echo "$HUBS"; else echo "$REPLICAS"; fi; }
port_var() { echo "$(echo "$1" | tr '[:lower:]' '[:upper:]')_PORT"; }

write_haproxy_config() {
    local cfg=$DIR/haproxy.cfg part
    {
        cat <<CFG
# Written by scripts/scale.sh.
global
    # Two descriptors per proxied connection, within this process's open-file limit.
    maxconn $(( ($(ulimit -n) - 200) / 2 ))

defaults
    mode http
    option forwardfor
    option redispatch
    retries 3
    # A request that found a replica gone (refused, or the kept-alive connection to it closed
    # without an answer) goes to another; one that got any answer is never sent twice.
    retry-on conn-failure empty-response
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 10s
    # A replica is taken out after two failed /ready probes 500 ms apart, and back after two.
    default-server check inter 500ms fall 2 rise 2

listen stats
    bind 127.0.0.1:$((BASE + 2))
    stats enable
    stats uri /
    stats refresh 2s

frontend api
    bind 127.0.0.1:$BASE
    default_backend gateway

frontend realtime
    bind 127.0.0.1:$((BASE + 1))
    # WebSocket (after the upgrade: tunnel) and SSE streams live for hours; the hub's pings and
    # heartbeats keep them from looking idle.
    timeout client 1h
    default_backend hub

backend hub
    # New connections go where there are fewest, so replicas stay even after one leaves.
    balance leastconn
    timeout server 1h
    timeout tunnel 1h
    option httpchk GET /ready
    http-check expect status 200
CFG
        for i in $(seq 1 "$HUBS"); do echo "    server hub$i 127.0.0.1:$(port_of hub "$i")"; done
        for part in gateway auth users posts notifications; do
            if [ "$part" = gateway ]; then
                printf '\nbackend gateway\n'
            else
                printf '\nlisten %s\n    bind 127.0.0.1:%s\n' "$part" "$(balancer_port "$part")"
            fi
            printf '    balance roundrobin\n    option httpchk GET /ready\n    http-check expect status 200\n'
            for i in $(seq 1 "$REPLICAS"); do
                echo "    server $part$i 127.0.0.1:$(port_of "$part" "$i")"
            done
        done
    } > "$cfg"
}

start_replica() {
    local part=$1 index=$2 port
    port=$(port_of "$part" "$index")
    env "$(port_var "$part")=$port" "$BIN" --only "$part" \
        >> "$DIR/logs/$part-$index.log" 2>&1 &
    echo $! > "$DIR/pids/$part-$index.pid"
}

wait_ready() {
    local url=$1 deadline=$((SECONDS + 120))
    until curl -fsS -o /dev/null "$url/ready" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { say "timed out waiting for $url/ready (logs: $DIR/logs)"; exit 1; }
        sleep 0.3
    done
}

up() {
    [ -n "${SCALE_SKIP_SERVICES:-}" ] || scripts/ensure-services.sh
    scripts/ensure-haproxy.sh
    if [ -n "${SCALE_BIN:-}" ]; then
        BIN=$SCALE_BIN
    else
        cargo build --release --locked --bin instaclone
        BIN=$ROOT/target/release/instaclone
    fi
    mkdir -p "$DIR/logs" "$DIR/pids"
    if [ -z "${JWT_PRIVATE_KEY:-}${JWT_PRIVATE_KEY_FILE:-}" ]; then
        [ -f "$DIR/keys/jwt_private.pem" ] || "$BIN" keygen --out "$DIR/keys" >/dev/null
        export JWT_PRIVATE_KEY_FILE=$DIR/keys/jwt_private.pem JWT_PUBLIC_KEY_FILE=$DIR/keys/jwt_public.pem
    fi
    if [ -z "${INTERNAL_TOKEN:-}" ]; then
        [ -f "$DIR/internal_token" ] || head -c 32 /dev/urandom | base64 | tr -d '/+=' > "$DIR/internal_token"
        INTERNAL_TOKEN=$(cat "$DIR/internal_token")
        export INTERNAL_TOKEN
    fi
    # Every part reaches the others through the balancer; client addresses arrive in
    # X-Forwarded-For from it.
    export AUTH_URL=http://127.0.0.1:$(balancer_port auth) USERS_URL=http://127.0.0.1:$(balancer_port users) \
        POSTS_URL=http://127.0.0.1:$(balancer_port posts) \
        NOTIFICATIONS_URL=http://127.0.0.1:$(balancer_port notifications) \
        HUB_URL=http://127.0.0.1:$(balancer_port hub) \
        PUBLIC_HUB_URL=${PUBLIC_HUB_URL:-http://127.0.0.1:$(balancer_port hub)} \
        GATEWAY_TRUSTED_PROXIES=${GATEWAY_TRUSTED_PROXIES:-127.0.0.1/32} \
        HUB_TRUSTED_PROXIES=${HUB_TRUSTED_PROXIES:-127.0.0.1/32} \
        STARTUP_WAIT_SECS=${STARTUP_WAIT_SECS:-30}
    printf '%s\n' "$BIN" > "$DIR/bin"
    # What `start` needs to start a replica again the same way (bash quotes every value).
    export -p > "$DIR/env"
    local part i
    for part in "${PARTS[@]}"; do
        for i in $(seq 1 "$(count_of "$part")"); do start_replica "$part" "$i"; done
    done
    write_haproxy_config
    haproxy -c -q -f "$DIR/haproxy.cfg"
    haproxy -D -f "$DIR/haproxy.cfg" -p "$DIR/pids/haproxy.pid"
    for part in "${PARTS[@]}"; do
        for i in $(seq 1 "$(count_of "$part")"); do wait_ready "http://127.0.0.1:$(port_of "$part" "$i")"; done
    done
    wait_ready "http://127.0.0.1:$BASE"
    wait_ready "http://127.0.0.1:$((BASE + 1))"
    say "up: $HUBS hub replicas, $REPLICAS of each REST part"
    say "API and web app: http://127.0.0.1:$BASE   hub: http://127.0.0.1:$((BASE + 1))   balancer stats: http://127.0.0.1:$((BASE + 2))"
}

status() {
    local part i pidfile
    for part in "${PARTS[@]}"; do
        for i in $(seq 1 "$(count_of "$part")"); do
            pidfile=$DIR/pids/$part-$i.pid
            if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
                echo "$part $i pid $(cat "$pidfile") port $(port_of "$part" "$i")"
            else
                echo "$part $i stopped port $(port_of "$part" "$i")"
            fi
        done
    done
    curl -fsS "http://127.0.0.1:$((BASE + 2))/;csv" 2>/dev/null \
        | awk -F, '$2 != "FRONTEND" && $2 != "BACKEND" && NR > 1 { print "balancer", $1, $2, $18 }' || true
}

signal_replica() {
    local pidfile=$DIR/pids/$1-$2.pid
    [ -f "$pidfile" ] || { say "no replica $1 $2"; exit 1; }
    kill -s "$3" "$(cat "$pidfile")"
}

down() {
    local pidfile
    for pidfile in "$DIR"/pids/*.pid; do
        [ -f "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    local deadline=$((SECONDS + 30))
    for pidfile in "$DIR"/pids/*.pid; do
        [ -f "$pidfile" ] || continue
        while kill -0 "$(cat "$pidfile")" 2>/dev/null; do
            if [ $SECONDS -ge $deadline ]; then kill -9 "$(cat "$pidfile")" 2>/dev/null || true; fi
            sleep 0.2
        done
        rm -f "$pidfile"
    done
    say "down"
}

case ${1:-} in
    up) up ;;
    status) status ;;
    signal) signal_replica "$2" "$3" "$4" ;;
    start)
        # shellcheck disable=SC1091
        source "$DIR/env"
        BIN=$(cat "$DIR/bin")
        start_replica "$2" "$3"
        wait_ready "http://127.0.0.1:$(port_of "$2" "$3")"
        ;;
    down) down ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
