#!/usr/bin/env bash
# Sets up, then runs the whole test suite: unit tests and the end-to-end
# tests that drive the real gateway binary with the real plugins.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "==> running the test suite"
cargo test --locked --workspace
