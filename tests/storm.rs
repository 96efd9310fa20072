//! Fair under harvesters: a viewer opening a pyramidal TIFF keeps its tiles while 24 harvesters,
//! each with an address of its own, ask without pause for unique cold renders of other images.
//!
//! A test binary of its own: it compares the viewer's time alone with its time during the storm, so
//! no other test may share the machine's two cores while it runs (cargo runs test binaries one
//! after another). The figures beside IIPImage, in a release build, are `benches/bot_storm.py`'s.

mod common;

use common::images::{jpeg, tiled_tiff, TileCoding};
use common::{raw, Response, Server};
use image::{Rgb, RgbImage};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const W: u32 = 8000;
const H: u32 = 6000;
const TILE: u32 = 256;
const HARVESTERS: usize = 24;

/// A textured image of `w`x`h` at scale `1/2^k` of the full one (so every level shows the same
/// picture).
fn level(w: u32, h: u32, k: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x << k, y << k);
        let v = (x ^ y).wrapping_mul(2_654_435_761) >> 24;
        Rgb([(x / 32) as u8, (y / 24) as u8, v as u8])
    })
}

/// The viewer's source: 8000x6000, 256 px JPEG tiles, levels down to one tile.
fn pyramid() -> Vec<u8> {
    let mut levels = Vec::new();
    let (mut w, mut h, mut k) = (W, H, 0);
    loop {
        levels.push(level(w, h, k));
        if w <= TILE && h <= TILE {
            break;
        }
        (w, h, k) = (w.div_ceil(2), h.div_ceil(2), k + 1);
    }
    tiled_tiff(&levels, TILE, TileCoding::JpegTables, false)
}

/// The shared peer benchmark's W1 list: every tile of scale factors 8 and 4, then the centred 8x8
/// block at full resolution, as OpenSeadragon asks them of a 3.0 service.
fn viewer_tiles() -> Vec<String> {
    let mut out = Vec::new();
    let mut level_tiles = |scale: u32, keep: &dyn Fn(u32, u32) -> bool| {
        let span = TILE * scale;
        for row in 0..H.div_ceil(span) {
            for col in 0..W.div_ceil(span) {
                if !keep(col, row) {
                    continue;
                }
                let (x, y) = (col * span, row * span);
                let (w, h) = (span.min(W - x), span.min(H - y));
                let (ow, oh) = (w.div_ceil(scale), h.div_ceil(scale));
                out.push(format!(
                    "/iiif/3/viewer/{x},{y},{w},{h}/{ow},{oh}/0/default.jpg"
                ));
            }
        }
    };
    level_tiles(8, &|_, _| true);
    level_tiles(4, &|_, _| true);
    let (c0, r0) = (W.div_ceil(TILE) / 2 - 4, H.div_ceil(TILE) / 2 - 4);
    level_tiles(1, &|c, r| {
        (c0..c0 + 8).contains(&c) && (r0..r0 + 8).contains(&r)
    });
    out
}

fn get(addr: SocketAddr, path: &str, forwarded_for: &str) -> Response {
    raw(
        addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {forwarded_for}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
}

/// Every tile once, two at a time: the time it took and each tile's latency and status.
fn open_viewer(addr: SocketAddr, tiles: &[String]) -> (Duration, Vec<Duration>, Vec<u16>) {
    let queue = Arc::new(Mutex::new(tiles.to_vec()));
    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                loop {
                    let Some(path) = queue.lock().map(|mut q| q.pop()).unwrap_or(None) else {
                        return seen;
                    };
                    let t = Instant::now();
                    let r = get(addr, &path, "198.51.100.10");
                    seen.push((t.elapsed(), r.status));
                }
            })
        })
        .collect();
    let seen: Vec<(Duration, u16)> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("viewer thread"))
        .collect();
    let took = started.elapsed();
    (
        took,
        seen.iter().map(|s| s.0).collect(),
        seen.iter().map(|s| s.1).collect(),
    )
}

fn p99(mut lat: Vec<Duration>) -> Duration {
    lat.sort();
    lat[(lat.len() * 99 / 100).min(lat.len() - 1)]
}

/// What the harvesters were answered during the viewer's visit.
#[derive(Default)]
struct Harvest {
    statuses: HashMap<u16, usize>,
    /// 429s without a `Retry-After`.
    bare_refusals: usize,
}

#[test]
fn a_viewer_keeps_its_tiles_while_24_harvesters_crawl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).expect("mkdir");
    std::fs::write(images.join("viewer.tif"), pyramid()).expect("write pyramid");
    for i in 0..8 {
        let img = RgbImage::from_fn(2400, 1800, |x, y| {
            Rgb([(x / 10) as u8, (y / 8) as u8, ((x + y + i * 31) / 16) as u8])
        });
        std::fs::write(images.join(format!("other{i}.jpg")), jpeg(&img, 90)).expect("write jpeg");
    }
    let tiles = viewer_tiles();
    assert_eq!(tiles.len(), 124, "the shared benchmark's W1 list");
    let env = [
        ("IIIFD_ADMISSION__CLIENT_HEADER", "X-Forwarded-For"),
        ("IIIFD_RENDER__WORKERS", "2"),
        ("IIIFD_ADMISSION__RESERVED_WORKERS", "2"),
        // Harvesters ask three at a time: each is refused its third.
        ("IIIFD_ADMISSION__PER_CLIENT_QUEUE", "2"),
        // A stated bound the storm must keep to.
        ("IIIFD_RENDER__MAX_MEMORY_BYTES", "805306368"),
        ("IIIFD_RENDER__DECODED_CACHE_BYTES", "67108864"),
    ];

    // Alone, on a cold store.
    let alone = Server::start_on(&images, &[], &env);
    let (alone_took, alone_lat, alone_status) = open_viewer(alone.addr, &tiles);
    assert!(alone_status.iter().all(|s| *s == 200), "{alone_status:?}");
    let alone_p99 = p99(alone_lat);
    drop(alone);

    // During the storm, on another cold store.
    let s = Server::start_on(&images, &[], &env);
    let bound = s.metric("iiifd_memory_bound_bytes");
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let harvest = Arc::new(Mutex::new(Harvest::default()));
    let harvesters: Vec<_> = (0..HARVESTERS * 3)
        .map(|n| {
            let (stop, counting, harvest) = (
                Arc::clone(&stop),
                Arc::clone(&counting),
                Arc::clone(&harvest),
            );
            let addr = s.addr;
            // Three threads per harvester, one /24 each.
            let who = format!("203.0.{}.{}", n / 3 + 1, 10 + n % 3);
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    // A unique region and size of one of the other images.
                    i += 1;
                    let k = (n as u32) * 100_000 + i;
                    let (w, h) = (300 + k % 2000, 300 + (k / 7) % 1400);
                    let (x, y) = ((k * 37) % (2400 - w), (k * 53) % (1800 - h));
                    let out = 100 + (k % 600).min(w - 100);
                    let path = format!(
                        "/iiif/3/other{}.jpg/{x},{y},{w},{h}/{out},/0/default.jpg",
                        k % 8
                    );
                    let r = get(addr, &path, &who);
                    if counting.load(Ordering::Relaxed) {
                        if let Ok(mut h) = harvest.lock() {
                            *h.statuses.entry(r.status).or_default() += 1;
                            if r.status == 429 && r.header("retry-after").is_none() {
                                h.bare_refusals += 1;
                            }
                        }
                    }
                    if r.status == 429 {
                        // Not quite without pause: a bot that spins on refusals only measures
                        // the test machine's loopback.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    counting.store(true, Ordering::Relaxed);
    let (storm_took, storm_lat, storm_status) = open_viewer(s.addr, &tiles);
    std::thread::sleep(Duration::from_millis(500));
    counting.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for h in harvesters {
        h.join().expect("harvester");
    }
    let storm_p99 = p99(storm_lat);
    let peak = s.peak_rss() as f64;
    let harvest = harvest
        .lock()
        .map(|h| (h.statuses.clone(), h.bare_refusals));
    let (statuses, bare) = harvest.expect("harvest");
    eprintln!(
        "storm: viewer alone {alone_took:?} (p99 {alone_p99:?}), during the storm {storm_took:?} \
         (p99 {storm_p99:?}); harvesters {statuses:?}; peak RSS {} MiB of a bound of {} MiB",
        peak as u64 >> 20,
        bound as u64 >> 20
    );
    // The viewer gets every tile, at most 3x as slow, its p99 at most 25x.
    assert!(storm_status.iter().all(|s| *s == 200), "{storm_status:?}");
    assert!(
        storm_took <= alone_took * 3,
        "viewer took {storm_took:?} during the storm, {alone_took:?} alone"
    );
    assert!(
        storm_p99 <= alone_p99 * 25,
        "viewer p99 {storm_p99:?} during the storm, {alone_p99:?} alone"
    );
    // The harvesters are slowed, not shut out, and every refusal is a 429 with Retry-After.
    let ok = statuses.get(&200).copied().unwrap_or(0);
    assert!(ok >= 5, "harvesters got {statuses:?}");
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.get(&429).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert_eq!(bare, 0, "429s without Retry-After");
    // Memory within the stated bound.
    assert!(peak < bound, "peak RSS {peak} over the bound {bound}");
    // The metrics saw it the same way: the viewer's tiles in the cheap lane, refusals in the heavy.
    let text = s.admin_get("/metrics").text();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(
        value("iiifd_admission_wait_seconds_count{lane=\"cheap\",class=\"default\"}"),
        124.0
    );
    assert!(value("iiifd_admission_refused_total{lane=\"heavy\",class=\"default\"}") > 0.0);
    assert!(value("iiifd_admission_wait_seconds_count{lane=\"heavy\",class=\"default\"}") > 0.0);
}
