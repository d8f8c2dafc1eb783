#!/usr/bin/env bash
# Runs the whole test suite against real backing services (started here when they are not).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
scripts/ensure-browser.sh
scripts/ensure-kubernetes-tools.sh
scripts/ensure-haproxy.sh
exec cargo test --workspace --locked "$@"
