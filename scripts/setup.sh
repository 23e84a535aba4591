#!/usr/bin/env bash
# Installs what hooklane needs on a fresh machine and builds the plugins.
# Idempotent: re-running it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "==> adding the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
fi

echo "==> building the plugins (wasm32-wasip2, release)"
# An explicit target dir: tests and the demo look for the plugins there,
# whatever CARGO_TARGET_DIR says.
cargo build --manifest-path plugins/Cargo.toml --release --target wasm32-wasip2 --locked \
    --target-dir plugins/target
