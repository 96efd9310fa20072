//! Remote sources against real services on loopback: the `s3` backend against SeaweedFS (a
//! distributed object store with a signed S3 gateway), the `http` backend against a small HTTP
//! file server started here. The same requests must give the same bytes as the `fs` backend.

use crate::common::weed::{Weed, ACCESS_KEY, SECRET_KEY};
use crate::common::{Response, Server};
use crate::pixels::{cases, corpus, jp2_corpus, picture, H, W};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The sources of the checks: JPEG, PNG, pyramidal TIFF and JPEG 2000.
fn sources() -> Vec<(&'static str, Vec<u8>)> {
    let pic = picture(W, H);
    let mut files: Vec<_> = corpus(&pic)
        .into_iter()
        .filter(|(n, _)| matches!(*n, "p.jpg" | "p.png" | "pyr.tif"))
        .collect();
    files.extend(
        jp2_corpus(&pic)
            .into_iter()
            .filter(|(n, _)| *n == "tiled.jp2"),
    );
    files
}

fn s3_env(weed: &Weed) -> Vec<(&'static str, String)> {
    vec![
        ("IIIFD_SOURCE__KIND", "s3".into()),
        ("IIIFD_SOURCE__S3__BUCKET", "masters".into()),
        ("IIIFD_SOURCE__S3__PREFIX", "collection/".into()),
        ("IIIFD_SOURCE__S3__ENDPOINT", weed.endpoint()),
        ("IIIFD_SOURCE__S3__REGION", "us-east-1".into()),
        ("IIIFD_SOURCE__REVALIDATE_SECS", "2".into()),
        // Long enough for a busy machine; an outage is a refused connection, answered at once.
        ("IIIFD_SOURCE__TIMEOUT_SECS", "10".into()),
        ("IIIFD_SOURCE__BLOCK_BYTES", "65536".into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
    ]
}

fn start(env: &[(&'static str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with(&[], &env)
}

fn metric(server: &Server, name: &str) -> f64 {
    server.metric(name)
}

/// GETs made so far, once the background read-aheads have finished (the count holds still).
fn gets(server: &Server, backend: &str) -> f64 {
    let name = format!("iiifd_source_requests_total{{backend=\"{backend}\",op=\"get\"}}");
    let mut last = metric(server, &name);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = metric(server, &name);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Every request shape of the pixel checks, and info.json, answered with the same bytes by both.
fn same_answers(remote: &Server, local: &Server, names: &[&str]) {
    for name in names {
        let info = format!("/iiif/3/{name}/info.json");
        let (a, b) = (remote.get(&info), local.get(&info));
        assert_eq!(a.status, 200, "{info}: {}", a.text());
        assert_eq!(a.json()["width"], b.json()["width"], "{info}");
        assert_eq!(a.json()["tiles"], b.json()["tiles"], "{info}");
        for case in cases() {
            let url = format!("/iiif/3/{name}/{}", case.path);
            let (a, b) = (remote.get(&url), local.get(&url));
            assert_eq!((a.status, b.status), (200, 200), "{url}: {}", a.text());
            assert!(
                a.body == b.body,
                "{url}: the backends rendered different bytes"
            );
        }
    }
}

#[test]
fn the_s3_source_serves_what_the_directory_serves_and_survives_an_outage() {
    let mut weed = Weed::start();
    weed.create_bucket("masters");
    let files = sources();
    for (name, bytes) in &files {
        weed.put("masters", &format!("collection/{name}"), bytes);
    }
    let env = s3_env(&weed);
    let s3 = start(&env);
    let local = Server::start();
    for (name, bytes) in &files {
        std::fs::write(local.images.join(name), bytes).expect("write");
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    same_answers(&s3, &local, &names);
    // Identifiers resolve as with fs: without their extension too; a missing one is 404.
    assert_eq!(s3.get("/iiif/3/pyr/info.json").json()["width"], W);
    let missing = s3.get("/iiif/3/nothing-here/info.json");
    assert_eq!(missing.status, 404, "{}", missing.text());

    // A crawl of everything lists the bucket below the prefix.
    let r = admin_post(&s3, "/admin/crawl", r#"{"all": true, "levels": [8]}"#);
    assert_eq!(r.status, 202, "{}", r.text());
    let job = r.json()["id"].as_str().unwrap_or("").to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let state = loop {
        let state = s3.admin_get(&format!("/admin/crawl/{job}")).json();
        if state["state"] == "done" {
            break state;
        }
        assert!(Instant::now() < deadline, "crawl did not finish: {state}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(state["failed"], 0, "{state}");
    // p (p.jpg and p.png list as one identifier), pyr, tiled: at least one rendering each.
    assert!(state["planned"].as_u64().unwrap_or(0) >= 3, "{state}");

    // A cold tile of a pyramidal TIFF whose directory is read: at most two GETs (its block, and
    // the next one read ahead). Uncompressed tiles (192 KiB each) and 64 KiB blocks, so that the
    // tile's bytes did not come with the directory's.
    let levels: Vec<image::RgbImage> = (0..3)
        .map(|k| {
            let pic = picture(W, H);
            let (w, h) = (W.div_ceil(1 << k), H.div_ceil(1 << k));
            image::imageops::resize(&pic, w, h, image::imageops::FilterType::Triangle)
        })
        .collect();
    let raw = crate::common::images::tiled_tiff(
        &levels,
        256,
        crate::common::images::TileCoding::Raw,
        false,
    );
    weed.put("masters", "collection/cold.tif", &raw);
    assert_eq!(s3.get("/iiif/3/cold.tif/info.json").status, 200);
    let before = gets(&s3, "s3");
    let tile = s3.get("/iiif/3/cold.tif/512,256,256,256/256,/0/default.jpg");
    assert_eq!(tile.status, 200, "{}", tile.text());
    let used = gets(&s3, "s3") - before;
    assert!(used <= 2.0, "a cold tile took {used} GETs");

    // A replaced object: new bytes and a new ETag once the revalidation window has passed.
    let url = "/iiif/3/p.png/full/max/0/default.png";
    let first = s3.get(url);
    let other = crate::pixels::picture(W / 2, H / 2);
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(other)
        .write_to(&mut png, image::ImageFormat::Png)
        .expect("png");
    weed.put("masters", "collection/p.png", &png.into_inner());
    std::thread::sleep(Duration::from_millis(2_500));
    let second = s3.get(url);
    assert_eq!(second.status, 200);
    assert_eq!(
        second.image().width(),
        W / 2,
        "the replaced object is served"
    );
    assert_ne!(first.header("etag"), second.header("etag"));

    // SeaweedFS down: what the store holds is still served; what needs the source gets 502/504
    // within the deadline, and the server stays up.
    weed.stop();
    std::thread::sleep(Duration::from_millis(2_500)); // past the revalidation window
    let hit = s3.get(url);
    assert_eq!(hit.status, 200, "a stored derivative, through the outage");
    // The info.json of an image seen before: from the last version seen, kept briefly, and saying so.
    let info = s3.get("/iiif/3/p.png/info.json");
    assert_eq!(info.status, 200, "{}", info.text());
    assert_eq!(info.json()["width"], W / 2);
    assert_eq!(
        info.header("cache-status"),
        Some("iiifd; detail=source-unavailable")
    );
    assert!(
        info.header("cache-control")
            .unwrap_or_default()
            .contains("max-age=60"),
        "{:?}",
        info.header("cache-control")
    );
    let started = Instant::now();
    // Another tile of cold.tif: its bytes were never read.
    let cold = s3.get("/iiif/3/cold.tif/1024,768,176,132/176,/0/default.jpg");
    assert!(
        matches!(cold.status, 502 | 504),
        "{}: {}",
        cold.status,
        cold.text()
    );
    assert!(
        cold.text().contains("s3"),
        "the message names the backend: {}",
        cold.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !cold.text().contains(SECRET_KEY) && !cold.text().contains(ACCESS_KEY),
        "credentials in a message"
    );
    let unseen = s3.get("/iiif/3/never-seen/info.json");
    assert!(matches!(unseen.status, 502 | 504), "{}", unseen.status);
    let metrics = s3.admin_get("/metrics").text();
    assert!(!metrics.contains(SECRET_KEY) && !metrics.contains(ACCESS_KEY));
    assert!(metric(&s3, "iiifd_source_errors_total{backend=\"s3\"}") >= 1.0);

    // Back: served again.
    weed.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = s3.get("/iiif/3/cold.tif/1024,768,176,132/176,/0/default.jpg");
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served again: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Fresh answers again: no note, the configured max-age.
    let info = s3.get("/iiif/3/p.png/info.json");
    assert_eq!(info.status, 200);
    assert_eq!(info.header("cache-status"), None);
}

fn admin_post(server: &Server, path: &str, body: &str) -> Response {
    crate::common::raw(
        server.admin,
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// No whole-object copy in the source cache differs in length from its object.
fn cache_is_whole(store: &Path, expected_len: usize) {
    let dir = store.join("sources");
    for entry in std::fs::read_dir(&dir).expect("sources dir").flatten() {
        if entry.path().is_file() {
            let len = entry.metadata().expect("meta").len() as usize;
            assert_eq!(len, expected_len, "a torn copy in {}", dir.display());
        }
    }
}

#[test]
fn a_kill_during_a_source_download_leaves_no_torn_copy() {
    let weed = Weed::start();
    weed.create_bucket("masters");
    let big = crate::common::images::flat_huge_jpeg(6000, 4000);
    weed.put("masters", "collection/big.jpg", &big);
    // The download goes through a relay that holds it half-way, so the kill lands mid-download
    // every time (on loopback a whole download takes a few milliseconds).
    let s3_addr = weed
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("weed's S3 address");
    let relay = crate::common::relay::Relay::start(s3_addr, big.len() as u64 / 2);
    let mut env = s3_env(&weed);
    for (k, v) in env.iter_mut() {
        if *k == "IIIFD_SOURCE__S3__ENDPOINT" {
            *v = format!("http://{}", relay.addr);
        }
    }
    let mut s3 = start(&env);
    let tmp = s3.store.join("sources/.tmp");
    let fire = crate::common::fire(s3.addr, "/iiif/3/big.jpg/info.json".into());
    let deadline = Instant::now() + Duration::from_secs(20);
    let partial = loop {
        let partial: Vec<u64> = std::fs::read_dir(&tmp)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .collect()
            })
            .unwrap_or_default();
        if partial.iter().any(|&n| n > 0) {
            break partial;
        }
        assert!(
            Instant::now() < deadline && !fire.is_finished(),
            "the download never showed a partial temp file in {}",
            tmp.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        partial.iter().all(|&n| n < big.len() as u64),
        "held half-way: {partial:?} of {}",
        big.len()
    );
    s3.kill9();
    let _ = fire.join();
    cache_is_whole(&s3.store, big.len());
    relay.release();
    s3.restart();
    assert_eq!(
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0),
        0,
        "the temp file is removed at start"
    );
    let info = s3.get("/iiif/3/big.jpg/info.json");
    assert_eq!(info.status, 200, "{}", info.text());
    assert_eq!(info.json()["width"], 6000);
    cache_is_whole(&s3.store, big.len());
}

/// A small HTTP file server: HEAD, GET with one Range, ETag and If-Match, and `/away/...`
/// redirecting to another host (127.0.0.2).
struct FileServer {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileServer {
    fn start(root: PathBuf) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let root = root.clone();
                        std::thread::spawn(move || serve(stream, &root, addr.port()));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FileServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, root: &Path, port: u16) {
    let _ = stream.set_nonblocking(false);
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let (method, path) = (method.to_owned(), path.to_owned());
        let mut range = None;
        let mut if_match = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("range: bytes=") {
                let v = v.trim();
                if let Some((a, b)) = v.split_once('-') {
                    range = a.parse::<u64>().ok().zip(b.parse::<u64>().ok());
                }
            }
            if lower.starts_with("if-match:") {
                if_match = Some(h[9..].trim().to_owned());
            }
        }
        let mut body_of = |status: &str, headers: String, body: &[u8], head: bool| {
            let _ = write!(
                out,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{headers}\r\n",
                body.len()
            );
            if !head {
                let _ = out.write_all(body);
            }
        };
        if let Some(rest) = path.strip_prefix("/away/") {
            let loc = format!("http://127.0.0.2:{port}/files/{rest}");
            body_of("302 Found", format!("Location: {loc}\r\n"), b"", false);
            continue;
        }
        let Some(rel) = path.strip_prefix("/files/") else {
            body_of("404 Not Found", String::new(), b"", method == "HEAD");
            continue;
        };
        let Ok(data) = std::fs::read(root.join(rel.replace("%20", " "))) else {
            body_of("404 Not Found", String::new(), b"", method == "HEAD");
            continue;
        };
        let etag = format!("\"{}\"", data.len());
        if if_match.as_ref().is_some_and(|m| *m != etag) {
            body_of("412 Precondition Failed", String::new(), b"", false);
            continue;
        }
        let head = method == "HEAD";
        match range {
            Some((a, b)) if !head && (a as usize) < data.len() => {
                let end = (b as usize + 1).min(data.len());
                let cr = format!(
                    "ETag: {etag}\r\nContent-Range: bytes {a}-{}/{}\r\n",
                    end - 1,
                    data.len()
                );
                body_of("206 Partial Content", cr, &data[a as usize..end], false);
            }
            _ => body_of("200 OK", format!("ETag: {etag}\r\n"), &data, head),
        }
        let _ = out.flush();
    }
}

#[test]
fn the_http_source_serves_what_the_directory_serves_and_only_from_allowed_hosts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = sources();
    for (name, bytes) in &files {
        std::fs::write(dir.path().join(name), bytes).expect("write");
    }
    let http = FileServer::start(dir.path().to_path_buf());
    let port = http.addr.port();
    let env: Vec<(&'static str, String)> = vec![
        ("IIIFD_SOURCE__KIND", "http".into()),
        (
            "IIIFD_SOURCE__HTTP__URL_TEMPLATE",
            format!("http://127.0.0.1:{port}/{{identifier}}"),
        ),
        (
            "IIIFD_SOURCE__HTTP__ALLOWED_HOSTS",
            format!("[\"127.0.0.1:{port}\"]"),
        ),
        ("IIIFD_SOURCE__TIMEOUT_SECS", "4".into()),
    ];
    let remote = start(&env);
    let local = Server::start();
    for (name, bytes) in &files {
        std::fs::write(local.images.join(name), bytes).expect("write");
    }
    // Identifiers are paths below the template: files/NAME.
    for (name, _) in &files {
        let a = remote.get(&format!(
            "/iiif/3/files%2F{name}/full/!300,300/0/default.jpg"
        ));
        let b = local.get(&format!("/iiif/3/{name}/full/!300,300/0/default.jpg"));
        assert_eq!((a.status, b.status), (200, 200), "{name}: {}", a.text());
        assert!(a.body == b.body, "{name}: different bytes");
    }
    assert_eq!(
        remote.get("/iiif/3/files%2Fp/info.json").status,
        200,
        "extension tried"
    );
    assert_eq!(remote.get("/iiif/3/files%2Fnone.png/info.json").status, 404);
    // A redirect to a host that is not allowed is refused, clearly.
    let away: Response = remote.get("/iiif/3/away%2Fp.png/info.json");
    assert_eq!(away.status, 502, "{}", away.text());
    assert!(away.text().contains("redirect"), "{}", away.text());
    assert!(metric(&remote, "iiifd_source_errors_total{backend=\"http\"}") >= 1.0);
}

/// All requests the S3 source has made (HEAD, ranged and whole GETs, LIST).
fn source_requests(server: &Server) -> f64 {
    ["head", "get", "list"]
        .iter()
        .map(|op| {
            metric(
                server,
                &format!("iiifd_source_requests_total{{backend=\"s3\",op=\"{op}\"}}"),
            )
        })
        .sum()
}

/// `source.negative_secs`: a flood of requests for an identifier that names nothing costs the
/// bucket one lookup per window, not one per request; an image uploaded after a 404 is served
/// at once when a crawl asks for it, otherwise once the window has passed.
#[test]
fn a_flood_of_missing_identifiers_costs_the_bucket_one_lookup() {
    let weed = Weed::start();
    weed.create_bucket("masters");
    let files = sources();
    let (_, jpg) = files
        .iter()
        .find(|(n, _)| *n == "p.jpg")
        .expect("a jpg in the corpus");
    let mut env = s3_env(&weed);
    env.push(("IIIFD_SOURCE__NEGATIVE_SECS", "10".into()));
    let s3 = start(&env);

    let before = source_requests(&s3);
    let flood = Instant::now();
    for i in 0..1000 {
        let url = if i % 2 == 0 {
            "/iiif/3/guess/info.json"
        } else {
            "/iiif/3/guess/full/max/0/default.jpg"
        };
        let r = s3.get(url);
        assert_eq!(r.status, 404, "{url}: {}", r.text());
    }
    let used = source_requests(&s3) - before;
    // One lookup per 10 s window (a loaded machine may take longer than one for the 1,000): a
    // HEAD for the name and for each of the 11 extensions a source may have (the issue's "at
    // most 10" counted nine), and not one more for the other requests.
    let windows = 1.0 + (flood.elapsed().as_secs_f64() / 10.0).floor();
    assert!(
        used >= 1.0 && used <= 12.0 * windows,
        "1,000 requests for a missing identifier cost {used} source requests in {:?}",
        flood.elapsed()
    );
    assert!(metric(&s3, "iiifd_source_negative_hits_total") >= 1000.0 - windows);

    // Uploaded after a 404: still 404 from memory within the window...
    for name in ["late", "crawled"] {
        assert_eq!(s3.get(&format!("/iiif/3/{name}/info.json")).status, 404);
    }
    let missed = Instant::now();
    weed.put("masters", "collection/late.jpg", jpg);
    weed.put("masters", "collection/crawled.jpg", jpg);
    assert_eq!(s3.get("/iiif/3/late/info.json").status, 404);
    assert_eq!(s3.get("/iiif/3/crawled/info.json").status, 404);
    // ...but a crawl that names it asks the bucket, and from then on it is served.
    let r = admin_post(
        &s3,
        "/admin/crawl",
        r#"{"identifiers": ["crawled"], "levels": [8]}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(s3.get("/iiif/3/crawled/info.json").status, 200);
    assert_eq!(
        s3.get("/iiif/3/late/info.json").status,
        404,
        "within the window"
    );
    // After the window the bucket is asked again.
    std::thread::sleep(Duration::from_millis(10_300).saturating_sub(missed.elapsed()));
    let r = s3.get("/iiif/3/late/info.json");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["width"], W);
}
