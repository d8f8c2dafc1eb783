#!/usr/bin/env bash
# Starts the whole platform in one process: backing services first (when they are not running),
# then every Instaclone part on its usual port (gateway :3000 ... hub :3005). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
exec cargo run --release --locked --bin instaclone -- "$@"
