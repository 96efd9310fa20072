#!/usr/bin/env python3
"""The cluster's shared tier (store.shared): how fast a replacement node warms up, and what a hit from
the shared tier costs against a local hit. SeaweedFS on loopback holds the images and the tier.

  node A (empty store) renders the peer benchmark's W1 list (124 tiles of its 8000x6000 pyramidal
  TIFF, c=2): tiles/s by rendering; node B (empty store, same tier) asks for the same list: tiles/s
  from the shared tier; then B again: local hits. Latency p50/p99 per request, sequential (c=1), for
  a shared-tier hit and a local hit.

Needs: a release build (target/release/iiifd), SeaweedFS (tests/setup.sh), curl, the peer benchmark's
corpus ($BENCH_CACHE/corpus, made by ../shared/bench/peers.sh). Loopback only.
Usage: benches/shared_tier.py [--image source.tif] [--rounds 3]
"""
import argparse, json, os, shutil, signal, statistics, subprocess, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/iiifd")
CACHE = os.environ.get("IIIFD_TEST_CACHE", os.path.expanduser("~/.cache/iiifd-test"))
WEED = os.environ.get("IIIFD_WEED", os.path.join(CACHE, "seaweedfs-venv/bin/weed"))
CORPUS = os.path.join(os.environ.get("BENCH_CACHE", "/tmp/iiif-bench"), "corpus")
BASE = int(os.environ.get("SHARED_BENCH_PORT_BASE", "18900"))
KEY, SECRET = "bench-access", "bench-secret-key"


def osd_tiles(ident, w, h, tile):
    """The W1 list of the peer benchmark: every tile at scale factors 8 and 4, and a centred 8x8 block
    of full-resolution tiles."""
    out = []
    for s in (8, 4):
        span = tile * s
        for y in range(0, h, span):
            for x in range(0, w, span):
                rw, rh = min(span, w - x), min(span, h - y)
                out.append(f"/iiif/3/{ident}/{x},{y},{rw},{rh}/{-(-rw // s)},{-(-rh // s)}/0/default.jpg")
    cx, cy = (w // tile // 2 - 4) * tile, (h // tile // 2 - 4) * tile
    for j in range(8):
        for i in range(8):
            x, y = cx + i * tile, cy + j * tile
            out.append(f"/iiif/3/{ident}/{x},{y},{tile},{tile}/{tile},{tile}/0/default.jpg")
    return out


def curl(*args):
    return subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--aws-sigv4",
                           "aws:amz:us-east-1:s3", "--user", f"{KEY}:{SECRET}", *args],
                          capture_output=True, text=True).stdout


def get(url):
    t = time.perf_counter()
    with urllib.request.urlopen(url) as r:
        r.read()
        status = r.status
    return status, time.perf_counter() - t


def run_list(base, urls, conc):
    q, lat, lock = list(urls), [], threading.Lock()
    def worker():
        while True:
            with lock:
                if not q:
                    return
                u = q.pop(0)
            status, dt = get(base + u)
            assert status == 200, (u, status)
            with lock:
                lat.append(dt)
    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    return len(urls) / (time.perf_counter() - t), lat


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="source.tif")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    work = tempfile.mkdtemp()
    json.dump({"identities": [{"name": "b", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                               "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]},
              open(f"{work}/id.json", "w"))
    os.makedirs(f"{work}/weed")
    p = [BASE + i for i in range(1, 9)]
    weed = subprocess.Popen([WEED, "-logtostderr", "server", f"-dir={work}/weed", "-ip=127.0.0.1",
                             "-ip.bind=127.0.0.1", f"-master.port={p[0]}", f"-master.port.grpc={p[1]}",
                             f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}", "-filer",
                             f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}", "-s3", f"-s3.port={p[6]}",
                             f"-s3.port.grpc={p[7]}", f"-s3.config={work}/id.json", "-s3.port.iceberg=0",
                             "-s3.port.lance=0", "-volume.max=100", "-master.electionTimeout=1s",
                             "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
                             "-volume.preStopSeconds=0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s3 = f"http://127.0.0.1:{p[6]}"
    nodes = []
    try:
        for _ in range(240):
            if curl("-X", "PUT", s3 + "/images") == "200":
                break
            time.sleep(0.25)
        assert curl("-T", os.path.join(CORPUS, a.image), f"{s3}/images/{a.image}") == "200"
        urls = osd_tiles(a.image, 8000, 6000, 256)
        rows = []
        for r in range(a.rounds):
            bucket = f"tier{r}"
            assert curl("-X", "PUT", f"{s3}/{bucket}") == "200"
            def node(i):
                env = dict(os.environ, IIIFD_LOG__LEVEL="warn", IIIFD_SOURCE__KIND="s3",
                           IIIFD_SOURCE__S3__BUCKET="images", IIIFD_SOURCE__S3__ENDPOINT=s3,
                           IIIFD_STORE__SHARED__BUCKET=bucket, IIIFD_STORE__SHARED__ENDPOINT=s3,
                           AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
                           IIIFD_ADMIN__LISTEN=f"127.0.0.1:{BASE + 30 + i}")
                store = tempfile.mkdtemp(dir=work)
                n = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{BASE + 20 + i}", "--images",
                                      work, "--store", store], env=env, stdout=subprocess.DEVNULL)
                nodes.append(n)
                base = f"http://127.0.0.1:{BASE + 20 + i}"
                for _ in range(200):
                    try:
                        get(base + "/health")
                        break
                    except Exception:
                        time.sleep(0.05)
                get(f"{base}/iiif/3/{a.image}/info.json")
                return n, base
            na, a_base = node(0)
            render_rate, _ = run_list(a_base, urls, 2)
            nb, b_base = node(1)
            shared_rate, _ = run_list(b_base, urls, 2)
            local_rate, _ = run_list(b_base, urls, 2)
            # Sequential latencies: a third node for shared-tier hits, then its local hits.
            nc, c_base = node(2)
            _, shared_lat = run_list(c_base, urls, 1)
            _, local_lat = run_list(c_base, urls, 1)
            rows.append((render_rate, shared_rate, local_rate, pct(shared_lat, 50), pct(shared_lat, 99),
                         pct(local_lat, 50), pct(local_lat, 99)))
            for n in (na, nb, nc):
                n.terminate()
                n.wait()
            nodes.clear()
        med = [statistics.median(col) for col in zip(*rows)]
        print(f"{len(urls)} tiles of {a.image}, {a.rounds} rounds, medians (min-max):")
        names = ["node A, rendering (tiles/s, c=2)", "node B, from the shared tier (tiles/s, c=2)",
                 "node B, local hits (tiles/s, c=2)", "shared-tier hit p50 (ms, c=1)",
                 "shared-tier hit p99 (ms, c=1)", "local hit p50 (ms, c=1)", "local hit p99 (ms, c=1)"]
        for name, m, col in zip(names, med, zip(*rows)):
            print(f"| {name} | {m:,.2f} ({min(col):,.2f}-{max(col):,.2f}) |")
    finally:
        for n in nodes:
            n.kill()
        weed.send_signal(signal.SIGTERM)
        try:
            weed.wait(timeout=3)
        except subprocess.TimeoutExpired:
            weed.kill()
            weed.wait()
        for f in os.listdir("/tmp"):
            if f.startswith("seaweedfs-") and any(f.endswith(f"-{x}.sock") for x in p):
                os.remove("/tmp/" + f)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
