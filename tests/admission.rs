//! Admission over HTTP: a client over its cap hears 429 with `Retry-After` at once while others go
//! on; a class matched by User-Agent sees images degraded and is never handed a full answer kept for
//! someone else. The scheduler's rules themselves are unit-tested (`admission::fair`,
//! `render::pool`); the viewer beside 24 harvesters is `storm.rs`.

use crate::common::inproc::InProcess;
use crate::common::{raw, Server};
use iiifd::config::ClientClass;
use image::GenericImageView;

/// A slow cold render (a large PNG at an arbitrary angle), asked as `who`.
fn slow(
    addr: std::net::SocketAddr,
    n: u32,
    who: &str,
) -> std::thread::JoinHandle<(u16, Option<String>)> {
    let url = format!(
        "/iiif/3/chart/full/{},/{}/default.png",
        1000 + n,
        (3 + n * 7) % 360
    );
    let req =
        format!("GET {url} HTTP/1.1\r\nHost: x\r\nX-Real-IP: {who}\r\nConnection: close\r\n\r\n");
    std::thread::spawn(move || {
        let r = raw(addr, req.as_bytes());
        (r.status, r.header("retry-after").map(str::to_owned))
    })
}

#[test]
fn a_client_over_its_cap_hears_429_at_once_and_others_go_on() {
    let s = Server::start_with(
        &[],
        &[
            ("IIIFD_ADMISSION__CLIENT_HEADER", "X-Real-IP"),
            ("IIIFD_ADMISSION__PER_CLIENT_QUEUE", "2"),
            ("IIIFD_RENDER__WORKERS", "1"),
            ("IIIFD_ADMISSION__RESERVED_WORKERS", "1"),
        ],
    );
    // Thirty at once from one address (of one /24 with the next): at most two are queued or
    // running at any moment, so most are refused, each at once and with Retry-After.
    let burst: Vec<_> = (0..30)
        .map(|n| {
            slow(
                s.addr,
                n,
                if n % 2 == 0 {
                    "192.0.2.1"
                } else {
                    "192.0.2.200"
                },
            )
        })
        .collect();
    let other = slow(s.addr, 99, "198.51.100.1");
    let results: Vec<(u16, Option<String>)> = burst
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(ok + refused.len(), 30, "only 200 or 429: {results:?}");
    assert!(ok >= 2 && !refused.is_empty(), "{results:?}");
    assert!(
        refused.iter().all(|r| r.1.as_deref() == Some("1")),
        "every 429 carries Retry-After: {results:?}"
    );
    assert_eq!(other.join().expect("other client").0, 200);
    let text = s.admin_get("/metrics").text();
    let refusals: f64 = text
        .lines()
        .filter(|l| l.starts_with("iiifd_admission_refused_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refusals as usize, refused.len(), "{text}");
    // Once its renders are done, the client is welcome again.
    assert_eq!(slow(s.addr, 200, "192.0.2.1").join().expect("again").0, 200);
}

#[test]
fn a_degraded_class_sees_the_small_image_and_never_a_full_answer_kept_for_others() {
    let s = InProcess::with(
        |c| {
            c.admission.classes = vec![ClientClass {
                name: "bulk".into(),
                networks: Vec::new(),
                user_agents: vec!["*bulkbot*".into()],
                share: 0.5,
                per_client_queue: 0,
                max_width: 100,
                max_area: 0,
            }]
        },
        None,
    );
    let url = "/iiif/3/chart/full/max/0/default.jpg";
    let browser = [("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")];
    let bot = [("user-agent", "Mozilla/5.0 (compatible; BulkBot/2.1)")];
    let first = s.request("GET", url, &browser);
    assert_eq!(first.image().dimensions(), (1600, 1000));
    assert!(first
        .header("cache-control")
        .unwrap_or("")
        .starts_with("public"));
    // A repeat is answered from the hit memo: for the browser, not for the bot.
    assert_eq!(
        s.request("GET", url, &browser).header("cache-status"),
        Some("iiifd; hit")
    );
    for _ in 0..2 {
        let small = s.request("GET", url, &bot);
        assert_eq!(small.status, 200);
        assert_eq!(small.image().dimensions(), (100, 63));
        assert!(
            small
                .header("cache-control")
                .unwrap_or("")
                .starts_with("private"),
            "a shared cache must not keep the class's answer"
        );
    }
    // Every region at that resolution: half the width of the image is 50 pixels.
    let half = s.request("GET", "/iiif/3/chart/0,0,800,1000/800,/0/default.jpg", &bot);
    assert_eq!(half.image().dimensions().0, 50);
    // And the browser still gets the full image.
    assert_eq!(
        s.request("GET", url, &browser).image().dimensions(),
        (1600, 1000)
    );
}

/// A render the estimate calls cheap that needs more memory than a reserved thread may give (a
/// CMYK JPEG is decoded whole at full size, where the estimate assumed a DCT-scaled decode) goes
/// round again on a general thread: answered, not refused as too large.
#[test]
fn a_cheap_render_too_big_for_a_reserved_thread_is_handed_to_a_general_one() {
    let s = InProcess::with(
        |c| {
            // Cheap: at most 300,000 pixels, so a reserved thread may decode 2.4 MB.
            c.admission.cheap_max_pixels = 300_000;
            c.admission.reserved_workers = 1;
            c.render.workers = 1;
        },
        None,
    );
    let (w, h) = (2000u16, 1500u16);
    let inks: Vec<u8> = (0..u32::from(w) * u32::from(h))
        .flat_map(|i| [(i % 251) as u8, 40, 90, 10])
        .collect();
    let mut cmyk = Vec::new();
    jpeg_encoder::Encoder::new(&mut cmyk, 90)
        .encode(&inks, w, h, jpeg_encoder::ColorType::Cmyk)
        .expect("encode CMYK");
    std::fs::write(s.images.join("inks.jpg"), cmyk).expect("write");
    // A thumbnail: viewer-shaped, and estimated at 500x375 decoded (DCT scale 1/4); the CMYK decode
    // is 2000x1500x4 = 12 MB.
    let r = s.get("/iiif/3/inks/full/!256,256/0/default.jpg");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.image().dimensions(), (256, 192));
    let waited = |lane: &str| {
        s.metric(&format!(
            "iiifd_admission_wait_seconds_count{{lane=\"{lane}\",class=\"default\"}}"
        ))
    };
    assert_eq!(
        (waited("cheap"), waited("heavy")),
        (1.0, 1.0),
        "one turn in each lane"
    );
}
