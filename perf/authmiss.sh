#!/usr/bin/env bash
# Cost of a credential-cache miss: server CPU and thread wake-ups per request
# of `sipshard bench register --spread-users` over N users in SQLite, once
# with every auth_check missing the shard's credential cache
# ([auth] cache_max_entries = 0: every authenticated REGISTER asks the
# database) and once with every one hitting it (the same drive repeated on
# a warm cache). usrloc runs without a database (db_mode 0), so the
# difference between the two is the credential read alone.
#
#   perf/authmiss.sh                      # N=20000, COUNT=20000, RATE=2000
#   N=20000 COUNT=10000 RATE=1000 perf/authmiss.sh
#
# Per mode it prints CPU µs per request (schedstat run time summed over every
# server thread: shards, the database runtime, sqlx's SQLite workers, any
# reader thread; a registration is 2 requests), voluntary context switches
# (= times a thread blocked and was woken) per request, and both by thread
# name. PERF=1 also records `perf record -g` of the miss drive into
# $WORK/perf-miss.data (kept with KEEP=1).
# Environment: N, COUNT, RATE, SOCKETS (8), SIPSHARD_BIN (skip the build),
# SIPSHARD_PORT (25260), RPC_PORT (25270), PERF, KEEP=1.
# Only ever sends to 127.0.0.1. Stops exactly the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOG_TAG=authmiss
SKIP_KAMAILIO=1
N=${N:-20000}
COUNT=${COUNT:-20000}
RATE=${RATE:-2000}
SOCKETS=${SOCKETS:-8}
PERF=${PERF:-0}
BUF_BYTES=${BUF_BYTES:-4194304}
SIPSHARD_PORT=${SIPSHARD_PORT:-25260}
RPC_PORT=${RPC_PORT:-25270}
# shellcheck source=perf/lib/harness.sh
. "$ROOT/perf/lib/harness.sh"
harness_init
port_free "$SIPSHARD_PORT" || die "UDP port $SIPSHARD_PORT is in use (set SIPSHARD_PORT)"

"$BIN" db init --db "sqlite://$WORK/base.db" >/dev/null
"$BIN" bench users --users 'user%d@127.0.0.1:pw%d' --user-count "$N" --out "$WORK/users.csv" >/dev/null
"$BIN" user import "$WORK/users.csv" --db "sqlite://$WORK/base.db" >/dev/null
log "N=$N subscribers imported"

# Context switches per thread: "tid voluntary nonvoluntary name".
ctx_snap() {
  local p t name
  for p in $(tree_pids "$SERVER_PID"); do
    for t in /proc/"$p"/task/*; do
      read -r name 2>/dev/null < "$t/comm" || continue
      awk -v tid="${t##*/}" -v name="${name// /_}" '
        /^voluntary_ctxt_switches/ { v = $2 } /^nonvoluntary_ctxt_switches/ { n = $2 }
        END { print tid, v + 0, n + 0, name }' "$t/status" 2>/dev/null || true
    done
  done
}
ctx_delta() {  # $1 $2 snapshots, $3 requests -> "vol/req nonvol/req | by name"
  awk -v req="$3" 'NR == FNR { v[$1] = $2; n[$1] = $3; next }
    { dv = $2 - v[$1]; dn = $3 - n[$1]; V += dv; NV += dn; byv[$4] += dv }
    END { printf "%.2f voluntary + %.2f involuntary switches/req |", V / req, NV / req
          for (k in byv) if (byv[k] > 0) printf " %s %.2f", k, byv[k] / req; print "" }' "$1" "$2"
}

drive() {  # $1 = label
  local a=$WORK/cpu.a b=$WORK/cpu.b j=$WORK/$1.json ns ok perf_pid=
  server_snap "$a"; ctx_snap > "$a.ctx"
  if [ "$PERF" = 1 ] && [ "$1" != warm ]; then
    perf record -g -p "$SERVER_PID" -o "$WORK/perf-$1.data" 2>/dev/null >/dev/null & perf_pid=$!
  fi
  "$BIN" bench register --target "127.0.0.1:$SIPSHARD_PORT" --users 'user%d@127.0.0.1:pw%d' --user-count "$N" \
    --spread-users --rate "$RATE" --count "$COUNT" --sockets "$SOCKETS" --json > "$j"
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
  server_snap "$b"; ctx_snap > "$b.ctx"
  ns=$(cpu_delta "$a" "$b"); ok=$(jq -r .ok "$j")
  [ "$ok" -gt 0 ] || die "$1: no registration succeeded"
  log "$1: $ok ok, $(jq -r .failed "$j") failed; machine busy $(machine_busy "$a" "$b") %"
  printf '%-5s CPU %s us/req | %s\n' "$1" \
    "$(awk -v ns="$ns" -v n="$ok" 'BEGIN { printf "%.1f", ns / 1e3 / (2 * n) }')" "$(cpu_by_name "$a" "$b")"
  printf '%-5s %s\n' "$1" "$(ctx_delta "$a.ctx" "$b.ctx" $((2 * ok)))"
}

for mode in miss hit; do
  cp "$WORK/base.db" "$WORK/run.db"
  cache=100000; [ "$mode" = miss ] && cache=0
  sipshard_toml "$WORK/sipshard.toml" "sqlite://$WORK/run.db" "" "" "" "[auth]
cache_max_entries = $cache"
  sed -i 's/^db_mode = 2$/db_mode = 0/' "$WORK/sipshard.toml"
  sipshard_start "$WORK/sipshard.toml" "$mode"
  [ "$mode" = hit ] && drive warm >/dev/null
  drive "$mode"
  stop_server
done
