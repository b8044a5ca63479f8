#!/usr/bin/env bash
# sipshard, Kamailio 5.6 and a bare C responder ("floor") side by side on
# this machine, one at a time, same load, same database; prints a markdown
# table and writes it to perf/results/compare-<date>.md.
#
#   perf/compare.sh                      # full run (~5-6 min on 2 cores)
#   QUICK=1 perf/compare.sh              # smoke run (short drives, 10k contacts)
#   SKIP_KAMAILIO=1 SKIP_FLOOR=1 perf/compare.sh
#   ONLY=calls perf/compare.sh           # only the CALLS section
#   ONLY=basic perf/compare.sh           # only the BASIC section
#   MODE=maxrate perf/compare.sh         # max rate per server: perf/maxrate.sh
#   perf/compare.sh --users 1000 --users 100000 --users 1000000
#                                        # N registered AORs: perf/users.sh
#                                        # (USERS="1000 100000" does the same)
# (perf/maxrate.sh and perf/users.sh say in their headers how to run them
# and how long they take; all three start, measure and stop the servers
# through perf/lib/harness.sh.)
#   ROUTES="lua native" perf/compare.sh  # sipshard's OPTIONS and REGISTER drives
#                                        # also with --route native (Lua vs native)
#
# What runs (every server on 127.0.0.1 with 2 workers, started, measured and
# stopped before the next one starts):
#   sipshard  release build, 2 shards ([core] cores = [0, 1]), the bundled
#             etc/sipshard.lua, usrloc db_mode 2 on the SQLite file below
#   Kamailio  Debian's 5.6 (`-x fm -m 256 -M 16`, children=2), KEMI Lua:
#             etc/sipshard.lua itself, unchanged (the same script both
#             servers run), auth_db on subscriber.ha1, usrloc db_mode 2
#             (perf/kamailio/kamailio.cfg)
#   floor     perf/floor/floor.c: 2 processes, blocking recvfrom/sendto, a
#             200 OK with the request's Via/From/To/Call-ID/CSeq lines
# Loads:
#   OPTIONS   `sipshard bench` open loop, 8 sockets, at each of RATES for
#             DURATION s (all three servers)
#   REGISTER  sipp, bench/sipp/register-auth.xml (digest auth: REGISTER,
#             401, REGISTER with Authorization, 200) at REG_RATE/s, REG_CALLS
#             registrations, (a) ONE sipp process (one source port) cycling
#             test0..test9, credentials injected from the CSV as a whole
#             `[authentication ...]` keyword, (b) 16 sipp processes, one per
#             user test0..test15 with -au/-ap (as scripts/stress-register.sh)
#   CALLS     sipp callee (tests/sipp/uas-call.xml) registered once
#             (tests/sipp/register-contact.xml), sipp caller
#             (tests/sipp/uac-call.xml): INVITE, 180, 200, ACK, CALL_HOLD_MS
#             pause, BYE, 200, record-routed, no auth, through the proxy
#             running perf/calls.lua (both servers run that file, on a
#             database of its own); CALL_SECS s at each of CALL_RATES
#             calls/s, stepping up until a call fails. Reported: the highest
#             rate with 0 failed calls, server CPU per call, the sipp
#             processes' own CPU (a sipp near 100 % of a core means sipp,
#             not the server, is the limit), route avg/p99 (Kamailio: a
#             repeat at that rate with route logging)
#   BASIC     REGISTER with auth as above (16 sipp processes) at REG_RATE/s
#             through Kamailio's own basic KEMI Lua example, unchanged, as
#             Debian installs it (KAMAILIO_BASIC_LUA): sipshard with the
#             settings that script expects (BASIC_TOML below), the same on
#             SIPSHARD_ALT_BIN if set (e.g. a Lua 5.4 build, labelled
#             SIPSHARD_ALT_LABEL), sipshard's default script on the same
#             drive, and Kamailio with perf/kamailio/basic.cfg (CPU run, then
#             a route-time repeat). Reported: CPU/req and route avg/p99.
#   idle      IDLE_S seconds without traffic
#   memory    sipshard: perf/memory.sh (if present and executable);
#             Kamailio: shm used (kamcmd core.shmmem real_used) with CONTACTS
#             preloaded location rows minus the same with none, per contact;
#             PSS and RSS growth summed over its processes too (these runs
#             use -M KAM_MEM_PKG_MB, 256: the preload needs the pkg memory)
# Measured per drive:
#   CPU/req   run time of every thread of every server process
#             (/proc/PID/task/*/schedstat, field 1, ns) over the drive
#             (including the drain), divided by requests answered; a
#             REGISTER-with-auth registration is 2 requests
#   loss      OPTIONS: unanswered / sent; REGISTER: failed registrations;
#             CALLS: failed calls (caller or callee)
#   route     sipshard: `ctl kemi.route_latency` after `stats.reset`;
#             Kamailio: core latency_cfg_log/latency_limit_cfg=0 logs
#             "request-route executed in: N usec" per request; that logging
#             costs CPU, so the route times come from a separate, repeated
#             run (ROUTE_TIME), never from the CPU run
#
# Native route (ROUTES="lua native"): sipshard's OPTIONS and REGISTER drives
# run again on a server started with `--route native` (the default script's
# logic in Rust, src/kemi/native.rs, same KSR functions, same database); the
# report adds a "native vs Lua" table: route avg / p99 and CPU/req per line
# and their Lua / native ratios (Kamailio's KEMI table compares native
# kamailio.cfg, Lua and Python the same way). ROUTES=native runs only the
# native server (no Lua line in the main table).
#
# Environment: QUICK=1, SKIP_KAMAILIO=1, SKIP_FLOOR=1, ROUTES ("lua"), RATES ("5000 50000
# 100000"), DURATION (4; QUICK 1), SOCKETS (8), REG_RATE (4000), REG_CALLS
# (20000; QUICK 4000), IDLE_S (10; QUICK 5), CONTACTS (100000; QUICK
# 10000), SKIP_CALLS=1, ONLY=calls, CALL_RATES ("500 1000 2000 3000 4000 6000"),
# CALL_MAX_TRANSACTIONS (1048576), CALL_KAM_SHM_MB (4096),
# CALL_SECS (5; QUICK 2), CALL_HOLD_MS (1000), CALL_UAS_PORT (25360),
# CALL_UAC_PORT (25361), BUF_BYTES (4194304: SO_RCVBUF/SNDBUF of every server), ports
# SIPSHARD_PORT (25060), RPC_PORT (25070), KAM_PORT (25160), FLOOR_PORT (25260),
# OUT (result file), SIPSHARD_BIN (use this binary, skip the build;
# SIPSHARD_LABEL says what it is in the report),
# KEEP=1 (keep the work directory with every log).
#
# Only ever sends to 127.0.0.1. Stops exactly the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# The other modes: their own scripts on the same harness.
USERS_ARG=
while [ $# -gt 0 ]; do
  case $1 in
    --users) [ $# -ge 2 ] || { echo "--users needs a number of users" >&2; exit 2; }; USERS_ARG="$USERS_ARG ${2//,/ }"; shift 2 ;;
    --users=*) v=${1#--users=}; USERS_ARG="$USERS_ARG ${v//,/ }"; shift ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [ -n "$USERS_ARG" ]; then export USERS="${USERS_ARG# }"; fi
case ${MODE:-} in
  "") if [ -n "${USERS:-}" ]; then exec "$ROOT/perf/users.sh"; fi ;;
  maxrate) exec "$ROOT/perf/maxrate.sh" ;;
  users) exec "$ROOT/perf/users.sh" ;;
  *) echo "MODE must be empty, maxrate or users" >&2; exit 2 ;;
esac

QUICK=${QUICK:-0}
SKIP_KAMAILIO=${SKIP_KAMAILIO:-0}
SKIP_FLOOR=${SKIP_FLOOR:-0}
SKIP_CALLS=${SKIP_CALLS:-0}
# CALLS: room for the transactions a call rate keeps (an INVITE and a BYE
# transaction per call, each 5 s past its final reply): sipshard's [tm]
# max_transactions and Kamailio's shm pool (MiB; its default 256 runs out
# near 2 500 calls/s: "tm: new_t(): out of mem").
CALL_MAX_TRANSACTIONS=${CALL_MAX_TRANSACTIONS:-1048576}
CALL_KAM_SHM_MB=${CALL_KAM_SHM_MB:-4096}
ROUTES=${ROUTES:-lua}
for r in $ROUTES; do case $r in lua|native) ;; *) echo "ROUTES: lua and/or native, not $r" >&2; exit 2;; esac; done
ONLY=${ONLY:-}
case "$ONLY" in ""|calls|basic) ;; *) echo "ONLY must be empty, calls or basic" >&2; exit 2;; esac
if [ "$ONLY" = calls ]; then SKIP_CALLS=0; SKIP_BASIC=1; fi
if [ "$ONLY" = basic ]; then SKIP_CALLS=1; SKIP_BASIC=0; fi
SKIP_BASIC=${SKIP_BASIC:-0}
KAMAILIO_BASIC_LUA=${KAMAILIO_BASIC_LUA:-/usr/share/doc/kamailio/examples/kemi/kamailio-basic-kemi-lua.lua}
CALL_RATES=${CALL_RATES:-"500 1000 2000 3000 4000 6000"}
CALL_HOLD_MS=${CALL_HOLD_MS:-1000}
CALL_UAS_PORT=${CALL_UAS_PORT:-25360}
CALL_UAC_PORT=${CALL_UAC_PORT:-25361}
RATES=${RATES:-"5000 50000 100000"}
SOCKETS=${SOCKETS:-8}
REG_RATE=${REG_RATE:-4000}
REG_LIMIT=${REG_LIMIT:-10000}
REG_USERS_ONE=10          # (a): test0..test9 from one sipp
REG_USERS_MULTI=16        # (b): test0..test15, one sipp each
WORKERS=2
BUF_BYTES=${BUF_BYTES:-4194304}
SIPSHARD_PORT=${SIPSHARD_PORT:-25060}
RPC_PORT=${RPC_PORT:-25070}
KAM_PORT=${KAM_PORT:-25160}
FLOOR_PORT=${FLOOR_PORT:-25260}
DRAIN_MS=${DRAIN_MS:-500}
KAM_MEM_PKG_MB=${KAM_MEM_PKG_MB:-256}   # Kamailio -M for the memory runs only
if [ "$QUICK" = 1 ]; then
  DURATION=${DURATION:-1}; REG_CALLS=${REG_CALLS:-4000}; IDLE_S=${IDLE_S:-5}; CONTACTS=${CONTACTS:-10000}
  CALL_SECS=${CALL_SECS:-2}
else
  DURATION=${DURATION:-4}; REG_CALLS=${REG_CALLS:-20000}; IDLE_S=${IDLE_S:-10}; CONTACTS=${CONTACTS:-100000}
  CALL_SECS=${CALL_SECS:-5}
fi
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-perf/results/compare-$STAMP.md}

# shellcheck source=perf/lib/harness.sh
. "$ROOT/perf/lib/harness.sh"
harness_init
for p in "$SIPSHARD_PORT" "$KAM_PORT" "$FLOOR_PORT"; do port_free "$p" || die "UDP port $p is in use (set SIPSHARD_PORT/KAM_PORT/FLOOR_PORT)"; done
if [ "$SKIP_CALLS" != 1 ]; then
  for p in "$CALL_UAS_PORT" "$CALL_UAC_PORT"; do port_free "$p" || die "UDP port $p is in use (set CALL_UAS_PORT/CALL_UAC_PORT)"; done
fi
sipp_register_prepare

idle_cpu() {  # $1 = server key
  local a=$WORK/idle.a b=$WORK/idle.b ns
  log "$1: idle ${IDLE_S}s"
  server_snap "$a"; sleep "$IDLE_S"; server_snap "$b"
  ns=$(cpu_delta "$a" "$b")
  R[$1.idle_threads]=$(cpu_by_name "$a" "$b")
  R[$1.idle_busy]=$(machine_busy "$a" "$b")
  R[$1.idle]=$(awk -v ns="$ns" -v s="$IDLE_S" -v w="$WORKERS" 'BEGIN { printf "%.3f", ns / (s * 1e9) * 100 / w }')
  log "$1: idle CPU ${R[$1.idle]} % of a core per worker"
}

# OPTIONS drive at rate $2 against port $3; key prefix $1.
drive_options() {
  local key=$1 rate=$2 port=$3 a=$WORK/cpu.a b=$WORK/cpu.b j ns
  server_snap "$a"
  j=$("$BIN" bench --target "127.0.0.1:$port" --rate "$rate" --duration "$DURATION" --sockets "$SOCKETS" --drain-ms "$DRAIN_MS" --json)
  server_snap "$b"
  ns=$(cpu_delta "$a" "$b")
  R[$key.threads]=$(cpu_by_name "$a" "$b")
  R[$key.busy]=$(machine_busy "$a" "$b")
  echo "$j" > "$WORK/$key.json"
  check_port_owner "$port" "$key"
  R[$key.answered]=$(jq -r .answered <<<"$j")
  R[$key.sent]=$(jq -r .sent <<<"$j")
  R[$key.non2xx]=$(jq -r .non_2xx <<<"$j")
  R[$key.loss]=$(jq -r '.loss_pct' <<<"$j" | awk '{ printf "%.3f", $1 }')
  R[$key.client]=$(jq -r '"\(.latency_us_p50 | round) / \(.latency_us_p99 | round)"' <<<"$j")
  R[$key.cpu_s]=$(awk -v ns="$ns" 'BEGIN { printf "%.3f", ns / 1e9 }')
  R[$key.cpu]=$(awk -v ns="$ns" -v n="${R[$key.answered]}" 'BEGIN { if (n > 0) printf "%.2f", ns / 1e3 / n; else print "-" }')
  log "$key: sent ${R[$key.sent]} answered ${R[$key.answered]} (loss ${R[$key.loss]} %, non-2xx ${R[$key.non2xx]}), server CPU ${R[$key.cpu_s]} s = ${R[$key.cpu]} us/req"
}

# ---------------------------------------------------------------- database
DB=$WORK/compare.db
DB_URL=sqlite://$DB
{ echo SEQUENTIAL; for i in $(seq 0 15); do echo "test$i;127.0.0.1;pw-test$i"; done; } > "$WORK/users.csv"
"$BIN" db init --db "$DB_URL" >/dev/null
"$BIN" user import "$WORK/users.csv" --db "$DB_URL" >/dev/null

# ================================================================ sipshard
# $1 = route (lua|native); result keys sipshard.* (lua) or sipshard_native.*
run_sipshard() {
  local route=${1:-lua} k=sipshard
  [ "$route" = native ] && k=sipshard_native
  sipshard_toml "$WORK/sipshard.toml" "$DB_URL" "route = \"$route\""
  sipshard_start "$WORK/sipshard.toml" "2 shards, 127.0.0.1:$SIPSHARD_PORT, route $route"
  # idle CPU does not depend on the route: measured on the Lua server only
  if [ "$route" = lua ]; then idle_cpu sipshard; fi
  local r
  for r in $RATES; do
    sipshard_ctl stats.reset >/dev/null
    drive_options "$k.opt$r" "$r" "$SIPSHARD_PORT"
    sipshard_route "$k.opt$r"
  done
  for m in one multi; do
    sipshard_ctl stats.reset >/dev/null
    drive_register "$k.reg$m" "$SIPSHARD_PORT" "$m"
    sipshard_route "$k.reg$m"
  done
  stop_server
  R[$k.logerr]=$(grep -cE ' (WARN|ERROR) ' "$WORK/sipshard.err" || true)
}

# ================================================================ Kamailio
KAMRUN=$WORK/kamrun
KAM_LUA=$ROOT/etc/sipshard.lua   # perf/calls.lua for the CALLS section
KAM_CFG_SRC=$ROOT/perf/kamailio/kamailio.cfg   # perf/kamailio/basic.cfg for BASIC
run_kamailio() {
  kam_start "$DB_URL" "CPU run: route-time logging off" 16
  wait_sip "$KAM_PORT" 30
  idle_cpu kamailio
  local r m off
  for r in $RATES; do drive_options "kamailio.opt$r" "$r" "$KAM_PORT"; done
  for m in one multi; do drive_register "kamailio.reg$m" "$KAM_PORT" "$m"; done
  stop_server
  R[kamailio.logerr]=$(grep -E '(ERROR|CRITICAL|BUG):' "$WORK/kamailio.err" | grep -c . || true)
  # Route time: the same drives again with every request route's time logged.
  : > "$WORK/kamailio.err"
  kam_start "$DB_URL" "route-time run: latency_cfg_log, every route logged" 16 -A ROUTE_TIME
  wait_sip "$KAM_PORT" 30
  for r in $RATES; do
    off=$(stat -c %s "$WORK/kamailio.err")
    drive_options "kamailio_rt.opt$r" "$r" "$KAM_PORT"
    kam_route "kamailio.opt$r" "$WORK/kamailio.err" "$off"
  done
  for m in one multi; do
    off=$(stat -c %s "$WORK/kamailio.err")
    drive_register "kamailio_rt.reg$m" "$KAM_PORT" "$m"
    kam_route "kamailio.reg$m" "$WORK/kamailio.err" "$off"
  done
  stop_server
  : > "$WORK/kamailio.err"
}

# Kamailio memory per contact: shm (and PSS) with N preloaded rows minus 0.
KAM_MEM=
kam_mem_at() {  # $1 = rows; sets KAM_MEM="shm_real_used pss_kb rss_kb"
  local n=$1 db=$WORK/mem-$1.db deadline got shm pr
  rm -f "$db"
  "$BIN" db init --db "sqlite://$db" >/dev/null
  location_rows "$db" "$n" "udp:127.0.0.1:$KAM_PORT"
  # db_sqlite reads the whole preload result into the loading process's pkg
  # memory (~0.7 KB a row): 16 MiB is too small for 100k rows
  kam_start "sqlite://$db" "memory, $n location rows preloaded" "$KAM_MEM_PKG_MB"
  deadline=$((SECONDS + 180))
  while :; do
    got=$(kamcmd_ stats.get_statistics usrloc: 2>/dev/null | awk -F' = ' '$1 == "usrloc:location_contacts" { print $2 }' || true)
    [ "${got:-x}" = "$n" ] && break
    [ $SECONDS -lt $deadline ] || die "kamailio: location_contacts ${got:-?} != $n after preload"
    sleep 0.5
  done
  wait_sip "$KAM_PORT" 30
  shm=$(kamcmd_ core.shmmem | awk '/real_used:/ { print $2 }')
  pr=$(mem_kb)
  stop_server
  KAM_MEM="$shm $pr"
}
run_kamailio_memory() {
  log "kamailio: memory with 0 and $CONTACTS preloaded contacts"
  local m0 m1
  kam_mem_at 0; m0=$KAM_MEM
  kam_mem_at "$CONTACTS"; m1=$KAM_MEM
  R[kamailio.mem]=$(awk -v a="$m0" -v b="$m1" -v n="$CONTACTS" 'BEGIN { split(a, x, " "); split(b, y, " ")
    printf "%.0f B shm (PSS %+.0f B, RSS sum %+.0f B)", (y[1] - x[1]) / n, (y[2] - x[2]) * 1024 / n, (y[3] - x[3]) * 1024 / n }')
  log "kamailio: per contact: ${R[kamailio.mem]}"
}

# ================================================================ floor
run_floor() {
  cc -O2 -o "$WORK/floor" "$ROOT/perf/floor/floor.c"
  log "floor: start (2 processes, 127.0.0.1:$FLOOR_PORT)"
  SERVER_NAME=floor
  "$WORK/floor" "$FLOOR_PORT" "$WORKERS" "$BUF_BYTES" > "$WORK/floor.out" 2> "$WORK/floor.err" &
  SERVER_PID=$!
  wait_sip "$FLOOR_PORT" 10
  idle_cpu floor
  local r
  for r in $RATES; do drive_options "floor.opt$r" "$r" "$FLOOR_PORT"; done
  stop_server
}

run_sipshard_memory() {
  R[sipshard.mem]="n/a (no executable perf/memory.sh)"
  [ -x "$ROOT/perf/memory.sh" ] || return 0
  local tree=$ROOT v
  if [ "$BIN" != "$ROOT/target/release/sipshard" ]; then
    # perf/memory.sh runs target/release/sipshard of its own tree: give it a
    # scratch tree whose binary is $BIN
    tree=$WORK/memtree; mkdir -p "$tree/perf" "$tree/target/release"
    cp "$ROOT/perf/memory.sh" "$tree/perf/"; ln -sf "$BIN" "$tree/target/release/sipshard"
  fi
  log "sipshard: CONTACTS=$CONTACTS perf/memory.sh"
  if CONTACTS=$CONTACTS SKIP_BUILD=1 "$tree/perf/memory.sh" > "$WORK/memory.out" 2> "$WORK/memory.err"; then
    v=$(awk '$1 == "sipshard_bytes_per_contact" { print $2 }' "$WORK/memory.out" | tail -n 1)
    R[sipshard.mem]=${v:+$v B RSS}
    R[sipshard.mem]=${R[sipshard.mem]:-"n/a (no sipshard_bytes_per_contact line)"}
  else
    R[sipshard.mem]="n/a (perf/memory.sh failed)"
    tail -n 5 "$WORK/memory.err" >&2 || true
  fi
  log "sipshard: per contact: ${R[sipshard.mem]}"
}

# ================================================================ CALLS
# sipp callee + caller through the proxy running perf/calls.lua, stepping up
# CALL_RATES; the same sipp command lines for every server.
CALLS_DB=$WORK/calls.db
CALLS_DB_URL=sqlite://$CALLS_DB
CALL_TIMEOUT_S=$((CALL_SECS + CALL_HOLD_MS / 1000 + 30))   # a stuck sipp ends (as failed) after this

# One CALLS drive: key $1, server port $2, rate $3 calls/s for CALL_SECS s.
# Returns 1 when a call failed (caller or callee) or a sipp did not exit 0.
drive_calls() {
  local key=$1 port=$2 rate=$3 d=$WORK/$1 a=$WORK/cpu.a b=$WORK/cpu.b
  local n=$((rate * CALL_SECS)) limit ns t0 t1 uas_pid uac_pid deadline rc_uac rc_uas p
  limit=$((rate * (CALL_HOLD_MS / 1000 + 3)))
  rm -rf "$d"; mkdir -p "$d"
  SIPP_PIDS=()
  sipp_timed "$d/uas" $((CALL_TIMEOUT_S + 15)) -sf "$ROOT/tests/sipp/uas-call.xml" \
    -i 127.0.0.1 -p "$CALL_UAS_PORT" -t u1 -set proxy "127.0.0.1:$port" -m "$n" -buff_size "$BUF_BYTES" \
    -nostdin -trace_stat -stf stats.csv -fd 1 -trace_err -error_file errors.log \
    -timeout "$((CALL_TIMEOUT_S + 10))s" -timeout_error
  uas_pid=$!
  wait_udp_bound "$CALL_UAS_PORT" || { log "$key: the sipp callee did not bind $CALL_UAS_PORT"; stop_sipps; return 1; }
  server_snap "$a"
  t0=$(date +%s.%N)
  sipp_timed "$d/uac" $((CALL_TIMEOUT_S + 5)) "127.0.0.1:$port" -sf "$ROOT/tests/sipp/uac-call.xml" -s callee \
    -i 127.0.0.1 -p "$CALL_UAC_PORT" -t u1 -r "$rate" -l "$limit" -m "$n" -d "$CALL_HOLD_MS" -buff_size "$BUF_BYTES" \
    -nostdin -trace_stat -stf stats.csv -fd 1 -trace_err -error_file errors.log \
    -timeout "${CALL_TIMEOUT_S}s" -timeout_error
  uac_pid=$!
  wait "$uac_pid" 2>/dev/null || true
  t1=$(date +%s.%N)
  # the callee ends with the last BYE (+ its 1 s timewait); a failed run
  # leaves it waiting for calls that will not come
  deadline=$((SECONDS + 5))
  while alive "$uas_pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  if alive "$uas_pid"; then
    # stop the callee sipp itself, so its wrapper still writes rc and CPU
    for p in $(tree_pids "$uas_pid"); do
      [ "$(cat /proc/"$p"/comm 2>/dev/null)" = sipp ] && kill -TERM "$p" 2>/dev/null || true
    done
    deadline=$((SECONDS + 3))
    while alive "$uas_pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  fi
  stop_sipps
  server_snap "$b"
  check_port_owner "$port" "$key"
  ns=$(cpu_delta "$a" "$b")
  rc_uac=$(cat "$d/uac/rc" 2>/dev/null || echo "-"); rc_uas=$(cat "$d/uas/rc" 2>/dev/null || echo "-")
  R[$key.rate]=$rate
  R[$key.n]=$n
  R[$key.ok]=$(sum_col 'SuccessfulCall(C)' "$d/uac/stats.csv")
  R[$key.failed]=$(sum_col 'FailedCall(C)' "$d/uac/stats.csv")
  R[$key.uas_ok]=$(sum_col 'SuccessfulCall(C)' "$d/uas/stats.csv")
  R[$key.uas_failed]=$(sum_col 'FailedCall(C)' "$d/uas/stats.csv")
  R[$key.retrans]=$(( $(sum_col 'Retransmissions(C)' "$d/uac/stats.csv") + $(sum_col 'Retransmissions(C)' "$d/uas/stats.csv") ))
  R[$key.rc]="$rc_uac/$rc_uas"
  R[$key.wall]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  # calls/s the caller achieved: its calls over its run minus one call's length
  R[$key.cps]=$(awk -v n="${R[$key.ok]}" -v w="${R[$key.wall]}" -v h="$CALL_HOLD_MS" 'BEGIN { t = w - h / 1000; printf "%.0f", (t > 0) ? n / t : 0 }')
  R[$key.busy]=$(machine_busy "$a" "$b")
  R[$key.cpu_s]=$(awk -v ns="$ns" 'BEGIN { printf "%.3f", ns / 1e9 }')
  R[$key.cpu]=$(awk -v ns="$ns" -v n="${R[$key.ok]}" 'BEGIN { if (n > 0) printf "%.1f", ns / 1e3 / n; else print "-" }')
  R[$key.threads]=$(cpu_by_name "$a" "$b")
  # sipp's own CPU, % of one core (sipp is single-threaded) over the drive's
  # nominal length (CALL_SECS + one call): a stuck run does not dilute it
  local nominal
  nominal=$(awk -v s="$CALL_SECS" -v h="$CALL_HOLD_MS" 'BEGIN { print s + h / 1000 }')
  R[$key.sipp_uac]=$(awk -v t="$(cat "$d/uac/cpu_ticks" 2>/dev/null || echo -)" -v hz="$CLK_TCK" -v w="$nominal" 'BEGIN { if (t ~ /^[0-9]+$/) printf "%.0f", t / hz * 100 / w; else print "-" }')
  R[$key.sipp_uas]=$(awk -v t="$(cat "$d/uas/cpu_ticks" 2>/dev/null || echo -)" -v hz="$CLK_TCK" -v w="$nominal" 'BEGIN { if (t ~ /^[0-9]+$/) printf "%.0f", t / hz * 100 / w; else print "-" }')
  log "$key: $rate calls/s x ${CALL_SECS}s: ${R[$key.ok]}/$n ok, ${R[$key.failed]} failed (callee ${R[$key.uas_ok]} ok, ${R[$key.uas_failed]} failed), sipp rc ${R[$key.rc]}, ${R[$key.cps]} calls/s achieved; server CPU ${R[$key.cpu_s]} s = ${R[$key.cpu]} us/call; sipp CPU caller ${R[$key.sipp_uac]} %, callee ${R[$key.sipp_uas]} % of a core; machine ${R[$key.busy]} %"
  if [ "$rc_uac" = 0 ] && [ "$rc_uas" = 0 ] && [ "${R[$key.ok]}" = "$n" ] && [ "${R[$key.uas_ok]}" = "$n" ] \
      && [ "${R[$key.failed]}" = 0 ] && [ "${R[$key.uas_failed]}" = 0 ]; then
    return 0
  fi
  cat "$d"/uac/errors.log "$d"/uas/errors.log 2>/dev/null | head -c 1500 >&2 || true
  return 1
}
# Steps up CALL_RATES against $2 (server name $1) until a drive fails; $3 =
# per-drive hook run after each drive with its key (route figures).
# Sets R[$1.calls.best] (highest rate with 0 failed, or -), R[$1.calls.rates]
# (the rates driven) and R[$1.calls.limit] (what stopped the steps).
calls_steps() {
  local srv=$1 port=$2 hook=${3:-} r key last_ok=- driven=
  R[$srv.calls.limit]="every rate passed (raise CALL_RATES)"
  if ! register_callee "$port"; then
    R[$srv.calls.best]=-
    R[$srv.calls.limit]="the callee's REGISTER was not answered 200: $(grep -o "received 'SIP/2.0 [^']*" "$WORK/register-callee-$port/errors.log" 2>/dev/null | head -n 1 | cut -c 11-60 || true)"
    log "$srv: CALLS: ${R[$srv.calls.limit]}"
    return 0
  fi
  for r in $CALL_RATES; do
    key=$srv.call$r
    driven="$driven $r"
    if drive_calls "$key" "$port" "$r"; then
      last_ok=$r
      [ -z "$hook" ] || "$hook" "$key"
    else
      [ -z "$hook" ] || "$hook" "$key"
      R[$srv.calls.limit]="$r calls/s failed $(( ${R[$key.n]} - ${R[$key.ok]} )) calls"
      if awk -v a="${R[$key.sipp_uac]}" -v b="${R[$key.sipp_uas]}" 'BEGIN { exit !((a ~ /^[0-9]+$/ && a >= 85) || (b ~ /^[0-9]+$/ && b >= 85)) }'; then
        R[$srv.calls.limit]="${R[$srv.calls.limit]}; sipp-bound: a sipp used ${R[$key.sipp_uac]} % (caller) / ${R[$key.sipp_uas]} % (callee) of a core"
      elif [ "${R[$key.busy]:-0}" -ge 95 ] 2>/dev/null; then
        R[$srv.calls.limit]="${R[$srv.calls.limit]}; the machine was saturated (${R[$key.busy]} % of all CPUs: server and both sipps)"
      fi
      break
    fi
  done
  R[$srv.calls.best]=$last_ok
  R[$srv.calls.rates]=$driven
  log "$srv: CALLS: highest rate with 0 failed calls: $last_ok/s (${R[$srv.calls.limit]})"
}

run_sipshard_calls() {
  sipshard_toml "$WORK/sipshard-calls.toml" "$CALLS_DB_URL" "script = \"$ROOT/perf/calls.lua\"" "" "" \
    "$(printf '[tm]\nmax_transactions = %s' "$CALL_MAX_TRANSACTIONS")"
  sipshard_start "$WORK/sipshard-calls.toml" "for CALLS: perf/calls.lua, 2 shards, 127.0.0.1:$SIPSHARD_PORT" 30 "$BIN" "$WORK/sipshard-calls.out"
  sipshard_ctl stats.reset >/dev/null
  calls_steps sipshard "$SIPSHARD_PORT" sipshard_calls_hook
  stop_server
  R[sipshard.calls_logerr]=$(grep -cE ' (WARN|ERROR) ' "$WORK/sipshard.err" || true)
}
sipshard_calls_hook() {  # route figures of the drive, then reset for the next
  sipshard_route "$1"
  sipshard_ctl stats.reset >/dev/null
}

# The rate the summary compares at: the highest both servers passed (or the
# one that passed, or -).
calls_common_rate() {
  local a=${R[sipshard.calls.best]:--} b=${R[kamailio.calls.best]:--}
  if [ "$a" != - ] && [ "$b" != - ]; then
    if [ "$a" -le "$b" ]; then echo "$a"; else echo "$b"; fi
  elif [ "$a" != - ]; then echo "$a"
  else echo "$b"
  fi
}

run_kamailio_calls() {
  local best off
  KAM_LUA=$ROOT/perf/calls.lua
  : > "$WORK/kamailio.err"
  KAM_SHM_MB=$CALL_KAM_SHM_MB kam_start "$CALLS_DB_URL" "CALLS: perf/calls.lua, -m $CALL_KAM_SHM_MB, route-time logging off" 16
  wait_sip "$KAM_PORT" 30
  calls_steps kamailio "$KAM_PORT"
  stop_server
  R[kamailio.calls_logerr]=$(grep -E '(ERROR|CRITICAL|BUG):' "$WORK/kamailio.err" | grep -c . || true)
  # route time: the compared rate (or the first) again, every route logged
  best=$(calls_common_rate)
  [ "$best" != - ] || best=${CALL_RATES%% *}
  : > "$WORK/kamailio.err"
  KAM_SHM_MB=$CALL_KAM_SHM_MB kam_start "$CALLS_DB_URL" "CALLS route-time run at $best calls/s" 16 -A ROUTE_TIME
  wait_sip "$KAM_PORT" 30
  if register_callee "$KAM_PORT"; then
    off=$(stat -c %s "$WORK/kamailio.err")
    drive_calls "kamailio_rt.call$best" "$KAM_PORT" "$best" || log "kamailio: the route-time repeat at $best calls/s had failed calls"
    kam_route "kamailio.call$best" "$WORK/kamailio.err" "$off"
  fi
  stop_server
  : > "$WORK/kamailio.err"
  KAM_LUA=$ROOT/etc/sipshard.lua
}

# ================================================================ BASIC
# Kamailio's basic KEMI Lua example, unchanged, on sipshard and on Kamailio:
# REGISTER with auth from 16 sipp processes (drive_register multi).
# What that script expects around it, as sipshard settings (Kamailio's
# kamailio-basic-kemi.cfg with WITH_AUTH, WITH_NAT, WITH_IPAUTH,
# WITH_ANTIFLOOD; perf/kamailio/basic.cfg for Kamailio).
BASIC_DEFINES='defines = ["WITH_AUTH", "WITH_NAT", "WITH_IPAUTH", "WITH_ANTIFLOOD"]'
BASIC_TOML='
[[htable]]
name = "ipban"
size = 8
autoexpire = 300
[pike]
sampling_time_unit = 2
reqs_density_per_unit = 16
remove_latency = 4
[permissions]
enable = true
'
# $1 key, $2 binary, $3 script ("" = the default etc/sipshard.lua), $4 label
run_basic_sipshard() {
  local key=$1 bin=$2 script=$3 label=$4 core=
  [ -z "$script" ] || core="script = \"$script\"
$BASIC_DEFINES"
  sipshard_toml "$WORK/$key.toml" "$DB_URL" "$core" "" "" "${script:+$BASIC_TOML}"
  sipshard_start "$WORK/$key.toml" "$label" 30 "$bin" "$WORK/$key.out"
  sipshard_ctl stats.reset >/dev/null
  drive_register "$key.regmulti" "$SIPSHARD_PORT" multi
  sipshard_route "$key.regmulti"
  R[$key.label]=$label
  stop_server
  R[$key.logerr]=$(grep -cE ' (WARN|ERROR) ' "$WORK/sipshard.err" || true)
}
run_basic() {
  [ -f "$KAMAILIO_BASIC_LUA" ] || die "$KAMAILIO_BASIC_LUA missing (Debian package kamailio)"
  run_basic_sipshard sipshard_bdef "$BIN" "" "sipshard, its default etc/sipshard.lua"
  run_basic_sipshard sipshard_basic "$BIN" "$KAMAILIO_BASIC_LUA" "sipshard${SIPSHARD_LABEL:+ ($SIPSHARD_LABEL)}, Kamailio's basic example"
  if [ -n "${SIPSHARD_ALT_BIN:-}" ]; then
    run_basic_sipshard sipshard_balt "$(realpath "$SIPSHARD_ALT_BIN")" "$KAMAILIO_BASIC_LUA" "sipshard ${SIPSHARD_ALT_LABEL:-SIPSHARD_ALT_BIN}, Kamailio's basic example"
  fi
  [ "$SKIP_KAMAILIO" != 1 ] || return 0
  local off cfg_keep=$KAM_CFG_SRC
  KAM_CFG_SRC=$ROOT/perf/kamailio/basic.cfg KAM_LUA=$KAMAILIO_BASIC_LUA
  : > "$WORK/kamailio.err"
  kam_start "$DB_URL" "BASIC: Kamailio's basic example, route-time logging off" 16
  wait_sip "$KAM_PORT" 30
  drive_register kamailio_basic.regmulti "$KAM_PORT" multi
  R[kamailio_basic.label]="Kamailio 5.6, its basic example (perf/kamailio/basic.cfg)"
  stop_server
  R[kamailio_basic.logerr]=$(grep -E '(ERROR|CRITICAL|BUG):' "$WORK/kamailio.err" | grep -c . || true)
  : > "$WORK/kamailio.err"
  kam_start "$DB_URL" "BASIC route-time run" 16 -A ROUTE_TIME
  wait_sip "$KAM_PORT" 30
  off=$(stat -c %s "$WORK/kamailio.err")
  drive_register kamailio_basic_rt.regmulti "$KAM_PORT" multi
  kam_route kamailio_basic.regmulti "$WORK/kamailio.err" "$off"
  stop_server
  : > "$WORK/kamailio.err"
  KAM_CFG_SRC=$cfg_keep KAM_LUA=$ROOT/etc/sipshard.lua
}

LOADAVG0=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$SECONDS
if [ "$SKIP_CALLS" != 1 ]; then "$BIN" db init --db "$CALLS_DB_URL" >/dev/null; fi
if [ -z "$ONLY" ]; then for route in $ROUTES; do run_sipshard "$route"; done; fi
if [ "$SKIP_CALLS" != 1 ]; then run_sipshard_calls; fi
if [ "$SKIP_KAMAILIO" != 1 ]; then
  if [ -z "$ONLY" ]; then run_kamailio; run_kamailio_memory; fi
  if [ "$SKIP_CALLS" != 1 ]; then run_kamailio_calls; fi
fi
if [ "$SKIP_FLOOR" != 1 ] && [ -z "$ONLY" ]; then run_floor; fi
if [ -z "$ONLY" ]; then run_sipshard_memory; fi
if [ "$SKIP_BASIC" != 1 ]; then run_basic; fi
ELAPSED=$((SECONDS - T_START))

# ================================================================ report
g() { echo "${R[$1]:--}"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/) printf "%.2f", a - b; else print "-" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "-" }'; }
pct() { [ "$1" = - ] && echo - || echo "$1 %"; }
fmt_rate() { awk -v r="$1" 'BEGIN { if (r >= 1000 && r % 1000 == 0) printf "%dk", r / 1000; else print r }'; }
reg_label() { if [ "$1" = one ]; then echo "REGISTER $(fmt_rate "$REG_RATE")/s, 1 source"; else echo "REGISTER $(fmt_rate "$REG_RATE")/s, 16 sources"; fi; }

basic_report() {
  [ "$SKIP_BASIC" != 1 ] || return 0
  echo "## BASIC: Kamailio's basic KEMI Lua example, REGISTER with auth $(fmt_rate "$REG_RATE")/s, 16 sources"
  echo
  echo "| server, script | registrations ok / failed | CPU/req µs | route avg / p99 µs | routes counted | / Kamailio CPU |"
  echo "|---|---|---|---|---|---|"
  for srv in sipshard_bdef sipshard_basic sipshard_balt kamailio_basic; do
    [ -n "${R[$srv.regmulti.ok]:-}" ] || continue
    echo "| $(g "$srv.label") | $(g "$srv.regmulti.ok") / $(g "$srv.regmulti.failed") | $(g "$srv.regmulti.cpu") | $(g "$srv.regmulti.route") | $(g "$srv.regmulti.route_n") | $(ratio "$(g "$srv.regmulti.cpu")" "$(g kamailio_basic.regmulti.cpu)") |"
  done
  echo
  echo "- script: $KAMAILIO_BASIC_LUA (unchanged); Kamailio route times from a repeat with route logging (kamailio_basic_rt: $(g kamailio_basic_rt.regmulti.ok) ok / $(g kamailio_basic_rt.regmulti.failed) failed)."
  echo "- WARN/ERROR log lines: sipshard default $(g sipshard_bdef.logerr), sipshard basic $(g sipshard_basic.logerr), alt $(g sipshard_balt.logerr), Kamailio $(g kamailio_basic.logerr)"
  echo
}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "${SIPSHARD_BIN:-}" ]; then
  COMMIT="checkout $COMMIT; sipshard binary SIPSHARD_BIN=$SIPSHARD_BIN${SIPSHARD_LABEL:+ ($SIPSHARD_LABEL)}"
elif [ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  COMMIT="$COMMIT + uncommitted changes in src/Cargo"
fi
# Lua vs native route, same drives (ROUTES="lua native").
native_report() {
  echo "## Native route vs Lua (sipshard, same drives)"
  echo
  echo "| line | route avg / p99 µs Lua | route avg / p99 µs native | route avg Lua / native | CPU/req µs Lua | CPU/req µs native | CPU/req Lua / native | loss Lua | loss native |"
  echo "|---|---|---|---|---|---|---|---|---|"
  local r m l n
  for r in $RATES; do
    l=sipshard.opt$r; n=sipshard_native.opt$r
    echo "| OPTIONS $(fmt_rate "$r")/s | $(g "$l.route") | $(g "$n.route") | $(ratio "$(g "$l.route_avg")" "$(g "$n.route_avg")") | $(g "$l.cpu") | $(g "$n.cpu") | $(ratio "$(g "$l.cpu")" "$(g "$n.cpu")") | $(pct "$(g "$l.loss")") | $(pct "$(g "$n.loss")") |"
  done
  for m in one multi; do
    l=sipshard.reg$m; n=sipshard_native.reg$m
    echo "| $(reg_label $m) | $(g "$l.route") | $(g "$n.route") | $(ratio "$(g "$l.route_avg")" "$(g "$n.route_avg")") | $(g "$l.cpu") | $(g "$n.cpu") | $(ratio "$(g "$l.cpu")" "$(g "$n.cpu")") | $(pct "$(g "$l.loss")") | $(pct "$(g "$n.loss")") |"
  done
  echo
  echo "- native = \`sipshard run --route native\`: etc/sipshard.lua's logic in Rust (src/kemi/native.rs) calling the same KSR functions;"
  echo "  the goal is Lua within 1.2× of native route time. Route times include the KSR work (digest check, usrloc save), not only the script."
  echo
}
write_report() {
  echo "# sipshard vs Kamailio 5.6 vs floor (perf/compare.sh)"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $COMMIT; $("$BIN" --version)"
  echo "- machine: $(nproc) CPUs, kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
  if [ "$SKIP_KAMAILIO" != 1 ]; then echo "- $(kamailio -v 2>&1 | sed -n '1s/^version: //p' | sed 's/ *$//'), $(sipp -v 2>&1 | grep -o 'SIPp v[^ ,-]*' | head -n 1)"; fi
  echo "- each server: 2 workers, 127.0.0.1, alone on the machine with its load generator; SO_RCVBUF/SNDBUF $BUF_BYTES"
  echo "- OPTIONS: \`sipshard bench\`, $SOCKETS sockets, ${DURATION} s per rate (+ ${DRAIN_MS} ms drain); REGISTER: sipp digest auth, $REG_RATE/s, $REG_CALLS registrations; idle ${IDLE_S} s; QUICK=$QUICK"
  if [ "$SKIP_CALLS" != 1 ]; then echo "- CALLS: sipp tests/sipp/uac-call.xml → proxy (perf/calls.lua) → tests/sipp/uas-call.xml, INVITE–180–200–ACK–${CALL_HOLD_MS} ms–BYE–200, record-routed, no auth; ${CALL_SECS} s per rate, rates $CALL_RATES (stepping up until a call fails)"; fi
  echo "- whole run: ${ELAPSED} s; load average before: $LOADAVG0, after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- sipshard routes: $ROUTES"
  echo "- server log lines at WARN/ERROR level during the drives: sipshard $(g sipshard.logerr)$(case " $ROUTES " in *" native "*) echo " (native route $(g sipshard_native.logerr))";; esac), Kamailio (ERROR and worse, CPU run) $(g kamailio.logerr)"
  if [ "$SKIP_CALLS" != 1 ]; then echo "- the same during the CALLS drives: sipshard $(g sipshard.calls_logerr), Kamailio $(g kamailio.calls_logerr)"; fi
  for w in "${WARNINGS[@]}"; do echo "- **WARNING**: $w"; done
  echo
  if [ "$ONLY" = basic ]; then basic_report; return 0; fi
  echo "| line | sipshard CPU/req µs | Kamailio CPU/req µs | floor CPU/req µs | sipshard − floor µs | sipshard / Kamailio | loss sipshard | loss Kamailio | route avg / p99 µs sipshard | route avg / p99 µs Kamailio | sipshard shard0/shard1 |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  if [ -z "$ONLY" ]; then
  for r in $RATES; do
    s=$(g "sipshard.opt$r.cpu"); k=$(g "kamailio.opt$r.cpu"); f=$(g "floor.opt$r.cpu")
    echo "| OPTIONS $(fmt_rate "$r")/s | $s | $k | $f | $(sub "$s" "$f") | $(ratio "$s" "$k") | $(pct "$(g "sipshard.opt$r.loss")") | $(pct "$(g "kamailio.opt$r.loss")") | $(g "sipshard.opt$r.route") | $(g "kamailio.opt$r.route") | $(g "sipshard.opt$r.shards") |"
  done
  for m in one multi; do
    s=$(g "sipshard.reg$m.cpu"); k=$(g "kamailio.reg$m.cpu")
    echo "| $(reg_label $m) | $s | $k | – | – | $(ratio "$s" "$k") | $(pct "$(g "sipshard.reg$m.loss")") | $(pct "$(g "kamailio.reg$m.loss")") | $(g "sipshard.reg$m.route") | $(g "kamailio.reg$m.route") | $(g "sipshard.reg$m.shards") |"
  done
  echo "| idle ${IDLE_S} s: CPU % of a core per worker | $(g sipshard.idle) | $(g kamailio.idle) | $(g floor.idle) | – | $(ratio "$(g sipshard.idle)" "$(g kamailio.idle)") | – | – | – | – | – |"
  echo "| memory per contact ($CONTACTS contacts) | $(g sipshard.mem) | $(g kamailio.mem) | – | – | – | – | – | – | – | – |"
  fi
  if [ "$SKIP_CALLS" != 1 ]; then
    c=$(calls_common_rate)
    s=$(g "sipshard.call$c.cpu"); k=$(g "kamailio.call$c.cpu")
    echo "| CALLS at $c/s: CPU per **call** (highest rate with 0 failed calls: sipshard $(g sipshard.calls.best)/s, Kamailio $(g kamailio.calls.best)/s) | $s | $k | – | – | $(ratio "$s" "$k") | $(g "sipshard.call$c.failed") calls | $(g "kamailio.call$c.failed") calls | $(g "sipshard.call$c.route") | $(g "kamailio.call$c.route") | $(g "sipshard.call$c.shards") |"
  fi
  echo
  echo "- **CPU/req**: run time (\`/proc/PID/task/*/schedstat\`) of every thread of every server process over the drive"
  echo "  (including the drain), divided by the requests answered; a REGISTER-with-auth registration is 2 requests (401, 200)."
  echo "  The load generator runs on the same 2 CPUs and is not counted."
  echo "- **loss**: OPTIONS unanswered / sent; REGISTER failed registrations / all (sipp); CALLS failed calls of the caller."
  echo "- **route**: sipshard \`ctl kemi.route_latency\` (request_route, both shards merged, \`stats.reset\` before each drive);"
  echo "  Kamailio \`latency_cfg_log\` + \`latency_limit_cfg=0\` lines (\"request-route executed in: N usec\", 1 µs resolution)"
  echo "  from a **separate repeat** of the same drives with that logging on, so Kamailio's CPU figures are without it."
  echo '- **shard0/shard1**: share of sipshard'"'"'s request routes per shard (udp_socket = "spread": a BPF program picks a shard per datagram, so one source is split too).'
  echo "- **CALLS**: CPU per call = server run time over the drive / successful calls (each call: INVITE, ACK, BYE and their replies"
  echo "  through the proxy, both legs); route = request_route of every request (Kamailio: a repeat at the same rate with route logging)."
  echo "- **memory**: sipshard: \`perf/memory.sh\` (RSS growth with the location table preloaded); Kamailio: \`kamcmd core.shmmem\`"
  echo "  real_used growth with $CONTACTS preloaded usrloc rows vs none, plus PSS / RSS growth summed over its processes."
  echo
  case " $ROUTES " in *" native "*) native_report;; esac
  echo "## Details per drive"
  echo
  if [ -z "$ONLY" ]; then
  echo "| server | line | sent / answered | loss | non-2xx | server CPU s | machine busy % | client p50 / p99 µs | routes counted |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for srv in sipshard sipshard_native kamailio kamailio_rt floor; do
    for r in $RATES; do
      [ -n "${R[$srv.opt$r.sent]:-}" ] || continue
      n=-
      case $srv in sipshard*) n="$(g "$srv.opt$r.route_n") ($(g "$srv.opt$r.shard_cnt"))";; kamailio_rt) n=$(g "kamailio.opt$r.route_n");; esac
      echo "| $srv | OPTIONS $(fmt_rate "$r")/s | $(g "$srv.opt$r.sent") / $(g "$srv.opt$r.answered") | $(g "$srv.opt$r.loss") % | $(g "$srv.opt$r.non2xx") | $(g "$srv.opt$r.cpu_s") | $(g "$srv.opt$r.busy") | $(g "$srv.opt$r.client") | $n |"
    done
  done
  echo
  echo "| server | line | registrations ok / failed | retransmissions | sipp rc≠0 | wall s | server CPU s | machine busy % | routes counted |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for srv in sipshard sipshard_native kamailio kamailio_rt; do
    for m in one multi; do
      [ -n "${R[$srv.reg$m.ok]:-}" ] || continue
      n=-
      case $srv in sipshard*) n="$(g "$srv.reg$m.route_n") ($(g "$srv.reg$m.shard_cnt"))";; kamailio_rt) n=$(g "kamailio.reg$m.route_n");; esac
      echo "| $srv | $(reg_label $m) | $(g "$srv.reg$m.ok") / $(g "$srv.reg$m.failed") | $(g "$srv.reg$m.retrans") | $(g "$srv.reg$m.badrc") | $(g "$srv.reg$m.wall") | $(g "$srv.reg$m.cpu_s") | $(g "$srv.reg$m.busy") | $n |"
    done
  done
  echo
  fi
  if [ "$SKIP_CALLS" != 1 ]; then
    echo "## CALLS per rate"
    echo
    echo "| server | calls/s | caller ok / failed | callee ok / failed | achieved calls/s | retransmissions | sipp rc caller/callee | server CPU s | CPU/call µs | sipp CPU % of a core caller / callee | machine busy % | route avg / p99 µs |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    for srv in sipshard kamailio kamailio_rt; do
      for r in $CALL_RATES; do
        [ -n "${R[$srv.call$r.n]:-}" ] || continue
        rt=$(g "$srv.call$r.route"); [ "$srv" = kamailio_rt ] && rt=$(g "kamailio.call$r.route")
        echo "| $srv | $r | $(g "$srv.call$r.ok") / $(g "$srv.call$r.failed") | $(g "$srv.call$r.uas_ok") / $(g "$srv.call$r.uas_failed") | $(g "$srv.call$r.cps") | $(g "$srv.call$r.retrans") | $(g "$srv.call$r.rc") | $(g "$srv.call$r.cpu_s") | $(g "$srv.call$r.cpu") | $(g "$srv.call$r.sipp_uac") / $(g "$srv.call$r.sipp_uas") | $(g "$srv.call$r.busy") | $rt |"
      done
    done
    echo
    for srv in sipshard kamailio; do
      [ -n "${R[$srv.calls.limit]:-}" ] || continue
      echo "- $srv: highest rate with 0 failed calls $(g "$srv.calls.best")/s; stopped by: $(g "$srv.calls.limit")"
    done
    echo "- sipp CPU % = its run time over the drive's nominal length (CALL_SECS + one call). A sipp at ≥ 85 % of a core, or the"
    echo "  machine at ≥ 95 % (all CPUs, anything running), means the load generator or the machine, not the server, set the limit."
    echo
  fi
  basic_report
  echo "kamailio_rt = the route-time repeat (every route logged to stderr; its CPU is not used above)."
  echo "machine busy % = all CPUs (/proc/stat) over the drive: server + load generator + anything else running;"
  echo "idle windows: sipshard $(g sipshard.idle_busy) %, Kamailio $(g kamailio.idle_busy) %, floor $(g floor.idle_busy) % (should be ~0)."
  echo
  echo "sipshard CPU by thread (ms over the drive):"
  echo
  if [ -z "$ONLY" ]; then
    echo "- idle ${IDLE_S} s: $(g sipshard.idle_threads)"
    for r in $RATES; do echo "- OPTIONS $(fmt_rate "$r")/s: $(g "sipshard.opt$r.threads")"; done
    for m in one multi; do echo "- $(reg_label $m): $(g "sipshard.reg$m.threads")"; done
  fi
  for r in $CALL_RATES; do
    if [ -n "${R[sipshard.call$r.n]:-}" ]; then echo "- CALLS $r/s: $(g "sipshard.call$r.threads")"; fi
  done
}
write_report > "$WORK/report.md"

mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.md" "$OUT"
cat "$WORK/report.md"
log "written: $OUT (${ELAPSED} s)"
