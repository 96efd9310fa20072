#!/usr/bin/env bash
# Store at scale (issues 13 and 29): how start-up, memory, hits, eviction, purge and verify grow with
# the number of stored objects. For each N: a synthetic store of N objects of 2 KB is written
# straight into the store (benches/store_fill.rs: real keys of N distinct region requests, not
# through HTTP), plus 1,000 of a second identifier, then:
#   - time from start to /health, and RSS after start and after SETTLE seconds (an empty store too);
#   - the same after kill -9 (the recount then runs in the background; its time), and after the
#     index is deleted;
#   - `purge` of the second identifier's 1,000 objects on the admin listener;
#   - hit latency p50/p99 over 1,000 random stored keys (one keep-alive connection);
#   - eviction with the budget 10 % below the store's size: objects/s and peak RSS over idle;
#   - `iiifd store verify` (reads and hashes every object): objects/s.
# Loopback only. Needs python3 and a release build (made here). The stores are written under
# target/store-scale (about 5 KB of disk an object: 5 GB at 1,000,000) and removed after each N.
# Usage: benches/store_scale.sh [N ...]   (default: 10000 100000 1000000); SETTLE=60 by default.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
cargo build --release --quiet --bin iiifd
cargo bench --quiet --bench store_fill --no-run 2>/dev/null
WORK="$ROOT/target/store-scale"
rm -rf "$WORK"; mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
[[ $# -gt 0 ]] || set -- 10000 100000 1000000
python3 "$ROOT/benches/store_scale.py" --root "$ROOT" --work "$WORK" --settle "${SETTLE:-60}" "$@"
