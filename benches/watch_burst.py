#!/usr/bin/env python3
"""crawl.watch (issue 18): how soon a new image's thumbnails are stored, and what a burst of arrivals
costs live requests. Loopback only; needs a release build (built if missing).

1. Arrival: one 4000x3000 JPEG copied into the image directory of a running server; seconds until
   /metrics counts it warmed, then its !256,256 thumbnail and every `sizes` entry must answer
   `Cache-Status: iiifd; hit` (5 files in turn: median and max).
2. Burst: live requests (two clients, each a new tile of an existing image, i.e. renders) for 15 s
   while idle, then while 100 new files arrive at once: p50 and p99 of each, and their ratio.

Usage: benches/watch_burst.py [IIIFD_BINARY]
"""
import json, os, random, shutil, statistics, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/iiifd")
if not os.path.exists(BIN):
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)


def get(url, headers=False):
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
        return (r.status, r.headers, body) if headers else body


def metric(admin, name):
    for line in get(f"http://{admin}/metrics").decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def start(images, store, env):
    e = dict(os.environ, IIIFD_LOG__LEVEL="warn", IIIFD_ADMIN__LISTEN="127.0.0.1:0", **env)
    p = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--images", images, "--store", store],
                         stdout=subprocess.PIPE, env=e, text=True)
    addr = p.stdout.readline().split("http://")[1].split("/")[0]
    admin = p.stdout.readline().split("http://")[1].split("/")[0]
    return p, addr, admin


def live(addr, seconds, stop_when=None):
    """Two clients, each asking for tiles no one asked for before; returns latencies (s)."""
    lat, lock = [], threading.Lock()
    end = time.time() + seconds

    def client(seed):
        rnd = random.Random(seed)
        while time.time() < end and not (stop_when and stop_when()):
            x, y = rnd.randrange(0, 3500), rnd.randrange(0, 2500)
            w = rnd.choice([256, 384, 512])
            t = time.perf_counter()
            get(f"http://{addr}/iiif/3/big/{x},{y},{w},{w}/256,256/0/default.jpg")
            with lock:
                lat.append(time.perf_counter() - t)

    ts = [threading.Thread(target=client, args=(s,)) for s in (random.random(), random.random())]
    [t.start() for t in ts]
    [t.join() for t in ts]
    return lat


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def main():
    work = tempfile.mkdtemp()
    try:
        images, outside = os.path.join(work, "images"), os.path.join(work, "outside")
        os.makedirs(images), os.makedirs(outside)
        shutil.copy(os.path.join(ROOT, "examples/images/chart.jpg"), images)
        seed, addr, _ = start(images, os.path.join(work, "seed"), {})
        big = get(f"http://{addr}/iiif/3/chart/full/^4000,3000/0/default.jpg")
        seed.kill(), seed.wait()
        open(os.path.join(images, "big.jpg"), "wb").write(big)
        for i in range(105):
            open(os.path.join(outside, f"a{i:03}.jpg"), "wb").write(big)
        p, addr, admin = start(images, os.path.join(work, "store"), {"IIIFD_CRAWL__WATCH": "true"})
        try:
            # 1. One arrival at a time.
            took = []
            for i in range(5):
                before = metric(admin, "iiifd_watch_warmed_total")
                t = time.perf_counter()
                shutil.copy(os.path.join(outside, f"a{i:03}.jpg"), images)
                while metric(admin, "iiifd_watch_warmed_total") < before + 1:
                    time.sleep(0.01)
                    assert time.perf_counter() - t < 60, "not warmed within 60 s"
                took.append(time.perf_counter() - t)
                info = json.loads(get(f"http://{addr}/iiif/3/a{i:03}/info.json"))
                urls = [f"/iiif/3/a{i:03}/full/!256,256/0/default.jpg"] + [
                    f"/iiif/3/a{i:03}/full/{s['width']},{s['height']}/0/default.jpg" for s in info["sizes"]]
                for u in urls:
                    status, headers, _ = get(f"http://{addr}{u}", headers=True)
                    assert status == 200 and headers.get("Cache-Status") == "iiifd; hit", (u, headers)
            print(f"arrival to thumbnail and {len(info['sizes'])} sizes stored (one 4000x3000 JPEG at a time): "
                  f"median {statistics.median(took):.2f} s, max {max(took):.2f} s; every one a hit")
            # 2. Live requests idle, then during a burst of 100 arrivals.
            idle = live(addr, 15)
            warmed = metric(admin, "iiifd_watch_warmed_total")
            t = time.perf_counter()
            for i in range(5, 105):
                shutil.copy(os.path.join(outside, f"a{i:03}.jpg"), images)
            done = lambda: metric(admin, "iiifd_watch_warmed_total") >= warmed + 100
            burst = live(addr, 120, stop_when=done)
            burst_s = time.perf_counter() - t
            print(f"live renders idle:  n={len(idle)}  p50 {pct(idle, .5)*1000:.1f} ms  p99 {pct(idle, .99)*1000:.1f} ms")
            print(f"during 100 arrivals ({burst_s:.1f} s to warm them all{'' if done() else ', not finished'}):"
                  f"  n={len(burst)}  p50 {pct(burst, .5)*1000:.1f} ms  p99 {pct(burst, .99)*1000:.1f} ms")
            print(f"p99 burst / idle = {pct(burst, .99) / pct(idle, .99):.2f}x; "
                  f"p50 burst / idle = {pct(burst, .5) / pct(idle, .5):.2f}x")
        finally:
            p.kill(), p.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


main()
