# Shared by perf/compare.sh, perf/maxrate.sh and perf/users.sh (sourced, not
# run): dependencies, starting / measuring / stopping the servers (sipshard,
# Kamailio 5.6) and sipp, one copy for every harness.
#
# The sourcing script sets, before calling harness_init: ROOT (repository),
# LOG_TAG (log prefix and work directory name), SKIP_KAMAILIO, WORKERS,
# BUF_BYTES, SIPSHARD_PORT, RPC_PORT, KAM_PORT, and for the functions it
# uses: KAMRUN, KAM_LUA, KAM_CFG_SRC (Kamailio), KAM_SHM_MB (Kamailio -m,
# default 256), REG_RATE, REG_CALLS, REG_LIMIT, REG_USERS_ONE,
# REG_USERS_MULTI (drive_register, after sipp_register_prepare),
# CALL_UAS_PORT, CALL_UAC_PORT (register_callee), KAM_START_TIMEOUT_S
# (kam_start: until kamcmd answers, default 60). harness_init sets BIN,
# MPATH, WORK. Results go to the associative array R.
# shellcheck shell=bash

log() { echo "[${LOG_TAG:-compare} $(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- deps
kam_mpath() {
  local d
  for d in /usr/lib/*/kamailio/modules /usr/lib/kamailio/modules /usr/lib64/kamailio/modules; do
    [ -f "$d/app_lua.so" ] && [ -f "$d/db_sqlite.so" ] && { echo "$d/"; return 0; }
  done
  return 1
}
install_deps() {
  local need=()
  command -v sipp >/dev/null || need+=(sip-tester)
  command -v jq >/dev/null || need+=(jq)
  command -v sqlite3 >/dev/null || need+=(sqlite3)
  command -v cc >/dev/null || need+=(gcc libc6-dev)
  if [ "$SKIP_KAMAILIO" != 1 ]; then
    command -v kamailio >/dev/null && command -v kamcmd >/dev/null || need+=(kamailio)
    kam_mpath >/dev/null || need+=(kamailio-lua-modules kamailio-sqlite-modules)
  fi
  if [ ${#need[@]} -gt 0 ]; then
    log "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}
# ---------------------------------------------------------------- processes
# Every descendant of $1 (and $1), from /proc (no procps needed).
tree_pids() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '
    { pid = $1; line = $0; sub(/^.*\) /, "", line); split(line, a, " "); parent[pid] = a[2] }
    END { want[root] = 1; out = root; changed = 1
          while (changed) { changed = 0
            for (p in parent) if (!(p in want) && (parent[p] in want)) { want[p] = 1; out = out " " p; changed = 1 } }
          print out }'
}
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
# SERVER_CPUS (e.g. "0"): every process and thread of the server under test
# runs on these CPUs only (taskset execs the server, so SERVER_PID stays
# the server's; threads and forked workers inherit the mask), so that with
# GEN_CPUS ("1") the generator has a core of its own. Unset: no pinning
# (sipshard still pins its shards to [core] cores).

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local pids p deadline
  pids=$(tree_pids "$SERVER_PID")
  if alive "$SERVER_PID"; then kill -TERM "$SERVER_PID" 2>/dev/null || true; fi
  deadline=$((SECONDS + 20))
  while alive "$SERVER_PID" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  if alive "$SERVER_PID"; then log "$SERVER_NAME did not stop on SIGTERM: SIGKILL"; kill -KILL "$SERVER_PID" 2>/dev/null || true; fi
  wait "$SERVER_PID" 2>/dev/null || true
  # children of the root we started (Kamailio's workers, the floor's fork)
  deadline=$((SECONDS + 5))
  for p in $pids; do
    while alive "$p" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if alive "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
  done
  SERVER_PID=; SERVER_NAME=
}
stop_sipps() {
  local p q
  for p in "${SIPP_PIDS[@]}"; do
    for q in $(tree_pids "$p"); do alive "$q" && kill -TERM "$q" 2>/dev/null || true; done
  done
  for p in "${SIPP_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  SIPP_PIDS=()
}
cleanup() {
  local rc=$?
  set +e
  stop_sipps
  stop_server
  if [ "${KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}

port_free() {
  command -v ss >/dev/null || return 0
  [ -z "$(ss -Hlun "sport = :$1" 2>/dev/null)" ]
}
# sipshard binds with SO_REUSEPORT: another server started later on the same
# port would silently take part of the traffic. After each drive, check that
# only the server's own processes hold the port.
WARNINGS=()
check_port_owner() {  # $1 = port, $2 = label
  command -v ss >/dev/null || return 0
  local owners mine p foreign=
  owners=$(ss -Hlunp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u || true)
  mine=" $(tree_pids "$SERVER_PID") "
  for p in $owners; do [[ "$mine" == *" $p "* ]] || foreign="$foreign $p"; done
  if [ -n "$foreign" ]; then
    WARNINGS+=("$2: other processes ($foreign) also bound UDP 127.0.0.1:$1 during the drive; figures are not valid")
    log "WARNING: ${WARNINGS[-1]}"
  fi
}

# ---------------------------------------------------------------- measuring
# One line per thread of the given processes: "tid run_ns name utime_ticks stime_ticks" (the
# last two from /proc/.../stat, after the ")" that ends the comm field).
cpu_snap() {
  local p t ns name st
  for p in "$@"; do
    for t in /proc/"$p"/task/*; do
      { read -r ns _ 2>/dev/null < "$t/schedstat" && read -r name 2>/dev/null < "$t/comm" && read -r st 2>/dev/null < "$t/stat" &&
        set -- ${st##*) } && echo "${t##*/} $ns ${name// /_} ${12} ${13}"; } || true
    done
  done
}
# ns of run time between two snapshots: threads that appeared count from 0.
cpu_delta() { awk 'NR == FNR { b[$1] = $2; next } { d += $2 - (($1 in b) ? b[$1] : 0) } END { printf "%.0f\n", d }' "$1" "$2"; }
server_snap() { cpu_snap $(tree_pids "$SERVER_PID") > "$1"; awk '$1 == "cpu" { print "machine", $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat > "$1.machine"; }
# Machine-wide busy % of all CPUs between two server_snap files (server, load
# generator and anything else running).
machine_busy() { awk 'NR == FNR { b = $2; t = $3; next } { printf "%.0f", ($3 > t) ? ($2 - b) * 100 / ($3 - t) : 0 }' "$1.machine" "$2.machine"; }
# Share of the server's CPU time spent in the kernel between two snapshots
# (system / (user + system) ticks, %): the UDP/TCP stack's part of the cost.
cpu_sys_pct() { awk 'NR == FNR { u[$1] = $4; s[$1] = $5; next } NF >= 5 { du += $4 - u[$1]; ds += $5 - s[$1] }
  END { if (du + ds > 0) printf "%.0f\n", ds * 100 / (du + ds); else print "-" }' "$1" "$2"; }
# The same delta per thread name, largest first: "shard-0-1 812 ms, ...".
cpu_by_name() {
  awk 'NR == FNR { b[$1] = $2; next } { d[$3] += $2 - (($1 in b) ? b[$1] : 0) }
    END { for (n in d) printf "%.0f %s\n", d[n] / 1e6, n }' "$1" "$2" | sort -rn |
    awk '$1 > 0 { out = out (out ? ", " : "") $2 " " $1 " ms" } END { print (out ? out : "-") }'
}

# Summed PSS and RSS (kB) over the server's processes.
mem_kb() {
  local p pss=0 rss=0 a b
  for p in $(tree_pids "$SERVER_PID"); do
    a=$(awk '/^Pss:/ { print $2 }' /proc/"$p"/smaps_rollup 2>/dev/null || echo 0)
    b=$(awk '/^VmRSS:/ { print $2 }' /proc/"$p"/status 2>/dev/null || echo 0)
    pss=$((pss + ${a:-0})); rss=$((rss + ${b:-0}))
  done
  echo "$pss $rss"
}

# Result store: R[key] = value.
declare -A R

# Waits until the server at port $1 answers OPTIONS (deadline $2 s).
wait_sip() {
  local port=$1 deadline=$((SECONDS + $2)) ans
  while [ $SECONDS -lt "$deadline" ]; do
    alive "$SERVER_PID" || { tail -n 30 "$WORK/$SERVER_NAME.err" >&2 || true; die "$SERVER_NAME exited during start"; }
    ans=$("$BIN" bench --target "127.0.0.1:$port" --rate 100 --duration 0.05 --sockets 1 --drain-ms 200 --json 2>/dev/null | jq -r .answered 2>/dev/null || echo 0)
    [ "${ans:-0}" -gt 0 ] && return 0
    sleep 0.2
  done
  tail -n 30 "$WORK/$SERVER_NAME.err" >&2 || true
  die "$SERVER_NAME did not answer OPTIONS on 127.0.0.1:$port within $2 s"
}

# ---------------------------------------------------------------- setup
# Installs what is missing, finds Kamailio's modules (MPATH), builds the
# release binary unless SIPSHARD_BIN is set (BIN), makes the work directory
# (WORK) and sets the traps that stop every process started here.
harness_init() {
  install_deps
  MPATH=
  if [ "$SKIP_KAMAILIO" != 1 ]; then MPATH=$(kam_mpath) || die "kamailio modules (app_lua, db_sqlite) not found"; fi
  if [ -n "${SIPSHARD_BIN:-}" ]; then
    BIN=$(realpath "$SIPSHARD_BIN")
  else
    log "building sipshard (release)"
    cargo build --release --locked -q
    BIN=$ROOT/target/release/sipshard
  fi
  WORK=$(mktemp -d "/tmp/sipshard-${LOG_TAG:-compare}.XXXXXX")
  SERVER_PID=          # root process of the running server (our child)
  SERVER_NAME=
  SIPP_PIDS=()
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}

sipshard_ctl() { "$BIN" ctl --url "http://127.0.0.1:$RPC_PORT" --json "$@"; }
sipshard_route() {  # $1 = key prefix: route avg/p99 and per-shard counts
  local j
  j=$(sipshard_ctl kemi.route_latency | jq -c '.result.routes[] | select(.route == "request_route")')
  R[$1.route]=$(jq -r '"\(.merged.avg_us) \(.merged.p99_us)"' <<<"$j" | awk '{ printf "%.1f / %.1f", $1, $2 }')
  R[$1.route_avg]=$(jq -r '.merged.avg_us' <<<"$j" | awk '{ printf "%.2f", $1 }')
  R[$1.route_n]=$(jq -r .merged.cnt <<<"$j")
  R[$1.shards]=$(jq -r '[.shards[].cnt] as $c | ($c | add) as $t
    | if $t > 0 then "\($c | map(. * 100 / $t | round | tostring) | join("/")) %" else "-" end' <<<"$j")
  R[$1.shard_cnt]=$(jq -r '[.shards[].cnt | tostring] | join("/")' <<<"$j")
}

# Kamailio route times logged since byte $3 of $2 -> R[$1.route], R[$1.route_n].
kam_route() {
  local v
  v=$(tail -c +"$(($3 + 1))" "$2" | { grep -o 'request-route executed in: [0-9]*' || true; } | awk '{ print $4 }' | sort -n |
    awk '{ v[NR] = $1; s += $1 } END { if (NR == 0) { print "- 0"; exit }
      i = int(NR * 0.99); if (i < NR * 0.99) i++; if (i < 1) i = 1
      printf "%.1f_/_%.1f %d\n", s / NR, v[i], NR }')
  R[$1.route]=${v% *}; R[$1.route]=${R[$1.route]//_/ }
  R[$1.route_n]=${v##* }
}


# The sipp REGISTER drives' timeout and the one-source scenario (needs WORK,
# REG_CALLS, REG_RATE).
sipp_register_prepare() {
  SIPP_TIMEOUT_S=$((REG_CALLS / REG_RATE + 60))   # a stuck sipp ends (as failed) after this
  SCEN_CSV=$WORK/register-auth-csv.xml
  # bench/sipp/register-auth.xml with the [authentication] line taken from CSV
  # field 2 (sipp parses an injected "[authentication ...]" keyword).
  sed -e 's/^\([[:space:]]*\)\[authentication\][[:space:]]*$/\1[field2]/' "$ROOT/bench/sipp/register-auth.xml" > "$SCEN_CSV"
  [ "$(grep -c '^[[:space:]]*\[field2\][[:space:]]*$' "$SCEN_CSV")" = 1 ] || die "could not derive the CSV-auth scenario from bench/sipp/register-auth.xml"
}

# sipp helpers ----------------------------------------------------------
sum_col() {  # $1 = column name, rest = stats files (last line of each)
  local name=$1 total=0 f v; shift
  for f in "$@"; do
    [ -f "$f" ] || continue
    v=$(awk -F';' -v name="$name" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i } END { if (c) print $c }' "$f")
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
sipp_cmd() {  # dir port rate calls limit [extra args...]; runs in background, appends to SIPP_PIDS
  local d=$1 port=$2 rate=$3 calls=$4 limit=$5; shift 5
  mkdir -p "$d"
  ( cd "$d" && exec timeout $((SIPP_TIMEOUT_S + 30)) sipp "127.0.0.1:$port" "$@" -r "$rate" -l "$limit" -m "$calls" -t u1 \
      -i 127.0.0.1 -p 0 -nostdin -nd -trace_stat -stf stats.csv -fd 1 -timeout "$SIPP_TIMEOUT_S"s -timeout_error \
      -trace_err -error_file errors.log > sipp.out 2>&1 ) &
  SIPP_PIDS+=($!)
}
# REGISTER drive; $1 key, $2 port, $3 mode (one|multi), $4 = 1: CPU measured.
drive_register() {
  local key=$1 port=$2 mode=$3 d=$WORK/$1 a=$WORK/cpu.a b=$WORK/cpu.b ns i t0 t1 rc bad=0 p
  rm -rf "$d"; mkdir -p "$d"
  server_snap "$a"
  t0=$(date +%s.%N)
  if [ "$mode" = one ]; then
    { echo SEQUENTIAL
      for i in $(seq 0 $((REG_USERS_ONE - 1))); do echo "test$i;127.0.0.1;[authentication username=test$i password=pw-test$i]"; done
    } > "$d/users.csv"
    sipp_cmd "$d/sipp-0" "$port" "$REG_RATE" "$REG_CALLS" "$REG_LIMIT" -sf "$SCEN_CSV" -inf "$d/users.csv" -s test
  else
    local per_rate per_calls per_limit
    per_rate=$(awk -v r="$REG_RATE" -v u="$REG_USERS_MULTI" 'BEGIN { printf "%.3f", r / u }')
    per_calls=$((REG_CALLS / REG_USERS_MULTI)); per_limit=$(((REG_LIMIT + REG_USERS_MULTI - 1) / REG_USERS_MULTI))
    for i in $(seq 0 $((REG_USERS_MULTI - 1))); do
      mkdir -p "$d/sipp-$i"
      printf 'SEQUENTIAL\ntest%s;127.0.0.1;pw-test%s\n' "$i" "$i" > "$d/sipp-$i/user.csv"
      sipp_cmd "$d/sipp-$i" "$port" "$per_rate" "$per_calls" "$per_limit" -sf "$ROOT/bench/sipp/register-auth.xml" \
        -inf "$d/sipp-$i/user.csv" -au "test$i" -ap "pw-test$i" -s "test$i"
    done
  fi
  for p in "${SIPP_PIDS[@]}"; do
    if wait "$p"; then :; else rc=$?; bad=$((bad + 1)); log "$key: a sipp exited with $rc"; fi
  done
  SIPP_PIDS=()
  t1=$(date +%s.%N)
  server_snap "$b"
  check_port_owner "$port" "$key"
  ns=$(cpu_delta "$a" "$b")
  R[$key.threads]=$(cpu_by_name "$a" "$b")
  R[$key.busy]=$(machine_busy "$a" "$b")
  R[$key.ok]=$(sum_col 'SuccessfulCall(C)' "$d"/sipp-*/stats.csv)
  R[$key.failed]=$(sum_col 'FailedCall(C)' "$d"/sipp-*/stats.csv)
  R[$key.retrans]=$(sum_col 'Retransmissions(C)' "$d"/sipp-*/stats.csv)
  R[$key.badrc]=$bad
  R[$key.wall]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  R[$key.answered]=$((2 * ${R[$key.ok]}))
  R[$key.loss]=$(awk -v ok="${R[$key.ok]}" -v f="${R[$key.failed]}" 'BEGIN { t = ok + f; printf "%.3f", (t > 0) ? (f * 100 / t) : 100 }')
  R[$key.cpu_s]=$(awk -v ns="$ns" 'BEGIN { printf "%.3f", ns / 1e9 }')
  R[$key.cpu]=$(awk -v ns="$ns" -v n="${R[$key.answered]}" 'BEGIN { if (n > 0) printf "%.2f", ns / 1e3 / n; else print "-" }')
  log "$key: ${R[$key.ok]} ok, ${R[$key.failed]} failed, ${R[$key.retrans]} retrans, sipp rc!=0: $bad, ${R[$key.wall]} s; server CPU ${R[$key.cpu_s]} s = ${R[$key.cpu]} us/req"
  if [ "${R[$key.failed]}" != 0 ] || [ "$bad" != 0 ]; then
    cat "$d"/sipp-*/errors.log 2>/dev/null | head -c 1500 >&2 || true
  fi
}

# ---------------------------------------------------------------- sipshard
# sipshard_toml FILE DB_URL [CORE_EXTRA] [DB_EXTRA] [REGISTRAR_EXTRA] [TAIL]:
# the config every harness run uses (2 shards on cores 0 and 1, the socket
# buffers, RPC, usrloc db_mode 2 on DB_URL) plus lines for [core], [db],
# [registrar] and whole sections after them.
sipshard_toml() {
  local file=$1 url=$2 core=${3:-} db=${4:-} reg=${5:-} tail=${6:-}
  {
    cat <<TOML
[core]
listen = "127.0.0.1:$SIPSHARD_PORT"
cores = ${SIPSHARD_CORES:-[0, 1]}
log_level = "info"
TOML
    [ -z "$core" ] || echo "$core"
    cat <<TOML
[shard]
recv_buffer_bytes = $BUF_BYTES
send_buffer_bytes = $BUF_BYTES
[rpc]
listen = "127.0.0.1:$RPC_PORT"
[db]
url = "$url"
TOML
    [ -z "$db" ] || echo "$db"
    echo "[registrar]"
    echo "db_mode = 2"
    [ -z "$reg" ] || echo "$reg"
    [ -z "$tail" ] || echo "$tail"
  } > "$file"
}
# sipshard_start CONFIG LABEL [START_TIMEOUT_S] [BIN] [OUT_FILE]: starts the
# server (SERVER_PID; stderr to $WORK/sipshard.err), waits until it answers
# OPTIONS and its RPC.
sipshard_start() {
  local cfg=$1 label=$2 to=${3:-30} bin=${4:-$BIN} out=${5:-$WORK/sipshard.out}
  log "sipshard: start ($label)"
  SERVER_NAME=sipshard
  ${SERVER_CPUS:+taskset -c "$SERVER_CPUS"} "$bin" run --config "$cfg" > "$out" 2> "$WORK/sipshard.err" &
  SERVER_PID=$!
  wait_sip "$SIPSHARD_PORT" "$to"
  local deadline=$((SECONDS + 30))
  until sipshard_ctl core.uptime >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "sipshard RPC on 127.0.0.1:$RPC_PORT not answering"
    sleep 0.2
  done
}

# location_rows DB_FILE N SOCKET: N rows in the SQLite location table, one
# AOR user<i>@127.0.0.1 each, shaped like perf/memory.sh's (as a sipp
# registration makes them), socket SOCKET (Kamailio's own listen address,
# so it resolves on load).
location_rows() {
  local db=$1 n=$2 socket=$3
  [ "$n" -gt 0 ] || return 0
  sqlite3 "$db" "WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x < $n - 1)
    INSERT INTO location (ruid, username, domain, contact, received, path, expires, q, callid, cseq,
      last_modified, flags, cflags, user_agent, socket, methods, instance, reg_id, server_id,
      connection_id, keepalive, partition)
    SELECT printf('uloc-%x-%x-%x', CAST(strftime('%s', 'now') AS INTEGER) - 3600, x % 2, x + 1),
      'user' || x, '127.0.0.1', 'sip:user' || x || '@127.0.0.1:' || (50000 + x % 10000) || ';transport=udp',
      NULL, NULL, julianday('now', '+1 day'), -1.0, lower(hex(randomblob(16))) || '@127.0.0.1',
      1 + x % 100, julianday('now', '-10 seconds'), 0, 0, 'sipp/3.6.1 linux-x86',
      '$socket', -1, NULL, 0, 0, -1, 0, 0 FROM c;"
}

# ---------------------------------------------------------------- Kamailio
KAM_CFG_SRC=${KAM_CFG_SRC:-$ROOT/perf/kamailio/kamailio.cfg}
kam_cfg() {  # $1 = db url -> cfg path
  mkdir -p "$KAMRUN"
  sed -e "s|@CHILDREN@|$WORKERS|g; s|@BUF_BYTES@|$BUF_BYTES|g; s|@PORT@|$KAM_PORT|g; s|@MPATH@|$MPATH|g" \
      -e "s|@RUNDIR@|$KAMRUN|g; s|@DB_URL@|$1|g; s|@LUA@|$KAM_LUA|g" \
      -e "s|@TLS_PORT@|${KAM_TLS_PORT:-25161}|g; s|@TLS_CFG@|${KAM_TLS_CFG:-$WORK/kamailio-tls.cfg}|g" \
      "$KAM_CFG_SRC" > "$WORK/kamailio.cfg"
  grep -q '@[A-Z_]*@' "$WORK/kamailio.cfg" && die "unfilled placeholder in kamailio.cfg"
  echo "$WORK/kamailio.cfg"
}
kamcmd_() { kamcmd -s "unix:$KAMRUN/kamailio_ctl" "$@"; }
kam_start() {  # $1 = db url, $2 = label, $3 = pkg MiB per process, rest = extra kamailio args
  local cfg url=$1 label=$2 pkg=$3; shift 3
  cfg=$(kam_cfg "$url")
  kamailio -f "$cfg" -c >"$WORK/kamailio-check.log" 2>&1 || { cat "$WORK/kamailio-check.log" >&2; die "kamailio.cfg check failed"; }
  log "kamailio: start ($label)"
  SERVER_NAME=kamailio
  ${SERVER_CPUS:+taskset -c "$SERVER_CPUS"} kamailio -f "$cfg" -DD -E -x fm -m "${KAM_SHM_MB:-256}" -M "$pkg" -P "$KAMRUN/kamailio.pid" -Y "$KAMRUN" "$@" \
    > "$WORK/kamailio.out" 2>> "$WORK/kamailio.err" &
  SERVER_PID=$!
  local deadline=$((SECONDS + ${KAM_START_TIMEOUT_S:-60}))
  until kamcmd_ core.uptime >/dev/null 2>&1; do
    alive "$SERVER_PID" || { tail -n 30 "$WORK/kamailio.err" >&2; die "kamailio exited during start"; }
    [ $SECONDS -lt $deadline ] || die "kamcmd does not answer"
    sleep 0.2
  done
}

# ---------------------------------------------------------------- sipp (calls)
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
# sipp in directory $1, in the background (appended to SIPP_PIDS), killed
# after $2 s; writes its exit status to $1/rc and its CPU time (user +
# system, clock ticks) to $1/cpu_ticks.
sipp_timed() {
  local d=$1 to=$2; shift 2
  mkdir -p "$d"
  ( cd "$d" && exec sh -c 'to=$1; shift
      timeout "$to" sipp "$@" > sipp.out 2>&1; rc=$?; echo "$rc" > rc
      set -- $(cat /proc/$$/stat); echo $((${14} + ${15} + ${16} + ${17})) > cpu_ticks
      exit "$rc"' sipp-timed "$to" "$@" ) &
  SIPP_PIDS+=($!)
}
wait_udp_bound() {  # $1 = port; up to 10 s
  if ! command -v ss >/dev/null; then sleep 1; return 0; fi
  local deadline=$((SECONDS + 10))
  while [ -z "$(ss -Hlun "sport = :$1" 2>/dev/null)" ]; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.05
  done
}
# Binds AOR callee to the sipp callee's address (no auth); 0 when answered 200.
register_callee() {  # $1 = port
  local d=$WORK/register-callee-$1
  rm -rf "$d"; mkdir -p "$d"
  ( cd "$d" && timeout 20 sipp "127.0.0.1:$1" -sf "$ROOT/tests/sipp/register-contact.xml" -s callee \
      -key contact "sip:callee@127.0.0.1:$CALL_UAS_PORT" -i 127.0.0.1 -p "$CALL_UAC_PORT" -m 1 \
      -nostdin -timeout 10s -timeout_error -trace_err -error_file errors.log > sipp.out 2>&1 )
}
