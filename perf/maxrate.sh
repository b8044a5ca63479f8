#!/usr/bin/env bash
# Max-rate mode of perf/compare.sh (`MODE=maxrate perf/compare.sh` runs
# this file): steps the offered rate up, for sipshard and for tuned Kamailio
# 5.6, until each fails, with OUR generator (`sipshard bench register|
# options|call --json`) for both servers; writes a markdown table, the steps
# as TSV and PNG plots (throughput and p99 against the offered rate, both
# servers on the same axes) to perf/results/maxrate-<date>*.
#
# FULL RUN (the machine otherwise quiet; ~10 min on 2 cores, mostly
# Kamailio's and sipshard's last few steps and the 1 s call hold):
#
#   MODE=maxrate perf/compare.sh         # or: perf/maxrate.sh
#
# Smoke run (both servers, every scenario, two rates, 2 s steps; ~2 min):
#
#   REG_RATES="1000 2000" OPT_RATES="1000 2000" CALL_RATES="100 200" \
#     STEP_S=2 SIPP_CALLS=4000 MODE=maxrate perf/compare.sh
#
# Servers (the same as perf/compare.sh's, started through perf/lib/harness.sh):
#   sipshard  release build, 2 shards, etc/sipshard.lua (REGISTER, OPTIONS)
#             or perf/calls.lua (calls), usrloc db_mode 2 on SQLite
#   Kamailio  Debian's 5.6, perf/kamailio/kamailio.cfg: children=2,
#             maxbuffer BUF_BYTES, `-m 256 -M 16`, KEMI Lua running the same
#             two scripts unchanged, auth_db, usrloc db_mode 2
# Each (server, scenario) gets a fresh server start, then steps up:
#   register  `bench register` (REGISTER, 401, REGISTER with digest, 200),
#             MAXRATE_USERS users test<i>@127.0.0.1 (in the subscriber table),
#             at each of REG_RATES registrations/s
#   register_tcp, register_tls
#             the same over TCP (the UDP port) and TLS (SIPSHARD_TLS_PORT /
#             KAM_TLS_PORT; a self-signed certificate made with openssl),
#             `bench register --transport tcp|tls` (one connection per
#             socket); sipshard with [tcp] enable / [tls] listen, Kamailio
#             with `-A WITH_TCP` / `-A WITH_TLS` (tls module), tcp_children =
#             children
#   options   `bench options` at each of OPT_RATES requests/s
#   calls     `bench call` (INVITE, 180, 200, ACK, CALL_HOLD_MS, BYE, 200,
#             record-routed) to `sipshard bench uas` registered as
#             sip:callee (a sipp REGISTER, as compare.sh's CALLS), at each of
#             CALL_RATES calls/s
# for STEP_S seconds each (+ SETTLE_S pause), until a step FAILS: any failed
# registration/call, any unanswered or non-2xx OPTIONS, or corrected p99
# above P99_MAX_MS (50). Reported per step: offered and achieved rate,
# failures, retransmissions, p50/p99 (corrected for coordinated omission;
# raw in the TSV), server CPU per request (/proc/PID/task/*/schedstat over
# the step, as compare.sh: a registration is 2 requests, a call is 1 unit),
# generator CPU (the bench process, and the UAS for calls, % of one core),
# machine busy %. Then REFINE (2) bisection steps between the last rate
# passed and the first failed. Summary: highest rate with 0 failures per
# server, and the sipshard / Kamailio ratio.
# SIPP CHECK: one REGISTER run at SIPP_RATE (4000)/s, SIPP_CALLS (20000)
# registrations of test0..test15, on each server: sipp (16 processes, as
# compare.sh's "16 sources") and then `sipshard bench register` (16
# sockets) with the same users, rate and count, side by side (achieved
# rate, failures, server CPU/req) to show the generators agree.
#
# Environment: SERVERS ("sipshard kamailio floor"; floor = perf/floor/floor.c,
# UDP register and options only, the bound any server could show here), SCENARIOS ("register
# register_tcp register_tls options calls"), REG_RATES, OPT_RATES, CALL_RATES (see below), STEP_S (5),
# SETTLE_S (1), REFINE (2), P99_MAX_MS (50), TIMEOUT_MS (2000: a registration or call
# transaction with no final reply in this long failed), SOCKETS (8),
# GEN_THREADS (1), MAXRATE_USERS (1000), CALL_HOLD_MS (1000),
# CALL_MAX_TRANSACTIONS (1048576), CALL_KAM_SHM_MB (4096), SKIP_SIPP=1,
# SIPP_RATE (4000), SIPP_CALLS (20000), SKIP_PLOT=1, SKIP_KAMAILIO=1,
# WORKERS (2: Kamailio children), SIPSHARD_CORES ("[0, 1]": sipshard's
# [core] cores; "[0]" with WORKERS=1 is the one-shard / one-worker curve),
# SERVER_CPUS / GEN_CPUS (unset: no pinning; "0" / "1": every thread of the
# server under test on CPU 0 and the generator on CPU 1, the per-core run:
#   SIPSHARD_CORES="[0]" WORKERS=1 SERVER_CPUS=0 GEN_CPUS=1 perf/maxrate.sh),
# ROUTE (lua; native = sipshard with `[core] route = "native"`, the default
# script's logic in Rust, src/kemi/native.rs: the Lua-vs-native throughput;
# register*/options only, calls need perf/calls.lua),
# BUF_BYTES, ports SIPSHARD_PORT RPC_PORT KAM_PORT CALL_UAS_PORT
# CALL_UAC_PORT (as compare.sh), OUT (markdown file; the TSV and PNGs are
# named after it), SIPSHARD_BIN (skip the build), KEEP=1.
# OTHERS: the machine is shared; each step also measures the CPU that
# processes other than the server and the generator used meanwhile (% of
# one core: machine busy time minus both). A step where they took more than
# OTHERS_MAX_PCT (15) is done again, up to STEP_RETRIES (3) times, after
# waiting (up to QUIET_WAIT_S, 120) for a second in which the machine is
# idle but for the server; the table shows the figure of the step kept.
# Only ever sends to 127.0.0.1. Stops exactly the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOG_TAG=maxrate

SKIP_KAMAILIO=${SKIP_KAMAILIO:-0}
SERVERS=${SERVERS:-"sipshard kamailio floor"}
if [ "$SKIP_KAMAILIO" = 1 ]; then SERVERS=${SERVERS//kamailio/}; fi
SCENARIOS=${SCENARIOS:-"register register_tcp register_tls options calls"}
REG_RATES=${REG_RATES:-"2000 4000 6000 8000 10000 12000 15000 20000 25000 30000 40000 50000 60000 70000 80000 90000 100000"}
OPT_RATES=${OPT_RATES:-"10000 20000 30000 40000 60000 80000 100000 120000 150000 200000 250000 300000 400000 500000"}
CALL_RATES=${CALL_RATES:-"500 1000 2000 3000 4000 5000 6000 8000 10000 12500 15000 20000 25000 30000 40000"}
STEP_S=${STEP_S:-5}
SETTLE_S=${SETTLE_S:-1}
REFINE=${REFINE:-2}
P99_MAX_MS=${P99_MAX_MS:-50}
TIMEOUT_MS=${TIMEOUT_MS:-2000}
SOCKETS=${SOCKETS:-8}
GEN_THREADS=${GEN_THREADS:-1}
MAXRATE_USERS=${MAXRATE_USERS:-1000}
CALL_HOLD_MS=${CALL_HOLD_MS:-1000}
# calls: sipshard's [tm] max_transactions and Kamailio's shm pool (MiB).
# With the defaults (65 536; -m 256) each server refuses new transactions
# (500) near 10 000 and 2 500 calls/s: every INVITE and BYE transaction
# lingers 5 s (wait timer) after its final reply.
CALL_MAX_TRANSACTIONS=${CALL_MAX_TRANSACTIONS:-1048576}
CALL_KAM_SHM_MB=${CALL_KAM_SHM_MB:-4096}
SKIP_SIPP=${SKIP_SIPP:-0}
SIPP_RATE=${SIPP_RATE:-4000}
SIPP_CALLS=${SIPP_CALLS:-20000}
SKIP_PLOT=${SKIP_PLOT:-0}
WORKERS=${WORKERS:-2}   # Kamailio children (and tcp_children)
ROUTE=${ROUTE:-lua}
case $ROUTE in lua|native) ;; *) echo "ROUTE: lua or native, not $ROUTE" >&2; exit 2;; esac
BUF_BYTES=${BUF_BYTES:-4194304}
SIPSHARD_PORT=${SIPSHARD_PORT:-25060}
RPC_PORT=${RPC_PORT:-25070}
KAM_PORT=${KAM_PORT:-25160}
SIPSHARD_TLS_PORT=${SIPSHARD_TLS_PORT:-25061}
KAM_TLS_PORT=${KAM_TLS_PORT:-25161}
FLOOR_PORT=${FLOOR_PORT:-25260}
CALL_UAS_PORT=${CALL_UAS_PORT:-25360}
CALL_UAC_PORT=${CALL_UAC_PORT:-25361}
DRAIN_MS=${DRAIN_MS:-500}
OTHERS_MAX_PCT=${OTHERS_MAX_PCT:-15}
STEP_RETRIES=${STEP_RETRIES:-3}
QUIET_WAIT_S=${QUIET_WAIT_S:-120}
# drive_register (sipp) settings: the SIPP CHECK
REG_RATE=$SIPP_RATE
REG_CALLS=$SIPP_CALLS
REG_LIMIT=${REG_LIMIT:-10000}
REG_USERS_ONE=10
REG_USERS_MULTI=16
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-perf/results/maxrate-$STAMP.md}

# shellcheck source=perf/lib/harness.sh
. "$ROOT/perf/lib/harness.sh"
harness_init
UAS_PID=
maxrate_cleanup() { local rc=$?; stop_uas; (exit "$rc"); cleanup; }
trap maxrate_cleanup EXIT
for p in "$SIPSHARD_PORT" "$KAM_PORT" "$FLOOR_PORT" "$CALL_UAS_PORT" "$CALL_UAC_PORT"; do
  port_free "$p" || die "UDP port $p is in use (set SIPSHARD_PORT/KAM_PORT/CALL_UAS_PORT/CALL_UAC_PORT)"
done
sipp_register_prepare

# ---------------------------------------------------------------- databases
DB=$WORK/maxrate.db
DB_URL=sqlite://$DB
CALLS_DB=$WORK/calls.db
CALLS_DB_URL=sqlite://$CALLS_DB
users=$MAXRATE_USERS; [ "$users" -ge 16 ] || users=16
"$BIN" db init --db "$DB_URL" >/dev/null
"$BIN" bench users --users 'test%d@127.0.0.1:pw-test%d' --user-count "$users" --out "$WORK/users.csv" >/dev/null
"$BIN" user import "$WORK/users.csv" --db "$DB_URL" >/dev/null
"$BIN" db init --db "$CALLS_DB_URL" >/dev/null

# ---------------------------------------------------------------- one step
TSV=$WORK/steps.tsv
printf 'server\tscenario\toffered\tachieved\tstarted\tok\tfailed\tretrans\tp50_ms\tp99_ms\tp50_raw_ms\tp99_raw_ms\tserver_cpu_s\tserver_cpu_us_per_req\tgen_cpu_s\tgen_core_pct\tmachine_busy_pct\tpass\tshard_split_pct\tothers_core_pct\tattempts\tserver_sys_pct\n' > "$TSV"

# sipshard only: request_route runs per shard since start ("n0 n1 ..");
# the step's split is the difference of two of them (shard_split).
shard_counts() {
  [ "$1" = sipshard ] || return 0
  sipshard_ctl kemi.route_latency 2>/dev/null |
    jq -r '.result.routes[] | select(.route == "request_route") | [.shards[].cnt | tostring] | join(" ")' 2>/dev/null || true
}
shard_split() {  # "before" "after" -> "62/38" (% of the step's requests per shard), or -
  awk -v a="$1" -v b="$2" 'BEGIN { n = split(b, y, " "); split(a, x, " "); t = 0
    for (i = 1; i <= n; i++) { d[i] = y[i] - x[i]; t += d[i] }
    if (n == 0 || t <= 0) { print "-"; exit }
    for (i = 1; i <= n; i++) out = out (i > 1 ? "/" : "") sprintf("%.0f", d[i] * 100 / t); print out }'
}

# Runs a command with its JSON on stdout to $1 and its CPU time (user +
# system of it and its children, seconds) to $1.cpu.
gen_run() {
  local out=$1; shift
  if [ -n "${GEN_CPUS:-}" ]; then set -- taskset -c "$GEN_CPUS" "$@"; fi
  sh -c '"$@" > "$0"; rc=$?
    set -- $(cat /proc/$$/stat); echo $((${16} + ${17})) > "$0.ticks"; exit $rc' "$out" "$@"
  awk -v t="$(cat "$out.ticks")" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f\n", t / hz }' > "$out.cpu"
}
uas_snap() { if [ -n "$UAS_PID" ]; then cpu_snap "$UAS_PID" > "$1"; else : > "$1"; fi; }

# CPU other processes used between two server_snap files, % of one core:
# machine busy time minus the server's (ns) and the generator's (s).
others_pct() {  # a b server_ns gen_s
  awk -v ns="$3" -v gen="$4" -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" 'NR == FNR { b = $2; t = $3; next }
    { win = ($3 - t) / hz / n; if (win <= 0) { print 0; exit }
      printf "%.0f", ((($2 - b) / hz) - ns / 1e9 - gen) * 100 / win }' "$1.machine" "$2.machine"
}
# Waits until a whole second passes with the machine idle but for the
# server (< OTHERS_MAX_PCT of a core besides it), at most QUIET_WAIT_S.
wait_quiet() {
  local a=$WORK/quiet.a b=$WORK/quiet.b until=$((SECONDS + QUIET_WAIT_S))
  while [ $SECONDS -lt $until ]; do
    server_snap "$a"; sleep 1; server_snap "$b"
    [ "$(others_pct "$a" "$b" "$(cpu_delta "$a" "$b")" 0)" -lt "$OTHERS_MAX_PCT" ] && return 0
  done
  log "machine still busy after ${QUIET_WAIT_S} s: going on"
}

# step SERVER SCENARIO PORT RATE: one drive (again while other processes
# disturbed it, see OTHERS); appends a TSV row; returns 1 when the step failed.
step() {
  local try others
  for ((try = 1; ; try++)); do
    step_once "$@" "$try"
    others=$(tail -n 1 "$TSV" | cut -f 20)
    if [ "$others" -le "$OTHERS_MAX_PCT" ] || [ "$try" -gt "$STEP_RETRIES" ]; then break; fi
    log "$1.$2.$4: other processes took ${others} % of a core during the step: again when quiet"
    sed -i '$d' "$TSV"
    wait_quiet
  done
  [ "$(tail -n 1 "$TSV" | cut -f 18)" = 1 ]
}
step_once() {
  local srv=$1 scen=$2 port=$3 rate=$4 key=$1.$2.$4
  local a=$WORK/cpu.a b=$WORK/cpu.b ua=$WORK/uas.a ub=$WORK/uas.b j=$WORK/$key.json ns uas_ns gen
  local count units
  local split0 split1
  split0=$(shard_counts "$srv")
  server_snap "$a"; uas_snap "$ua"
  case $scen in
    register*)
      gen_run "$j" "$BIN" bench register --target "127.0.0.1:$port" --users 'test%d@127.0.0.1:pw-test%d' \
        --user-count "$users" --rate "$rate" --duration "$STEP_S" --sockets "$SOCKETS" --threads "$GEN_THREADS" \
        --max-inflight 100000 --timeout-ms "$TIMEOUT_MS" --transport "$(transport_of "$scen")" --json ;;
    options)
      gen_run "$j" "$BIN" bench options --target "127.0.0.1:$port" --rate "$rate" --duration "$STEP_S" \
        --sockets "$SOCKETS" --threads "$GEN_THREADS" --drain-ms "$DRAIN_MS" --json ;;
    calls)
      gen_run "$j" "$BIN" bench call --target "127.0.0.1:$port" --ruri "sip:callee@127.0.0.1:$port" \
        --rate "$rate" --duration "$STEP_S" --pause-ms "$CALL_HOLD_MS" --sockets "$SOCKETS" --threads "$GEN_THREADS" \
        --max-inflight 1000000 --timeout-ms "$TIMEOUT_MS" --json ;;
  esac
  server_snap "$b"; uas_snap "$ub"
  split1=$(shard_counts "$srv")
  jq -e .offered_rate "$j" >/dev/null 2>&1 || die "$key: no report from sipshard bench: $(head -c 300 "$j")"
  check_port_owner "$port" "$key"
  ns=$(cpu_delta "$a" "$b")
  uas_ns=0; [ -s "$ua" ] && uas_ns=$(cpu_delta "$ua" "$ub")
  gen=$(awk -v g="$(cat "$j.cpu")" -v u="$uas_ns" 'BEGIN { printf "%.3f", g + u / 1e9 }')
  # started / ok / failed / retransmissions, achieved rate and requests the
  # server answered (for CPU per request) per scenario
  case $scen in
    register*)
      jq -r '[.registrations, .ok, .failed, .retransmissions, .achieved_rate, 2 * .ok,
              .latency_us.corrected.p50, .latency_us.corrected.p99, .latency_us.raw.p50, .latency_us.raw.p99] | @tsv' "$j" ;;
    options)
      jq -r '[.sent, .answered - .non_2xx, .lost + .non_2xx, 0, .answered_rate, .answered,
              .latency_us.corrected.p50, .latency_us.corrected.p99, .latency_us.raw.p50, .latency_us.raw.p99] | @tsv' "$j" ;;
    calls)
      # achieved: completed calls over the run minus one call's hold
      jq -r --argjson hold "$CALL_HOLD_MS" '[.calls, .ok, .failed, .retransmissions,
              (.ok / ([.elapsed_s - $hold / 1000, 0.001] | max)), .ok,
              .latency_us.corrected.p50, .latency_us.corrected.p99, .latency_us.raw.p50, .latency_us.raw.p99] | @tsv' "$j" ;;
  esac > "$j.row"
  local started ok failed retrans achieved units p50 p99 p50r p99r pass try=$5
  IFS=$'\t' read -r started ok failed retrans achieved units p50 p99 p50r p99r < "$j.row"
  pass=1
  if [ "$failed" != 0 ] || [ "$ok" = 0 ] || awk -v p="$p99" -v m="$P99_MAX_MS" 'BEGIN { exit !(p / 1000 > m) }'; then pass=0; fi
  awk -v OFS='\t' -v srv="$srv" -v scen="$scen" -v rate="$rate" -v st="$started" -v ok="$ok" -v f="$failed" \
      -v rt="$retrans" -v ach="$achieved" -v n="$units" -v p50="$p50" -v p99="$p99" -v p50r="$p50r" -v p99r="$p99r" \
      -v ns="$ns" -v gen="$gen" -v s="$STEP_S" -v busy="$(machine_busy "$a" "$b")" -v pass="$pass" \
      -v sp="$(if [ "$srv" = sipshard ]; then shard_split "$split0" "$split1"; else echo -; fi)" \
      -v others="$(others_pct "$a" "$b" "$ns" "$gen")" -v try="$try" -v sys="$(cpu_sys_pct "$a" "$b")" 'BEGIN {
    print srv, scen, rate, sprintf("%.0f", ach), st, ok, f, rt, sprintf("%.3f", p50 / 1000), sprintf("%.3f", p99 / 1000),
      sprintf("%.3f", p50r / 1000), sprintf("%.3f", p99r / 1000), sprintf("%.3f", ns / 1e9),
      (n > 0) ? sprintf("%.2f", ns / 1e3 / n) : "-", gen, sprintf("%.0f", gen * 100 / s), busy, pass, sp, others, try, sys }' >> "$TSV"
  log "$key: $(tail -n 1 "$TSV" | cut -f 3-)"
}

# steps SERVER SCENARIO PORT RATES...: up until a step fails.
steps() {
  local srv=$1 scen=$2 port=$3 r last=- fail= i mid; shift 3
  R[$srv.$scen.limit]="every rate passed (raise the rates)"
  for r in "$@"; do
    if step "$srv" "$scen" "$port" "$r"; then
      last=$r
    else
      fail=$r
      R[$srv.$scen.limit]="$r/s: $(step_summary "$srv" "$scen" "$r")"
      break
    fi
    sleep "$SETTLE_S"
  done
  # REFINE bisections between the last rate passed and the first failed
  # (after a pause: the failed step may have left a backlog)
  if [ -n "$fail" ] && [ "$last" != - ]; then
    for ((i = 0; i < REFINE; i++)); do
      mid=$(( (last + fail) / 2 ))
      [ "$mid" -gt "$last" ] && [ "$mid" -lt "$fail" ] || break
      sleep $((3 * SETTLE_S))
      if step "$srv" "$scen" "$port" "$mid"; then last=$mid; else fail=$mid; R[$srv.$scen.limit]="$mid/s: $(step_summary "$srv" "$scen" "$mid")"; fi
    done
  fi
  R[$srv.$scen.best]=$last
}
step_summary() {  # server scenario rate -> "N of M failed, p99 ..."
  awk -F'\t' -v s="$1" -v c="$2" -v r="$3" -v m="$P99_MAX_MS" '$1 == s && $2 == c && $3 == r {
    printf "%s of %s failed, p99 %s ms (bound %s), machine %s %% busy", $7, $5, $10, m, $17 }' "$TSV" | tail -n 1
}

# ---------------------------------------------------------------- servers
KAMRUN=$WORK/kamrun
# register_tcp / register_tls: REGISTER with auth over TCP (the UDP port)
# or TLS (its own port; a self-signed certificate made here, used by both
# servers; the generator does not check it, as sipp would not).
transport_of() { case $1 in register_tcp) echo tcp;; register_tls) echo tls;; *) echo udp;; esac; }
TLS_CERT=$WORK/tls-cert.pem
TLS_KEY=$WORK/tls-key.pem
KAM_TLS_CFG=$WORK/kamailio-tls.cfg
tls_files() {
  [ -s "$TLS_CERT" ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$TLS_KEY" -out "$TLS_CERT" >/dev/null 2>&1 \
    || die "openssl could not make the test certificate"
  cat > "$KAM_TLS_CFG" <<CFG
[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
certificate = $TLS_CERT
private_key = $TLS_KEY

[client:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
CFG
}
stream_toml() {  # $1 = scenario -> the [tcp]/[tls] sections sipshard needs
  case $(transport_of "$1") in
    tcp) printf '[tcp]\nenable = true\n' ;;
    tls) tls_files
         printf '[tcp]\nenable = true\n[tls]\nlisten = "127.0.0.1:%s"\ncertificate = "%s"\nprivate_key = "%s"\n' \
           "$SIPSHARD_TLS_PORT" "$TLS_CERT" "$TLS_KEY" ;;
  esac
}
start_server() {  # $1 = sipshard|kamailio, $2 = register|options|calls|sipp
  local srv=$1 scen=$2 db=$DB_URL script=
  if [ "$scen" = calls ]; then db=$CALLS_DB_URL; script=$ROOT/perf/calls.lua; fi
  # every start from an empty location table: the bindings an earlier
  # drive saved (usrloc db_mode 2 writes them back) would be preloaded, and
  # Kamailio's preload of ~100k of them does not fit its 16 MiB pkg memory
  sqlite3 "${db#sqlite://}" "DELETE FROM location; DELETE FROM location_attrs;"
  if [ "$srv" = floor ]; then
    [ -x "$WORK/floor" ] || cc -O2 -o "$WORK/floor" "$ROOT/perf/floor/floor.c" || die "cannot compile perf/floor/floor.c"
    log "floor: start ($scen: $WORKERS processes, 127.0.0.1:$FLOOR_PORT)"
    SERVER_NAME=floor
    ${SERVER_CPUS:+taskset -c "$SERVER_CPUS"} "$WORK/floor" "$FLOOR_PORT" "$WORKERS" "$BUF_BYTES" > "$WORK/floor.out" 2> "$WORK/floor.err" &
    SERVER_PID=$!
    wait_sip "$FLOOR_PORT" 10
  elif [ "$srv" = sipshard ]; then
    local core="${script:+script = \"$script\"}"
    if [ "$ROUTE" = native ]; then core='route = "native"'; fi
    local tail; tail=$(stream_toml "$scen")
    # calls: room for the transactions a call rate keeps (each INVITE and
    # BYE lingers wait_ms, 5 s, after its final reply), as Kamailio gets a
    # larger shm pool below
    if [ "$scen" = calls ]; then tail+=$'\n[tm]\nmax_transactions = '"$CALL_MAX_TRANSACTIONS"; fi
    sipshard_toml "$WORK/sipshard-$scen.toml" "$db" "$core" "" "" "$tail"
    sipshard_start "$WORK/sipshard-$scen.toml" "$scen: cores ${SIPSHARD_CORES:-[0, 1]}, ${script:-etc/sipshard.lua}, route $ROUTE"
  else
    KAM_LUA=${script:-$ROOT/etc/sipshard.lua}
    local def=()
    case $(transport_of "$scen") in tcp) def=(-A WITH_TCP);; tls) tls_files; def=(-A WITH_TLS);; esac
    local shm=${KAM_SHM_MB:-256}
    if [ "$scen" = calls ]; then shm=$CALL_KAM_SHM_MB; fi
    KAM_SHM_MB=$shm kam_start "$db" "$scen: children=$WORKERS, -m $shm, $KAM_LUA ${def[*]}" 16 "${def[@]}"
    wait_sip "$KAM_PORT" 30
  fi
}
port_of() {  # $1 = server, $2 = scenario (TLS has its own port)
  if [ "${2:-}" = register_tls ]; then
    if [ "$1" = sipshard ]; then echo "$SIPSHARD_TLS_PORT"; else echo "$KAM_TLS_PORT"; fi
  elif [ "$1" = sipshard ]; then echo "$SIPSHARD_PORT"; elif [ "$1" = floor ]; then echo "$FLOOR_PORT"; else echo "$KAM_PORT"; fi
}
stop_uas() {
  [ -n "$UAS_PID" ] || return 0
  kill -TERM "$UAS_PID" 2>/dev/null || true; wait "$UAS_PID" 2>/dev/null || true; UAS_PID=
}

run_scenario() {  # $1 server, $2 scenario
  local srv=$1 scen=$2 port rates
  # the floor answers UDP REGISTER (401, then 200 unchecked) and OPTIONS only
  if [ "$srv" = floor ] && [ "$scen" != register ] && [ "$scen" != options ]; then return 0; fi
  # the native route is etc/sipshard.lua's logic; calls run perf/calls.lua
  if [ "$srv" = sipshard ] && [ "$ROUTE" = native ] && [ "$scen" = calls ]; then
    log "sipshard calls: skipped (ROUTE=native has no perf/calls.lua)"; return 0
  fi
  port=$(port_of "$srv" "$scen")
  start_server "$srv" "$scen"
  case $scen in
    register*) rates=$REG_RATES ;;
    options) rates=$OPT_RATES ;;
    calls)
      rates=$CALL_RATES
      ${GEN_CPUS:+taskset -c "$GEN_CPUS"} "$BIN" bench uas --listen "127.0.0.1:$CALL_UAS_PORT" > "$WORK/uas.out" 2> "$WORK/uas.err" &
      UAS_PID=$!
      wait_udp_bound "$CALL_UAS_PORT" || die "bench uas did not bind $CALL_UAS_PORT"
      register_callee "$port" || die "$srv: the callee's REGISTER was not answered 200"
      ;;
  esac
  # shellcheck disable=SC2086
  steps "$srv" "$scen" "$port" $rates
  stop_uas
  stop_server
  log "$srv $scen: highest rate with 0 failures: ${R[$srv.$scen.best]}/s (${R[$srv.$scen.limit]})"
}

# SIPP CHECK on SERVER: sipp, then our generator, same users/rate/count.
run_sipp_check() {
  local srv=$1 port a=$WORK/cpu.a b=$WORK/cpu.b j=$WORK/$1.sippcheck.json ns t0 t1
  port=$(port_of "$srv")
  start_server "$srv" sipp
  drive_register "$srv.sipp" "$port" multi
  R[$srv.sipp.rate]=$(awk -v n="${R[$srv.sipp.ok]}" -v w="${R[$srv.sipp.wall]}" 'BEGIN { printf "%.0f", n / w }')
  sleep "$SETTLE_S"
  server_snap "$a"
  t0=$(date +%s.%N)
  gen_run "$j" "$BIN" bench register --target "127.0.0.1:$port" --users 'test%d@127.0.0.1:pw-test%d' --user-count 16 \
    --rate "$SIPP_RATE" --count "$SIPP_CALLS" --sockets 16 --max-inflight "$REG_LIMIT" --json
  t1=$(date +%s.%N)
  server_snap "$b"
  ns=$(cpu_delta "$a" "$b")
  R[$srv.ours.ok]=$(jq -r .ok "$j"); R[$srv.ours.failed]=$(jq -r .failed "$j"); R[$srv.ours.retrans]=$(jq -r .retransmissions "$j")
  R[$srv.ours.wall]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  R[$srv.ours.rate]=$(awk -v n="${R[$srv.ours.ok]}" -v w="${R[$srv.ours.wall]}" 'BEGIN { printf "%.0f", n / w }')
  R[$srv.ours.cpu]=$(awk -v ns="$ns" -v n="${R[$srv.ours.ok]}" 'BEGIN { if (n > 0) printf "%.2f", ns / 1e3 / (2 * n); else print "-" }')
  R[$srv.ours.p99]=$(jq -r '.latency_us.corrected.p99 / 1000 | . * 1000 | round / 1000' "$j")
  R[$srv.ours.gen]=$(cat "$j.cpu")
  log "$srv: sipp ${R[$srv.sipp.ok]} ok / ${R[$srv.sipp.failed]} failed, ${R[$srv.sipp.cpu]} us/req; ours ${R[$srv.ours.ok]} ok / ${R[$srv.ours.failed]} failed, ${R[$srv.ours.cpu]} us/req"
  stop_server
}

LOADAVG0=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$SECONDS
for srv in $SERVERS; do
  for scen in $SCENARIOS; do run_scenario "$srv" "$scen"; done
  [ "$SKIP_SIPP" = 1 ] || [ "$srv" = floor ] || run_sipp_check "$srv"
done
ELAPSED=$((SECONDS - T_START))

# ================================================================ report
g() { echo "${R[$1]:--}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "-" }'; }
base=${OUT%.md}
PLOTS=
plot() {
  [ "$SKIP_PLOT" != 1 ] || return 0
  if ! python3 -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib (pip) for the plots"
    python3 -m pip install -q matplotlib >&2 || { log "WARNING: no matplotlib: no plots"; return 0; }
  fi
  PLOTS=$(python3 "$ROOT/perf/plot-maxrate.py" "$TSV" "$base" "$P99_MAX_MS") || { log "WARNING: plotting failed"; PLOTS=; }
}
mkdir -p "$(dirname "$OUT")"
cp "$TSV" "$base.tsv"
plot
unit() { case $1 in register) echo "REGISTER with auth (registrations/s)";; register_tcp) echo "REGISTER with auth over TCP (registrations/s)";; register_tls) echo "REGISTER with auth over TLS (registrations/s)";; options) echo "OPTIONS (requests/s)";; calls) echo "calls (calls/s, ${CALL_HOLD_MS} ms hold)";; esac; }
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
write_report() {
  echo "# Max rate: sipshard vs Kamailio 5.6, same generator (perf/maxrate.sh)"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $COMMIT; $("$BIN" --version)"
  echo "- machine: $(nproc) CPUs, kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
  if [[ " $SERVERS " == *" kamailio "* ]]; then echo "- $(kamailio -v 2>&1 | sed -n '1s/^version: //p' | sed 's/ *$//'), children=$WORKERS, -m ${KAM_SHM_MB:-256} -M 16 (calls: -m $CALL_KAM_SHM_MB; sipshard [tm] max_transactions $CALL_MAX_TRANSACTIONS); $(sipp -v 2>&1 | grep -o 'SIPp v[^ ,-]*' | head -n 1)"; fi
  echo "- each server: $WORKERS Kamailio worker(s) / sipshard cores ${SIPSHARD_CORES:-[0, 1]} (route $ROUTE), 127.0.0.1, alone on the machine with the generator; SO_RCVBUF/SNDBUF $BUF_BYTES"
  if [ -n "${SERVER_CPUS:-}${GEN_CPUS:-}" ]; then echo "- pinned: every server process and thread on CPU(s) ${SERVER_CPUS:-any} (taskset), the generator on CPU(s) ${GEN_CPUS:-any}"; fi
  echo "- generator: \`sipshard bench\`, $SOCKETS sockets, $GEN_THREADS thread(s), ${STEP_S} s per step, transaction timeout ${TIMEOUT_MS} ms; $users users; a step fails on any failure or corrected p99 > ${P99_MAX_MS} ms"
  echo "- whole run: ${ELAPSED} s; load average before: $LOADAVG0, after: $(cut -d' ' -f1-3 /proc/loadavg)"
  for w in "${WARNINGS[@]}"; do echo "- **WARNING**: $w"; done
  echo
  echo "## Highest rate with 0 failures"
  echo
  echo "| scenario | sipshard | Kamailio | sipshard / Kamailio | floor | floor / Kamailio | sipshard stopped by | Kamailio stopped by | floor stopped by |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for scen in $SCENARIOS; do
    echo "| $(unit "$scen") | $(g "sipshard.$scen.best") | $(g "kamailio.$scen.best") | $(ratio "$(g "sipshard.$scen.best")" "$(g "kamailio.$scen.best")") | $(g "floor.$scen.best") | $(ratio "$(g "floor.$scen.best")" "$(g "kamailio.$scen.best")") | $(g "sipshard.$scen.limit") | $(g "kamailio.$scen.limit") | $(g "floor.$scen.limit") |"
  done
  echo
  echo "**floor**: perf/floor/floor.c, $WORKERS process(es) on one socket, recvmmsg/sendmmsg batches of 32, no parsing beyond"
  echo "copying five header lines, no auth check (a REGISTER without Authorization gets a fixed 401, any other request 200):"
  echo "the cheapest UDP responder, on the same machine with the same generator. Its highest rate is what this machine and"
  echo "generator can show at all, so floor / Kamailio bounds the sipshard / Kamailio ratio any server could reach here."
  echo
  echo "A rate of - means not even the first step passed. After the first failed step, $REFINE bisection step(s) between it and the last rate passed; the true limit lies between the highest rate passed and the lowest failed."
  echo
  for scen in $SCENARIOS; do
    echo "## $(unit "$scen")"
    echo
    for p in $PLOTS; do [[ "$p" == *"-$scen.png" ]] && echo "![$scen]($(basename "$p"))" && echo; done
    echo "| server | offered/s | achieved/s | started | ok | failed | retrans | p50 / p99 ms (corrected) | p99 raw ms | server CPU/req µs | server kernel % | generator CPU % of a core | machine busy % | others % of a core (try) | requests per shard % | pass |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    awk -F'\t' -v c="$scen" 'NR > 1 && $2 == c' "$TSV" | sort -t "$(printf '\t')" -k1,1r -k3,3n |
      awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s | %s | %s | %s | %s (%s) | %s | %s |\n",
      $1, $3, $4, $5, $6, $7, $8, $9, $10, $12, $14, ($22 == "") ? "-" : $22, $16, $17, $20, $21, $19, ($18 == 1) ? "yes" : "**no**" }'
    echo
  done
  echo "- **server CPU/req**: run time of every thread of every server process over the step (/proc/PID/task/*/schedstat),"
  echo "  divided by the requests answered: a registration is 2 (401, 200), an OPTIONS 1, a call 1 (per call: INVITE, ACK,"
  echo "  BYE and replies, both legs)."
  echo "- **server kernel %**: the server's system time over its user + system time in the step (/proc/PID/task/*/stat):"
  echo "  the share of its cost spent in the kernel's UDP/TCP path (the floor's is nearly all of it)."
  echo "- **others**: CPU that processes other than the server and the generator used during the step (machine busy time minus"
  echo "  both), % of one core; a step where they took more than ${OTHERS_MAX_PCT} % was done again when the machine was quiet (try: which"
  echo "  attempt is shown, at most $((STEP_RETRIES + 1)))."
  echo "- **requests per shard**: sipshard's request_route runs on each shard over the step (\`kemi.route_latency\`), % of the step's."
  echo "- **generator CPU**: user + system time of the \`sipshard bench\` process (plus \`bench uas\` for calls) over the step length."
  echo "- **achieved**: registrations: ok / run time (the run lasts until the last transaction ends); OPTIONS: answered / send"
  echo "  time; calls: completed / (run time − hold)."
  echo "- p50/p99 corrected: HdrHistogram record_correct at the expected interval between starts (raw in the TSV: $(basename "$base.tsv"))."
  if [ "$SKIP_SIPP" != 1 ]; then
    echo
    echo "## sipp vs sipshard bench: REGISTER with auth at $SIPP_RATE/s, $SIPP_CALLS registrations, test0..test15"
    echo
    echo "| server | generator | ok / failed | retransmissions | achieved/s | server CPU/req µs | generator CPU s |"
    echo "|---|---|---|---|---|---|---|"
    for srv in $SERVERS; do
      [ "$srv" != floor ] || continue   # the SIPP CHECK runs on the two servers
      echo "| $srv | sipp (16 processes) | $(g "$srv.sipp.ok") / $(g "$srv.sipp.failed") | $(g "$srv.sipp.retrans") | $(g "$srv.sipp.rate") | $(g "$srv.sipp.cpu") | – |"
      echo "| $srv | sipshard bench register (16 sockets) | $(g "$srv.ours.ok") / $(g "$srv.ours.failed") | $(g "$srv.ours.retrans") | $(g "$srv.ours.rate") | $(g "$srv.ours.cpu") | $(g "$srv.ours.gen") |"
    done
    echo
    echo "achieved = registrations ok / wall time of the drive (sipp: start of the 16 processes to the last exit)."
  fi
}
write_report > "$OUT"
cat "$OUT"
log "written: $OUT, $base.tsv${PLOTS:+, ${PLOTS//$'\n'/, }} (${ELAPSED} s)"
