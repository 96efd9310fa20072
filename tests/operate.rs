//! Operating iiifd: Flask-IIIF routes, `iiifd url`, HTTP/2 prior knowledge, the header timeout, the
//! Envoy config, metrics by version and status.

use crate::common::Server;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn flask_iiif_routes_serve_the_same_images() {
    let s = Server::start_with(&[], &[("IIIFD_COMPAT__FLASK_IIIF", "true")]);
    let info = s.get("/api/multimedia/image/v2/chart/info.json");
    assert_eq!(info.status, 200);
    assert_eq!(
        info.json()["@id"],
        format!("http://{}/api/multimedia/image/v2/chart", s.addr)
    );
    let flask = s.get("/api/multimedia/image/v2/chart/full/200,/0/default.jpeg");
    let native = s.get("/iiif/2/chart/full/200,/0/default.jpg");
    assert_eq!(flask.status, 200);
    assert_eq!(
        flask.header("etag"),
        native.header("etag"),
        "one derivative for both routes"
    );
    assert_eq!(flask.body, native.body);
    assert_eq!(
        s.get("/api/multimedia/image/v1/chart/full/full/0/native.png")
            .status,
        200
    );
    let base = s.get("/api/multimedia/image/v2/chart");
    assert_eq!(base.status, 303);
    assert_eq!(
        base.header("location"),
        Some(format!("http://{}/api/multimedia/image/v2/chart/info.json", s.addr).as_str())
    );
    assert_eq!(
        s.get("/api/multimedia/image/v3/chart/info.json").status,
        404
    );
    drop(s);
    let off = Server::start();
    assert_eq!(
        off.get("/api/multimedia/image/v2/chart/info.json").status,
        404,
        "off by default"
    );
}

#[test]
fn url_command_prints_valid_urls() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_iiifd"))
            .arg("url")
            .args(args)
            .env("IIIFD_PUBLIC_BASE_URL", "https://img.example.org/iiif")
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    assert_eq!(
        run(&["books/p 1"]),
        (
            Some(0),
            "https://img.example.org/iiif/3/books%2Fp%201/full/max/0/default.jpg".into()
        )
    );
    assert_eq!(
        run(&[
            "a",
            "--version",
            "2",
            "--size",
            "300,",
            "--region",
            "square",
            "--format",
            "png"
        ]),
        (
            Some(0),
            "https://img.example.org/iiif/2/a/square/300,/0/default.png".into()
        )
    );
    assert_eq!(
        run(&["a", "--version", "1"]).1,
        "https://img.example.org/iiif/1/a/full/full/0/native.jpg"
    );
    assert_eq!(
        run(&["a", "--info"]).1,
        "https://img.example.org/iiif/3/a/info.json"
    );
    assert_eq!(
        run(&["a", "--size", "0,"]).0,
        Some(2),
        "invalid parameters are refused"
    );
}

#[test]
fn http2_prior_knowledge_on_the_same_listener() {
    let s = Server::start();
    let mut stream = TcpStream::connect(s.addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    // The HTTP/2 connection preface and an empty SETTINGS frame.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("write");
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).expect("a frame back");
    assert_eq!(
        head[3], 0x04,
        "the server answers with its SETTINGS frame: {head:?}"
    );
}

#[test]
fn slow_headers_are_cut_off() {
    let s = Server::start_with(&[], &[("IIIFD_HTTP__HEADER_TIMEOUT_MS", "500")]);
    let mut slow = TcpStream::connect(s.addr).expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let started = Instant::now();
    slow.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "connection closed by the header timeout"
    );
    // Others are served meanwhile and afterwards.
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn envoy_config_routes_only_iiif_to_iiifd() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy/envoy.yaml"),
    )
    .expect("envoy.yaml");
    assert!(text.contains("prefix: \"/iiif/\""));
    assert!(
        text.contains("port_value: 8080"),
        "points at iiifd's default listen port"
    );
    assert!(
        !text.contains("port_value: 8081"),
        "the admin listener is never routed"
    );
    assert!(
        text.contains("KEEP_UNCHANGED"),
        "encoded slashes in identifiers pass unchanged"
    );
    assert!(text.contains("http2_protocol_options"), "h2c upstream");
}

/// The Envoy cluster config hashes the same identifier as the nginx cluster site for every URL shape a
/// viewer sends (all API versions, Flask-IIIF's routes, encoded slashes), so the two recipes place an
/// image alike. Envoy itself is not installable on the test machines (not in Debian, no PyPI wheel); the
/// nginx site is tested live in `deploy.rs`.
#[test]
fn envoy_cluster_config_hashes_the_identifier_as_nginx_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let envoy =
        std::fs::read_to_string(root.join("deploy/envoy/envoy-cluster.yaml")).expect("yaml");
    let nginx =
        std::fs::read_to_string(root.join("deploy/nginx/iiifd-cluster.conf")).expect("conf");
    for needle in [
        "lb_policy: RING_HASH",
        "header_name: \":path\"",
        "KEEP_UNCHANGED",
        "/health",
    ] {
        assert!(envoy.contains(needle), "envoy-cluster.yaml lacks {needle}");
    }
    assert!(
        !envoy.contains("port_value: 8081"),
        "the admin listener is never routed"
    );
    // Envoy: the hash key is the regex_rewrite of :path (RE2; YAML double-quoted, so `\\1` is `\1`).
    let pattern = envoy
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("regex: \"^/(?:iiif"))
        .map(|rest| format!("^/(?:iiif{}", rest.trim_end_matches('"')))
        .expect("the hash policy's pattern");
    let envoy_re = regex::Regex::new(&pattern).expect("RE2 pattern is a valid regex");
    let route_re = regex::Regex::new("^/(iiif|api/multimedia/image)/.*").expect("route");
    assert!(envoy.contains("regex: \"^/(iiif|api/multimedia/image)/.*\""));
    // nginx: the map's patterns (PCRE named groups).
    let nginx_res: Vec<regex::Regex> = nginx
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix('~'))
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| regex::Regex::new(p).expect("nginx map pattern"))
        .collect();
    assert_eq!(nginx_res.len(), 2, "one pattern per route family");
    let by_nginx = |path: &str| {
        nginx_res
            .iter()
            .find_map(|re| re.captures(path).map(|c| c["ident"].to_owned()))
            .unwrap_or_else(|| path.to_owned())
    };
    let by_envoy = |path: &str| envoy_re.replace(path, "$1").into_owned();
    let cases = [
        ("/iiif/3/chart/info.json", "chart"),
        ("/iiif/2/chart/0,0,512,512/512,/0/default.jpg", "chart"),
        ("/iiif/1/chart/full/full/0/native", "chart"),
        ("/iiif/3/chart", "chart"),
        (
            "/iiif/3/collection%2Fpage/full/max/0/default.jpg",
            "collection%2Fpage",
        ),
        (
            "/api/multimedia/image/v2/chart/full/full/0/default.jpg",
            "chart",
        ),
        (
            "/api/multimedia/image/v1/collection%2Fpage/info.json",
            "collection%2Fpage",
        ),
        ("/iiif/3/chart/info.json?x=1", "chart"),
    ];
    for (path, ident) in cases {
        assert!(route_re.is_match(path), "{path} is routed");
        assert_eq!(by_envoy(path), ident, "envoy: {path}");
        assert_eq!(by_nginx(path), ident, "nginx: {path}");
    }
    assert!(!route_re.is_match("/metrics") && !route_re.is_match("/admin/purge"));
}

#[test]
fn metrics_count_requests_by_version_and_status() {
    let s = Server::start();
    s.get("/iiif/3/chart/info.json");
    s.get("/iiif/2/nothing/info.json");
    let text = s.admin_get("/metrics").text();
    assert!(
        text.contains("iiifd_requests_total{version=\"3\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("iiifd_requests_total{version=\"2\",status=\"404\"} 1"),
        "{text}"
    );
    assert!(text.contains("iiifd_render_duration_seconds_count"));
    assert_eq!(s.admin_get("/ready").status, 200);
    assert_eq!(s.admin_get("/nope").status, 404);
}

#[test]
fn every_cache_reports_its_bytes_within_the_memory_bound() {
    let s = Server::start();
    assert_eq!(s.get("/iiif/3/chart/full/200,/0/default.jpg").status, 200);
    assert_eq!(s.get("/iiif/3/chart/full/200,/0/default.jpg").status, 200);
    let text = s.admin_get("/metrics").text();
    let series = |prefix: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|rest| {
                let (labels, value) = rest.rsplit_once(' ')?;
                Some((labels.to_owned(), value.parse().ok()?))
            })
            .collect()
    };
    // The parts add up to the bound.
    let parts = series("iiifd_memory_bound_part_bytes{");
    assert_eq!(parts.len(), 7, "{parts:?}");
    let sum: f64 = parts.iter().map(|(_, v)| v).sum();
    assert_eq!(sum, s.metric("iiifd_memory_bound_bytes"));
    let part = |name: &str| {
        parts
            .iter()
            .find(|(l, _)| l.contains(&format!("part=\"{name}\"")))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no part {name}"))
    };
    // Every cache is within its budget, and the budgets fit the part they count in.
    let held = series("iiifd_cache_bytes{");
    let budgets = series("iiifd_cache_budget_bytes{");
    for cache in ["located", "decoded", "tiff_directories", "memo"] {
        assert!(
            budgets
                .iter()
                .any(|(l, _)| l.contains(&format!("cache=\"{cache}\""))),
            "{cache} not reported: {budgets:?}"
        );
    }
    for ((labels, bytes), (same, budget)) in held.iter().zip(&budgets) {
        assert_eq!(labels, same);
        assert!(bytes <= budget, "{labels}: {bytes} > {budget}");
    }
    let in_base: f64 = budgets
        .iter()
        .filter(|(l, _)| l.contains("part=\"base\""))
        .map(|(_, v)| v)
        .sum();
    assert!(in_base < part("base"), "{in_base} of {}", part("base"));
    let decoded = budgets
        .iter()
        .find(|(l, _)| l.contains("cache=\"decoded\""))
        .map(|(_, v)| *v);
    assert_eq!(decoded, Some(part("decoded_cache")));
    // The render and the repeat left something in the caches they went through.
    let located = held
        .iter()
        .find(|(l, _)| l.contains("cache=\"located\""))
        .map(|(_, v)| *v);
    assert!(located.is_some_and(|b| b > 0.0), "{held:?}");
}
