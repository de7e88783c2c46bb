#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for a bounded time each.
#
#   scripts/fuzz.sh            # 60 s per target (what CI runs)
#   scripts/fuzz.sh 600        # 10 minutes per target
#   scripts/fuzz.sh 600 mask   # one target
#
# Needs cargo-fuzz (installed into target/tools if missing) and a C++
# compiler for libFuzzer. cargo-fuzz wants nightly compiler flags; on the
# stable toolchain RUSTC_BOOTSTRAP=1 allows them. The committed seeds in
# fuzz/seeds/TARGET start each run; new inputs go to target/fuzz-corpus/
# (not committed). A crash leaves its input in fuzz/artifacts/TARGET/ and
# fails the script: add that input as a regression test, then fix the bug.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(frame_decode handshake mask connection)

export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null; then
  export PATH="$PWD/target/tools/bin:$PATH"
  command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz --version 0.13.2 --root target/tools
fi

cd fuzz
cargo fuzz build --release >/dev/null
for target in "${TARGETS[@]}"; do
  corpus="../target/fuzz-corpus/$target"
  mkdir -p "$corpus"
  echo "fuzz: $target for ${SECONDS_EACH}s"
  log="../target/fuzz-$target.log"
  if ! cargo fuzz run --release "$target" "$corpus" "seeds/$target" -- \
      -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/"
    exit 1
  fi
  # The last status line has the coverage (cov:) and corpus figures.
  { grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true; } | sed "s/^/fuzz: $target: /"
  { grep -E 'DONE|pulse' "$log" || true; } | tail -n 1 | sed "s/^/fuzz: $target: /"
done
