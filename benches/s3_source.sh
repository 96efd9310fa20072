#!/usr/bin/env bash
# Sources in object storage (the S3 source issue): the shared peer benchmark's workloads, with the
# images read from local disk (source.kind = fs) and from SeaweedFS's S3 gateway on loopback
# (source.kind = s3), one after the other on the same corpus, and the ratios s3 / fs.
#   W1 cold tiles from the pyramidal TIFF (--candidate-source tif): ranged reads through the block cache;
#   W3 cold thumbnails from JPEG (--candidate-source jpg): whole downloads into the source cache;
#   W2 warm tiles and W4 info.json: store hits, which must not touch the backend.
# Each run starts with an empty store and source cache (peers.sh empties the candidate's cache_dir).
# Needs: a release build (made here), the peer benchmark's corpus (../shared/bench/peers.sh makes it
# in $BENCH_CACHE/corpus on its first run), SeaweedFS (tests/setup.sh installs it), curl.
# Usage: benches/s3_source.sh            ROUNDS=3 and QUICK=--quick by default; SOURCES="tif jpg";
#        S3_ENV="IIIFD_SOURCE__BLOCK_BYTES=1048576" adds settings to the s3 run.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PEERS="${PEERS:-$ROOT/../shared/bench/peers.sh}"
CORPUS="${BENCH_CACHE:-${TMPDIR:-/tmp}/iiif-bench}/corpus"
WEED="${IIIFD_WEED:-${IIIFD_TEST_CACHE:-$HOME/.cache/iiifd-test}/seaweedfs-venv/bin/weed}"
ROUNDS="${ROUNDS:-3}"
QUICK="${QUICK---quick}"
BASE="${S3_BENCH_PORT_BASE:-18700}"
KEY=bench-access SECRET=bench-secret-key
[[ -d $CORPUS ]] || { echo "no corpus in $CORPUS: run $PEERS once" >&2; exit 1; }
[[ -x $WEED ]] || { echo "no SeaweedFS at $WEED: run tests/setup.sh" >&2; exit 1; }
cargo build --release --quiet --bin iiifd
BIN="$ROOT/target/release/iiifd"

WORK="$(mktemp -d)"
WEED_PID=""
cleanup() {
  if [[ -n $WEED_PID ]]; then
    kill -TERM "$WEED_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$WEED_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$WEED_PID" 2>/dev/null || true
    wait "$WEED_PID" 2>/dev/null || true
  fi
  for p in $(seq $((BASE + 1)) $((BASE + 8))); do rm -f /tmp/seaweedfs-*-"$p".sock; done
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/weed"
cat >"$WORK/identities.json" <<EOF
{"identities": [{"name": "bench", "credentials": [{"accessKey": "$KEY", "secretKey": "$SECRET"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
"$WEED" -logtostderr server -dir="$WORK/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port=$((BASE + 1)) -master.port.grpc=$((BASE + 2)) \
  -volume.port=$((BASE + 3)) -volume.port.grpc=$((BASE + 4)) \
  -filer -filer.port=$((BASE + 5)) -filer.port.grpc=$((BASE + 6)) \
  -s3 -s3.port=$((BASE + 7)) -s3.port.grpc=$((BASE + 8)) -s3.config="$WORK/identities.json" \
  -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=100 -master.electionTimeout=1s \
  -master.telemetry=false -master.volumeSizeLimitMB=64 -volume.preStopSeconds=0 \
  >"$WORK/weed.log" 2>&1 &
WEED_PID=$!
S3="http://127.0.0.1:$((BASE + 7))"
curl_s3() { curl -s -o /dev/null -w '%{http_code}' --aws-sigv4 "aws:amz:us-east-1:s3" --user "$KEY:$SECRET" "$@"; }
for _ in $(seq 240); do [[ $(curl_s3 -X PUT "$S3/bench") == 200 ]] && break; sleep 0.25; done
[[ $(curl_s3 "$S3/bench") == 200 ]] || { echo "SeaweedFS did not come up:" >&2; tail -20 "$WORK/weed.log" >&2; exit 1; }
echo "uploading $(find "$CORPUS" -maxdepth 1 -type f | wc -l) files ($(du -sh "$CORPUS" | cut -f1)) to SeaweedFS"
for f in "$CORPUS"/*; do
  [[ -f $f ]] || continue
  code=$(curl_s3 -T "$f" "$S3/bench/$(basename "$f")")
  [[ $code == 200 ]] || { echo "upload of $f: HTTP $code" >&2; exit 1; }
done

FS_CMD="$BIN serve --listen 127.0.0.1:{port} --images {image_dir} --store {cache_dir}"
S3_CMD="env ${S3_ENV:-} IIIFD_SOURCE__KIND=s3 IIIFD_SOURCE__S3__BUCKET=bench IIIFD_SOURCE__S3__ENDPOINT=$S3 AWS_ACCESS_KEY_ID=$KEY AWS_SECRET_ACCESS_KEY=$SECRET $FS_CMD"
run() { # kind source
  local cmd=$FS_CMD
  [[ $1 == s3 ]] && cmd=$S3_CMD
  echo "== $1, --candidate-source $2" >&2
  # shellcheck disable=SC2086
  "$PEERS" --no-setup --peers none --rounds "$ROUNDS" $QUICK --candidate-source "$2" --candidate "$cmd" \
    >"$WORK/$1-$2.out" 2>"$WORK/$1-$2.err" || { tail -20 "$WORK/$1-$2.err" >&2; exit 1; }
}
# The median row of one workload: "| W1 cold tiles | 202 (198–243) tiles/s |" -> 202
median() { grep -m1 "^| $2 |.*(" "$WORK/$1.out" | awk -F'|' '{print $3}' | awk '{gsub(",", "", $1); print $1}'; }
row() { grep -m1 "^| $2 |.*(" "$WORK/$1.out" | awk -F'|' '{gsub(/^ +| +$/, "", $3); print $3}'; }

SOURCES="${SOURCES:-tif jpg}"
for src in $SOURCES; do run fs "$src"; run s3 "$src"; done
echo
echo "| workload | source | fs | s3 | s3 / fs |"
echo "|---|---|---|---|---|"
for src in $SOURCES; do
  for w in "W1 cold tiles" "W2 warm tiles" "W3 cold thumbs" "W4 info.json"; do
    a=$(median "fs-$src" "$w"); b=$(median "s3-$src" "$w")
    # Speed ratio: for s/thumb (lower is better) the inverse.
    ratio=$(awk -v a="$a" -v b="$b" -v w="$w" 'BEGIN { if (a == 0 || b == 0) { print "-"; exit }
      r = (w ~ /thumbs/) ? a / b : b / a; printf "%.2fx", r }')
    echo "| $w | $src | $(row "fs-$src" "$w") | $(row "s3-$src" "$w") | $ratio |"
  done
done
