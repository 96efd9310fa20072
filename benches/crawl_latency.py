#!/usr/bin/env python3
"""Crawl benchmark (issue 5): latency of live cold tile requests on an idle server, then while a crawl of
20 large images runs on the same server. Loopback only; standard library only.

    benches/crawl_latency.py [--images 20] [--tiles 60]

Needs a release build (target/release/iiifd; built if missing).
"""
import argparse, http.client, json, math, os, shutil, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "iiifd")


def get(addr, path, method="GET", body=None):
    host, port = addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=300)
    c.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def tiles(ident, w, h, scale, tile=512):
    span = tile * scale
    for y in range(0, h, span):
        for x in range(0, w, span):
            rw, rh = min(span, w - x), min(span, h - y)
            yield f"/iiif/3/{ident}/{x},{y},{rw},{rh}/{math.ceil(rw / scale)},{math.ceil(rh / scale)}/0/default.jpg"


def measure(addr, paths):
    lat = []
    for p in paths:
        t = time.perf_counter()
        status, _ = get(addr, p)
        lat.append(time.perf_counter() - t)
        assert status == 200, (status, p)
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    return {"n": len(lat), "p50_ms": round(pct(0.5), 1), "p99_ms": round(pct(0.99), 1), "max_ms": round(lat[-1] * 1000, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--tiles", type=int, default=60)
    a = ap.parse_args()
    if not os.path.exists(BIN):
        subprocess.check_call(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    work = tempfile.mkdtemp()
    images = os.path.join(work, "images")
    shutil.copytree(os.path.join(ROOT, "examples", "images"), images)
    env = dict(os.environ, IIIFD_LOG__LEVEL="warn", IIIFD_ADMIN__LISTEN="127.0.0.1:0")
    proc = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--images", images, "--store", os.path.join(work, "store")],
                            stdout=subprocess.PIPE, env=env, text=True)
    try:
        addr = proc.stdout.readline().split("http://")[1].split("/")[0]
        admin = proc.stdout.readline().split("http://")[1].split("/")[0]
        # Large sources made by iiifd itself from the sample chart: 6000x4000 JPEGs.
        status, big = get(addr, "/iiif/3/chart/full/^6000,4000/0/default.jpg")
        assert status == 200
        for i in range(a.images):
            open(os.path.join(images, f"crawl{i}.jpg"), "wb").write(big)
        for name in ("live-idle", "live-busy"):
            open(os.path.join(images, f"{name}.jpg"), "wb").write(big)
        idle_paths = list(tiles("live-idle", 6000, 4000, 1))[: a.tiles]
        busy_paths = list(tiles("live-busy", 6000, 4000, 1))[: a.tiles]
        idle = measure(addr, idle_paths)
        body = json.dumps({"identifiers": [f"crawl{i}" for i in range(a.images)]}).encode()
        status, reply = get(admin, "/admin/crawl", "POST", body)
        assert status == 202, reply
        job = json.loads(reply)["id"]
        time.sleep(2)  # let the crawl get going
        busy = measure(addr, busy_paths)
        _, state = get(admin, f"/admin/crawl/{job}")
        state = json.loads(state)
        get(admin, f"/admin/crawl/{job}", "DELETE")
        print(f"idle server:      {idle}")
        print(f"during the crawl: {busy}  (crawl {state['state']}, {state['next']}/{state['planned']} done, {state['rendered']} rendered)")
        print(f"p99 ratio busy/idle = {busy['p99_ms'] / idle['p99_ms']:.2f}x (aim: <= 3x)")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
