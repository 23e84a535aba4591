#!/usr/bin/env bash
# Sets up, then runs the gateway with the demo campaigns of examples/ on the
# embedded store (data in ./data). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HOOKLANE_ADMIN_TOKEN="${HOOKLANE_ADMIN_TOKEN:-demo-admin-token}"
echo "==> admin token: $HOOKLANE_ADMIN_TOKEN"
exec cargo run --locked -p hooklane -- serve --config examples/hooklane.toml
