#!/usr/bin/env bash
# What the scale-out run (scripts/scale.sh) and its test (tests/scale.rs) need: HAProxy, from
# Debian's package. Idempotent.
set -euo pipefail
say() { echo "[ensure-haproxy] $*"; }
if ! command -v haproxy >/dev/null 2>&1; then
    say "installing haproxy"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get install -y -q haproxy >/dev/null 2>&1 || {
        $SUDO apt-get update -q >/dev/null 2>&1
        $SUDO apt-get install -y -q haproxy >/dev/null
    }
fi
# Debian starts the packaged service on :80 with its own config; this project runs its own.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now haproxy >/dev/null 2>&1 || true; fi
say "$(haproxy -v | head -1)"
