#!/usr/bin/env python3
"""Bot storm: one viewer opening a pyramidal TIFF while harvesters ask, without pause, for unique cold
renders of other images. Prints the viewer's figures alone and during the storm side by side, the
harvesters' figures, and the server's peak RSS; with --peers iipimage, IIPImage (behind nginx, as the
shared peer benchmark runs it) under the same storm on the same files. Loopback only; standard library.

    benches/bot_storm.py [--harvesters 24] [--harvester-conc 1] [--storm-source tif|jpg]
                         [--rounds 1] [--peers iipimage] [--bin target/release/iiifd] [--plain]

The corpus is the shared peer benchmark's (8000x6000 source.tif, vips pyramid, 256 px JPEG tiles;
twenty 4000x3000 thumbNN.jpg/.tif), in $BENCH_CACHE/corpus (default /tmp/iiif-bench); it is built
with ../shared/bench/peers.sh --peers none when missing. The viewer asks the 124 OpenSeadragon tiles
of the shared W1 list, 2 at a time, with its own X-Forwarded-For; each harvester has another /24.
Every store is cold. --plain leaves the admission settings out (for a binary that predates them).
"""
import argparse, http.client, os, random, shutil, signal, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "bench")
CACHE = os.environ.get("BENCH_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "iiif-bench"))
CORPUS = os.path.join(CACHE, "corpus")
VIEWER_IP = "198.51.100.10"


def pct(vals, p):
    s = sorted(vals)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


class Client:
    """One keep-alive connection; reconnects when the server closes it."""

    def __init__(self, port, xff, timeout=120):
        self.port, self.xff, self.timeout, self.conn = port, xff, timeout, None

    def get(self, path):
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                self.conn.request("GET", path, headers={"X-Forwarded-For": self.xff, "User-Agent": "bot-storm"})
                r = self.conn.getresponse()
                body = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, r.getheader("Retry-After"), len(body)
            except (OSError, http.client.HTTPException):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt:
                    return 0, None, 0
        return 0, None, 0


def viewer(port, paths, conc=2):
    """Every path once, `conc` at a time: (seconds, latencies, statuses)."""
    todo = list(paths)
    lock = threading.Lock()
    lat, statuses = [], []

    def run():
        c = Client(port, VIEWER_IP)
        while True:
            with lock:
                if not todo:
                    return
                p = todo.pop(0)
            t = time.perf_counter()
            status, _, _ = c.get(p)
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)
                statuses.append(status)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, lat, statuses


def harvester_paths(prefix, version, source, seed):
    """Unique regions and sizes of the twenty 4000x3000 images, endlessly (random, so a repeat is
    vanishingly rare)."""
    rng = random.Random(seed)
    while True:
        img = f"thumb{rng.randint(1, 20):02d}.{source}"
        w, h = rng.randint(300, 4000), rng.randint(300, 3000)
        x, y = rng.randint(0, 4000 - w), rng.randint(0, 3000 - h)
        out = rng.randint(100, min(w, 1600))
        yield f"{prefix}/{version}/{img}/{x},{y},{w},{h}/{out},/0/default.jpg"


class Storm:
    def __init__(self, port, n, conc, prefix, version, source):
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {}
        self.retry_after_missing = 0
        self.threads = []
        self.window = None
        for k in range(n):
            xff = f"203.0.{k + 1}.{7 + k % 200}"  # one /24 each
            gen = harvester_paths(prefix, version, source, seed=1000 + k)
            for _ in range(conc):
                t = threading.Thread(target=self.run, args=(port, xff, gen), daemon=True)
                self.threads.append(t)
        self.gen_lock = threading.Lock()

    def run(self, port, xff, gen):
        c = Client(port, xff, timeout=300)
        while not self.stop.is_set():
            with self.gen_lock:
                path = next(gen)
            status, retry, _ = c.get(path)
            with self.lock:
                if self.window is not None:
                    self.counts[status] = self.counts.get(status, 0) + 1
                    if status == 429 and not retry:
                        self.retry_after_missing += 1

    def start(self):
        for t in self.threads:
            t.start()

    def measure(self):
        with self.lock:
            self.window = time.perf_counter()
            self.counts = {}

    def result(self):
        with self.lock:
            dt = time.perf_counter() - self.window
            return dt, dict(self.counts), self.retry_after_missing


def vmhwm(pids):
    kb = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM"):
                    kb += int(line.split()[1])
        except OSError:
            pass
    return kb // 1024


def group_pids(pgid):
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


class Iiifd:
    name = "iiifd"
    prefix, version = "/iiif", "3"

    def __init__(self, binary, plain):
        self.binary, self.plain = binary, plain

    def start(self, work):
        store = tempfile.mkdtemp(dir=work)
        env = dict(os.environ, IIIFD_LOG__LEVEL="warn", IIIFD_ADMIN__LISTEN="127.0.0.1:0")
        if not self.plain:
            env["IIIFD_ADMISSION__CLIENT_HEADER"] = "X-Forwarded-For"
        self.p = subprocess.Popen([self.binary, "serve", "--listen", "127.0.0.1:0", "--images", CORPUS,
                                   "--store", store], stdout=subprocess.PIPE, env=env, text=True,
                                  start_new_session=True)
        line = self.p.stdout.readline()
        self.port = int(line.split("http://")[1].split("/")[0].split(":")[1])
        self.admin = self.p.stdout.readline().split("http://")[1].split("/")[0]
        return self.port

    def note(self):
        return f"iiifd ({os.path.relpath(self.binary, ROOT)}{', no admission settings' if self.plain else ''})"

    def rss(self):
        return vmhwm([self.p.pid])

    def metrics(self):
        try:
            host, port = self.admin.split(":")
            c = http.client.HTTPConnection(host, int(port), timeout=10)
            c.request("GET", "/metrics")
            return c.getresponse().read().decode()
        except OSError:
            return ""

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()


class Iipimage:
    """IIPImage as peers.sh runs it: one iipsrv per core behind nginx FastCGI (IIIF 2 only)."""
    name = "iipimage"
    prefix, version = "/iiif", "2"

    def start(self, work):
        nproc = os.cpu_count() or 2
        iipsrv = os.path.join(CACHE, "iip/usr/lib/iipimage-server/iipsrv.fcgi")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        d = tempfile.mkdtemp(dir=work)
        os.makedirs(os.path.join(d, "tmp"))
        self.port = 18480
        ups = ""
        self.procs = []
        for i in range(nproc):
            p = 18490 + i
            env = dict(os.environ, FILESYSTEM_PREFIX=CORPUS + "/", JPEG_QUALITY="90", CORS="*")
            self.procs.append(subprocess.Popen([iipsrv, "--bind", f"127.0.0.1:{p}"], env=env, start_new_session=True,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ups += f"server 127.0.0.1:{p}; "
        conf = f"""worker_processes {nproc}; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {d}/tmp/b; proxy_temp_path {d}/tmp/p; fastcgi_temp_path {d}/tmp/f;
  uwsgi_temp_path {d}/tmp/u; scgi_temp_path {d}/tmp/s; keepalive_requests 100000; upstream iip {{ {ups} }}
  server {{ listen 127.0.0.1:{self.port};
    location ~ ^/iiif/2/(.*)$ {{ fastcgi_pass iip; fastcgi_param QUERY_STRING IIIF=/$1;
      fastcgi_param REQUEST_METHOD $request_method; fastcgi_param REQUEST_URI $request_uri;
      fastcgi_param SERVER_NAME $server_name; fastcgi_param SERVER_PORT $server_port; fastcgi_param HTTPS '';
      fastcgi_buffers 32 16k; fastcgi_read_timeout 600s; }} }} }}
"""
        open(os.path.join(d, "nginx.conf"), "w").write(conf)
        self.procs.append(subprocess.Popen([nginx, "-p", d, "-c", os.path.join(d, "nginx.conf")], start_new_session=True,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(200):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/iiif/2/source.tif/info.json")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        return self.port

    def note(self):
        v = open(os.path.join(CACHE, "iip/VERSION")).read().strip() if os.path.exists(os.path.join(CACHE, "iip/VERSION")) else "?"
        return f"IIPImage iipsrv {v} x{os.cpu_count()} behind nginx FastCGI (no per-client scheduling)"

    def rss(self):
        return vmhwm([q for p in self.procs for q in group_pids(p.pid)])

    def metrics(self):
        return ""

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def tile_paths(server):
    scheme = "v3" if server.version == "3" else "v2"
    out = subprocess.run([sys.executable, os.path.join(SHARED, "loadgen.py"), "urls", "tiles", "--scheme", scheme,
                          "--prefix", server.prefix, "--ident", "source.tif"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def one(server, args, work, storm):
    port = server.start(work)
    try:
        paths = tile_paths(server)
        s = None
        if storm:
            s = Storm(port, args.harvesters, args.harvester_conc, server.prefix, server.version, args.storm_source)
            s.start()
            time.sleep(args.build_up)
            s.measure()
        secs, lat, statuses = viewer(port, paths)
        h = None
        if s:
            time.sleep(args.after)
            h = s.result()
            s.stop.set()
        rss = server.rss()
        metrics = server.metrics()
        return {"secs": secs, "lat": lat, "statuses": statuses, "storm": h, "rss": rss, "metrics": metrics}
    finally:
        server.stop()


def metric_lines(text, names):
    return [l for l in text.splitlines() if any(l.startswith(n) for n in names) and not l.endswith(" 0")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--harvesters", type=int, default=24)
    ap.add_argument("--harvester-conc", type=int, default=1)
    ap.add_argument("--storm-source", choices=["tif", "jpg"], default="tif")
    ap.add_argument("--build-up", type=float, default=3.0, help="seconds of storm before the viewer starts")
    ap.add_argument("--after", type=float, default=2.0, help="seconds of storm after the viewer ends")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--peers", default="", help="iipimage to run it beside iiifd")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "iiifd"))
    ap.add_argument("--plain", action="store_true")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(CORPUS, ".complete-v1")):
        subprocess.run(["bash", os.path.join(SHARED, "peers.sh"), "--peers", "none"])
    if not os.path.exists(args.bin):
        subprocess.check_call(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    servers = [Iiifd(args.bin, args.plain)]
    if "iipimage" in args.peers:
        if args.storm_source == "jpg":
            print("IIPImage reads TIFF and JPEG 2000 only: left out of a JPEG storm", file=sys.stderr)
        else:
            servers.append(Iipimage())
    work = tempfile.mkdtemp()
    rows = []
    try:
        for r in range(args.rounds):
            for server in servers:
                alone = one(server, args, work, storm=False)
                storm = one(server, args, work, storm=True)
                rows.append((server, r, alone, storm))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Viewer: 124 cold OpenSeadragon tiles of source.tif (8000x6000, 256 px JPEG tiles), c=2. Storm: "
          f"{args.harvesters} harvesters x c={args.harvester_conc}, unique regions/sizes of twenty 4000x3000 "
          f"thumbNN.{args.storm_source}, {args.build_up:.0f} s before the viewer. {os.cpu_count()} cores.\n")
    print("| server | round | alone s | alone p50 ms | alone p99 ms | storm s | storm p50 ms | storm p99 ms | "
          "time x | p99 x | viewer non-200 | harvester 200/s | harvester 429 | other | 429 w/o Retry-After | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for server, r, a, s in rows:
        hs, hc, missing = s["storm"]
        ok = hc.get(200, 0)
        other = sum(v for k, v in hc.items() if k not in (200, 429))
        bad = sum(1 for x in a["statuses"] + s["statuses"] if x != 200)
        ap99, sp99 = pct(a["lat"], 99), pct(s["lat"], 99)
        print(f"| {server.note()} | {r + 1} | {a['secs']:.3f} | {pct(a['lat'], 50) * 1e3:.1f} | {ap99 * 1e3:.1f} | "
              f"{s['secs']:.3f} | {pct(s['lat'], 50) * 1e3:.1f} | {sp99 * 1e3:.1f} | {s['secs'] / a['secs']:.2f} | "
              f"{sp99 / ap99:.1f} | {bad} | {ok / hs:.1f} | {hc.get(429, 0)} | {other} | {missing} | "
              f"{max(a['rss'], s['rss'])} |")
    for server, r, a, s in rows:
        lines = metric_lines(s["metrics"], ["iiifd_admission_refused_total", "iiifd_admission_wait_seconds_count",
                                            "iiifd_admission_wait_seconds_sum", "iiifd_memory_bound_bytes"])
        if lines:
            print(f"\n{server.note()}, round {r + 1}, after the storm:")
            for l in lines:
                print("    " + l)


if __name__ == "__main__":
    sys.exit(main())
