#!/usr/bin/env bash
# TOTAL idle WebSocket connections (100,000) across REPLICAS hub replicas (6) on this machine, a
# process holding at most 20,000 open files: one load process per replica, each opening its share
# straight to its replica (a balancer in front would need two descriptors per connection), then
# one broadcast round together (a notification to every connected user through RabbitMQ, as the
# notifications service sends them). Then the minimal broadcast server with one replica's share,
# for the per-connection memory beside it. Results: loadtest/results/across-replicas-*.json.
#
#   loadtest/connections-across-replicas.sh [TOTAL] [REPLICAS] [TRANSPORT]
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${1:-100000}
REPLICAS=${2:-6}
TRANSPORT=${3:-ws}
PER=$((TOTAL / REPLICAS))
HOLD=${HOLD_SECS:-30}
BASE_PORT=${BASE_PORT:-3910}
OUT=loadtest/results/across-replicas-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

cargo build --release --locked -p instaclone-realtime-hub -p instaclone-loadtest --bins --examples
BIN=target/release
KEYS=${TMPDIR:-/tmp}/instaclone-loadtest-keys
if [ ! -f "$KEYS/jwt_private.pem" ]; then
    mkdir -p "$KEYS"
    openssl genpkey -algorithm ed25519 -out "$KEYS/jwt_private.pem"
    openssl pkey -in "$KEYS/jwt_private.pem" -pubout -out "$KEYS/jwt_public.pem"
fi
export JWT_PRIVATE_KEY_FILE=$KEYS/jwt_private.pem JWT_PUBLIC_KEY_FILE=$KEYS/jwt_public.pem \
    REDIS_KEY_PREFIX=loadtest:hub: AMQP_QUEUE_PREFIX=loadtest.hub. EVENTS_EXCHANGE=loadtest.hub.events \
    AMQP_QUEUE_EXPIRES_SECS=900 RUST_LOG=warn HUB_MAX_CONNECTIONS_PER_ADDRESS=0 METRICS_ACCESS=public

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
for i in $(seq 1 "$REPLICAS"); do
    HUB_PORT=$((BASE_PORT + i)) "$BIN/instaclone-realtime-hub" > "$OUT/hub-$i.log" 2>&1 &
    pids+=($!)
done
for i in $(seq 1 "$REPLICAS"); do
    until curl -fsS -o /dev/null "http://127.0.0.1:$((BASE_PORT + i))/ready"; do sleep 0.3; done
done

# Everyone connects, holds, then broadcasts at the same moment.
url_of() {
    if [ "$TRANSPORT" = ws ]; then echo "ws://127.0.0.1:$1/realtime/ws"; else echo "http://127.0.0.1:$1/realtime/sse"; fi
}
ROUND_AT=$(( $(date +%s) + PER / 1000 * 2 + HOLD + 30 ))
round=()
[ "$TRANSPORT" = ws ] && round=(--round --round-at-unix "$ROUND_AT")
loads=()
for i in $(seq 1 "$REPLICAS"); do
    "$BIN/instaclone-loadtest" connections --url "$(url_of $((BASE_PORT + i)))" --transport "$TRANSPORT" \
        --count "$PER" --sources 4 --concurrency 100 --pid "${pids[$((i - 1))]}" --hold-secs "$HOLD" \
        "${round[@]}" --json "$OUT/replica-$i.json" > "$OUT/load-$i.log" 2>&1 &
    loads+=($!)
done
wait "${loads[@]}"
cleanup

"$BIN/examples/broadcast_server" 127.0.0.2:$((BASE_PORT + 50)) > "$OUT/broadcast.log" 2>&1 &
BCAST=$!
pids=("$BCAST")
sleep 1
# Other source addresses than the hubs' run: its closed sockets still hold their ports (TIME_WAIT).
"$BIN/instaclone-loadtest" connections --url "ws://127.0.0.2:$((BASE_PORT + 50))/" --no-auth --count "$PER" \
    --sources 4 --concurrency 100 --pid "$BCAST" --hold-secs "$HOLD" --json "$OUT/broadcast.json" \
    > "$OUT/load-broadcast.log" 2>&1

python3 - "$OUT" "$REPLICAS" <<'PY'
import json, sys
out, replicas = sys.argv[1], int(sys.argv[2])
runs = [json.load(open(f"{out}/replica-{i}.json")) for i in range(1, replicas + 1)]
runs = [r.get("result", r) for r in runs]
bcast = json.load(open(f"{out}/broadcast.json"))
bcast = bcast.get("result", bcast)
opened = sum(r["opened"] for r in runs)
held = sum(r["openAfterHold"] for r in runs)
summary = {
    "replicas": replicas,
    "transport": runs[0]["transport"],
    "opened": opened,
    "failed": sum(r["failed"] for r in runs),
    "openAfterHold": held,
    "connectSecondsSlowest": max(r["connectSeconds"] for r in runs),
    "connectRatePerSecond": round(opened / max(r["connectSeconds"] for r in runs)),
    "bytesPerConnectionByReplica": [r["serverBytesPerConnection"] for r in runs],
    "broadcastServerBytesPerConnection": bcast["serverBytesPerConnection"],
    "broadcastServerOpened": bcast["opened"],
}
rounds = [r["round"] for r in runs if r.get("round")]
if rounds:
    summary["round"] = {
        "expected": sum(r["expected"] for r in rounds),
        "received": sum(r["received"] for r in rounds),
        "allReceivedSecondsSlowest": max(r["allReceivedSeconds"] for r in rounds),
        "lagP50MillisByReplica": [r["lagMillis"].get("p50") for r in rounds],
        "lagP99MillisByReplica": [r["lagMillis"].get("p99") for r in rounds],
        "lagMaxMillisByReplica": [r["lagMillis"].get("max") for r in rounds],
    }
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
