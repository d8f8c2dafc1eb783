#!/usr/bin/env bash
# Registers an author and one follower through the public API (API, default the gateway on
# :3000), makes the follower follow the author, and prints the author's access token: the set-up
# of the `POST /posts` benchmark in docs/benchmarks.md.
set -euo pipefail
API="${API:-http://127.0.0.1:3000}"
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['data']$1)"; }
register() {
  curl -sf "$API/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"$1@bench.example.com\",\"password\":\"correct horse battery\"}"
}
run="$(date +%s)$RANDOM"
author="$(register "author$run")"
fan="$(register "fan$run")"
author_id="$(echo "$author" | field "['user']['id']")"
fan_token="$(echo "$fan" | field "['accessToken']")"
curl -sf "$API/users/follow" -H "authorization: Bearer $fan_token" \
  -H 'content-type: application/json' -d "{\"userIdToFollow\":\"$author_id\"}" >/dev/null
echo "$author" | field "['accessToken']"
