#!/usr/bin/env bash
# Run the official IIIF Image API validator (iiif-validate.sh, PyPI iiif-validator 1.0.5) against the
# real iiifd binary, for 3.0, 2.1 and 1.1: every level-2 test, then the level-3 optional features iiifd
# claims (mirroring, arbitrary rotation, upscaling, canonical Link header, gif/tif/webp/jp2). pdf is
# skipped because iiifd answers it 501 on purpose. Exits non-zero on any failure.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
ID=67352ccc-d1b0-11e1-89ae-279075081939
BIN="${IIIFD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/iiifd}"
[[ -x "$BIN" ]] || (cd "$ROOT" && cargo build --quiet)

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() { [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

VALIDATOR_IMAGE_DIR="$WORK/images" "$HERE/iiif-validate.sh" --prepare >/dev/null
IIIFD_LOG__LEVEL=warn IIIFD_ADMIN__LISTEN=127.0.0.1:0 "$BIN" serve --listen 127.0.0.1:0 --images "$WORK/images" --store "$WORK/store" >"$WORK/out" &
SERVER_PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
ADDR="$(grep -m1 -o '127.0.0.1:[0-9]*' "$WORK/out")"
echo "conformance: iiifd at $ADDR"

total_pass=0; total_fail=0
run() { # version level [skip]
  local v="$1" level="$2" skip="${3:-}" major="${1%%.*}" out
  out="$(VALIDATOR_SKIP="$skip" "$HERE/iiif-validate.sh" "http://$ADDR/iiif/$major" "$ID" "$v" "$level" 2>&1)" || true
  echo "$out" | grep -E '^(FAIL|# )|check:|got:' || true
  local line; line="$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -1)"
  echo "conformance $v level $level: ${line:-no result}"
  [[ -n "$line" ]] || { total_fail=$((total_fail + 1)); return; }
  total_pass=$((total_pass + $(echo "$line" | cut -d' ' -f1)))
  total_fail=$((total_fail + $(echo "$line" | cut -d' ' -f3)))
}
for v in 3.0 2.1 1.1; do
  run "$v" 2
  # Level 3 = level 2 again plus the optional features; pdf is deliberately unsupported (501).
  run "$v" 3 format_pdf
done
kill -0 "$SERVER_PID" || { echo "iiifd died during conformance"; exit 1; }
echo "conformance: $total_pass passed, $total_fail failed"
[[ "$total_fail" == 0 && "$total_pass" -gt 0 ]]
