#!/usr/bin/env bash
# OPTIONS throughput and route time: starts a release sipshard on CORES with
# the bundled default script, drives it with `sipshard bench` (open loop,
# SOCKETS source ports, THREADS worker threads) at each rate in RATES for
# DURATION seconds, then prints the server's route-time table.
#
#   perf/options.sh                                # RATES="50000 100000"
#   RATES="100000 110000 120000" perf/options.sh
#
# Server and load driver share the machine (2 cores here): the driver's CPU
# time is taken from the same cores the shards are pinned to.
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=${RATES:-"50000 100000"}
DURATION=${DURATION:-5}
SOCKETS=${SOCKETS:-8}
THREADS=${THREADS:-1}
CORES=${CORES:-0,1}
PORT=${PORT:-5660}
RPC_PORT=${RPC_PORT:-5670}

cargo build --release --locked -q
BIN=target/release/sipshard
WORK=$(mktemp -d /tmp/sipshard-perf.XXXXXX)
PID=
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -INT "$PID"; wait "$PID" || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
cat > "$WORK/sipshard.toml" <<TOML
[core]
listen = "127.0.0.1:$PORT"
cores = [$CORES]
log_level = "info"
[shard]
recv_buffer_bytes = 8388608
send_buffer_bytes = 8388608
[rpc]
listen = "127.0.0.1:$RPC_PORT"
[db]
url = "sqlite://$WORK/perf.db"
TOML
"$BIN" run --config "$WORK/sipshard.toml" > "$WORK/out" 2> "$WORK/err" &
PID=$!
for _ in $(seq 1 100); do grep -q "sipshard started" "$WORK/err" 2>/dev/null && break; sleep 0.1; done
echo "machine: $(nproc) cores, $(uname -r); server cores [$CORES]; driver: $SOCKETS sockets, $THREADS thread(s)"
for r in $RATES; do
  "$BIN" bench --target "127.0.0.1:$PORT" --rate "$r" --duration "$DURATION" --sockets "$SOCKETS" --threads "$THREADS"
done
kill -INT "$PID"; wait "$PID" || true; PID=
cat "$WORK/out"
