#!/usr/bin/env bash
# Runs the whole test suite against real backing services (started here when they are not),
# then the suites of the parts that keep per-user state in Redis (the hub's streams, presence
# and pub/sub; sessions and login limits; timelines, the post cache and the follow cache they
# read; rate limits and the feed cache) again on the local three-master Redis Cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
scripts/ensure-browser.sh
scripts/ensure-kubernetes-tools.sh
scripts/ensure-haproxy.sh
scripts/ensure-schemathesis.sh
cargo test --workspace --locked "$@"
echo "== the same suites on the Redis Cluster =="
REDIS_CLUSTER=true \
  REDIS_URL="${REDIS_CLUSTER_URL:-redis://127.0.0.1:6391,redis://127.0.0.1:6392,redis://127.0.0.1:6393}" \
  cargo test --locked -p instaclone-realtime-hub -p instaclone-auth -p instaclone-posts \
  -p instaclone-gateway "$@"
