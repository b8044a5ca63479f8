#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for SECONDS_PER_TARGET seconds
# (default 60), one after the other, starting from the committed seeds
# (fuzz/seeds/<dir>) plus the local corpus (fuzz/corpus/<target>, git-ignored).
# Fails (non-zero exit) on the first crash; the input is in
# fuzz/artifacts/<target>/. Needs cargo-fuzz (cargo install cargo-fuzz) and
# a nightly toolchain, or RUSTC_BOOTSTRAP=1 with stable (set here).
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 600        # 10 min per target
#   TARGETS="writer ksr" scripts/fuzz.sh 30
set -euo pipefail
SECS=${1:-60}
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
# LuaJIT build flag of the main crate (../.cargo/config.toml applies here too,
# repeated in case the script is run with another CARGO_HOME layout).
export STATIC_CC="${STATIC_CC:-cc -DLUAJIT_NO_UNWIND}"
ALL="parse_request parse_response writer auth uri txn ksr http ws"
TARGETS=${TARGETS:-$ALL}

seeds_of() {
  case "$1" in
    parse_request) echo seeds/requests ;;
    parse_response) echo seeds/responses ;;
    *) [ -d "seeds/$1" ] && echo "seeds/$1" || true ;;
  esac
}

# ksr runs without AddressSanitizer: LuaJIT throws Lua errors by resetting
# the stack pointer itself (no longjmp ASan could intercept), which leaves
# stale stack poisoning behind and makes ASan report Rust stack stores that
# are fine. The Rust code is safe code; panics are still caught.
flags_of() {
  case "$1" in
    ksr) echo "--sanitizer none --target-dir target-nosan" ;;
    *) echo "" ;;
  esac
}

for t in $TARGETS; do
  # shellcheck disable=SC2046
  cargo fuzz build -O $(flags_of "$t") "$t"
done
for t in $TARGETS; do
  mkdir -p "corpus/$t"
  dict=()
  case "$t" in parse_request|parse_response|writer|uri|ksr) dict=(-dict=sip.dict) ;; esac
  # LuaJIT's NaN-tagged GC pointers look like leaks to LeakSanitizer
  [ "$t" = ksr ] && dict+=(-detect_leaks=0)
  echo "== $t: ${SECS}s"
  # shellcheck disable=SC2046
  cargo fuzz run -O $(flags_of "$t") "$t" "corpus/$t" $(seeds_of "$t") -- \
    "${dict[@]}" -max_total_time="$SECS" -max_len=8192 -rss_limit_mb=2048 -print_final_stats=1
done
echo "fuzz: no crash in $TARGETS (${SECS}s each)"
