#!/usr/bin/env python3
"""Cold OpenSeadragon tiles from one flat 8000x6000 JPEG (peers.sh W1 shape), 4 at a time: tiles per second
with the decoded-source cache off and on, and from the JPEG's tiled copy with the cache off (what a later
session sees after the cache has moved on or the server restarted). Loopback only; standard library only.

    benches/cold_tiles.py        (needs target/release/iiifd; built if missing)
"""
import http.client, math, os, shutil, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "iiifd")
W, H, T = 8000, 6000, 512


def get(addr, path):
    host, port = addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=600)
    c.request("GET", path)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def start(images, store, **env):
    e = dict(os.environ, IIIFD_LOG__LEVEL="warn", IIIFD_ADMIN__LISTEN="127.0.0.1:0", IIIFD_LIMITS__MAX_AREA="50000000", **env)
    p = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--images", images, "--store", store], stdout=subprocess.PIPE, env=e, text=True)
    addr = p.stdout.readline().split("http://")[1].split("/")[0]
    admin = p.stdout.readline().split("http://")[1].split("/")[0]
    p.admin = admin
    return p, addr


def tiles():
    out, s = [], 1
    while True:
        span = T * s
        for y in range(0, H, span):
            for x in range(0, W, span):
                w, h = min(span, W - x), min(span, H - y)
                out.append(f"/iiif/3/big/{x},{y},{w},{h}/{math.ceil(w / s)},{math.ceil(h / s)}/0/default.jpg")
        if math.ceil(W / s) <= T and math.ceil(H / s) <= T:
            return out
        s *= 2


def main():
    if not os.path.exists(BIN):
        subprocess.check_call(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    work = tempfile.mkdtemp()
    images = os.path.join(work, "images")
    shutil.copytree(os.path.join(ROOT, "examples", "images"), images)
    p, addr = start(images, os.path.join(work, "seed"))
    status, big = get(addr, f"/iiif/3/chart/full/^{W},{H}/0/default.jpg")
    p.terminate(); p.wait()
    assert status == 200
    open(os.path.join(images, "big.jpg"), "wb").write(big)
    paths = tiles()
    modes = (("decoded cache off", "0", False), ("decoded cache on (256 MiB)", str(256 << 20), False),
             ("tiled copy, cache off", "0", True))
    for label, budget, copy in modes:
        p, addr = start(images, os.path.join(work, f"store-{budget}-{copy}"), IIIFD_RENDER__DECODED_CACHE_BYTES=budget)
        if copy:
            # One zoomed-in tile (not in the measured list) makes iiifd write the copy once idle.
            assert get(addr, "/iiif/3/big/100,100,300,300/150,150/0/default.jpg")[0] == 200
            deadline = time.time() + 120
            while b"iiifd_tiled_copies_total 1" not in get(p.admin, "/metrics")[1]:
                assert time.time() < deadline, "no tiled copy"
                time.sleep(0.1)
        t = time.perf_counter()
        with ThreadPoolExecutor(4) as ex:
            statuses = list(ex.map(lambda q: get(addr, q)[0], paths))
        dt = time.perf_counter() - t
        rss = [l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmHWM")][0].split()[1]
        p.terminate(); p.wait()
        assert all(s == 200 for s in statuses), statuses
        print(f"{label:28s} {len(paths)} cold tiles in {dt:6.2f} s = {len(paths) / dt:7.1f} tiles/s, peak RSS {int(rss) // 1024} MiB")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
