#!/usr/bin/env bash
# Builds sipshard (release) and runs it on its embedded defaults:
# UDP 127.0.0.1:5060, one shard per core, the bundled routing script,
# SQLite database ./sipshard.db. Extra arguments go to `sipshard run`.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tools the README pokes the server with (sipsak, sipp), when we may install.
if [ "$(id -u)" = 0 ] && ! command -v sipsak >/dev/null 2>&1; then scripts/deps.sh || true; fi
cargo build --release --locked
exec target/release/sipshard run "$@"
