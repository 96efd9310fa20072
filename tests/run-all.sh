#!/usr/bin/env bash
# The whole test suite, as the README documents it: install what the tests need (tests/setup.sh; as
# root on Debian it installs, otherwise it names what is missing), check that the build needs nothing
# but a Rust toolchain and a C compiler, then formatting and lints, unit + property + integration tests
# (the integration tests start the real binary on loopback), then the official IIIF validator.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
# The README's run command must build on a machine without cmake (nasm is optional: libjpeg's SIMD).
deps=$(cargo tree -e normal,build --prefix none)
if grep -q '^cmake ' <<<"$deps"; then
  echo "run-all: the build depends on cmake (cargo tree -e normal,build -i cmake):" >&2
  cargo tree -e normal,build -i cmake >&2
  exit 1
fi
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
tests/conformance/run.sh
