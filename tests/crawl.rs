//! Pre-warming through the admin API and `iiifd warm`.

use crate::common::{stored_objects, Server};
use std::process::Command;
use std::time::{Duration, Instant};

fn make_image(server: &Server, name: &str, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x / 23) as u8, (y / 17) as u8, ((x + y) / 41) as u8])
    });
    img.save(server.images.join(format!("{name}.jpg")))
        .expect("write test image");
}

fn post(server: &Server, path: &str, body: &str) -> crate::common::Response {
    server.admin_post(path, body)
}

fn wait_done(server: &Server, id: &str, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let state = server.admin_get(&format!("/admin/crawl/{id}")).json();
        if state["state"] == "done" || state["state"] == "cancelled" {
            return state;
        }
        assert!(Instant::now() < deadline, "crawl did not finish: {state}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// OpenSeadragon's tile URLs for one IIIF image service (iiiftilesource.js): `x,y,w,h` tiles clipped at
/// the edges, sizes `w,h` (3.0) or `w,` (2.1), `full` for levels that fit one tile.
pub(crate) fn osd_tiles(id: &str, w: u32, h: u32, version: u8) -> Vec<String> {
    let mut out = Vec::new();
    let mut s = 1u32;
    loop {
        let (lw, lh) = (w.div_ceil(s), h.div_ceil(s));
        if lw <= 512 && lh <= 512 {
            let size = if version == 3 {
                format!("{lw},{lh}")
            } else {
                format!("{lw},")
            };
            out.push(format!("/iiif/{version}/{id}/full/{size}/0/default.jpg"));
            break;
        }
        let span = 512 * s;
        for y in (0..h).step_by(span as usize) {
            for x in (0..w).step_by(span as usize) {
                let (rw, rh) = (span.min(w - x), span.min(h - y));
                let (sw, sh) = (rw.div_ceil(s), rh.div_ceil(s));
                let size = if version == 3 {
                    format!("{sw},{sh}")
                } else {
                    format!("{sw},")
                };
                out.push(format!(
                    "/iiif/{version}/{id}/{x},{y},{rw},{rh}/{size}/0/default.jpg"
                ));
            }
        }
        s *= 2;
    }
    out
}

#[test]
fn after_a_crawl_an_openseadragon_viewing_is_all_hits() {
    let s = Server::start_with(
        &[],
        &[
            ("IIIFD_RENDER__WORKERS", "2"),
            ("IIIFD_CRAWL__MAX_WORKERS", "2"),
        ],
    );
    make_image(&s, "big", 6000, 4000);
    let r = post(
        &s,
        "/admin/crawl",
        r#"{"identifiers": ["big"], "versions": [3, 2]}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap_or("").to_owned();
    let state = wait_done(&s, &id, Duration::from_secs(300));
    assert_eq!(state["failed"], 0, "{state}");
    assert!(state["rendered"].as_u64().unwrap_or(0) >= 129, "{state}");
    let renders = s.metric("iiifd_renders_total");
    for version in [3, 2] {
        for url in osd_tiles("big", 6000, 4000, version) {
            let r = s.get(&url);
            assert_eq!(r.status, 200, "{url}");
            assert_eq!(r.header("cache-status"), Some("iiifd; hit"), "{url}");
        }
    }
    assert_eq!(
        s.metric("iiifd_renders_total"),
        renders,
        "no render while the viewer's tiles are replayed"
    );
    let list = s.admin_get("/admin/crawl").json();
    assert_eq!(list[0]["id"], id.as_str());
}

#[test]
fn a_killed_crawl_resumes_without_rendering_twice() {
    let mut s = Server::start_with(
        &[],
        &[
            ("IIIFD_RENDER__WORKERS", "2"),
            ("IIIFD_CRAWL__MAX_WORKERS", "1"),
        ],
    );
    make_image(&s, "mid", 3000, 2000);
    let r = post(&s, "/admin/crawl", r#"{"identifiers": ["mid"]}"#);
    let id = r.json()["id"].as_str().unwrap_or("").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.metric("iiifd_store_objects") < 8.0 {
        assert!(Instant::now() < deadline, "crawl made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.kill9();
    // The files are the truth (the index may have lost its last half second to the kill).
    let stored_at_restart = stored_objects(&s.store).len() as f64;
    s.restart();
    let state = wait_done(&s, &id, Duration::from_secs(120));
    // Files whose entries the kill lost are indexed again by the background pass.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.metric("iiifd_store_reconcile_passes_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no reconcile pass after the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(state["failed"], 0, "{state}");
    let planned = state["planned"].as_f64().unwrap_or(0.0);
    assert!(
        stored_at_restart > 0.0 && stored_at_restart < planned,
        "killed mid-way: {stored_at_restart}/{planned}"
    );
    // Every render after the restart added a new object: nothing stored before the kill was
    // rendered again (the plan has a few duplicate keys, e.g. a level equal to a `sizes` entry).
    let objects = s.metric("iiifd_store_objects");
    assert_eq!(
        s.metric("iiifd_renders_total"),
        objects - stored_at_restart,
        "no stored derivative rendered twice"
    );
}

#[test]
fn bad_crawl_requests_and_the_warm_command() {
    let s = Server::start();
    assert_eq!(post(&s, "/admin/crawl", "{not json").status, 400);
    assert_eq!(
        post(&s, "/admin/crawl", r#"{"identifiers": ["nothing"]}"#).status,
        404
    );
    let elsewhere = r#"{"manifest": {"items": [{"id": "https://elsewhere.org/images/3/x"}]}}"#;
    assert_eq!(post(&s, "/admin/crawl", elsewhere).status, 400);
    assert_eq!(
        post(
            &s,
            "/admin/crawl",
            r#"{"identifiers": ["chart"], "formats": ["pdf"]}"#
        )
        .status,
        400
    );
    assert_eq!(s.admin_get("/admin/crawl/unknown").status, 404);

    let warm = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_iiifd"))
            .arg("warm")
            .arg("--admin")
            .arg(format!("http://{}", s.admin))
            .args(args)
            .output()
            .expect("run iiifd warm")
    };
    let out = warm(&["chart", "nothing"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a failed identifier makes warm fail");
    assert!(
        text.contains("1 failed") && text.contains("nothing"),
        "{text}"
    );
    let out = warm(&["rings", "--version", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(" done: ") && text.contains("0 failed"),
        "{text}"
    );
    // A manifest that references our services.
    let manifest = format!(
        r#"{{"items": [{{"service": [{{"id": "http://{}/iiif/3/collection%2Fpage", "type": "ImageService3"}}]}}]}}"#,
        s.addr
    );
    let path = s
        .store
        .parent()
        .map(|p| p.join("manifest.json"))
        .unwrap_or_default();
    std::fs::write(&path, manifest).expect("write manifest");
    let out = warm(&["--manifest", path.to_str().unwrap_or("")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        s.get("/iiif/3/collection%2Fpage/0,0,512,512/512,512/0/default.jpg")
            .header("cache-status"),
        Some("iiifd; hit")
    );
}

/// `crawl.watch`: a file copied into the image directory of a running server has its `!256,256`
/// thumbnail and every `sizes` entry stored before its first viewer asks, so that viewer gets hits;
/// a changed file is warmed again; other files are ignored.
#[test]
fn watch_warms_new_and_changed_sources_before_the_first_visitor() {
    let server = Server::start_with(&[], &[("IIIFD_CRAWL__WATCH", "true")]);
    let outside = tempfile::tempdir().expect("tempdir");
    let write = |w: u32, h: u32| {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x / 7) as u8, (y / 5) as u8, ((x * y) / 97) as u8])
        });
        let path = outside.path().join("new.jpg");
        img.save(&path).expect("write image");
        path
    };
    let warmed = |n: f64| {
        let started = Instant::now();
        while server.metric("iiifd_watch_warmed_total") < n {
            // A bound against a hang, not the speed figure (benches/watch_burst.py measures that).
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not warmed within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        started.elapsed()
    };
    // Into a folder made after the server started: the watch covers the whole tree.
    std::fs::create_dir(server.images.join("arrivals")).expect("mkdir");
    std::fs::write(server.images.join("arrivals/notes.txt"), b"not an image").expect("txt");
    // Asked for before it exists: a 404 the negative cache keeps for 30 s, unless the watch sees
    // the file arrive (checked below: it is served at once).
    assert_eq!(server.get("/iiif/3/arrivals%2Fnew/info.json").status, 404);
    let copied = Instant::now();
    std::fs::copy(write(1800, 1200), server.images.join("arrivals/new.jpg")).expect("copy");
    let took = warmed(1.0);
    eprintln!("warmed {:?} after the copy", copied.elapsed().max(took));
    let renders = server.metric("iiifd_renders_total");
    let check = |size: (u32, u32)| {
        let info = server.get("/iiif/3/arrivals%2Fnew/info.json").json();
        assert_eq!(
            (info["width"].as_u64(), info["height"].as_u64()),
            (Some(u64::from(size.0)), Some(u64::from(size.1)))
        );
        let sizes = info["sizes"].as_array().cloned().unwrap_or_default();
        assert!(!sizes.is_empty());
        let mut urls = vec!["/iiif/3/arrivals%2Fnew/full/!256,256/0/default.jpg".to_owned()];
        for s in sizes {
            urls.push(format!(
                "/iiif/3/arrivals%2Fnew/full/{},{}/0/default.jpg",
                s["width"], s["height"]
            ));
        }
        for u in urls {
            let r = server.get(&u);
            assert_eq!(r.status, 200, "{u}");
            assert_eq!(r.header("cache-status"), Some("iiifd; hit"), "{u}");
        }
    };
    check((1800, 1200));
    assert_eq!(
        server.metric("iiifd_renders_total"),
        renders,
        "the first visitor's thumbnail and sizes were all stored"
    );
    // Reading the file (the warm-up, the visitor) is not a change: no second arrival.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(server.metric("iiifd_watch_arrivals_total"), 1.0);
    // Replaced by another picture: warmed again, at its new size.
    std::fs::copy(write(1000, 1500), server.images.join("arrivals/new.jpg")).expect("copy");
    warmed(2.0);
    check((1000, 1500));
    assert_eq!(server.metric("iiifd_watch_failed_total"), 0.0);
}
