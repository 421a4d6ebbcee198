#!/usr/bin/env bash
# Short, bounded fuzz run that CI can afford: every target runs for
# FUZZ_SECS seconds (default 30; 60 s in all) from the committed seeds
# (fuzz/seeds/<target>); new inputs go to fuzz/corpus/<target> (ignored by
# git). A crash fails the run and leaves its input in fuzz/artifacts/.
#
# Long local run (e.g. >= 10 million executions):
#   cd fuzz && cargo +nightly fuzz run decode corpus/decode seeds/decode -- -runs=10000000
set -euo pipefail
cd "$(dirname "$0")"

SECS=${FUZZ_SECS:-30}
TARGETS=(decode connection)

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

cargo +nightly fuzz build -O
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${SECS}s"
  log="corpus/$t.log"
  if ! cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$SECS" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|Done)' "$log"
done
