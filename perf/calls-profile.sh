#!/bin/bash
# One sipshard (release build, 2 shards, perf/calls.lua), one sipp callee
# (tests/sipp/uas-call.xml, registered first) and one sipp caller
# (tests/sipp/uac-call.xml, 1 s calls) on 127.0.0.1; prints server CPU per
# call (schedstat of every thread over the caller's run), the call counts
# and the route histograms. For A/B runs while changing the call path;
# perf/compare.sh (ONLY=calls) is the reported comparison with Kamailio.
#
#   perf/calls-profile.sh RATE SECS [none|perf|strace|stack]
#     perf:   perf record -g of the server into $WORK/perf.data
#     strace: strace -c -f of the server into $WORK/strace.txt
#     stack:  strace -k of mprotect/futex calls into $WORK/stack.txt
#   env: WORK (/tmp/sipshard-calls-profile), UACX (extra caller flags,
#        e.g. -trace_msg), CORES ("[0, 1]")
# Ports 27060 (SIP), 27070 (RPC), 27080/27090/27091 (sipp).
RATE=${1:-2000}; SECS=${2:-8}; MODE=${3:-none}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/sipshard-calls-profile}
CORES=${CORES:-"[0, 1]"}
mkdir -p "$WORK"
T=$ROOT/tests/sipp
BIN=$ROOT/target/release/sipshard
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -q)
cat > "$WORK/sipshard.toml" <<EOT
[core]
listen = "127.0.0.1:27060"
cores = $CORES
log_level = "info"
script = "$ROOT/perf/calls.lua"
[rpc]
listen = "127.0.0.1:27070"
[db]
url = "sqlite://$WORK/calls.db"
EOT
N=$((RATE*SECS))
rm -f $WORK/calls.db
$BIN run -c $WORK/sipshard.toml > $WORK/server.log 2>&1 &
SPID=$!
sleep 1
(cd $WORK && timeout 20 sipp 127.0.0.1:27060 -sf $T/register-contact.xml -s callee -key contact sip:callee@127.0.0.1:27090 -i 127.0.0.1 -p 27091 -m 1 -nostdin > reg.out 2>&1) || echo "register failed"
(cd $WORK && sipp -sf $T/uas-call.xml -i 127.0.0.1 -p 27090 -t u1 -set proxy 127.0.0.1:27060 -m $N -nostdin -buff_size 4194304 > uas.out 2>&1 &)
sleep 0.5
cpu0=$(cat /proc/$SPID/task/*/schedstat | awk '{s+=$1} END {print s}')
case $MODE in
  perf) perf record -F 2000 -g -p $SPID -o $WORK/perf.data -- sleep $((SECS-1)) > /dev/null 2>&1 & ;;
  strace) timeout $((SECS-1)) strace -c -f -p $SPID -o $WORK/strace.txt & ;;
  stack) timeout 2 strace -f -e trace=mprotect,futex -k -p $SPID -o $WORK/stack.txt & ;;
esac
(cd $WORK && sipp 127.0.0.1:27060 -sf $T/uac-call.xml -s callee -i 127.0.0.1 -p 27080 -t u1 -r $RATE -l $((RATE*4)) -m $N -d 1000 -nostdin -buff_size 4194304 -timeout 60s $UACX > uac.out 2>&1)
echo "uac rc $?"
cpu1=$(cat /proc/$SPID/task/*/schedstat | awk '{s+=$1} END {print s}')
echo "server cpu us/call: $(( (cpu1-cpu0)/N/1000 ))"
grep -E "Successful call|Failed call" $WORK/uac.out | tail -2
$BIN ctl --url http://127.0.0.1:27070 kemi.route_latency 2>/dev/null | head -8
sleep 1
pkill -f "sipp -sf $T/uas-call.xml" ; kill $SPID; wait $SPID 2>/dev/null
