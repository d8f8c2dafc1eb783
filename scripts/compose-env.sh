#!/usr/bin/env bash
# Prints a .env for docker compose with a fresh random secret for each variable it requires:
#   scripts/compose-env.sh > .env
# Keep the file private (it is git-ignored); run it once, since the databases keep the first
# passwords they were started with.
set -euo pipefail
secret() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
for name in INTERNAL_TOKEN POSTGRES_PASSWORD MONGO_PASSWORD REDIS_PASSWORD RABBITMQ_PASSWORD; do
    echo "$name=$(secret)"
done
