#!/usr/bin/env python3
"""A first and a second viewer session on one JPEG 2000 archive, iiifd beside IIPImage.

The shared peer benchmark's W1 is the first session on an image: every tile of scale factors 8 and
4 and a centred 8x8 block at full size, 124 tiles, each once, 2 at a time. The second session here
asks for *other* tiles of the same, already opened image, still cold for the store: a centred 8x8
block at scale factor 2 and the 8x8 block to the right of W1's at full size (128 tiles). A server
that re-reads and re-indexes the codestream for each tile pays the same in both; one that keeps the
opened codestream and decoded blocks pays less in the second.

Uses the shared benchmark's corpus and IIPImage install (run ../shared/bench/peers.sh once with
--peers iipimage-jp2 for the set-up) and its request runner (loadgen.py).

usage: benches/jp2_views.py --iiifd target/release/iiifd [--rounds 3] [--ident source.jp2]
                            [--iip-ident source.jp2] [--between 10]
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "bench"))
sys.path.insert(0, SHARED)
import loadgen  # noqa: E402

CACHE = os.environ.get("BENCH_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "iiif-bench"))
CORPUS = os.path.join(CACHE, "corpus")
IIPSRV = os.path.join(CACHE, "iip", "usr", "lib", "iipimage-server", "iipsrv.fcgi")
WIDTH, HEIGHT, TILE = 8000, 6000, 256
PORT_IIIFD, PORT_IIP, PORT_FCGI = 18461, 18462, 18470


def first_session():
    return loadgen.w1_tiles(WIDTH, HEIGHT, TILE, 8)


def second_session():
    """Other tiles of the same image: a centred 8x8 block at scale factor 2, and the 8x8 block
    at full size right of W1's."""
    out = []
    for scale, shift in ((2, 0), (1, 8)):
        cols = -(-WIDTH // (TILE * scale))
        rows = -(-HEIGHT // (TILE * scale))
        c0 = max(0, cols // 2 - 4) + shift
        r0 = max(0, rows // 2 - 4)
        for t in loadgen.tile_regions(WIDTH, HEIGHT, TILE, scale):
            col, row = t[0], t[1]
            if c0 <= col < c0 + 8 and r0 <= row < r0 + 8:
                out.append(t[2:])
    return out


def paths(tiles, scheme, ident):
    return [loadgen.image_path(scheme, "/iiif", ident, f"{x},{y},{w},{h}", (ow, oh))
            for (x, y, w, h, ow, oh) in tiles]


def wait_http(port, path, proc_alive):
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        if not proc_alive():
            return False
        time.sleep(0.25)
    return False


class Group:
    """Processes started in their own sessions, stopped together."""

    def __init__(self):
        self.procs = []

    def spawn(self, cmd, env=None, log=None):
        out = open(log, "w") if log else subprocess.DEVNULL
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def alive(self):
        return all(p.poll() is None for p in self.procs)

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []


def start_iiifd(group, binary, work):
    store = tempfile.mkdtemp(dir=work)
    env = dict(os.environ, IIIFD_LOG__LEVEL="warn")
    group.spawn([binary, "serve", "--listen", f"127.0.0.1:{PORT_IIIFD}", "--images", CORPUS,
                 "--store", store], env=env, log=os.path.join(work, "iiifd.log"))
    return PORT_IIIFD, "v3"


def start_iipimage(group, work):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    ups = ""
    for i in range(os.cpu_count() or 1):
        port = PORT_FCGI + i
        env = dict(os.environ, FILESYSTEM_PREFIX=CORPUS + "/", JPEG_QUALITY="90", CORS="*")
        group.spawn([IIPSRV, "--bind", f"127.0.0.1:{port}"], env=env,
                    log=os.path.join(work, f"iipsrv{i}.log"))
        ups += f"server 127.0.0.1:{port}; "
    d = os.path.join(work, "nginx")
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes {os.cpu_count() or 1};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  upstream iip {{ {ups}}}
  access_log off;
  client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{PORT_IIP};
    location ~ ^/iiif/2/(.*)$ {{
      fastcgi_pass iip;
      fastcgi_param QUERY_STRING IIIF=/$1;
      fastcgi_param REQUEST_METHOD $request_method;
      fastcgi_param REQUEST_URI $request_uri;
      fastcgi_param SERVER_NAME $server_name;
      fastcgi_param SERVER_PORT $server_port;
      fastcgi_param HTTPS '';
      fastcgi_buffers 32 16k;
    }}
  }}
}}
""")
    group.spawn([nginx, "-p", d, "-c", os.path.join(d, "nginx.conf")],
                log=os.path.join(work, "nginx.log"))
    return PORT_IIP, "v2"


def run(server, args, work):
    group = Group()
    try:
        if server == "iiifd":
            port, scheme = start_iiifd(group, args.iiifd, work)
        else:
            port, scheme = start_iipimage(group, work)
        ident = args.ident if server == "iiifd" else (args.iip_ident or args.ident)
        info = f"/iiif/{'3' if scheme == 'v3' else '2'}/{ident}/info.json"
        if not wait_http(port, info, group.alive):
            raise SystemExit(f"{server} did not answer {info}; logs in {work}")
        out = {}
        for name, tiles in (("first", first_session()), ("second", second_session())):
            if name == "second":
                time.sleep(args.between)
            r = loadgen.run_once("127.0.0.1", port, paths(tiles, scheme, ident), 2)
            if r["errors"]:
                raise SystemExit(f"{server} {name}: {r['errors']} errors, e.g. {r['error_sample']}")
            out[name] = r["rps"]
        return out
    finally:
        group.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iiifd", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ident", default="source.jp2")
    ap.add_argument("--between", type=float, default=0.0,
                    help="seconds between the two sessions (a viewer coming back later; iiifd "
                         "writes its tiled copy when idle)")
    ap.add_argument("--iip-ident", help="IIPImage's file, when it differs (an HTJ2K file for iiifd "
                    "beside the classic JPEG 2000 of the same pixels for IIPImage)")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(CORPUS, args.ident)) or not os.path.exists(IIPSRV):
        raise SystemExit("run ../shared/bench/peers.sh --peers iipimage-jp2 --candidate-source jp2 once first")
    results = {"iiifd": [], "iipimage": []}
    with tempfile.TemporaryDirectory() as work:
        for i in range(args.rounds):
            order = ("iiifd", "iipimage") if i % 2 == 0 else ("iipimage", "iiifd")
            for server in order:
                r = run(server, args, work)
                results[server].append(r)
                print(json.dumps({"round": i + 1, "server": server, **r}), flush=True)
    print()
    files = args.ident if not args.iip_ident else f"iiifd {args.ident}, IIPImage {args.iip_ident}"
    print(f"| {files}, 2 at a time, tiles/s (median of {args.rounds}) | iiifd | IIPImage | ratio |")
    print("|---|---|---|---|")
    later = f", {args.between:g} s later" if args.between else ", right after"
    for name, label in (("first", "first session (W1: 124 tiles)"),
                        ("second", f"second session{later}: other tiles of the opened image (128)")):
        a = statistics.median(r[name] for r in results["iiifd"])
        b = statistics.median(r[name] for r in results["iipimage"])
        print(f"| {label} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
