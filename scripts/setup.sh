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

# The console test drives Debian's Chromium (browser downloads do not work
# here) through puppeteer-core, pinned in tests/console/package-lock.json.
if ! command -v chromium >/dev/null; then
    echo "==> installing chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
# The stamp is the lock file installed last: a changed lock installs again.
stamp=tests/console/node_modules/.installed-lock.json
if ! cmp -s tests/console/package-lock.json "$stamp"; then
    echo "==> installing the console test's packages"
    npm ci --prefix tests/console --no-audit --no-fund --silent
    cp tests/console/package-lock.json "$stamp"
fi
