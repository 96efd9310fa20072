#!/usr/bin/env bash
# The whole test suite, as the README documents it: formatting and lints, unit + property + integration
# tests (the integration tests start the real binary on loopback), then the official IIIF validator.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
tests/conformance/run.sh
