#!/usr/bin/env bash
# What the API contract test (tests/api_contract.rs) needs: schemathesis from PyPI, pinned, in a
# virtual environment of the project's own (.tools/schemathesis, ignored by git). Idempotent;
# fast when it is there.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "[ensure-schemathesis] $*"; }
VERSION=4.32.5
VENV=.tools/schemathesis
if [ -x "$VENV/bin/st" ] && "$VENV/bin/python" -c "import schemathesis, sys; sys.exit(schemathesis.__version__ != '$VERSION')" 2>/dev/null; then
    say "schemathesis $VERSION is ready"
    exit 0
fi
command -v python3 >/dev/null 2>&1 || { say "python3 is missing: install it (Debian: python3 python3-venv)"; exit 1; }
if ! python3 -m venv --help >/dev/null 2>&1; then
    say "installing Debian's python3-venv"
    if [ "$(id -u)" = 0 ]; then apt_get() { apt-get "$@"; }; else apt_get() { sudo apt-get "$@"; }; fi
    DEBIAN_FRONTEND=noninteractive apt_get install -y -q python3-venv >/dev/null
fi
say "installing schemathesis $VERSION into $VENV"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
say "schemathesis $VERSION is ready"
