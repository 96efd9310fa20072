#!/usr/bin/env bash
# Store benchmark (issue 3): requests per second for cache-hit tiles, 64 connections, loopback only:
#   1. iiifd streaming the stored bytes itself;
#   2. nginx in front of iiifd with X-Accel-Redirect (nginx sends the file with sendfile);
#   3. nginx serving the same object files directly (the ceiling);
#   4. nginx with X-Accel-Redirect in front of an upstream that does nothing but name the file (the
#      ceiling of any upstream, X-Accel's own cost on these cores).
# Needs: wrk and nginx (Debian: apt-get install wrk nginx-light), a release build (built if missing).
# Usage: [STORE_LOAD_BIN=path] benches/store_load.sh [SECONDS]   (default 10 s per run; fails on any answer but 200)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECS="${1:-10}"
BIN="${STORE_LOAD_BIN:-$ROOT/target/release/iiifd}"  # STORE_LOAD_BIN: measure another build
[[ -x "$BIN" ]] || (cd "$ROOT" && cargo build --release --quiet)
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx" >&2; exit 2; }

W="$(mktemp -d)"
# mktemp makes the folder 0700: nginx's workers (an unprivileged user when run as root) could not
# read the objects and every X-Accel or direct request would be a fast 403.
chmod 755 "$W"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f "$W/nginx.pid" ]] && nginx -c "$W/nginx.conf" -p "$W" -s stop 2>/dev/null
  [[ -f "$W/nothing/nginx.pid" ]] && nginx -c "$W/nothing/nginx.conf" -p "$W/nothing" -s stop 2>/dev/null
  wait 2>/dev/null; sleep 0.2; rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/images"
cp -r "$ROOT/examples/images/." "$W/images/"

start() { # name store [env...] -> sets ADDR
  local name="$1" store="$2"; shift 2
  env IIIFD_LOG__LEVEL=warn IIIFD_ADMIN__LISTEN=127.0.0.1:0 "$@" "$BIN" serve --listen 127.0.0.1:0 --images "$W/images" --store "$store" >"$W/$name.out" 2>"$W/$name.err" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q listening "$W/$name.out" 2>/dev/null && break; sleep 0.1; done
  ADDR="$(grep -m1 -o '127.0.0.1:[0-9]*' "$W/$name.out")"
}

# A 4000x3000 source, made by iiifd itself from the sample chart.
start seed "$W/seed-store"
curl -sf "http://$ADDR/iiif/3/chart/full/^4000,3000/0/default.jpg" -o "$W/images/big.jpg"

# OpenSeadragon's tile URLs for every level of big.jpg (512 px tiles).
python3 - "$W/paths" <<'PY'
import math, sys
W, H, T = 4000, 3000, 512
out = []
s = 1
while True:
    span = T * s
    for r in range(math.ceil(H / span)):
        for c in range(math.ceil(W / span)):
            x, y = c * span, r * span
            w, h = min(span, W - x), min(span, H - y)
            out.append(f"/iiif/3/big/{x},{y},{w},{h}/{math.ceil(w / s)},{math.ceil(h / s)}/0/default.jpg")
    if math.ceil(W / s) <= T and math.ceil(H / s) <= T:
        break
    s *= 2
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
echo "tiles: $(wc -l <"$W/paths")"

start stream "$W/stream-store"; STREAM="$ADDR"
start accel "$W/accel-store" IIIFD_STORE__ACCEL_REDIRECT=/_iiifd/; ACCEL="$ADDR"
# Warm both stores (first pass renders, second pass confirms hits) and collect the object paths.
: >"$W/objects"
while read -r p; do
  curl -sf "http://$STREAM$p" -o /dev/null; curl -sf "http://$STREAM$p" -o /dev/null
  curl -sf "http://$ACCEL$p" -o /dev/null
  curl -sf -D - "http://$ACCEL$p" -o /dev/null | tr -d '\r' | sed -n 's/^x-accel-redirect: \/_iiifd\//\/direct\//p' >>"$W/objects"
done <"$W/paths"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGINX_PORT=$(free_port) NOTHING_PORT=$(free_port) NOTHING_UP=$(free_port)
sed -e "s|server 127.0.0.1:8080;|server $ACCEL;|" -e "s|listen 80;|listen 127.0.0.1:$NGINX_PORT;|" \
    -e "s|alias /var/lib/iiifd/objects/;|alias $W/accel-store/objects/;|" "$ROOT/deploy/nginx/iiifd.conf" >"$W/site.conf"
# The X-Accel-Redirect ceiling: the same site in front of an upstream that does nothing but name each
# tile's file (a second nginx, answering from a table, with headers like iiifd's). What it reaches
# is what any upstream could: the rest is nginx proxying, and wrk, on the same cores.
sed -e "s|upstream iiifd|upstream nothing|" -e "s|http://iiifd|http://nothing|" \
    -e "s|server 127.0.0.1:8080;|server 127.0.0.1:$NOTHING_UP;|" -e "s|listen 80;|listen 127.0.0.1:$NOTHING_PORT;|" \
    -e "s|alias /var/lib/iiifd/objects/;|alias $W/accel-store/objects/;|" "$ROOT/deploy/nginx/iiifd.conf" >"$W/nothing-site.conf"
paste -d' ' "$W/paths" "$W/objects" | sed 's|^\([^ ]*\) /direct/\(.*\)$|"\1" /_iiifd/\2;|' >"$W/nothing.map"
mkdir -p "$W/nothing"
cat >"$W/nothing/nginx.conf" <<NGX
worker_processes 1;
pid $W/nothing/nginx.pid;
error_log $W/nothing/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $W/nothing/b; proxy_temp_path $W/nothing/p; fastcgi_temp_path $W/nothing/f;
  uwsgi_temp_path $W/nothing/u; scgi_temp_path $W/nothing/s;
  map_hash_bucket_size 256;
  map \$request_uri \$object { include $W/nothing.map; }
  server {
    listen 127.0.0.1:$NOTHING_UP;
    location / {
      add_header X-Accel-Redirect \$object;
      add_header Content-Type image/jpeg;
      add_header ETag '"8041950c637d3396df1dda790ba46c8b2f64fdb0cc9fa8b89c841d966e9f80bd"';
      add_header Link '<http://127.0.0.1/iiif/3/big/0,0,512,512/max/0/default.jpg>;rel="canonical", <http://iiif.io/api/image/3/level2.json>;rel="profile"';
      add_header Cache-Control 'public, max-age=2592000';
      add_header Cache-Status 'iiifd; hit';
      add_header Last-Modified 'Wed, 02 Dec 2026 15:40:56 GMT';
      return 200 "";
    }
  }
}
NGX
cat >"$W/nginx.conf" <<NGX
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx-error.log;
events { worker_connections 1024; }
http {
  include /etc/nginx/mime.types;
  access_log off;
  client_body_temp_path $W/ngx-body; proxy_temp_path $W/ngx-proxy; fastcgi_temp_path $W/ngx-fcgi;
  uwsgi_temp_path $W/ngx-uwsgi; scgi_temp_path $W/ngx-scgi;
  include $W/site.conf;
  include $W/nothing-site.conf;
}
NGX
# The ceiling: the same object files served by nginx directly, added to the shipped site's server block.
python3 - "$W/site.conf" "$W/accel-store/objects/" <<'PY'
import sys
site, objects = sys.argv[1:]
s = open(site).read()
i = s.rindex("}")
open(site, "w").write(s[:i] + f"    location /direct/ {{ alias {objects}; sendfile on; tcp_nopush on; }}\n" + s[i:])
PY
nginx -c "$W/nothing/nginx.conf" -p "$W/nothing"
nginx -c "$W/nginx.conf" -p "$W"
sleep 0.5

cat >"$W/paths.lua" <<'LUA'
local paths, i = {}, 0
init = function(args)
  for line in io.lines(args[1]) do if #line > 0 then paths[#paths + 1] = line end end
  i = math.random(#paths)
end
request = function() i = i % #paths + 1; return wrk.format("GET", paths[i]) end
LUA
run() { # label url pathsfile
  local out rps
  out="$(wrk -t2 -c64 -d"${SECS}s" -s "$W/paths.lua" "$2" -- "$3")"
  # wrk counts every answer as throughput: a run with any error status measures nothing.
  if grep -q "Non-2xx" <<<"$out"; then
    echo "$1: $(grep Non-2xx <<<"$out"), not a measurement" >&2
    exit 1
  fi
  rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
  printf '%-34s %10s req/s\n' "$1" "$rps" >&2
  echo "$rps"
}
# Each kind of URL answers 200 with the object's bytes before it is measured.
check() { # url
  local code
  code="$(curl -s -o "$W/check.body" -w '%{http_code}' "$1")"
  [[ "$code" == 200 && -s "$W/check.body" ]] || { echo "$1 answered $code, not 200 with a body" >&2; exit 1; }
}
check "http://$STREAM$(head -1 "$W/paths")"
check "http://127.0.0.1:$NGINX_PORT$(head -1 "$W/paths")"
check "http://127.0.0.1:$NGINX_PORT$(head -1 "$W/objects")"
# The do-nothing upstream must name the same file iiifd does for every tile.
while read -r p; do
  cmp -s <(curl -s "http://$STREAM$p") <(curl -s "http://127.0.0.1:$NOTHING_PORT$p") ||
    { echo "the do-nothing upstream sent another file for $p" >&2; exit 1; }
done <"$W/paths"
echo "64 connections, ${SECS}s each, $(wc -l <"$W/paths") cache-hit tiles" >&2
S=$(run "iiifd streaming" "http://$STREAM" "$W/paths")
A=$(run "nginx + iiifd X-Accel-Redirect" "http://127.0.0.1:$NGINX_PORT" "$W/paths")
D=$(run "nginx direct (same files)" "http://127.0.0.1:$NGINX_PORT" "$W/objects")
N=$(run "nginx + do-nothing X-Accel upstream" "http://127.0.0.1:$NOTHING_PORT" "$W/paths")
python3 -c "s,a,d,n=$S,$A,$D,$N; print(f'streaming / nginx direct = {s/d:.2f}x;  X-Accel-Redirect / nginx direct = {a/d:.2f}x (an upstream that does nothing: {n/d:.2f}x)')"
