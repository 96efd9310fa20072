"""The measurements of benches/store_scale.sh (run that, not this). Prints one table."""
import argparse, http.client, json, os, random, re, shutil, signal, socket, statistics, subprocess, sys, time


PURGE_SET = 1000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Server:
    def __init__(self, a, store, max_bytes, name):
        self.a, self.store, self.max_bytes, self.name = a, store, max_bytes, name
        self.port, self.admin = free_port(), free_port()
        self.cfg = os.path.join(a.work, f"{name}.toml")
        with open(self.cfg, "w") as f:
            f.write(f'listen = "127.0.0.1:{self.port}"\nimages = "{a.root}/examples/images"\n'
                    f'[store]\npath = "{store}"\nmax_bytes = {max_bytes}\nmin_free_bytes = 0\n'
                    f'[admin]\nlisten = "127.0.0.1:{self.admin}"\n[log]\nlevel = "warn"\n')
        self.proc = None

    def start(self):
        """Start and wait for /health; returns seconds from spawn to the first 200."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen([f"{self.a.root}/target/release/iiifd", "serve", "--config", self.cfg],
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.a.work, f"{self.name}.err"), "a"))
        while time.monotonic() - t0 < 120:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=1)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            if self.proc.poll() is not None:
                sys.exit(f"iiifd exited: see {self.name}.err")
            time.sleep(0.002)
        sys.exit("no /health within 120 s")

    def metric(self, name):
        c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)


def fill(a, store, n, urls, identifier="chart"):
    cfg = Server(a, store, 1 << 50, "fill").cfg
    out = subprocess.run(["cargo", "bench", "--quiet", "--bench", "store_fill", "--", cfg, identifier, str(n), "2048", urls],
                         cwd=a.root, check=True, capture_output=True, text=True).stdout
    return float(re.search(r"\(([\d.]+) objects/s\)", out).group(1))


def admin_post(server, path):
    c = http.client.HTTPConnection("127.0.0.1", server.admin, timeout=600)
    c.request("POST", path)
    r = c.getresponse()
    body = r.read().decode()
    if r.status != 200:
        sys.exit(f"{path}: {r.status} {body}")
    return body


def wait_recount(s):
    """Seconds until the background recount is done (the totals exact again)."""
    t0 = time.monotonic()
    while s.metric("iiifd_store_reconcile_passes_total") < 1 and time.monotonic() - t0 < 3600:
        time.sleep(0.2)
    return time.monotonic() - t0


def hits(server, urls, n=1000):
    paths = random.Random(7).sample(urls, min(n, len(urls)))
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    c.request("GET", paths[0]); c.getresponse().read()  # the source's probe, once
    times = []
    for p in paths:
        t0 = time.perf_counter()
        c.request("GET", p)
        r = c.getresponse(); r.read()
        times.append((time.perf_counter() - t0) * 1000)
        if r.getheader("cache-status") != "iiifd; hit":
            sys.exit(f"not a hit: {p} {r.status} {r.getheader('cache-status')}")
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99) - 1]


def measure(a, n):
    store = os.path.join(a.work, f"store-{n}")
    urls_file = os.path.join(a.work, f"urls-{n}")
    row = {"N": n}
    row["fill/s"] = fill(a, store, n, urls_file) if n else 0
    # The purge target: one identifier with PURGE_SET objects, beside N of another.
    fill(a, store, PURGE_SET, urls_file + ".rings", "rings")
    urls = [l for l in open(urls_file).read().split("\n") if l] if n else []
    s = Server(a, store, 1 << 50, f"serve-{n}")
    row["start s"] = s.start()
    row["RSS start"] = rss_mib(s.proc.pid)
    time.sleep(a.settle)
    row[f"RSS +{a.settle}s"] = rss_mib(s.proc.pid)
    if urls:
        row["hit p50 ms"], row["hit p99 ms"] = hits(s, urls)
    s.stop(signal.SIGKILL)
    row["start after -9 s"] = s.start()
    row["RSS after -9"] = rss_mib(s.proc.pid)
    if s.metric("iiifd_store_totals_approximate") != 1 and n:
        sys.exit("after kill -9 the totals should say they are approximate")
    row["recount s"] = wait_recount(s)
    s.stop(signal.SIGKILL)
    shutil.rmtree(os.path.join(store, "index"))
    row["start no index s"] = s.start()
    wait_recount(s)
    if s.metric("iiifd_store_totals_approximate") != 0:
        sys.exit("the totals are still approximate after the recount")
    objects, size = s.metric("iiifd_store_objects"), s.metric("iiifd_store_bytes")
    if objects != n + PURGE_SET:
        sys.exit(f"recounted {objects} objects, stored {n + PURGE_SET}")
    t0 = time.monotonic()
    purged = json.loads(admin_post(s, "/admin/store/purge?id=rings"))["purged"]
    row["purge 1k ms"] = (time.monotonic() - t0) * 1000
    if purged != PURGE_SET:
        sys.exit(f"purged {purged} of {PURGE_SET}")
    objects, size = s.metric("iiifd_store_objects"), s.metric("iiifd_store_bytes")
    s.stop()
    if n:
        # Eviction: a budget 10 % below the store's size; the evictor goes down to 90 % of it.
        budget = int(size * 0.9)
        e = Server(a, store, budget, f"evict-{n}")
        t0 = time.monotonic()
        e.start()
        idle = rss_mib(e.proc.pid)
        peak, last, changed = idle, 0.0, t0
        # Until the store is back under its budget and no eviction has followed for 1.5 s.
        while (time.monotonic() - changed < 1.5 or e.metric("iiifd_store_bytes") > budget) \
                and time.monotonic() - t0 < 3600:
            peak = max(peak, rss_mib(e.proc.pid))
            ev = e.metric("iiifd_store_evictions_total")
            if ev != last:
                last, changed = ev, time.monotonic()
            time.sleep(0.05)
        secs = changed - t0
        row["evicted"] = int(last)
        row["evict/s"] = last / max(secs, 1e-3)
        row["evict RSS over idle"] = peak - idle
        e.stop()
        t0 = time.monotonic()
        subprocess.run([f"{a.root}/target/release/iiifd", "store", "verify", "--config", e.cfg],
                       check=True, capture_output=True)
        row["verify/s"] = (objects - last) / (time.monotonic() - t0)
    row["index MB"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(store, "index")) for f in fs) / 1e6
    shutil.rmtree(store, ignore_errors=True)
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root"); p.add_argument("--work"); p.add_argument("--settle", type=int, default=60)
    p.add_argument("sizes", nargs="+", type=int)
    a = p.parse_args()
    keys = ["N", "fill/s", "start s", "RSS start", f"RSS +{a.settle}s", "hit p50 ms", "hit p99 ms",
            "start after -9 s", "RSS after -9", "recount s", "start no index s", "purge 1k ms", "evicted", "evict/s", "evict RSS over idle",
            "verify/s", "index MB"]
    print(" | ".join(f"{k:>12}" for k in keys), flush=True)
    for n in [0] + a.sizes:
        r = measure(a, n)
        print(" | ".join(f"{r[k]:>12.3f}" if isinstance(r.get(k), float) else f"{str(r.get(k, '-')):>12}" for k in keys), flush=True)


main()
