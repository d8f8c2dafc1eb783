#!/usr/bin/env bash
# What the manifest test (tests/kubernetes.rs) needs: kubectl (its built-in kustomize renders
# deploy/kubernetes/) and kubernetes-validate from PyPI (validates the result offline against the
# Kubernetes schemas). Idempotent.
set -euo pipefail
say() { echo "[ensure-kubernetes-tools] $*"; }
command -v kubectl >/dev/null 2>&1 || { say "kubectl is missing (Debian: kubernetes-client, or the upstream binary)"; exit 1; }
if ! python3 -c "import kubernetes_validate" >/dev/null 2>&1; then
    say "installing kubernetes-validate"
    python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi
say "kubectl and kubernetes-validate are ready"
