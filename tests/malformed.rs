//! A battery of malformed and hostile URLs: each must get a 4xx (or 501 for valid-but-unsupported),
//! never a 5xx, a hang or a crash.

use crate::common::{raw, Server};

fn battery() -> Vec<String> {
    let long_id = "a".repeat(10_000);
    let mut v: Vec<String> = [
        // numbers
        "/iiif/3/chart/99999999999,0,10,10/max/0/default.jpg",
        "/iiif/3/chart/0,0,99999999999999999999999,10/max/0/default.jpg",
        "/iiif/3/chart/pct:1e308,0,10,10/max/0/default.jpg",
        "/iiif/3/chart/pct:0,0,1e3,10/max/0/default.jpg",
        "/iiif/3/chart/-1,0,10,10/max/0/default.jpg",
        "/iiif/3/chart/0,0,-10,10/max/0/default.jpg",
        "/iiif/3/chart/full/-1,/0/default.jpg",
        "/iiif/3/chart/full/^999999999,/0/default.jpg",
        "/iiif/3/chart/full/^4294967295,4294967295/0/default.jpg",
        "/iiif/3/chart/full/^pct:99999999/0/default.jpg",
        "/iiif/3/chart/full/pct:NaN/0/default.jpg",
        "/iiif/3/chart/full/pct:inf/0/default.jpg",
        "/iiif/3/chart/full/max/1e1/default.jpg",
        "/iiif/3/chart/full/max/361/default.jpg",
        "/iiif/3/chart/full/max/-0/default.jpg",
        "/iiif/3/chart/full/max/0x5A/default.jpg",
        "/iiif/3/chart/full/max/99999999999999999999999999999/default.jpg",
        "/iiif/3/chart/full/0,0/0/default.jpg",
        "/iiif/3/chart/full/pct:0/0/default.jpg",
        "/iiif/3/chart/0,0,0,0/max/0/default.jpg",
        "/iiif/3/chart/1600,0,10,10/max/0/default.jpg",
        "/iiif/3/chart/pct:100,0,10,10/max/0/default.jpg",
        // empty and missing segments
        "/iiif/3/chart//max/0/default.jpg",
        "/iiif/3/chart/full//0/default.jpg",
        "/iiif/3/chart/full/max//default.jpg",
        "/iiif/3/chart/full/max/0/.jpg",
        "/iiif/3/chart/full/max/0/default.",
        "/iiif/3/chart/full/max/0/default",
        "/iiif/3//full/max/0/default.jpg",
        "/iiif/3/chart/full/max/default.jpg",
        "/iiif/3/",
        "/iiif/3",
        "/iiif/",
        "/iiif",
        "/iiif/3/chart/info.json/extra",
        "/iiif/3/chart/full/,/0/default.jpg",
        "/iiif/3/chart/full/!,/0/default.jpg",
        "/iiif/3/chart/full/!5,/0/default.jpg",
        "/iiif/3/chart/,,,/max/0/default.jpg",
        "/iiif/3/chart/1,2,3/max/0/default.jpg",
        "/iiif/3/chart/1,2,3,4,5/max/0/default.jpg",
        "/iiif/3/chart/pct:/max/0/default.jpg",
        // wrong words
        "/iiif/3/chart/FULL/max/0/default.jpg",
        "/iiif/3/chart/full/MAX/0/default.jpg",
        "/iiif/3/chart/full/full/0/default.jpg",
        "/iiif/3/chart/full/max/0/native.jpg",
        "/iiif/3/chart/full/max/0/grey.jpg",
        "/iiif/2/chart/full/full/0/grey.jpg",
        "/iiif/1/chart/full/full/0/gray.jpg",
        "/iiif/3/chart/full/max/0/default.jpeg",
        "/iiif/3/chart/full/max/0/default.exe",
        "/iiif/3/chart/full/max/0/default.jpg.png",
        "/iiif/3/chart/full/,^240/0/default.jpg",
        "/iiif/2/chart/full/^max/0/default.jpg",
        "/iiif/1/chart/square/full/0/native.jpg",
        "/iiif/1/chart/full/full/!0/native.jpg",
        // versions and routes
        "/iiif/4/chart/info.json",
        "/iiif/0/chart/info.json",
        "/iiif/3.0/chart/info.json",
        "/iiif/v3/chart/info.json",
        "/iiif/33/chart/info.json",
        "/other/3/chart/info.json",
        "/",
        // escapes and traversal
        "/iiif/3/chart%zz/info.json",
        "/iiif/3/chart%/info.json",
        "/iiif/3/chart%2/info.json",
        "/iiif/3/%00/info.json",
        "/iiif/3/chart%00.jpg/info.json",
        "/iiif/3/%ff%fe/info.json",
        "/iiif/3/../Cargo.toml/info.json",
        "/iiif/3/..%2FCargo.toml/info.json",
        "/iiif/3/%2e%2e%2fCargo.toml/info.json",
        "/iiif/3/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd/info.json",
        "/iiif/3/%252e%252e%252fCargo.toml/info.json",
        "/iiif/3/%2Fetc%2Fpasswd/info.json",
        "/iiif/3/..%5CCargo.toml/info.json",
        "/iiif/3/collection%2F..%2F..%2FCargo.toml/info.json",
        "/iiif/3/collection%2F%2Fpage/info.json",
        "/iiif/3/.%2Fchart/info.json",
        "/iiif/3/nonexistent/info.json",
        "/iiif/3/nonexistent/full/max/0/default.jpg",
        "/iiif/3/chart%0d%0aX-Injected:%201/info.json",
        "/iiif/3/a/b/full/max/0/default.jpg",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("/iiif/3/{long_id}/info.json"));
    v.push(format!("/iiif/3/{long_id}/full/max/0/default.jpg"));
    v.push(format!(
        "/iiif/3/chart/full/max/{}/default.jpg",
        "9".repeat(5000)
    ));
    v
}

#[test]
fn malformed_urls_get_4xx_and_the_server_stays_up() {
    let mut s = Server::start();
    let urls = battery();
    assert!(urls.len() >= 50, "the battery keeps at least 50 URLs");
    for url in &urls {
        let r = s.get(url);
        assert!(
            (400..500).contains(&r.status) || r.status == 501,
            "{url} -> {} {}",
            r.status,
            r.text()
        );
        assert!(r.header("x-injected").is_none(), "{url}");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{url}");
        assert!(
            !r.text().contains("[package]"),
            "{url} leaked a file outside the root"
        );
    }
    // Requests hyper itself refuses (bad request lines, oversized headers) are still answered.
    for bad in [
        b"GET /iiif/3/chart info.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        format!("GET /iiif/3/chart/info.json HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "a".repeat(100_000))
            .into_bytes(),
    ] {
        let r = raw(s.addr, &bad);
        assert!((400..500).contains(&r.status), "{}", r.status);
    }
    assert!(s.alive());
    assert_eq!(s.get("/health").status, 200);
    assert_eq!(s.get("/iiif/3/chart/info.json").status, 200);
}
