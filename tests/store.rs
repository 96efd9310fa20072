//! The derivative store end to end: hits in any spelling, single flight, budget, crash safety, repair,
//! X-Accel-Redirect, write failures, index rebuild, the upgrade of a store of format 2.

use crate::common::{raw, stored_objects, Server};
use std::process::Command;
use std::time::{Duration, Instant};

fn store_cmd(store: &std::path::Path, op: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_iiifd"))
        .arg("store")
        .args(op)
        .arg("--store")
        .arg(store)
        .env("IIIFD_LOG__LEVEL", "warn")
        .output()
        .expect("run iiifd store");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn equivalent_spelling_is_a_hit_without_rendering() {
    let s = Server::start();
    let first = s.get("/iiif/3/chart/full/pct:50/0/default.jpg");
    assert_eq!(
        first.header("cache-status"),
        Some("iiifd; fwd=miss; stored")
    );
    let renders = s.metric("iiifd_renders_total");
    // The cold request was one miss, though the render worker looked again before rendering.
    assert_eq!(s.metric("iiifd_store_misses_total"), 1.0);
    for spelling in [
        "/iiif/3/chart/0,0,1600,1000/800,500/0/default.jpg",
        "/iiif/2/chart/full/800,/0/default.jpg",
    ] {
        let again = s.get(spelling);
        assert_eq!(again.status, 200);
        assert_eq!(
            again.header("cache-status"),
            Some("iiifd; hit"),
            "{spelling}"
        );
        assert_eq!(again.header("etag"), first.header("etag"));
        assert_eq!(again.body, first.body);
    }
    assert_eq!(s.metric("iiifd_renders_total"), renders);
    assert_eq!(s.metric("iiifd_store_hits_total"), 2.0);
    assert_eq!(s.metric("iiifd_store_objects"), 1.0);
}

#[test]
fn repeat_hits_are_answered_from_the_memo_as_the_usual_way_would() {
    let s = Server::start();
    let url = "/iiif/3/chart/full/!200,200/0/default.jpg";
    let memo = || s.metric("iiifd_memo_answers_total");
    assert_eq!(
        s.get(url).header("cache-status"),
        Some("iiifd; fwd=miss; stored")
    );
    // The first hit goes the usual way (and leaves its answer); the next is answered from it.
    let usual = s.get(url);
    assert_eq!(usual.header("cache-status"), Some("iiifd; hit"));
    assert_eq!(memo(), 0.0);
    let repeat = s.get(url);
    assert_eq!(memo(), 1.0);
    assert_eq!((repeat.status, &repeat.body), (200, &usual.body));
    let without_date = |r: &crate::common::Response| {
        let mut h: Vec<_> = r
            .headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("date"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(without_date(&repeat), without_date(&usual));
    let head = s.request("HEAD", url, &[]);
    assert_eq!(memo(), 2.0);
    assert!(head.body.is_empty());
    assert_eq!(without_date(&head), without_date(&usual));

    // Another public origin gets its own Link header, never the kept one.
    let proxied = [
        ("X-Forwarded-Host", "images.example.org"),
        ("X-Forwarded-Proto", "https"),
    ];
    let other = s.request("GET", url, &proxied);
    assert!(
        other
            .header("link")
            .is_some_and(|l| l.starts_with("<https://images.example.org/iiif/3/chart/")),
        "{:?}",
        other.header("link")
    );
    assert_eq!(memo(), 2.0);
    assert_eq!(
        s.request("GET", url, &proxied).header("link"),
        other.header("link")
    );
    assert_eq!(memo(), 3.0);
    // A conditional request is answered from the key, the usual way.
    let etag = usual.header("etag").expect("etag");
    assert_eq!(
        s.request("GET", url, &[("If-None-Match", etag)]).status,
        304
    );
    assert_eq!(memo(), 3.0);

    // The source replaced: the next request gets the new version, not the kept answer.
    let picture = image::RgbImage::from_fn(300, 200, |x, _| image::Rgb([x as u8, 90, 200]));
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(picture)
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .expect("encode");
    std::fs::write(s.images.join("chart.jpg.tmp"), &jpeg).expect("write");
    std::fs::rename(s.images.join("chart.jpg.tmp"), s.images.join("chart.jpg")).expect("rename");
    let replaced = s.get(url);
    assert_eq!(replaced.status, 200);
    assert_eq!(
        replaced.header("cache-status"),
        Some("iiifd; fwd=miss; stored")
    );
    assert_ne!(replaced.header("etag"), usual.header("etag"));
    assert_eq!(
        (replaced.image().width(), replaced.image().height()),
        (200, 133)
    );
    assert_eq!(memo(), 3.0);

    // Without a memory tier there is no memo: every hit goes the usual way.
    let off = Server::start_with(&[], &[("IIIFD_STORE__MEMORY_BYTES", "0")]);
    let statuses: Vec<_> = (0..4)
        .map(|_| off.get(url).header("cache-status").map(str::to_owned))
        .collect();
    assert_eq!(statuses[3].as_deref(), Some("iiifd; hit"));
    assert_eq!(off.metric("iiifd_memo_answers_total"), 0.0);
}

#[test]
fn hundred_concurrent_cold_requests_render_once() {
    let s = Server::start();
    let addr = s.addr;
    let url = "/iiif/3/chart/full/^2400,/7/default.png";
    let before = s.metric("iiifd_renders_total");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(100));
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let b = std::sync::Arc::clone(&barrier);
            std::thread::spawn(move || {
                b.wait();
                raw(
                    addr,
                    format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
            })
        })
        .collect();
    let responses: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert!(
        responses.iter().all(|r| r.status == 200),
        "{:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        responses.iter().all(|r| r.body == responses[0].body),
        "all bodies identical"
    );
    assert_eq!(
        s.metric("iiifd_renders_total") - before,
        1.0,
        "exactly one render"
    );
    let collapsed = responses
        .iter()
        .filter(|r| r.header("cache-status") == Some("iiifd; fwd=miss; collapsed"))
        .count();
    let stored = responses
        .iter()
        .filter(|r| r.header("cache-status") == Some("iiifd; fwd=miss; stored"))
        .count();
    assert_eq!(stored, 1);
    assert_eq!(collapsed as f64, s.metric("iiifd_store_collapsed_total"));
}

#[test]
fn budget_is_enforced_in_the_background() {
    let max: u64 = 300_000;
    let s = Server::start_with(&[], &[("IIIFD_STORE__MAX_BYTES", "300000")]);
    let mut written = 0u64;
    let mut largest = 0u64;
    let mut i = 0;
    while written < 3 * max {
        let r = s.get(&format!("/iiif/3/chart/full/{},/0/default.png", 200 + i));
        assert_eq!(r.status, 200);
        written += r.body.len() as u64;
        largest = largest.max(r.body.len() as u64);
        i += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bytes = s.metric("iiifd_store_bytes") as u64;
        if bytes <= max + largest {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "store still at {bytes} bytes, budget {max}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.metric("iiifd_store_evictions_total") > 0.0);
}

#[test]
fn corrupted_object_is_detected_and_repaired() {
    let s = Server::start();
    let url = "/iiif/3/rings/full/120,/0/default.png";
    let good = s.get(url);
    let files: Vec<_> = stored_objects(&s.store);
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&files[0], &bytes).expect("corrupt");
    let again = s.get(url);
    assert_eq!(again.status, 200);
    assert_eq!(again.body, good.body, "correct bytes after repair");
    assert_eq!(
        again.header("cache-status"),
        Some("iiifd; fwd=miss; stored")
    );
    assert_eq!(s.metric("iiifd_store_repairs_total"), 1.0);
    // Truncated: a miss too.
    std::fs::write(&files[0], &good.body[..10]).expect("truncate");
    assert_eq!(s.get(url).body, good.body);
    assert_eq!(s.get(url).header("cache-status"), Some("iiifd; hit"));
}

#[test]
fn accel_redirect_hands_hits_to_the_proxy() {
    let s = Server::start_with(&[], &[("IIIFD_STORE__ACCEL_REDIRECT", "/_iiifd/")]);
    let url = "/iiif/3/chart/full/300,/0/default.jpg";
    let miss = s.get(url);
    assert!(!miss.body.is_empty());
    assert!(miss.header("x-accel-redirect").is_none());
    let hit = s.get(url);
    assert_eq!(hit.status, 200);
    assert!(hit.body.is_empty());
    assert_eq!(hit.header("content-type"), Some("image/jpeg"));
    assert_eq!(hit.header("etag"), miss.header("etag"));
    let target = hit.header("x-accel-redirect").unwrap_or("");
    let rel = target
        .strip_prefix("/_iiifd/")
        .unwrap_or_else(|| panic!("{target}"));
    assert_eq!(
        std::fs::read(s.store.join("objects").join(rel)).expect("object"),
        miss.body
    );
    // The next repeat is answered from the hit memo, with the same hand-off.
    let again = s.get(url);
    assert_eq!(s.metric("iiifd_memo_answers_total"), 1.0);
    assert_eq!(
        again.header("x-accel-redirect"),
        hit.header("x-accel-redirect")
    );
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), hit.header("etag"));
    // A stored file cut short behind the store's back is never handed over, repeat or not.
    std::fs::write(s.store.join("objects").join(rel), &miss.body[..10]).expect("truncate");
    let after = s.get(url);
    assert_eq!(s.metric("iiifd_memo_answers_total"), 1.0);
    assert!(after.header("x-accel-redirect").is_none());
    assert_eq!(after.body, miss.body, "rendered again and sent");
}

#[test]
fn store_failures_do_not_fail_requests() {
    let s = Server::start_with(
        &[],
        &[("IIIFD_STORE__MIN_FREE_BYTES", "18446744073709551615")],
    );
    let r = s.get("/iiif/3/chart/full/100,/0/default.jpg");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-status"), Some("iiifd; fwd=miss"));
    assert!(r.image().width() == 100);
    assert_eq!(s.metric("iiifd_store_write_errors_total"), 1.0);
    assert_eq!(s.metric("iiifd_store_objects"), 0.0);
}

#[test]
fn index_is_rebuilt_and_offline_tools_work() {
    let mut s = Server::start();
    let url = "/iiif/3/chart/full/150,/0/default.jpg";
    let first = s.get(url);
    s.get("/iiif/3/rings/full/50,/0/default.png");
    // The running server holds the index: offline tools refuse with a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_iiifd"))
        .args(["store", "stats", "--store"])
        .arg(&s.store)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.kill9();
    std::fs::remove_dir_all(s.store.join("index")).expect("delete index");
    let (code, stats) = store_cmd(&s.store, &["stats"]);
    assert_eq!(code, 0);
    assert_eq!(stats["stats"]["objects"], 2, "{stats}");
    let (code, purged) = store_cmd(&s.store, &["purge", "--id", "nothing"]);
    assert_eq!((code, purged["purged"].as_u64()), (0, Some(0)));
    s.restart();
    let again = s.get(url);
    assert_eq!(again.header("cache-status"), Some("iiifd; hit"));
    assert_eq!(again.body, first.body);
    // Purge through the admin listener: the identifier's list beside the objects survived the lost
    // index, so the object rendered before it is purged with the one rendered since.
    assert_eq!(s.get("/iiif/3/rings/full/60,/0/default.png").status, 200);
    let purge = s.admin_post("/admin/store/purge?id=rings", "");
    assert_eq!(purge.status, 200);
    assert_eq!(purge.json()["purged"], 2);
    assert_eq!(s.admin_get("/admin/store/stats").json()["objects"], 1);
    let left: Vec<_> = stored_objects(&s.store);
    assert_eq!(left.len(), 1, "only chart's object is left: {left:?}");
}

#[test]
fn kill_9_during_cold_renders_never_corrupts() {
    let mut s = Server::start();
    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    for cycle in 0..10 {
        let addr = s.addr;
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let url = format!(
                    "/iiif/3/chart/full/{},/{}/default.jpg",
                    300 + cycle * 20 + i,
                    i % 4 * 90
                );
                crate::common::fire(addr, url)
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + 37 * cycle as u64));
        s.kill9();
        for h in handles {
            let Some((url, buf)) = h.join().expect("thread") else {
                continue;
            };
            if let Some(body) = crate::common::complete_200(&buf) {
                assert!(
                    image::load_from_memory(body).is_ok(),
                    "a complete 200 body must be an image: {url}"
                );
                seen.push((url, body.to_vec()));
            }
        }
        let (code, report) = store_cmd(&s.store, &["verify"]);
        assert_eq!(code, 0, "cycle {cycle}: {report}");
        assert_eq!(report["verify"]["bad"], 0, "cycle {cycle}: {report}");
        s.restart();
    }
    // Everything served before a crash is what the store serves now, byte for byte.
    for (url, body) in &seen {
        let r = s.get(url);
        assert_eq!(&r.body, body, "{url}");
    }
}

/// `tests/fixtures/store-format2.tar.gz` holds a store written by the release before store format 3
/// (main at 81a3f1f, release build): the example images (their modification times are part of the
/// keys, so they were set to a whole second, which tar keeps), the store after 13 renders, each
/// then hit once, and a clean stop, and `manifest.json`, the SHA-256 of each response.
#[test]
fn a_store_written_by_the_last_release_is_upgraded_in_place() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/store-format2.tar.gz");
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(tmp.path())
        .status()
        .expect("tar");
    assert!(status.success());
    let manifest: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(tmp.path().join("manifest.json")).expect("manifest"))
            .expect("manifest JSON");
    assert_eq!(manifest.len(), 13);
    let sha256 = |b: &[u8]| -> String {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    let s = Server::start_prepared(tmp, &[], &[]);
    // Served at once, before the upgrade's walk has reached them: every object kept.
    for (url, expected) in &manifest {
        let r = s.get(url);
        assert_eq!(r.status, 200, "{url}");
        assert_eq!(r.header("cache-status"), Some("iiifd; hit"), "{url}");
        assert_eq!(
            &sha256(&r.body),
            expected,
            "{url}: the bytes stored by the old release"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.metric("iiifd_store_reconcile_passes_total") < 1.0 {
        assert!(Instant::now() < deadline, "no recount");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.metric("iiifd_store_objects"), 13.0);
    assert_eq!(s.metric("iiifd_store_totals_approximate"), 0.0);
    assert_eq!(s.metric("iiifd_renders_total"), 0.0, "none rendered again");
    assert_eq!(s.metric("iiifd_store_reconcile_dropped_total"), 0.0);
    assert_eq!(
        s.metric("iiifd_store_adopted_total"),
        0.0,
        "every file had its record"
    );
    let store = s.store.clone();
    // A clean stop (`terminate` leaves the files in place).
    assert!(s.terminate().success());
    let (code, verify) = store_cmd(&store, &["verify"]);
    assert_eq!(code, 0, "{verify}");
    assert_eq!(verify["verify"]["checked"], 13, "{verify}");
    assert_eq!(verify["verify"]["bad"], 0, "{verify}");
    assert_eq!(
        verify["verify"]["unhashed"], 0,
        "every object has its hash: {verify}"
    );
    assert!(
        verify["recovery"]["upgrading"] == false && verify["recovery"]["reconcile_needed"] == false,
        "upgraded once, and closed cleanly: {verify}"
    );
    let _ = std::fs::remove_dir_all(store.parent().unwrap_or(&store));
}

/// The `iiifd store` command and the admin API run one list of operations: the same names, the
/// same reports; reindex only offline.
#[test]
fn the_command_and_the_admin_api_offer_the_same_maintenance() {
    let mut s = Server::start();
    assert_eq!(s.get("/iiif/3/rings/full/120,/0/default.png").status, 200);
    let online = s.admin_get("/admin/store/stats").json();
    assert_eq!(online["objects"], 1, "{online}");
    assert_eq!(s.admin_post("/admin/store/reindex", "").status, 404);
    assert_eq!(s.admin_get("/admin/store/gc").status, 405);
    assert_eq!(s.admin_post("/admin/store/purge?id=", "").status, 400);
    let verify = s.admin_post("/admin/store/verify", "").json();
    s.kill9();
    let offline = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_iiifd"))
            .arg("store")
            .args(args)
            .arg("--store")
            .arg(&s.store)
            .env("IIIFD_LOG__LEVEL", "error")
            .output()
            .expect("iiifd store");
        assert!(out.status.success(), "{args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    assert_eq!(offline(&["stats"])["stats"]["objects"], online["objects"]);
    assert_eq!(offline(&["verify"])["verify"], verify);
    assert_eq!(offline(&["reindex"])["stats"]["objects"], 1);
    let purged = offline(&["purge", "--id", "rings"]);
    assert_eq!(
        (purged["purged"].clone(), purged["stats"]["objects"].clone()),
        (1.into(), 0.into()),
        "{purged}"
    );
}
