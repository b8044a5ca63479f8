#!/usr/bin/env bash
# The whole test suite, from a clean checkout: installs what the tests need,
# checks the database services, runs unit and end-to-end tests (real binary,
# real UDP, real sipp, real SQLite/PostgreSQL/MariaDB), then a short sipp
# REGISTER-with-auth stress run. This is what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
scripts/services.sh

export CARGO_TERM_COLOR=never
# Two cores: build with both, run end-to-end tests two at a time (each test
# starts its own server with its own shards).
cargo build --all-targets --locked
# (RUST_TEST_THREADS rather than --test-threads: criterion benches, run
# once each in test mode, do not take libtest's flags.)
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
RUST_TEST_THREADS=2 cargo test --all-targets --locked 2>&1 | tee "$LOG"

if [ -x scripts/stress-register.sh ]; then
  # A short version of the Kamailio KEMI stress scenario as a smoke test;
  # the full one (4000/s, 20000 calls) is `scripts/stress-register.sh` alone.
  PROFILE=dev CALLS=2000 RATE=1000 USERS=8 PORT=5960 RPC_PORT=5970 scripts/stress-register.sh
fi

# One closing line for the whole suite (libtest prints one per target).
awk '/^test result:/ {p += $4; f += $6} END {printf "tests: %d passed, %d failed\n", p, f}' "$LOG"
