#!/usr/bin/env bash
# Kamailio's KEMI performance scenario against sipshard: sipp sends
# REGISTER with digest auth (401 challenge, then 200 OK) at RATE
# registrations/s in total, LIMIT concurrent, CALLS in total.
#
#   scripts/stress-register.sh                  # 4000/s, 10000 concurrent, 20000 calls
#   RATE=12000 CALLS=120000 scripts/stress-register.sh
#
# Users come from an injection CSV (user;domain;password) created here and
# imported with `sipshard user import`. sipp 3.6 takes digest credentials
# only from -au/-ap, so one sipp process runs per user (USERS of them, each
# at RATE/USERS with its own UDP socket, which also spreads the load over
# the shards).
#
# Prints sipp's successful/failed/retransmission counts (summed) and
# sipshard's route-time table (cnt/sum/min/max/avg/p50/p90/p99/p99.9) and
# CPU time. Exits non-zero when a call failed.
# HLOG=path.hlog writes an HdrHistogram interval log; with PNG=path.png it
# is plotted by `sipshard report`.
# Environment: PROFILE (release|dev), CORES (default 0,1), USERS (16),
# PORT (5060), RPC_PORT (5070), DB (default: a temporary SQLite file),
# SPIN_US (shard.spin_before_park_us, default 0), SHARD_NICE (shard.nice,
# default 0), PIN (core.pin, default false), UDP_SOCKET (core.udp_socket,
# default spread), DISPATCH (shard.dispatch, default local), LUA_GC (shard.lua_gc, default
# incremental), NICE (run the whole server under
# `nice -n $NICE`, default: not).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PROFILE=${PROFILE:-release}
if [ "${1:-}" = "--profile" ]; then PROFILE=$2; shift 2; fi
RATE=${RATE:-4000}
LIMIT=${LIMIT:-10000}
CALLS=${CALLS:-20000}
USERS=${USERS:-16}
CORES=${CORES:-0,1}
PORT=${PORT:-5060}
RPC_PORT=${RPC_PORT:-5070}
DOMAIN=example.com

command -v sipp >/dev/null || scripts/deps.sh

if [ "$PROFILE" = release ]; then
  cargo build --release --locked -q
  BIN=$ROOT/target/release/sipshard
else
  cargo build --locked -q
  BIN=$ROOT/target/debug/sipshard
fi

WORK=$(mktemp -d /tmp/sipshard-stress.XXXXXX)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  pkill -f "sipp 127.0.0.1:$PORT " 2>/dev/null || true
  if [ -n "${KEEP_LOG:-}" ]; then cp "$WORK/server.err" "$KEEP_LOG" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

DB=${DB:-sqlite://$WORK/stress.db}
{
  echo SEQUENTIAL
  for i in $(seq -w 1 "$USERS"); do echo "u$i;$DOMAIN;pw$i"; done
} > "$WORK/users.csv"
"$BIN" db init --db "$DB" >/dev/null
"$BIN" user import "$WORK/users.csv" --db "$DB"

HLOG_CFG=
if [ -n "${HLOG:-}" ]; then
  HLOG_CFG=$'\n[rpc.hlog]\npath = "'"$(realpath -m "$HLOG")"$'"\ninterval_s = 1'
fi
cat > "$WORK/sipshard.toml" <<TOML
[core]
listen = "127.0.0.1:$PORT"
cores = [$CORES]
log_level = "info"
pin = ${PIN:-false}
udp_socket = "${UDP_SOCKET:-spread}"
[shard]
recv_buffer_bytes = 8388608
send_buffer_bytes = 8388608
spin_before_park_us = ${SPIN_US:-0}
nice = ${SHARD_NICE:-0}
dispatch = "${DISPATCH:-local}"
lua_gc = "${LUA_GC:-incremental}"
[db]
url = "$DB"
[rpc]
listen = "127.0.0.1:$RPC_PORT"$HLOG_CFG
[registrar]
db_mode = 2
TOML

NICE_CMD=()
if [ -n "${NICE:-}" ]; then NICE_CMD=(nice -n "$NICE"); fi
"${NICE_CMD[@]}" "$BIN" run --config "$WORK/sipshard.toml" > "$WORK/server.out" 2> "$WORK/server.err" &
SERVER_PID=$!
for _ in $(seq 1 100); do
  grep -q "sipshard started" "$WORK/server.err" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$WORK/server.err"; exit 1; fi
CPU0=$(awk '{print $14+$15}' /proc/$SERVER_PID/stat)

echo "== sipp x$USERS: REGISTER with digest auth, $RATE/s total, limit $LIMIT, $CALLS calls"
PER_RATE=$(awk -v r="$RATE" -v u="$USERS" 'BEGIN{printf "%.3f", r/u}')
PER_CALLS=$(( CALLS / USERS ))
PER_LIMIT=$(( (LIMIT + USERS - 1) / USERS ))
SIPP_PIDS=()
T0=$(date +%s.%N)
i=0
while IFS=';' read -r user domain pw; do
  i=$((i + 1))
  d="$WORK/sipp-$i"; mkdir -p "$d"
  printf 'SEQUENTIAL\n%s;%s;%s\n' "$user" "$domain" "$pw" > "$d/user.csv"
  (cd "$d" && sipp 127.0.0.1:$PORT -sf "$ROOT/bench/sipp/register-auth.xml" -inf user.csv \
     -au "$user" -ap "$pw" -s "$user" -r "$PER_RATE" -l "$PER_LIMIT" -m "$PER_CALLS" -t u1 \
     -i 127.0.0.1 -p 0 -nostdin -nd -trace_stat -stf stats.csv -fd 1 -timeout 300s -timeout_error \
     -trace_err -error_file errors.log > sipp.out 2>&1; echo $? > rc) &
  SIPP_PIDS+=($!)
done < <(tail -n +2 "$WORK/users.csv")
wait "${SIPP_PIDS[@]}"
T1=$(date +%s.%N)

sum_col() {
  local name=$1 total=0
  for f in "$WORK"/sipp-*/stats.csv; do
    v=$(awk -F';' -v name="$name" 'NR==1{for(i=1;i<=NF;i++) if($i==name) c=i} END{print $c}' "$f")
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
OK=$(sum_col 'SuccessfulCall(C)')
FAILED=$(sum_col 'FailedCall(C)')
RETRANS=$(sum_col 'Retransmissions(C)')
BAD_RC=$(cat "$WORK"/sipp-*/rc | grep -vc '^0$' || true)
ELAPSED=$(awk -v a="$T0" -v b="$T1" 'BEGIN{printf "%.2f", b-a}')
echo "successful calls:     $OK"
echo "failed calls:         $FAILED"
echo "retransmissions:      $RETRANS"
echo "sipp processes rc!=0: $BAD_RC"
echo "wall time:            $ELAPSED s ($(awk -v n="$OK" -v t="$ELAPSED" 'BEGIN{printf "%.0f", n/t}') REG/s completed)"

if [ -n "${HLOG:-}" ]; then sleep 1.5; fi
CPU1=$(awk '{print $14+$15}' "/proc/$SERVER_PID/stat" 2>/dev/null || echo "$CPU0")
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true
SERVER_PID=
awk -v c0="$CPU0" -v c1="$CPU1" -v t="$ELAPSED" 'BEGIN{printf "server CPU:           %.2f s (%.0f%% of one core over the run)\n", (c1-c0)/100, (c1-c0)/t}'
echo "== sipshard route execution time"
cat "$WORK/server.out"
if [ -n "${PNG:-}" ] && [ -n "${HLOG:-}" ]; then
  "$BIN" report --hlog "$HLOG" --out "$PNG"
  echo "plot: $PNG"
fi
if [ "$FAILED" != "0" ] || [ "$BAD_RC" != "0" ] || [ "$OK" = "0" ]; then
  echo "== failures (first lines):"
  cat "$WORK"/sipp-*/errors.log 2>/dev/null | head -c 2000 || true
  exit 1
fi
