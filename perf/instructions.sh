#!/usr/bin/env bash
# Instructions per operation with callgrind (repeatable on a noisy machine):
# total(N) - total(0), divided by N.
#   perf/instructions.sh parse        # parse a 680-byte REGISTER
#   perf/instructions.sh parse_reply  # parse it and build the 200 OK
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-parse_reply}
N=${N:-20000}
cargo build --release --locked -q --example instructions
BIN=target/release/examples/instructions
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$WHAT" "$1" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
A=$(count 0); B=$(count "$N")
awk -v a="$A" -v b="$B" -v n="$N" -v w="$WHAT" 'BEGIN{printf "%s: %.0f instructions per operation (callgrind, N=%d)\n", w, (b-a)/n, n}'
