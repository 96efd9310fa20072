//! Overload: 2,000 concurrent connections from 2,000 clients asking for distinct cold renders. The
//! excess gets 503 with Retry-After at once (no client is over its own cap: the queue is full of
//! single renders), memory stays bounded, cache hits keep being served, and the server recovers.
//! One client asking too much is `storm.rs`'s and `admission.rs`'s.

use crate::common::{raw, Server};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a properly initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[test]
fn two_thousand_cold_requests_get_503_not_a_meltdown() {
    raise_fd_limit();
    let s = Server::start_with(
        &[],
        &[
            ("IIIFD_RENDER__WORKERS", "2"),
            ("IIIFD_RENDER__QUEUE", "32"),
            ("IIIFD_ADMISSION__CLIENT_HEADER", "X-Forwarded-For"),
        ],
    );
    let hit_url = "/iiif/3/chart/full/256,/0/default.jpg";
    assert_eq!(s.get(hit_url).status, 200);
    let addr = s.addr;
    let n = 2000;
    let barrier = Arc::new(Barrier::new(n + 1));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let b = Arc::clone(&barrier);
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    b.wait();
                    let url = format!(
                        "/iiif/3/chart/full/{},/{}/default.jpg",
                        100 + i % 1400,
                        i / 1400
                    );
                    // A client of its own (its own /24) for every request.
                    let who = format!("10.{}.{}.1", i / 256, i % 256);
                    let r = raw(
                        addr,
                        format!(
                            "GET {url} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {who}\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    (r.status, r.header("retry-after").map(str::to_owned))
                })
                .expect("spawn")
        })
        .collect();
    // Cache hits measured while the storm runs.
    let storming = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&storming);
    let hitter = std::thread::spawn(move || {
        let mut lat = Vec::new();
        while flag.load(Ordering::Relaxed) || lat.len() < 20 {
            let t = Instant::now();
            let r = raw(
                addr,
                format!("GET {hit_url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            assert_eq!(r.status, 200);
            assert_eq!(r.header("cache-status"), Some("iiifd; hit"));
            lat.push(t.elapsed());
        }
        lat
    });
    barrier.wait();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    storming.store(false, Ordering::Relaxed);
    let mut lat = hitter.join().expect("hitter");
    lat.sort();
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    let ok = results.iter().filter(|(st, _)| *st == 200).count();
    let busy = results.iter().filter(|(st, _)| *st == 503).count();
    assert_eq!(
        ok + busy,
        n,
        "only 200 or 503: {:?}",
        results
            .iter()
            .map(|r| r.0)
            .filter(|&x| x != 200 && x != 503)
            .collect::<Vec<_>>()
    );
    assert!(busy > 0 && ok > 0, "ok {ok}, busy {busy}");
    assert!(results
        .iter()
        .filter(|(st, _)| *st == 503)
        .all(|(_, ra)| ra.as_deref() == Some("1")));
    let peak = s.peak_rss();
    assert!(peak < 512 << 20, "peak RSS {} MiB", peak >> 20);
    assert!(
        p99 < Duration::from_secs(2),
        "hit p99 {p99:?} during the storm"
    );
    // Fully recovered: a cold render and the pool is idle again.
    assert_eq!(s.get("/iiif/3/chart/full/77,/0/default.jpg").status, 200);
    assert_eq!(s.metric("iiifd_pool_pending"), 0.0);
    eprintln!(
        "overload: {n} requests, {ok} rendered, {busy} got 503; hit p99 {:?} over {} hits; peak RSS {} MiB",
        p99,
        lat.len(),
        peak >> 20
    );
}
