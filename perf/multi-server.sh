#!/usr/bin/env bash
# Several sipshard servers sharing one PostgreSQL (docs/scaling.md): sipp
# sends REGISTER with digest auth (bench/sipp/register-auth.xml, one sipp
# process per user as scripts/stress-register.sh does) at RATE/s in total,
# spread over the servers, against one PostgreSQL database holding both
# `subscriber` and `location`.
#
#   perf/multi-server.sh two3        # 2 servers (1 shard each), usrloc db_mode 3
#   perf/multi-server.sh one3        # 1 server (2 shards), db_mode 3
#   perf/multi-server.sh one0        # 1 server (2 shards), db_mode 0 (in memory)
#   RATE=2000 CALLS=40000 perf/multi-server.sh two3
#
# Prints: completed REG/s, failures, retransmissions, server CPU (sum of
# /proc/PID/task/*/schedstat run time over the run, every server) and the
# CPU of the PostgreSQL backends serving the servers (utime+stime of the
# pg_stat_activity PIDs of the database), each per registration, plus the
# whole postgres process tree (WAL writer, checkpointer: shared with any
# other user of that PostgreSQL).
# Environment: BIN (default target/release/sipshard, built if missing),
# RATE (1000), CALLS (20000), USERS (16), PG (postgres://postgres@127.0.0.1:5432),
# BASE_PORT (15060).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-two3}
RATE=${RATE:-1000}
CALLS=${CALLS:-20000}
USERS=${USERS:-16}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
BASE_PORT=${BASE_PORT:-15060}
DOMAIN=example.com

case "$MODE" in
  two3) NODES=2; DB_MODE=3 ;;
  one3) NODES=1; DB_MODE=3 ;;
  one0) NODES=1; DB_MODE=0 ;;
  *) echo "mode: two3 | one3 | one0" >&2; exit 2 ;;
esac

BIN=${BIN:-$ROOT/target/release/sipshard}
if [ ! -x "$BIN" ]; then cargo build --release --locked -q; fi

DBNAME=sipshard_multi_$$
WORK=$(mktemp -d /tmp/sipshard-multi.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  psql "$PG/postgres" -qAtc "DROP DATABASE IF EXISTS $DBNAME WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

psql "$PG/postgres" -qAtc "CREATE DATABASE $DBNAME" >/dev/null
DB=$PG/$DBNAME
{
  echo SEQUENTIAL
  for i in $(seq -w 1 "$USERS"); do echo "u$i;$DOMAIN;pw$i"; done
} > "$WORK/users.csv"
"$BIN" db init --db "$DB" >/dev/null
"$BIN" user import "$WORK/users.csv" --db "$DB" >/dev/null

for n in $(seq 0 $((NODES - 1))); do
  port=$((BASE_PORT + n))
  if [ "$NODES" = 1 ]; then cores="0, 1"; else cores="$n"; fi
  cat > "$WORK/node$n.toml" <<TOML
[core]
listen = "127.0.0.1:$port"
cores = [$cores]
log_level = "warn"
[shard]
recv_buffer_bytes = 8388608
send_buffer_bytes = 8388608
[db]
url = "$DB"
[rpc]
listen = "127.0.0.1:$((BASE_PORT + 100 + n))"
[auth]
secret = "one-secret-for-every-node"
[registrar]
db_mode = $DB_MODE
TOML
  "$BIN" run --config "$WORK/node$n.toml" > "$WORK/node$n.out" 2> "$WORK/node$n.err" &
  PIDS+=($!)
done
for n in $(seq 0 $((NODES - 1))); do
  for _ in $(seq 1 100); do
    grep -q "sipshard started" "$WORK/node$n.err" 2>/dev/null && break
    sleep 0.1
  done
  kill -0 "${PIDS[$n]}" || { cat "$WORK/node$n.err"; exit 1; }
done

# CPU seconds: every thread of every server (schedstat ns) ...
server_cpu() {
  local t=0
  for p in "${PIDS[@]}"; do
    t=$(( t + $(cat /proc/"$p"/task/*/schedstat 2>/dev/null | awk '{s+=$1} END{printf "%d", s}') ))
  done
  echo "$t"
}
# ... the backends of this database (clock ticks), by PID ...
pg_backends() { psql "$PG/postgres" -qAtc "SELECT pid FROM pg_stat_activity WHERE datname = '$DBNAME'"; }
ticks_of() { awk '{print $14 + $15}' /proc/"$1"/stat 2>/dev/null || echo 0; }
# ... and the whole postgres tree (clock ticks)
pg_tree_ticks() {
  local t=0
  for p in $(pgrep -x postgres); do t=$((t + $(ticks_of "$p"))); done
  echo "$t"
}
declare -A PG0
for p in $(pg_backends); do PG0[$p]=$(ticks_of "$p"); done
S0=$(server_cpu)
TREE0=$(pg_tree_ticks)

PER_RATE=$(awk -v r="$RATE" -v u="$USERS" 'BEGIN{printf "%.3f", r/u}')
PER_CALLS=$((CALLS / USERS))
SIPP=()
T0=$(date +%s.%N)
i=0
while IFS=';' read -r user domain pw; do
  port=$((BASE_PORT + i % NODES))
  i=$((i + 1))
  d="$WORK/sipp-$i"; mkdir -p "$d"
  printf 'SEQUENTIAL\n%s;%s;%s\n' "$user" "$domain" "$pw" > "$d/user.csv"
  (cd "$d" && sipp 127.0.0.1:$port -sf "$ROOT/bench/sipp/register-auth.xml" -inf user.csv \
     -au "$user" -ap "$pw" -s "$user" -r "$PER_RATE" -l 1000 -m "$PER_CALLS" -t u1 \
     -i 127.0.0.1 -p 0 -nostdin -nd -trace_stat -stf stats.csv -fd 1 -timeout 300s -timeout_error \
     > sipp.out 2>&1; echo $? > rc) &
  SIPP+=($!)
done < <(tail -n +2 "$WORK/users.csv")
wait "${SIPP[@]}"
T1=$(date +%s.%N)
S1=$(server_cpu)
TREE1=$(pg_tree_ticks)
PGT=0
for p in $(pg_backends); do PGT=$((PGT + $(ticks_of "$p") - ${PG0[$p]:-0})); done

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
ROWS=$(psql "$DB" -qAtc "SELECT count(*) FROM location")
# rows beyond one per (AOR, contact): concurrent saves of one AOR (docs/scaling.md)
DUPS=$(psql "$DB" -qAtc "SELECT count(*) - count(DISTINCT (username, contact)) FROM location")
HZ=$(getconf CLK_TCK)
awk -v mode="$MODE" -v rate="$RATE" -v ok="$OK" -v failed="$FAILED" -v re="$RETRANS" \
    -v t0="$T0" -v t1="$T1" -v s0="$S0" -v s1="$S1" -v pg="$PGT" -v tr0="$TREE0" -v tr1="$TREE1" \
    -v hz="$HZ" -v rows="$ROWS" -v dups="$DUPS" 'BEGIN{
  el = t1 - t0; n = (ok > 0 ? ok : 1)
  srv = (s1 - s0) / 1e9; pgs = pg / hz; tree = (tr1 - tr0) / hz
  printf "mode=%s offered=%d/s ok=%d failed=%d retrans=%d wall=%.1fs rate=%.0f/s location_rows=%d duplicate_rows=%d\n", mode, rate, ok, failed, re, el, ok/el, rows, dups
  printf "server_cpu=%.2fs (%.1f us/REG)  pg_backends_cpu=%.2fs (%.1f us/REG)  pg_all_cpu=%.2fs (%.1f us/REG)\n", srv, srv*1e6/n, pgs, pgs*1e6/n, tree, tree*1e6/n
}'
[ "$FAILED" = 0 ] && [ "$OK" -gt 0 ]
