#!/usr/bin/env bash
# Bytes of RSS per registered contact: fills a SQLite `location` table with
# CONTACTS realistic rows (one AOR each, user<i>@127.0.0.1), starts the
# release server with usrloc db_mode 2 (the table is loaded at start) on
# CORES, waits until the shards hold every contact, and reads VmRSS. The same
# with an empty table gives the baseline; the difference over CONTACTS is the
# figure:
#
#   perf/memory.sh                       # CONTACTS=100000
#   CONTACTS=1000000 perf/memory.sh
#
# Row sizes as a sipp registration makes them: contact
# `sip:user<i>@127.0.0.1:5xxxx;transport=udp` (~45 B), Call-ID ~42 B,
# User-Agent 20 B, ruid as sipshard makes them (`uloc-<epoch>-<shard>-<n>`),
# socket `udp:127.0.0.1:5060`, no received / path / instance, expiring in a
# day. USE_DOMAIN=1 (default) keys AORs as user@domain, 0 as user.
#
# Prints, each as (loaded - empty) / CONTACTS:
#   sipshard_bytes_per_contact             VmRSS as the server is after the load
#   sipshard_bytes_per_contact_after_trim  VmRSS once malloc_trim(0) ran
#   heap_in_use_bytes_per_contact          what malloc hands out (malloc_stats)
# The last two need gdb (GDB=0 skips them). The first includes the load
# path's garbage (rows read from the database, freed before the reading)
# that glibc keeps resident; the second drops what malloc_trim can return,
# but not the top of a thread's arena held back by glibc's dynamic trim
# threshold (MALLOC_TRIM_THRESHOLD_=131072 in the environment fixes the
# threshold and shows the difference); the third is the table itself plus
# malloc's per-chunk overhead.
set -euo pipefail
cd "$(dirname "$0")/.."
CONTACTS=${CONTACTS:-100000}
CORES=${CORES:-0,1}
PORT=${PORT:-5680}
RPC_PORT=${RPC_PORT:-5690}
USE_DOMAIN=${USE_DOMAIN:-1}
SETTLE_S=${SETTLE_S:-2}

if [ "${SKIP_BUILD:-0}" != 1 ]; then cargo build --release --locked -q; fi
BIN=target/release/sipshard
WORK=$(mktemp -d /tmp/sipshard-mem.XXXXXX)
PID=
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -INT "$PID"; wait "$PID" || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
[ "$USE_DOMAIN" = 1 ] && use_domain=true || use_domain=false

# make_db FILE N: Kamailio's schema plus N location rows (one transaction).
make_db() {
  "$BIN" db init --db "sqlite://$1" > /dev/null
  python3 - "$1" "$2" <<'PY'
import sqlite3, sys, time
path, n = sys.argv[1], int(sys.argv[2])
now = int(time.time())
ts = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
expires, modified = ts(now + 86400), ts(now - 10)
epoch = f"{now - 3600:x}"
def rows():
    for i in range(n):
        h = (i * 0x9E3779B97F4A7C15) & ((1 << 128) - 1)
        yield (
            f"uloc-{epoch}-{i % 2:x}-{i + 1:x}",          # ruid
            f"user{i}", "127.0.0.1",                        # username, domain
            f"sip:user{i}@127.0.0.1:{50000 + i % 10000};transport=udp",
            expires, -1.0,                                  # expires, q unset
            f"{h:032x}@127.0.0.1",                          # callid
            1 + i % 100, modified,                          # cseq, last_modified
            "sipp/3.6.1 linux-x86",                         # user_agent
            "udp:127.0.0.1:5060", -1,                       # socket, methods (all)
        )
db = sqlite3.connect(path)
with db:
    db.executemany(
        "INSERT INTO location (ruid, username, domain, contact, received, path,"
        " expires, q, callid, cseq, last_modified, flags, cflags, user_agent,"
        " socket, methods, instance, reg_id, server_id, connection_id,"
        " keepalive, partition) VALUES (?, ?, ?, ?, NULL, NULL, ?, ?, ?, ?, ?,"
        " 0, 0, ?, ?, ?, NULL, 0, 0, -1, 0, 0)",
        rows(),
    )
got = db.execute("SELECT COUNT(*) FROM location").fetchone()[0]
assert got == n, (got, n)
PY
}

# rss_with N: starts the server on a table of N rows, waits for the load,
# sets RSS_KB, HWM_KB (VmRSS, VmHWM) and LOADED.
rss_with() {
  local n=$1 db="$WORK/loc-$1.db"
  make_db "$db" "$n"
  cat > "$WORK/sipshard.toml" <<TOML
[core]
listen = "127.0.0.1:$PORT"
cores = [$CORES]
log_level = "info"
[rpc]
listen = "127.0.0.1:$RPC_PORT"
[db]
url = "sqlite://$db"
location_rows_max = $(( n > 1000000 ? n : 1000000 ))
query_timeout_ms = 600000
[registrar]
db_mode = 2
use_domain = $use_domain
max_aors_per_shard = $(( n > 1000000 ? n : 1000000 ))
timer_interval_s = 3600
TOML
  "$BIN" run --config "$WORK/sipshard.toml" > "$WORK/out" 2> "$WORK/err" &
  PID=$!
  local got=-1
  for _ in $(seq 1 600); do
    if ! kill -0 "$PID" 2>/dev/null; then cat "$WORK/err" >&2; echo "server exited" >&2; exit 1; fi
    if grep -q "sipshard started" "$WORK/err"; then
      got=$("$BIN" ctl stats.fetch usrloc.contacts --json --timeout-s 5 \
              --url "http://127.0.0.1:$RPC_PORT" 2>/dev/null |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["usrloc.contacts"])' \
            2>/dev/null || echo -1)
      [ "$got" = "$n" ] && break
    fi
    sleep 0.5
  done
  if [ "$got" != "$n" ]; then
    cat "$WORK/err" >&2; echo "loaded $got contacts, expected $n" >&2; exit 1
  fi
  sleep "$SETTLE_S"
  RSS_KB=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
  HWM_KB=$(awk '/^VmHWM:/ {print $2}' "/proc/$PID/status")
  LOADED=$got
  # glibc's view (through gdb, when installed): bytes malloc hands out
  # (in use, its per-chunk overhead included), then VmRSS once malloc_trim(0)
  # has returned every free page (what the load path freed but glibc kept).
  HEAP_B= TRIM_KB=
  if [ "${GDB:-1}" = 1 ] && command -v gdb > /dev/null; then
    gdb -p "$PID" -batch -ex 'call (void) malloc_stats()' \
      -ex 'call (int) malloc_trim(0)' > /dev/null 2>&1 || true
    HEAP_B=$(awk '/^Total \(incl. mmap\):/ {t = 1} t && /in use bytes/ {print $NF; exit}' "$WORK/err")
    TRIM_KB=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
  fi
  kill -INT "$PID"; wait "$PID" > /dev/null || true; PID=
  rm -f "$db"
}

echo "machine: $(nproc) cores, $(uname -r); server cores [$CORES]; use_domain $use_domain"
rss_with 0
rss0=$RSS_KB hwm0=$HWM_KB trim0=$TRIM_KB heap0=$HEAP_B
rss_with "$CONTACTS"
echo "contacts $LOADED"
echo "rss_kb_empty $rss0 (peak $hwm0)"
echo "rss_kb_loaded $RSS_KB (peak $HWM_KB)"
echo "sipshard_bytes_per_contact $(( (RSS_KB - rss0) * 1024 / CONTACTS ))"
if [ -n "$TRIM_KB" ] && [ -n "$trim0" ]; then
  echo "rss_kb_after_trim_empty $trim0"
  echo "rss_kb_after_trim_loaded $TRIM_KB"
  echo "sipshard_bytes_per_contact_after_trim $(( (TRIM_KB - trim0) * 1024 / CONTACTS ))"
fi
if [ -n "$HEAP_B" ] && [ -n "$heap0" ]; then
  echo "heap_in_use_bytes_empty $heap0"
  echo "heap_in_use_bytes_loaded $HEAP_B"
  echo "heap_in_use_bytes_per_contact $(( (HEAP_B - heap0) / CONTACTS ))"
fi
