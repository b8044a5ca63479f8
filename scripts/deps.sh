#!/usr/bin/env bash
# Installs what sipshard's tests and tools need on a fresh Debian machine
# (the Rust toolchain is assumed). Idempotent: skips what is already there.
set -euo pipefail

need_apt=()
command -v sipp   >/dev/null 2>&1 || need_apt+=(sip-tester)
command -v sipsak >/dev/null 2>&1 || need_apt+=(sipsak)
# stunnel4: Debian's sipp has no TLS; tests/tcp.rs puts stunnel (client mode) in
# front of `sipp -t t1` for SIP over TLS. openssl makes the test certificates.
command -v stunnel4 >/dev/null 2>&1 || need_apt+=(stunnel4)
# curl: tests/xhttp.rs plays minesweeper over HTTP with it
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
# Kamailio 5.6 with app_lua: tests/differential.rs always compares the KEMI
# getters with it; PROXY_UNDER_TEST=kamailio also runs tests/proxy.rs against
# it (with auth_db over SQLite).
{ command -v kamailio >/dev/null 2>&1 && ls /usr/lib/*/kamailio/modules/app_lua.so >/dev/null 2>&1; } \
  || need_apt+=(kamailio kamailio-lua-modules)
if [ "${PROXY_UNDER_TEST:-}" = kamailio ]; then
  ls /usr/lib/*/kamailio/modules/db_sqlite.so >/dev/null 2>&1 \
    || need_apt+=(kamailio-sqlite-modules kamailio-extra-modules)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Independent parsers the tests check our output with: HdrHistogram's Python
# implementation (hlog files) and the Prometheus client's text parser.
if ! python3 -c 'import hdrh, prometheus_client' >/dev/null 2>&1; then
  echo "deps: pip install hdrhistogram prometheus_client"
  python3 -m pip install -q hdrhistogram prometheus_client 2>/dev/null \
    || python3 -m pip install -q --break-system-packages hdrhistogram prometheus_client
fi
