#!/usr/bin/env bash
# Short fuzzing pass over every target in fuzz/ (CI runs it after the suite): ${FUZZ_SECONDS:-60} s each.
# A crash fails the run (libFuzzer leaves the input in fuzz/artifacts/; keep it as a regression test).
# A pass that cannot fuzz (cargo-fuzz cannot be installed, the targets do not build, a target did not
# run) fails: a green line must mean the targets were fuzzed.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
SECS="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1   # cargo-fuzz needs -Z flags; this is the stable toolchain
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --quiet || { echo "fuzz-smoke: FAILED: cannot install cargo-fuzz" >&2; exit 1; }
fi
if ! build_log="$(cargo fuzz build -O 2>&1)"; then
  echo "$build_log" | tail -30 >&2
  echo "fuzz-smoke: FAILED: the fuzz targets do not build" >&2
  exit 1
fi
targets="$(cargo fuzz list)"
[[ -n "$targets" ]] || { echo "fuzz-smoke: FAILED: no fuzz targets" >&2; exit 1; }
status=0 passed=0 failed=0
for target in $targets; do
  mkdir -p "corpus/$target"
  # corpus/ (ignored by git) grows across runs; seeds/ (committed) gives every run a start.
  out="$(cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$SECS" -rss_limit_mb=2048 2>&1)"
  rc=$?
  done_line="$(echo "$out" | grep -E '^(#[0-9]+.*DONE|Done [0-9]+ runs)' | tail -1)"
  echo "fuzz-smoke $target: ${done_line:-no run reported}"
  if [[ $rc -eq 0 && -z "$done_line" ]]; then
    echo "$out" | tail -20
    echo "fuzz-smoke $target: FAILED (libFuzzer did not report a finished run)"
    status=1 failed=$((failed + 1))
  elif [[ $rc -ne 0 ]]; then
    echo "$out" | grep -E "panicked at|ERROR: |SUMMARY|Reproduce|artifact_prefix|Test unit written" | head -20
    echo "fuzz-smoke $target: FAILED (see fuzz/artifacts/$target)"
    status=1 failed=$((failed + 1))
  else
    passed=$((passed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
exit $status
