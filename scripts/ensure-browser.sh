#!/usr/bin/env bash
# What the browser test (tests/browser.rs) needs: Debian's Chromium and playwright-core from npm
# (which drives the system browser; no browser download). Idempotent; fast when both are there.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "[ensure-browser] $*"; }
if ! command -v chromium >/dev/null 2>&1; then
    say "installing Debian's chromium"
    if [ "$(id -u)" = 0 ]; then apt_get() { apt-get "$@"; }; else apt_get() { sudo apt-get "$@"; }; fi
    DEBIAN_FRONTEND=noninteractive apt_get install -y -q chromium >/dev/null \
        || { apt_get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt_get install -y -q chromium >/dev/null; }
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
    command -v npm >/dev/null 2>&1 || { say "npm is missing: install Node.js (Debian: nodejs npm)"; exit 1; }
    say "installing playwright-core (tests/browser)"
    npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi
say "chromium and playwright-core are ready"
