#!/usr/bin/env bash
# Checks the deployment files under deploy/ (Kubernetes manifests, the Compose fleet, the
# Grafana dashboard) with deploy/validate.py, which runs a self-test of known mistakes first.
# The checkers (deploy/validate-requirements.txt) are installed from PyPI into a virtualenv in
# the Cargo target directory. Usage:
#   bash deploy/validate.sh [target/release/baton-relay]
# With a relay binary, the metric list the dashboard is checked against is also compared with
# that relay's /metrics (it is started on loopback for a moment).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CARGO_TARGET_DIR:-target}/deploy-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r deploy/validate-requirements.txt
args=(--self-test)
if [ $# -gt 0 ]; then
  args+=(--relay "$1")
fi
exec "$venv/bin/python" deploy/validate.py "${args[@]}"
