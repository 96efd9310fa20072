#!/usr/bin/env bash
# Short fuzzing pass over every target in fuzz/ (CI runs it after the suite): ${FUZZ_SECONDS:-60} s each.
# A crash fails the run (libFuzzer leaves the input in fuzz/artifacts/; keep it as a regression test).
# Tooling that cannot be set up here (cargo-fuzz install, a sanitizer build) is reported and skipped.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
SECS="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1   # cargo-fuzz needs -Z flags; this is the stable toolchain
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --quiet || { echo "fuzz-smoke: cannot install cargo-fuzz; skipped"; exit 0; }
fi
cargo fuzz build -O >/dev/null 2>&1 || { echo "fuzz-smoke: fuzz targets do not build here; skipped"; exit 0; }
status=0 passed=0 failed=0
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  # corpus/ (ignored by git) grows across runs; seeds/ (committed) gives every run a start.
  out="$(cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$SECS" -rss_limit_mb=2048 2>&1)"
  rc=$?
  echo "$out" | grep -E '^(#[0-9]+.*DONE|Done [0-9]+ runs)' | tail -1 | sed "s/^/fuzz-smoke $target: /"
  if [[ $rc -ne 0 ]]; then
    echo "$out" | grep -E "panicked at|ERROR: |SUMMARY|Reproduce|artifact_prefix|Test unit written" | head -20
    echo "fuzz-smoke $target: FAILED (see fuzz/artifacts/$target)"
    status=1 failed=$((failed + 1))
  else
    passed=$((passed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
exit $status
