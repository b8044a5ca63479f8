#!/usr/bin/env bash
# Instructions per operation with callgrind (repeatable on a noisy machine):
# total(N) - total(0), divided by N.
#   perf/instructions.sh parse           # parse a 680-byte REGISTER
#   perf/instructions.sh parse_reply     # parse it and build the 200 OK
#   perf/instructions.sh route_options   # default script, OPTIONS keepalive
#   perf/instructions.sh route_register  # default script, REGISTER challenged (401)
#   perf/instructions.sh route_save      # KSR.registrar.save of a REGISTER
#   perf/instructions.sh route_lua       # a Lua-heavy route
#   SCRIPT=f.lua perf/instructions.sh route_script  # any script, on the OPTIONS
#   perf/instructions.sh route_register_auth  # default script, REGISTER with valid digest (200)
#   perf/instructions.sh route_options_native # the same routes, native (--route native):
#   perf/instructions.sh route_register_native        route_register_auth_native
#   perf/instructions.sh native          # the three routes, Lua vs native, as a table
#   NO_ROUTE=1 perf/instructions.sh route_options   # load + parse only (baseline)
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
  # --smc-check: LuaJIT writes machine code at run time. A run that fails
  # (its per-route answer check panics) would count fewer instructions:
  # stop instead.
  local out
  if ! out=$(valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file=/dev/null \
      "$BIN" "$WHAT" "$1" 2>&1); then
    echo "$WHAT $1 failed:" >&2; grep -v '^==' <<<"$out" | tail -5 >&2
    return 1
  fi
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' <<<"$out"
}
per_op() {
  WHAT=$1
  A=$(count 0) || exit 1
  B=$(count "$N") || exit 1
  awk -v a="$A" -v b="$B" -v n="$N" 'BEGIN{printf "%.0f", (b-a)/n}'
}
if [ "$WHAT" = native ]; then
  # with parse: the message loaded and parsed each time, as in the other
  # route modes; route only: minus that (NO_ROUTE=1, the same loop without
  # the route), i.e. what the shard times as request_route
  echo "| route (default script) | Lua, with parse | native, with parse | parse | Lua, route only | native, route only | Lua / native (route only) |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for r in route_options route_register route_register_auth; do
    L=$(per_op "$r") || exit 1
    NAT=$(per_op "${r}_native") || exit 1
    P=$(NO_ROUTE=1 per_op "$r") || exit 1
    awk -v r="$r" -v l="$L" -v n="$NAT" -v p="$P" 'BEGIN{printf "| %s | %d | %d | %d | %d | %d | %.2f |\n", r, l, n, p, l-p, n-p, (l-p)/(n-p)}'
  done
  echo "(instructions per route, callgrind, N=$N)"
  exit 0
fi
I=$(per_op "$WHAT") || exit 1
echo "$WHAT: $I instructions per operation (callgrind, N=$N)"
