#!/usr/bin/env bash
# Users mode of perf/compare.sh (`perf/compare.sh --users N [--users M ...]`
# or `USERS="N M" perf/compare.sh` runs this file): for each N, sipshard and
# tuned Kamailio 5.6 start on a database holding N subscribers and N
# registered AORs (usrloc db_mode 2 preloads them), and each reports
# REGISTER-with-auth cost with the registering users spread over all N AORs,
# route time, and memory per contact. Writes perf/results/users-<date>.md.
#
# FULL RUN (the machine otherwise quiet; ~15 min on 2 cores, most of it the
# 1M-row imports and Kamailio's 1M-row preloads, three per server):
#
#   perf/compare.sh --users 1000 --users 100000 --users 1000000
#   # the same: USERS="1000 100000 1000000" perf/users.sh
#
# Smoke run (~2 min): USERS="1000 10000" REG_CALLS=4000 perf/users.sh
#
# Per N (fresh database: `sipshard bench users` writes user<i>@127.0.0.1 /
# pw<i> as a sipp CSV, `sipshard user import` loads it into subscriber;
# location gets N rows, one AOR user<i> each, shaped like perf/memory.sh's,
# socket = Kamailio's listen address; every server start gets its own copy):
#   memory    each server started on the copy with N rows and on one with
#             none; the difference over N: sipshard VmRSS (its one process;
#             as perf/memory.sh's sipshard_bytes_per_contact), Kamailio
#             `kamcmd core.shmmem` real_used plus PSS/RSS summed over its
#             processes
#   REGISTER  `sipshard bench register --spread-users`: REG_CALLS
#             registrations at REG_RATE/s (a rate both servers pass with 0
#             failures at every N), user<i> for i spread over all N (each
#             registration a distinct AOR while REG_CALLS <= N; its contact is
#             new, so the AOR gets a second one). Server CPU per request over
#             the drive (/proc/PID/task/*/schedstat; a registration is 2
#             requests).
#   route     sipshard: `ctl kemi.route_latency` (request_route over the
#             REGISTER drive); Kamailio: the same drive again on a fresh copy
#             with `-A ROUTE_TIME` (every route's time logged; kept out of the
#             CPU run, as compare.sh does)
# Kamailio runs with -m KAM_SHM_MB (default 256 + 3 MiB per 1000 users) and
# -M KAM_PKG_MB (default 64 + 3 MiB per 1000 users: db_sqlite reads the
# whole preload into one process's pkg memory) and usrloc hash_size raised
# to at least N/2 slots (-A UL_HASH_SIZE=bits, 10..20); sipshard with [db]
# location_rows_max and [registrar] max_aors_per_shard raised to N.
#
# Environment: USERS ("1000 100000 1000000"), REG_RATE (2000), REG_CALLS
# (20000), SOCKETS (8), SKIP_KAMAILIO=1, KAM_SHM_MB, KAM_PKG_MB,
# PRELOAD_TIMEOUT_S (900), BUF_BYTES, SIPSHARD_PORT, RPC_PORT, KAM_PORT, OUT,
# SIPSHARD_BIN (skip the build), KEEP=1.
# Only ever sends to 127.0.0.1. Stops exactly the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOG_TAG=users

SKIP_KAMAILIO=${SKIP_KAMAILIO:-0}
USERS=${USERS:-"1000 100000 1000000"}
REG_RATE=${REG_RATE:-2000}
REG_CALLS=${REG_CALLS:-20000}
SOCKETS=${SOCKETS:-8}
PRELOAD_TIMEOUT_S=${PRELOAD_TIMEOUT_S:-900}
WORKERS=2
BUF_BYTES=${BUF_BYTES:-4194304}
SIPSHARD_PORT=${SIPSHARD_PORT:-25060}
RPC_PORT=${RPC_PORT:-25070}
KAM_PORT=${KAM_PORT:-25160}
SETTLE_S=${SETTLE_S:-2}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-perf/results/users-$STAMP.md}
for n in $USERS; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "USERS: '$n' is not a positive number" >&2; exit 2; }
done

# shellcheck source=perf/lib/harness.sh
. "$ROOT/perf/lib/harness.sh"
harness_init
for p in "$SIPSHARD_PORT" "$KAM_PORT"; do port_free "$p" || die "UDP port $p is in use (set SIPSHARD_PORT/KAM_PORT)"; done
KAMRUN=$WORK/kamrun
KAM_LUA=$ROOT/etc/sipshard.lua
KAM_SHM_MB_ENV=${KAM_SHM_MB:-}
KAM_START_TIMEOUT_S=$PRELOAD_TIMEOUT_S   # kamcmd answers once the preload is done

# base database for N users: subscribers and N location rows; and the same
# with an empty location table
make_dbs() {  # $1 = N
  local n=$1 t0=$SECONDS
  rm -f "$WORK"/base-*.db "$WORK"/empty-*.db "$WORK"/run.db
  "$BIN" db init --db "sqlite://$WORK/base-$n.db" >/dev/null
  "$BIN" bench users --users 'user%d@127.0.0.1:pw%d' --user-count "$n" --out "$WORK/users.csv" >/dev/null
  "$BIN" user import "$WORK/users.csv" --db "sqlite://$WORK/base-$n.db" >/dev/null
  R[$n.import_s]=$((SECONDS - t0))
  cp "$WORK/base-$n.db" "$WORK/empty-$n.db"
  location_rows "$WORK/base-$n.db" "$n" "udp:127.0.0.1:$KAM_PORT"
  log "N=$n: $n subscribers imported in ${R[$n.import_s]} s, $n location rows in $((SECONDS - t0)) s in all"
}
# A fresh copy of the base (or empty) database for one server start.
run_db() { cp "$WORK/$1-$2.db" "$WORK/run.db"; echo "sqlite://$WORK/run.db"; }

sipshard_users_start() {  # $1 = db url, $2 = label
  local n=$3 big
  big=$(( n > 1000000 ? n : 1000000 ))
  sipshard_toml "$WORK/sipshard.toml" "$1" "" "location_rows_max = $big
query_timeout_ms = 600000" "max_aors_per_shard = $big"
  sipshard_start "$WORK/sipshard.toml" "$2" "$PRELOAD_TIMEOUT_S"
}
sipshard_contacts() {
  sipshard_ctl stats.fetch usrloc.contacts 2>/dev/null | jq -r '.result["usrloc.contacts"] // -1' 2>/dev/null || echo -1
}
kam_contacts() {
  kamcmd_ stats.get_statistics usrloc: 2>/dev/null | awk -F' = ' '$1 == "usrloc:location_contacts" { print $2 }' || true
}
wait_contacts() {  # $1 = server, $2 = count
  local deadline=$((SECONDS + PRELOAD_TIMEOUT_S)) got t0=$SECONDS
  while :; do
    got=$("${1}_contacts")
    [ "${got:-x}" = "$2" ] && break
    alive "$SERVER_PID" || die "$1 exited during the preload"
    [ $SECONDS -lt $deadline ] || die "$1: ${got:-?} contacts loaded, expected $2"
    sleep 0.5
  done
  R[$1.$2.preload_s]=$((SECONDS - t0))
  sleep "$SETTLE_S"
}

# REGISTER drive over the N users; $1 key, $2 port, $3 N.
drive_users() {
  local key=$1 port=$2 n=$3 a=$WORK/cpu.a b=$WORK/cpu.b j=$WORK/$1.json ns
  server_snap "$a"
  "$BIN" bench register --target "127.0.0.1:$port" --users 'user%d@127.0.0.1:pw%d' --user-count "$n" --spread-users \
    --rate "$REG_RATE" --count "$REG_CALLS" --sockets "$SOCKETS" --json > "$j"
  server_snap "$b"
  check_port_owner "$port" "$key"
  ns=$(cpu_delta "$a" "$b")
  R[$key.ok]=$(jq -r .ok "$j"); R[$key.failed]=$(jq -r .failed "$j")
  R[$key.p99]=$(jq -r '.latency_us.corrected.p99 / 1000 | . * 100 | round / 100' "$j")
  R[$key.cpu]=$(awk -v ns="$ns" -v n="${R[$key.ok]}" 'BEGIN { if (n > 0) printf "%.2f", ns / 1e3 / (2 * n); else print "-" }')
  R[$key.busy]=$(machine_busy "$a" "$b")
  log "$key: ${R[$key.ok]} ok, ${R[$key.failed]} failed, server ${R[$key.cpu]} us/req, p99 ${R[$key.p99]} ms"
}

run_sipshard_n() {  # $1 = N
  local n=$1 m0 m1
  sipshard_users_start "$(run_db empty "$n")" "N=$n, empty location" "$n"
  wait_contacts sipshard 0
  m0=$(mem_kb)
  stop_server
  sipshard_users_start "$(run_db base "$n")" "N=$n, $n contacts preloaded" "$n"
  wait_contacts sipshard "$n"
  m1=$(mem_kb)
  R[sipshard.$n.mem]=$(awk -v a="$m0" -v b="$m1" -v n="$n" 'BEGIN { split(a, x, " "); split(b, y, " ")
    printf "%.0f B RSS", (y[2] - x[2]) * 1024 / n }')
  R[sipshard.$n.rss_mb]=$(awk -v b="$m1" 'BEGIN { split(b, y, " "); printf "%.0f", y[2] / 1024 }')
  sipshard_ctl stats.reset >/dev/null
  drive_users "sipshard.$n" "$SIPSHARD_PORT" "$n"
  sipshard_route "sipshard.$n"
  stop_server
  R[sipshard.$n.logerr]=$(grep -cE ' (WARN|ERROR) ' "$WORK/sipshard.err" || true)
}

run_kamailio_n() {  # $1 = N
  local n=$1 m0 m1 shm0 shm1 off
  KAM_SHM_MB=${KAM_SHM_MB_ENV:-$((256 + 3 * n / 1000))}
  local pkg=${KAM_PKG_MB:-$((64 + 3 * n / 1000))} bits=10
  # usrloc hash table: at least N/2 slots (2^10 = 1024 is its default)
  while [ $((1 << bits)) -lt $((n / 2)) ] && [ "$bits" -lt 20 ]; do bits=$((bits + 1)); done
  R[kamailio.$n.hash]=$bits
  : > "$WORK/kamailio.err"
  kam_start "$(run_db empty "$n")" "N=$n, empty location, -m $KAM_SHM_MB -M $pkg, usrloc hash_size $bits" "$pkg" -A "UL_HASH_SIZE=$bits"
  wait_contacts kam 0
  wait_sip "$KAM_PORT" 30
  shm0=$(kamcmd_ core.shmmem | awk '/real_used:/ { print $2 }'); m0=$(mem_kb)
  stop_server
  kam_start "$(run_db base "$n")" "N=$n, $n contacts preloaded" "$pkg" -A "UL_HASH_SIZE=$bits"
  wait_contacts kam "$n"
  wait_sip "$KAM_PORT" 30
  shm1=$(kamcmd_ core.shmmem | awk '/real_used:/ { print $2 }'); m1=$(mem_kb)
  R[kamailio.$n.mem]=$(awk -v s0="$shm0" -v s1="$shm1" -v a="$m0" -v b="$m1" -v n="$n" 'BEGIN { split(a, x, " "); split(b, y, " ")
    printf "%.0f B shm (PSS %+.0f B, RSS sum %+.0f B)", (s1 - s0) / n, (y[1] - x[1]) * 1024 / n, (y[2] - x[2]) * 1024 / n }')
  R[kamailio.$n.rss_mb]=$(awk -v b="$m1" 'BEGIN { split(b, y, " "); printf "%.0f (PSS)", y[1] / 1024 }')
  drive_users "kamailio.$n" "$KAM_PORT" "$n"
  stop_server
  R[kamailio.$n.logerr]=$(grep -E '(ERROR|CRITICAL|BUG):' "$WORK/kamailio.err" | grep -c . || true)
  # route time: the same drive on a fresh copy, every route logged
  : > "$WORK/kamailio.err"
  kam_start "$(run_db base "$n")" "N=$n route-time run" "$pkg" -A "UL_HASH_SIZE=$bits" -A ROUTE_TIME
  wait_contacts kam "$n"
  wait_sip "$KAM_PORT" 30
  off=$(stat -c %s "$WORK/kamailio.err")
  drive_users "kamailio_rt.$n" "$KAM_PORT" "$n"
  kam_route "kamailio.$n" "$WORK/kamailio.err" "$off"
  stop_server
  : > "$WORK/kamailio.err"
}

LOADAVG0=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$SECONDS
for n in $USERS; do
  make_dbs "$n"
  run_sipshard_n "$n"
  [ "$SKIP_KAMAILIO" = 1 ] || run_kamailio_n "$n"
done
ELAPSED=$((SECONDS - T_START))

g() { echo "${R[$1]:--}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "-" }'; }
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
write_report() {
  echo "# Users: REGISTER cost, route time and memory per contact at N registered AORs (perf/users.sh)"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $COMMIT; $("$BIN" --version)"
  echo "- machine: $(nproc) CPUs, kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
  if [ "$SKIP_KAMAILIO" != 1 ]; then echo "- $(kamailio -v 2>&1 | sed -n '1s/^version: //p' | sed 's/ *$//'), children=$WORKERS; per N: -m 256 + 3 MiB and -M 64 + 3 MiB per 1000 users, usrloc hash_size $(for n in $USERS; do printf '%s: %s bits; ' "$n" "$(g "kamailio.$n.hash")"; done)"; fi
  echo "- REGISTER with auth: \`sipshard bench register --spread-users\`, $REG_CALLS registrations at $REG_RATE/s, $SOCKETS sockets, users spread over all N"
  echo "- whole run: ${ELAPSED} s; load average before: $LOADAVG0, after: $(cut -d' ' -f1-3 /proc/loadavg)"
  for w in "${WARNINGS[@]}"; do echo "- **WARNING**: $w"; done
  echo
  echo "| N users / AORs | server | preload s | memory per contact | server memory MB | REGISTER ok / failed | CPU/req µs | / Kamailio | p99 ms (corrected) | route avg / p99 µs | WARN/ERROR lines |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for n in $USERS; do
    for srv in sipshard kamailio; do
      [ -n "${R[$srv.$n.ok]:-}" ] || continue
      local pre=$srv; [ "$srv" = kamailio ] && pre=kam
      echo "| $n | $srv | $(g "$pre.$n.preload_s") | $(g "$srv.$n.mem") | $(g "$srv.$n.rss_mb") | $(g "$srv.$n.ok") / $(g "$srv.$n.failed") | $(g "$srv.$n.cpu") | $(ratio "$(g "$srv.$n.cpu")" "$(g "kamailio.$n.cpu")") | $(g "$srv.$n.p99") | $(g "$srv.$n.route") | $(g "$srv.$n.logerr") |"
    done
  done
  echo
  echo "- subscribers imported with \`sipshard user import\`: $(for n in $USERS; do printf '%s in %s s; ' "$n" "$(g "$n.import_s")"; done)"
  echo "- **memory per contact**: (N rows preloaded − 0 rows) / N, read once the server reports N contacts (+ ${SETTLE_S} s)."
  echo "  sipshard: VmRSS of its process; Kamailio: shm real_used, and PSS / RSS summed over its processes."
  echo "- **CPU/req**: every server thread's run time over the drive / (2 × registrations ok)."
  echo "- **route**: sipshard \`kemi.route_latency\` over the drive; Kamailio a repeat of the drive on a fresh copy with"
  echo "  latency_cfg_log (route-time run: $(for n in $USERS; do printf '%s: %s ok / %s failed; ' "$n" "$(g "kamailio_rt.$n.ok")" "$(g "kamailio_rt.$n.failed")"; done))."
}
write_report > "$WORK/report.md"
mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.md" "$OUT"
cat "$OUT"
log "written: $OUT (${ELAPSED} s)"
