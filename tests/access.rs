//! Access control (IIIF Authorization Flow 2.0) over HTTP, against the real binary: open,
//! restricted and degraded identifiers answer as their policy says for every kind of request
//! (info.json, probe, image, crawl, purge); the access service sets the cookie only for a visitor
//! the fronting proxy named; tokens are bound to their origin; forged and expired credentials are
//! refused; a stored derivative of a restricted image is never served without the cookie; the
//! institution's decision service decides, is cached, and a slow or failing one means 503.

use crate::common::{Response, Server};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "test-secret-0123456789abcdef0123456789";
const ORIGIN: &str = "https://viewer.example.org";

/// A configuration file with the access rules of these tests (and `extra` TOML in `[access]`).
fn config(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    let text = format!(
        r#"
[access]
secret = "{SECRET}"
cookie_secure = false
{extra}

[[access.rules]]
identifiers = "chart.jpg"
policy = "restricted"

[[access.rules]]
identifiers = "rings.*"
policy = "degraded"
max_width = 64
"#
    );
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

fn start(extra: &str, env: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
    let (dir, path) = config(extra);
    let path = path.to_string_lossy().into_owned();
    (Server::start_with(&["--config", &path], env), dir)
}

fn get(s: &Server, path: &str, headers: &[(&str, &str)]) -> Response {
    s.request("GET", path, headers)
}

/// The `iiifd_access=...` pair of a `Set-Cookie` answer.
fn cookie_of(r: &Response) -> String {
    let set = r.header("set-cookie").expect("Set-Cookie");
    set.split(';').next().expect("pair").to_owned()
}

/// The JSON a token service page posts, and the origin it posts to.
fn posted(r: &Response) -> (serde_json::Value, String) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.header("x-frame-options").is_none(), "must be framable");
    let text = r.text();
    let start = text.find("postMessage(").expect("postMessage") + "postMessage(".len();
    let end = text[start..].find(");</script>").expect("end") + start;
    let args = &text[start..end];
    // `{...}, "origin"`: the message is the JSON before the last top-level comma.
    let split = args.rfind(", \"").expect("two arguments");
    let message = serde_json::from_str(&args[..split]).expect("message JSON");
    let origin = serde_json::from_str(&args[split + 2..]).expect("origin JSON");
    (message, origin)
}

/// A genuine cookie value for `user` at `origin` expiring at `expires`, signed as iiifd signs them
/// (`{expires}.{hex origin}.{hex user}.{hex HMAC-SHA256}` over a purpose tag and that text).
fn signed_cookie(user: &str, origin: &str, expires: u64) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let body = format!(
        "{expires}.{}.{}",
        hex(origin.as_bytes()),
        hex(user.as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mac = ring::hmac::sign(&key, format!("iiifd-cookie-v1\n{body}").as_bytes());
    format!("iiifd_access={body}.{}", hex(mac.as_ref()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[test]
fn policies_decide_every_request_kind() {
    let (s, _cfg) = start("", &[]);
    let chart = "/iiif/3/chart.jpg/full/max/0/default.jpg";

    // info.json: 200 for everyone; restricted images list the Auth 2.0 services.
    let info = get(&s, "/iiif/3/chart.jpg/info.json", &[]);
    assert_eq!(info.status, 200);
    let info = info.json();
    assert_eq!(
        info["@context"][0],
        "http://iiif.io/api/auth/2/context.json"
    );
    assert_eq!(
        info["@context"][1],
        "http://iiif.io/api/image/3/context.json"
    );
    let probe_service = &info["service"][0];
    assert_eq!(probe_service["type"], "AuthProbeService2");
    let probe_url = probe_service["id"].as_str().expect("probe id").to_owned();
    assert_eq!(
        probe_url,
        format!("http://{}/iiif/auth/probe/chart.jpg", s.addr)
    );
    let access_service = &probe_service["service"][0];
    assert_eq!(access_service["profile"], "active");
    assert_eq!(
        access_service["service"][0]["type"],
        "AuthAccessTokenService2"
    );
    let open_info = get(&s, "/iiif/3/collection%2Fpage.tif/info.json", &[]).json();
    assert_eq!(
        open_info["@context"],
        "http://iiif.io/api/image/3/context.json"
    );
    assert!(open_info.get("service").is_none());
    let v2 = get(&s, "/iiif/2/chart.jpg/info.json", &[]).json();
    assert_eq!(
        v2["service"][0]["@context"],
        "http://iiif.io/api/auth/2/context.json"
    );

    // Anonymous: the probe says 401 (HTTP 200), images are refused before the store, open ones
    // are public.
    let probe_path = "/iiif/auth/probe/chart.jpg";
    let p = get(&s, probe_path, &[]);
    assert_eq!(p.status, 200);
    assert_eq!(p.header("cache-control"), Some("no-store"));
    let p = p.json();
    assert_eq!(
        (p["type"].as_str(), p["status"].as_u64()),
        (Some("AuthProbeResult2"), Some(401))
    );
    assert!(p["heading"]["en"][0].is_string());
    let denied = get(&s, chart, &[]);
    assert_eq!(denied.status, 401);
    assert_eq!(denied.header("cache-control"), Some("no-store"));
    // Aliases of the file are as restricted: without the extension, and through a symbolic link.
    std::os::unix::fs::symlink(s.images.join("chart.jpg"), s.images.join("alias.jpg"))
        .expect("link");
    for alias in ["chart", "alias.jpg", "alias"] {
        let path = format!("/iiif/3/{alias}/full/max/0/default.jpg");
        assert_eq!(get(&s, &path, &[]).status, 401, "{path}");
        let info = get(&s, &format!("/iiif/3/{alias}/info.json"), &[]).json();
        assert_eq!(info["service"][0]["type"], "AuthProbeService2", "{alias}");
    }
    let open = get(
        &s,
        "/iiif/3/collection%2Fpage.tif/full/64,/0/default.jpg",
        &[],
    );
    assert_eq!(open.status, 200);
    assert!(open
        .header("cache-control")
        .is_some_and(|c| c.starts_with("public")));
    assert_eq!(
        get(&s, "/iiif/auth/probe/collection%2Fpage.tif", &[]).json()["status"],
        200
    );
    assert_eq!(get(&s, "/iiif/auth/probe/nothing.jpg", &[]).status, 404);

    // Degraded: anonymous visitors see at most 64 px of the whole, at every region, under keys
    // of their own; the probe offers that size as a substitute.
    let rings = get(&s, "/iiif/3/rings.png/info.json", &[]).json();
    let (rw, rh) = (
        rings["width"].as_u64().expect("w"),
        rings["height"].as_u64().expect("h"),
    );
    assert!(rw > 64);
    let small = get(&s, "/iiif/3/rings.png/full/max/0/default.png", &[]);
    assert_eq!(small.status, 200);
    assert_eq!(small.image().width(), 64);
    assert!(small
        .header("cache-control")
        .is_some_and(|c| c.starts_with("private")));
    assert!(small.header("vary").is_some_and(|v| v.contains("Cookie")));
    assert!(
        small
            .header("link")
            .is_some_and(|l| l.contains("/full/64,")),
        "{:?}",
        small.header("link")
    );
    let half = format!(
        "/iiif/3/rings.png/0,0,{},{}/max/0/default.png",
        rw / 2,
        rh / 2
    );
    assert_eq!(get(&s, &half, &[]).image().width(), 32);
    let p = get(&s, "/iiif/auth/probe/rings.png", &[]).json();
    assert_eq!(p["status"], 401);
    assert_eq!(p["substitute"][0]["width"], 64);
    let sub = p["substitute"][0]["id"].as_str().expect("substitute id");
    let sub_path = sub
        .split(&s.addr.to_string())
        .nth(1)
        .expect("on this server");
    assert_eq!(get(&s, sub_path, &[]).image().width(), 64);

    // Signing in: only a visitor the proxy named gets the cookie.
    let access = format!("/iiif/auth/access?origin={ORIGIN}");
    let nobody = get(&s, &access, &[]);
    assert_eq!(nobody.status, 401);
    assert!(nobody.header("set-cookie").is_none());
    assert_eq!(
        get(&s, "/iiif/auth/access", &[("X-Remote-User", "alice")]).status,
        400
    );
    let signed_in = get(&s, &access, &[("X-Remote-User", "alice")]);
    assert_eq!(signed_in.status, 200);
    assert!(signed_in.text().contains("window.close()"));
    let set = signed_in.header("set-cookie").expect("cookie").to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("Path=/iiif"),
        "{set}"
    );
    let cookie = cookie_of(&signed_in);
    let with = [("Cookie", cookie.as_str())];

    // With the cookie: restricted and full-size degraded images, private to the visitor.
    let r = get(&s, chart, &with);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("cache-control").map(|c| c.starts_with("private")),
        Some(true)
    );
    assert!(r.header("vary").is_some_and(|v| v.contains("Cookie")));
    assert_eq!(
        get(&s, "/iiif/3/rings.png/full/max/0/default.png", &with)
            .image()
            .width() as u64,
        rw
    );
    // Stored now: a hit for the visitor, and still refused without the cookie.
    assert_eq!(
        get(&s, chart, &with).header("cache-status"),
        Some("iiifd; hit")
    );
    assert_eq!(get(&s, chart, &[]).status, 401);
    // A restricted answer is never kept for repeats (the hit memo): every one passes the gate.
    let memo = s.metric("iiifd_memo_answers_total");
    for _ in 0..2 {
        assert_eq!(
            get(&s, chart, &with).header("cache-status"),
            Some("iiifd; hit")
        );
        assert_eq!(get(&s, chart, &[]).status, 401);
    }
    assert_eq!(s.metric("iiifd_memo_answers_total"), memo);
    // An open image's repeats are.
    for _ in 0..3 {
        let open = get(
            &s,
            "/iiif/3/collection%2Fpage.tif/full/64,/0/default.jpg",
            &[],
        );
        assert_eq!(open.status, 200);
    }
    assert!(s.metric("iiifd_memo_answers_total") > memo);
    let forged = [("Cookie", "iiifd_access=1999999999.00.00.00")];
    assert_eq!(get(&s, chart, &forged).status, 401);
    let expired = signed_cookie("alice", ORIGIN, now() - 5);
    assert_eq!(get(&s, chart, &[("Cookie", expired.as_str())]).status, 401);
    let genuine = signed_cookie("bob", ORIGIN, now() + 600);
    assert_eq!(get(&s, chart, &[("Cookie", genuine.as_str())]).status, 200);

    // The token service: a token for the cookie's own origin, reasons otherwise.
    let token_path = |origin: &str| format!("/iiif/auth/token?messageId=m1&origin={origin}");
    let (msg, to) = posted(&get(&s, &token_path(ORIGIN), &with));
    assert_eq!(to, ORIGIN);
    assert_eq!(
        (msg["type"].as_str(), msg["messageId"].as_str()),
        (Some("AuthAccessToken2"), Some("m1"))
    );
    assert!(msg["expiresIn"].as_u64().is_some_and(|e| e > 0 && e <= 300));
    let token = msg["accessToken"].as_str().expect("token").to_owned();
    assert!(
        !cookie.contains(&token),
        "the token must not reveal the cookie"
    );
    for (origin, headers, profile) in [
        ("https://elsewhere.example.org", &with[..], "invalidOrigin"),
        (ORIGIN, &[][..], "missingAspect"),
        (ORIGIN, &forged[..], "invalidAspect"),
        (ORIGIN, &[("Cookie", expired.as_str())][..], "expiredAspect"),
    ] {
        let (msg, to) = posted(&get(&s, &token_path(origin), headers));
        assert_eq!(to, origin);
        assert_eq!(
            (msg["type"].as_str(), msg["profile"].as_str()),
            (Some("AuthAccessTokenError2"), Some(profile))
        );
        assert_eq!(msg["messageId"], "m1");
    }
    assert_eq!(get(&s, "/iiif/auth/token?messageId=m2", &with).status, 400);
    let (msg, _) = posted(&get(
        &s,
        &format!("/iiif/auth/token?origin={ORIGIN}"),
        &with,
    ));
    assert_eq!(msg["profile"], "invalidRequest");

    // The probe with the token: allowed from its origin only; forged tokens are anonymous.
    let bearer = format!("Bearer {token}");
    let probe = |headers: &[(&str, &str)]| get(&s, probe_path, headers).json()["status"].clone();
    assert_eq!(
        probe(&[("Authorization", &bearer), ("Origin", ORIGIN)]),
        200
    );
    assert_eq!(probe(&[("Authorization", &bearer)]), 200);
    assert_eq!(
        probe(&[
            ("Authorization", &bearer),
            ("Origin", "https://evil.example.org")
        ]),
        401
    );
    assert_eq!(
        probe(&[("Authorization", "Bearer 1.2.3.4"), ("Origin", ORIGIN)]),
        401
    );
    // The cookie is not a token, nor the token a cookie.
    let cookie_value = cookie.trim_start_matches("iiifd_access=");
    assert_eq!(
        probe(&[("Authorization", &format!("Bearer {cookie_value}"))]),
        401
    );
    assert_eq!(
        get(&s, chart, &[("Cookie", &format!("iiifd_access={token}"))]).status,
        401
    );
    // CORS preflight for the probe's Authorization header.
    let pre = s.request(
        "OPTIONS",
        probe_path,
        &[
            ("Origin", ORIGIN),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
    );
    assert!(pre.status == 204 || pre.status == 200);
    assert!(pre
        .header("access-control-allow-headers")
        .is_some_and(|h| h.eq_ignore_ascii_case("authorization")));

    // Logout deletes the cookie.
    let out = get(&s, "/iiif/auth/logout", &with);
    assert_eq!(out.status, 200);
    assert!(out
        .header("set-cookie")
        .is_some_and(|c| c.starts_with("iiifd_access=;") && c.contains("Max-Age=0")));

    // Admin work is not a visitor's: a crawl warms a restricted image, whose hit still needs the
    // cookie; a purge removes it.
    let body = r#"{"identifiers": ["chart.jpg"], "thumbnails": ["!128,128"]}"#;
    let crawl = s.admin_post("/admin/crawl", body);
    assert!(
        crawl.status == 202 || crawl.status == 200,
        "{}",
        crawl.text()
    );
    let id = crawl.json()["id"].as_str().expect("job id").to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while s.admin_get(&format!("/admin/crawl/{id}")).json()["state"] != "done" {
        assert!(std::time::Instant::now() < deadline, "crawl did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let thumb = "/iiif/3/chart.jpg/full/!128,128/0/default.jpg";
    assert_eq!(get(&s, thumb, &[]).status, 401);
    assert_eq!(
        get(&s, thumb, &with).header("cache-status"),
        Some("iiifd; hit")
    );
    let purge = s.admin_post("/admin/store/purge?id=chart.jpg", "");
    assert_eq!(purge.status, 200, "{}", purge.text());
    assert_ne!(
        get(&s, thumb, &with).header("cache-status"),
        Some("iiifd; hit")
    );
}

#[test]
fn the_configuration_refuses_restrictions_without_a_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[access.rules]]\nidentifiers = \"*\"\npolicy = \"restricted\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iiifd"))
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .env("IIIFD_ADMIN__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("access.secret"));
}

/// A decision service on loopback: answers by the `user` parameter ("" deny, "alice" allow,
/// others degrade to 32 px) while `mode` is 0; fails with 500 when 1; answers after 3 s when 2.
fn decision_service(mode: Arc<AtomicU8>, calls: Arc<AtomicU8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mode = Arc::clone(&mode);
            calls.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let _ = reader.read_line(&mut line);
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) <= 2 {
                        break;
                    }
                }
                let (status, body) = match mode.load(Ordering::SeqCst) {
                    1 => ("500 Internal Server Error", "{}".to_owned()),
                    m => {
                        if m == 2 {
                            std::thread::sleep(Duration::from_secs(3));
                        }
                        let user = line
                            .split_once("user=")
                            .and_then(|(_, rest)| rest.split(['&', ' ']).next())
                            .unwrap_or("");
                        let d = match user {
                            "alice" => r#"{"decision":"allow"}"#,
                            "bob" => r#"{"decision":"degrade","max_width":32}"#,
                            _ => r#"{"decision":"deny"}"#,
                        };
                        ("200 OK", d.to_owned())
                    }
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    format!("http://{addr}/decide")
}

#[test]
fn the_decision_service_decides_is_cached_and_never_fails_open() {
    let mode = Arc::new(AtomicU8::new(0));
    let calls = Arc::new(AtomicU8::new(0));
    let url = decision_service(Arc::clone(&mode), Arc::clone(&calls));
    let extra =
        format!("decision_url = \"{url}\"\ndecision_timeout_ms = 500\ndecision_cache_secs = 2");
    let (s, _cfg) = start(&extra, &[]);
    let chart = "/iiif/3/chart.jpg/full/200,/0/default.jpg";
    let alice = signed_cookie("alice", ORIGIN, now() + 600);
    let bob = signed_cookie("bob", ORIGIN, now() + 600);
    assert_eq!(get(&s, chart, &[]).status, 401);
    // "degrade" for bob: the 200 px request is answered at the service's 32 px.
    let b = get(&s, chart, &[("Cookie", bob.as_str())]);
    assert_eq!(b.status, 200);
    assert_eq!(b.image().width(), 32);
    // Open identifiers are not asked about.
    let before = calls.load(Ordering::SeqCst);
    let open = "/iiif/3/collection%2Fpage.tif/full/64,/0/default.jpg";
    assert_eq!(get(&s, open, &[]).status, 200);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "no decision for an open image"
    );
    assert_eq!(get(&s, chart, &[("Cookie", alice.as_str())]).status, 200);
    // Kept: a failing service changes nothing until the decisions expire, then means 503.
    let asked = calls.load(Ordering::SeqCst);
    mode.store(1, Ordering::SeqCst);
    assert_eq!(get(&s, chart, &[("Cookie", alice.as_str())]).status, 200);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        asked,
        "served from the decision cache"
    );
    std::thread::sleep(Duration::from_millis(2_200));
    let failed = get(&s, chart, &[("Cookie", alice.as_str())]);
    assert_eq!(failed.status, 503, "{}", failed.text());
    assert!(failed.header("retry-after").is_some());
    assert_eq!(
        get(&s, "/iiif/auth/probe/chart.jpg", &[]).json()["status"],
        503
    );
    // Slow: past the timeout is 503 too, not a wait and not an open door.
    mode.store(2, Ordering::SeqCst);
    let started = std::time::Instant::now();
    assert_eq!(get(&s, chart, &[("Cookie", alice.as_str())]).status, 503);
    assert!(started.elapsed() < Duration::from_secs(3));
    // Recovered: decisions again.
    mode.store(0, Ordering::SeqCst);
    assert_eq!(get(&s, chart, &[("Cookie", alice.as_str())]).status, 200);
}

#[test]
fn kiosk_and_external_profiles() {
    // Kiosk: the access service sets the cookie with no sign-in and no interaction.
    let (s, _cfg) = start("profile = \"kiosk\"", &[]);
    let info = get(&s, "/iiif/3/chart.jpg/info.json", &[]).json();
    let access = &info["service"][0]["service"][0];
    assert_eq!(access["profile"], "kiosk");
    assert!(access.get("confirmLabel").is_none());
    let r = get(&s, &format!("/iiif/auth/access?origin={ORIGIN}"), &[]);
    assert_eq!(r.status, 200);
    let cookie = cookie_of(&r);
    let with = [("Cookie", cookie.as_str())];
    assert_eq!(
        get(&s, "/iiif/3/chart.jpg/full/100,/0/default.jpg", &with).status,
        200
    );
    // Origins outside access.allowed_origins may not sign in.
    let (s, _cfg) = start("allowed_origins = [\"https://viewer.example.org\"]", &[]);
    let other = "/iiif/auth/access?origin=https://elsewhere.example.org";
    let r = get(&s, other, &[("X-Remote-User", "alice")]);
    assert_eq!(r.status, 403);
    assert!(r.header("set-cookie").is_none());
    // External: no access service to open; the token service is the way in.
    let (s, _cfg) = start("profile = \"external\"", &[]);
    let info = get(&s, "/iiif/3/chart.jpg/info.json", &[]).json();
    let access = &info["service"][0]["service"][0];
    assert_eq!(access["profile"], "external");
    assert!(access.get("id").is_none());
    assert_eq!(access["service"][0]["type"], "AuthAccessTokenService2");
}
