#!/usr/bin/env bash
# Instructions per operation with callgrind (repeatable on a noisy machine):
# total(N) - total(0), divided by N.
#   perf/instructions.sh parse           # parse a 680-byte REGISTER
#   perf/instructions.sh parse_reply     # parse it and build the 200 OK
#   perf/instructions.sh route_options   # default script, OPTIONS keepalive
#   perf/instructions.sh route_register  # default script, REGISTER challenged (401)
#   perf/instructions.sh route_save      # KSR.registrar.save of a REGISTER
#   perf/instructions.sh route_lua       # a Lua-heavy route
#   FEATURES="--no-default-features --features lua54" perf/instructions.sh route_options
#   LUA_MAX_INSTRUCTIONS=0 perf/instructions.sh route_lua   # without the instruction limit
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-parse_reply}
N=${N:-20000}
# shellcheck disable=SC2086
cargo build --release --locked -q --example instructions ${FEATURES:-}
BIN=target/release/examples/instructions
count() {
  # --smc-check: LuaJIT writes machine code at run time.
  valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file=/dev/null \
    "$BIN" "$WHAT" "$1" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
A=$(count 0); B=$(count "$N")
awk -v a="$A" -v b="$B" -v n="$N" -v w="$WHAT" 'BEGIN{printf "%s: %.0f instructions per operation (callgrind, N=%d)\n", w, (b-a)/n, n}'
