#!/usr/bin/env bash
# The shard engine's design alternatives, measured back to back in one
# session on the same machine with the same driver: CPU per OPTIONS request
# (schedstat run time of every server thread over the drive / answered) for
# each `core.udp_socket` mode, pinned and not, beside the bare C responder
# (perf/floor/floor.c). Each variant runs ROUNDS times, interleaved, and the
# median is printed, because wall-clock noise here is ±30 %.
#
#   perf/ab-socket-modes.sh                   # RATES="5000 50000", ROUNDS=3
#   RATES=5000 ROUNDS=5 perf/ab-socket-modes.sh
#
# Only 127.0.0.1 is used. Every process started is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=${RATES:-"5000 50000"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
PORT=${PORT:-26060}
VARIANTS=${VARIANTS:-"spread spread-pinned reuseport shared floor"}

cargo build --release --locked -q
BIN=$PWD/target/release/sipshard
WORK=$(mktemp -d /tmp/sipshard-ab.XXXXXX)
PID=
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
cc -O2 -o "$WORK/floor" perf/floor/floor.c

cpu_ns() { # run time of every thread of PID and of its children
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(cat /proc/"$p"/task/*/schedstat 2>/dev/null | awk '{s+=$1} END {print s+0}')))
  done
  echo "$total"
}

start_variant() { # name -> sets PID
  local v=$1 mode pin
  if [ "$v" = floor ]; then
    "$WORK/floor" "$PORT" 2 4194304 > "$WORK/floor.out" 2>&1 &
    PID=$!
    sleep 0.3
    return
  fi
  case $v in
    spread) mode=spread pin=false ;;
    spread-pinned) mode=spread pin=true ;;
    reuseport) mode=reuseport pin=false ;;
    shared) mode=shared pin=false ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
  cat > "$WORK/s.toml" <<TOML
[core]
listen = "127.0.0.1:$PORT"
cores = [0, 1]
udp_socket = "$mode"
pin = $pin
[rpc]
enabled = false
[db]
url = "sqlite://$WORK/ab.db"
TOML
  "$BIN" run --config "$WORK/s.toml" > "$WORK/out" 2> "$WORK/err" &
  PID=$!
  for _ in $(seq 1 100); do grep -q "sipshard started" "$WORK/err" 2>/dev/null && return; sleep 0.05; done
  echo "sipshard ($v) did not start" >&2; cat "$WORK/err" >&2; exit 1
}

stop_variant() {
  kill -TERM "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=
}

declare -A RES
for r in $RATES; do
  for round in $(seq 1 "$ROUNDS"); do
    for v in $VARIANTS; do
      start_variant "$v"
      a=$(cpu_ns "$PID")
      out=$("$BIN" bench --target "127.0.0.1:$PORT" --rate "$r" --duration "$DURATION" --sockets 8 --json)
      b=$(cpu_ns "$PID")
      stop_variant
      us=$(echo "$out" | python3 -c "import json,sys; d=json.load(sys.stdin); print(round(($b-$a)/1000/max(d['answered'],1),2), round(d['loss_pct'],3))")
      RES["$v.$r"]="${RES["$v.$r"]:-} ${us%% *}"
      echo "round $round $v $r/s: $us (µs/req, loss %)" >&2
    done
  done
done

median() { python3 -c "import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(round(statistics.median(v),2))" "$@"; }
echo "machine: $(nproc) CPUs, $(uname -r); commit $(git rev-parse --short HEAD); rounds $ROUNDS, ${DURATION}s each; median CPU per OPTIONS request (µs)"
printf '| variant |'; for r in $RATES; do printf ' %s/s |' "$r"; done; echo
printf '|---|'; for r in $RATES; do printf '%s' '---|'; done; echo
for v in $VARIANTS; do
  printf '| %s |' "$v"
  for r in $RATES; do
    # shellcheck disable=SC2086
    printf ' %s |' "$(median ${RES["$v.$r"]})"
  done
  echo
done
