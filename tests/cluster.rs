//! Nodes that share no file system: the store's shared tier in an S3 bucket (SeaweedFS on
//! loopback), the images in another bucket of the same store (so every node names a source version
//! alike: by its ETag). Where the tier goes down, the images are read from each node's directory,
//! so that only the tier is missing.

use crate::common::weed::{Weed, ACCESS_KEY, SECRET_KEY};
use crate::common::Server;
use std::time::{Duration, Instant};

/// Tiles of the sample chart as a viewer asks for them, and a thumbnail.
const URLS: [&str; 6] = [
    "/iiif/3/chart/0,0,512,512/256,/0/default.jpg",
    "/iiif/3/chart/512,0,512,512/256,/0/default.jpg",
    "/iiif/3/chart/0,512,512,512/256,/0/default.jpg",
    "/iiif/2/chart/512,512,512,512/256,/0/default.jpg",
    "/iiif/3/chart/full/!200,200/0/default.jpg",
    "/iiif/2/chart/full/150,/0/default.png",
];

/// A node whose images are in the `images` bucket (see [`with_images`]).
fn node(weed: &Weed, bucket: &str) -> Server {
    let endpoint = weed.endpoint();
    node_with(
        weed,
        bucket,
        &[
            ("IIIFD_SOURCE__KIND", "s3"),
            ("IIIFD_SOURCE__S3__BUCKET", "images"),
            ("IIIFD_SOURCE__S3__ENDPOINT", endpoint.as_str()),
        ],
    )
}

/// SeaweedFS with the sample images in `images` and an empty `bucket` for the tier.
fn with_images(bucket: &str) -> Weed {
    let weed = Weed::start();
    weed.create_bucket(bucket);
    weed.create_bucket("images");
    let chart = std::fs::read(crate::common::examples().join("chart.jpg")).expect("chart");
    weed.put("images", "chart.jpg", &chart);
    weed
}

fn node_with(weed: &Weed, bucket: &str, extra: &[(&str, &str)]) -> Server {
    let endpoint = weed.endpoint();
    let mut env = vec![
        ("IIIFD_STORE__SHARED__BUCKET", bucket),
        ("IIIFD_STORE__SHARED__PREFIX", "derivatives"),
        ("IIIFD_STORE__SHARED__ENDPOINT", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ];
    env.extend_from_slice(extra);
    Server::start_with(&[], &env)
}

fn renders(s: &Server) -> f64 {
    s.metric("iiifd_renders_total")
}

/// Wait until a node's queued writes to the shared tier are done.
pub(crate) fn settle(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.metric("iiifd_shared_pending") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "shared-tier writes did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_render_on_one_node_is_a_hit_on_the_others_and_on_a_new_one() {
    let weed = with_images("shared-a");
    let mut a = node(&weed, "shared-a");
    let b = node(&weed, "shared-a");
    let from_a: Vec<Vec<u8>> = URLS
        .iter()
        .map(|u| {
            let r = a.get(u);
            assert_eq!(r.status, 200, "{u}: {}", r.text());
            r.body
        })
        .collect();
    assert_eq!(renders(&a), URLS.len() as f64);
    settle(&a);
    assert_eq!(a.metric("iiifd_shared_stored_total"), URLS.len() as f64);
    assert_eq!(
        weed.keys("shared-a").len(),
        URLS.len(),
        "one object a derivative"
    );
    for (u, body) in URLS.iter().zip(&from_a) {
        let r = b.get(u);
        assert_eq!(r.status, 200, "{u}");
        assert!(r.body == *body, "{u}: another node served other bytes");
    }
    assert_eq!(
        renders(&b),
        0.0,
        "every derivative came from the shared tier"
    );
    assert_eq!(b.metric("iiifd_shared_hits_total"), URLS.len() as f64);
    // Copied into b's own store: the second time is a local hit, no shared-tier read.
    let gets = b.metric("iiifd_shared_requests_total{backend=\"s3\",op=\"get\"}");
    for u in URLS {
        assert_eq!(b.get(u).header("cache-status"), Some("iiifd; hit"), "{u}");
    }
    assert_eq!(
        b.metric("iiifd_shared_requests_total{backend=\"s3\",op=\"get\"}"),
        gets
    );
    // The node that rendered them is gone; a new one with an empty store starts warm.
    a.kill9();
    let c = node(&weed, "shared-a");
    for (u, body) in URLS.iter().zip(&from_a) {
        let r = c.get(u);
        assert_eq!((r.status, r.body == *body), (200, true), "{u}");
    }
    assert_eq!(renders(&c), 0.0);
    // A corrupt object is a miss, removed, and replaced by the next render.
    let key = weed.keys("shared-a").into_iter().next().expect("a key");
    weed.put("shared-a", &key, b"not the derivative");
    let d = node(&weed, "shared-a");
    for u in URLS {
        assert_eq!(d.get(u).status, 200, "{u}");
    }
    settle(&d);
    assert_eq!(d.metric("iiifd_shared_corrupt_total"), 1.0);
    assert_eq!(renders(&d), 1.0, "only the corrupt one rendered again");
    assert_eq!(weed.keys("shared-a").len(), URLS.len(), "and stored again");
}

#[test]
fn two_nodes_rendering_one_key_at_once_leave_one_object_and_agree() {
    let weed = with_images("shared-b");
    let a = node(&weed, "shared-b");
    let b = node(&weed, "shared-b");
    let url = "/iiif/3/chart/full/max/0/default.jpg".to_owned();
    let (ta, tb) = (
        crate::common::fire(a.addr, url.clone()),
        crate::common::fire(b.addr, url),
    );
    let (ra, rb) = (ta.join().expect("a"), tb.join().expect("b"));
    let body = |r: &Option<(String, Vec<u8>)>| {
        r.as_ref()
            .and_then(|(_, buf)| crate::common::complete_200(buf).map(<[u8]>::to_vec))
            .expect("a whole 200")
    };
    assert!(body(&ra) == body(&rb), "the two answers differ");
    settle(&a);
    settle(&b);
    assert_eq!(
        weed.keys("shared-b").len(),
        1,
        "one object in the shared tier"
    );
    let stored = a.metric("iiifd_shared_stored_total") + b.metric("iiifd_shared_stored_total");
    assert_eq!(stored, 1.0);
}

#[test]
fn an_unreachable_shared_tier_never_fails_a_request() {
    let mut weed = Weed::start();
    weed.create_bucket("shared-c");
    let s = node_with(&weed, "shared-c", &[("IIIFD_SOURCE__TIMEOUT_SECS", "3")]);
    assert_eq!(s.get(URLS[0]).status, 200);
    weed.stop();
    for u in &URLS[1..] {
        let started = Instant::now();
        let r = s.get(u);
        assert_eq!(r.status, 200, "{u}: {}", r.text());
        // The deadline (3 s) plus one render, with room for a busy machine.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{u}: {:?}",
            started.elapsed()
        );
    }
    assert!(s.metric("iiifd_shared_errors_total{backend=\"s3\"}") >= 1.0);
    assert!(
        s.metric("iiifd_shared_skipped_total") >= 1.0,
        "after a failure the tier is left alone"
    );
    assert_eq!(renders(&s), URLS.len() as f64);
}

#[test]
fn a_crawl_on_one_node_warms_the_whole_cluster() {
    let weed = with_images("shared-d");
    let a = node(&weed, "shared-d");
    let b = node(&weed, "shared-d");
    let body = r#"{"identifiers": ["chart"], "versions": [3, 2]}"#;
    let r = crate::common::raw(
        a.admin,
        format!(
            "POST /admin/crawl HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let job = r.json()["id"].as_str().unwrap_or("").to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = a.admin_get(&format!("/admin/crawl/{job}")).json();
        if state["state"] == "done" {
            assert_eq!(state["failed"], 0, "{state}");
            break;
        }
        assert!(Instant::now() < deadline, "crawl did not finish: {state}");
        std::thread::sleep(Duration::from_millis(100));
    }
    settle(&a);
    // The node that did not crawl serves a viewer's every tile without a render.
    for v in [3, 2] {
        for u in crate::crawl::osd_tiles("chart", 1600, 1000, v) {
            assert_eq!(b.get(&u).status, 200, "{u}");
        }
    }
    assert_eq!(renders(&b), 0.0);
    assert!(b.metric("iiifd_shared_hits_total") > 0.0);
}
