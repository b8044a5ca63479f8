#!/usr/bin/env bash
# Route time of a dispatcher relay: sipshard and Kamailio 5.6 running the
# same script (tests/lua/dispatcher.lua: record-routed stateful relay to
# set 1, round robin over two sipp callees), the same dispatcher.list, the
# same sipp caller (tests/sipp/uac-call.xml) and callees
# (tests/sipp/uas-call.xml), one after the other on 127.0.0.1.
#
#   perf/dispatcher.sh                  # RATE=500 calls/s, CALLS=10000
#   RATE=1000 CALLS=20000 perf/dispatcher.sh
#
# Reported per server: calls that failed, the request route's average and
# p99 execution time (sipshard: `ctl kemi.route_latency` after
# `stats.reset`; Kamailio: `latency_cfg_log` lines, every route logged,
# as perf/compare.sh measures it), and server CPU per call
# (/proc/PID/task/*/schedstat). Needs target/release/sipshard, sipp,
# kamailio with dispatcher.so and app_lua.so.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/sipshard}
RATE=${RATE:-500}
CALLS=${CALLS:-10000}
CORES=${CORES:-2}
PORT=${PORT:-25060}
RPC_PORT=${RPC_PORT:-25070}
UAS_A=${UAS_A:-25081}
UAS_B=${UAS_B:-25082}
UAC_PORT=${UAC_PORT:-25090}
WORK=$(mktemp -d /tmp/sipshard-ds-perf.XXXXXX)
PIDS=()
UAS_PIDS=()
cleanup() { for p in "${PIDS[@]}" "${UAS_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
log() { echo "[$(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }
[ -x "$BIN" ] || die "$BIN missing: cargo build --release"
MPATH=
for d in /usr/lib/*/kamailio/modules /usr/lib/kamailio/modules; do [ -f "$d/dispatcher.so" ] && MPATH=$d; done
[ -n "$MPATH" ] || die "kamailio dispatcher.so not found"

printf '1 sip:127.0.0.1:%s\n1 sip:127.0.0.1:%s\n' "$UAS_A" "$UAS_B" > "$WORK/dispatcher.list"
cpu_ns() {  # sum of run time of every thread of pids
  local t s=0 ns
  for p in "$@"; do for t in /proc/"$p"/task/*; do read -r ns _ < "$t/schedstat" 2>/dev/null && s=$((s + ns)); done; done
  echo "$s"
}
tree_pids() { echo "$1"; pgrep -P "$1" 2>/dev/null || true; }

uas() {  # name port: a callee in the background, its PID kept
  ( cd "$WORK" && exec sipp -sf "$ROOT/tests/sipp/uas-call.xml" -set proxy "127.0.0.1:$PORT" -aa \
      -i 127.0.0.1 -p "$2" -nostdin -trace_err -error_file "$WORK/$1.err" > "$WORK/$1.out" 2>&1 ) &
  UAS_PIDS+=($!)
}
UAS_PIDS=()
start_uas() { uas uas-a "$UAS_A"; uas uas-b "$UAS_B"; sleep 0.5; }
stop_uas() { for p in "${UAS_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; UAS_PIDS=(); sleep 0.5; }
uac() {  # name calls rate
  ( cd "$WORK" && timeout 300 sipp "127.0.0.1:$PORT" -sf "$ROOT/tests/sipp/uac-call.xml" -s rr -d 100 \
      -m "$2" -r "$3" -l 2000 -i 127.0.0.1 -p "$UAC_PORT" -nostdin -timeout 240s -timeout_error \
      -trace_stat -stf "$WORK/$1.csv" -fd 1 > "$WORK/$1.out" 2>&1 ) || true
  awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i } END { print $c["SuccessfulCall(C)"], $c["FailedCall(C)"] }' "$WORK/$1.csv"
}

# ---------------------------------------------------------------- sipshard
log "sipshard: $BIN"
cat > "$WORK/sipshard.toml" <<TOML
[core]
listen = "127.0.0.1:$PORT"
cores = $CORES
script = "$ROOT/tests/lua/dispatcher.lua"
log_level = "warn"
[rpc]
listen = "127.0.0.1:$RPC_PORT"
[db]
url = "sqlite://$WORK/sipshard.db"
[dispatcher]
list_file = "$WORK/dispatcher.list"
flags = 2
TOML
"$BIN" run --config "$WORK/sipshard.toml" > "$WORK/sipshard.out" 2> "$WORK/sipshard.err" &
SRV=$!; PIDS+=("$SRV")
for _ in $(seq 100); do "$BIN" ctl --url "http://127.0.0.1:$RPC_PORT" core.uptime >/dev/null 2>&1 && break; sleep 0.1; done
start_uas
uac warm 500 "$RATE" >/dev/null
"$BIN" ctl --url "http://127.0.0.1:$RPC_PORT" stats.reset >/dev/null
c0=$(cpu_ns "$SRV")
read -r ok failed < <(uac run "$CALLS" "$RATE")
c1=$(cpu_ns "$SRV")
j=$("$BIN" ctl --url "http://127.0.0.1:$RPC_PORT" --json kemi.route_latency | jq -c '.result.routes[] | select(.route == "request_route") | .merged')
S_ROUTE=$(jq -r '"\(.avg_us) \(.p99_us) \(.cnt)"' <<<"$j" | awk '{ printf "%.1f / %.1f us (%d routes)", $1, $2, $3 }')
S_CPU=$(awk -v a="$c0" -v b="$c1" -v n="$ok" 'BEGIN { printf "%.1f", (b - a) / 1e3 / (n > 0 ? n : 1) }')
S_CALLS="$ok ok, $failed failed"
kill "$SRV"; wait "$SRV" 2>/dev/null || true
stop_uas

# ---------------------------------------------------------------- kamailio
log "kamailio: $(kamailio -v 2>/dev/null | head -1)"
sed -e "s|@PORT@|$PORT|g" -e "s|@CHILDREN@|$CORES|g" -e "s|@BUF_BYTES@|4194304|g" \
    -e "s|@MPATH@|$MPATH|g" -e "s|@LIST@|$WORK/dispatcher.list|g" \
    -e "s|@LUA@|$ROOT/tests/lua/dispatcher.lua|g" "$ROOT/perf/kamailio/dispatcher.cfg" > "$WORK/kamailio.cfg"
kamailio -f "$WORK/kamailio.cfg" -c > "$WORK/kamailio-check.log" 2>&1 || { cat "$WORK/kamailio-check.log"; die "cfg check"; }
mkdir -p "$WORK/run"
kamailio -f "$WORK/kamailio.cfg" -DD -E -x fm -m 256 -M 16 -P "$WORK/run/k.pid" -Y "$WORK/run" -A ROUTE_TIME \
  > "$WORK/kamailio.out" 2> "$WORK/kamailio.err" &
KAM=$!; PIDS+=("$KAM")
sleep 2
start_uas
uac kwarm 500 "$RATE" >/dev/null
off=$(stat -c %s "$WORK/kamailio.err")
c0=$(cpu_ns $(tree_pids "$KAM"))
read -r kok kfailed < <(uac krun "$CALLS" "$RATE")
c1=$(cpu_ns $(tree_pids "$KAM"))
K_ROUTE=$(tail -c +"$((off + 1))" "$WORK/kamailio.err" | grep -o 'request-route executed in: [0-9]*' | awk '{ print $4 }' | sort -n |
  awk '{ v[NR] = $1; s += $1 } END { i = int(NR * 0.99); if (i < NR * 0.99) i++; if (i < 1) i = 1; printf "%.1f / %.1f us (%d routes)", s / NR, v[i], NR }')
K_CPU=$(awk -v a="$c0" -v b="$c1" -v n="$kok" 'BEGIN { printf "%.1f", (b - a) / 1e3 / (n > 0 ? n : 1) }')
K_CALLS="$kok ok, $kfailed failed"
kill "$KAM"; wait "$KAM" 2>/dev/null || true
stop_uas

cat <<OUT
dispatcher relay, $CALLS calls at $RATE/s, round robin over 2 sipp callees, $CORES shards / children
| server | calls | request route avg / p99 | CPU per call (incl. route-time logging for Kamailio) |
|---|---|---|---|
| sipshard $(git -C "$ROOT" rev-parse --short HEAD) | $S_CALLS | $S_ROUTE | $S_CPU us |
| Kamailio 5.6 | $K_CALLS | $K_ROUTE | $K_CPU us |
(work dir $WORK)
OUT
