//! The shipped deploy files, tested like code: a real nginx with `deploy/nginx/*.conf` (templated to test
//! ports and paths) in front of real iiifd processes; the systemd unit through `systemd-analyze verify`;
//! sd_notify and graceful shutdown.

use crate::common::{raw, Response, Server};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A real nginx serving one site file, stopped on drop.
pub(crate) struct Nginx {
    child: Child,
    pub(crate) addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub(crate) fn start(site: &str) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        // As root, nginx workers would drop to `nobody` and could not read the test's private store.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let conf = format!(
            "{user}\ndaemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;\n  \
             uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n  include {d}/site.conf;\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("write conf");
        std::fs::write(dir.path().join("site.conf"), site).expect("write site");
        let port: u16 = site
            .split("listen 127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .and_then(|p| p.parse().ok())
            .expect("templated listen");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx must be installed (Debian: nginx-light); .ci/run installs it");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }

    fn get(&self, path: &str) -> Response {
        raw(
            self.addr,
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.addr
            )
            .as_bytes(),
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master must take its workers down with it, or they outlive the test
        // (holding its output pipes open).
        let pid = self.child.id() as libc::pid_t;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `deploy/nginx/iiifd.conf` pointed at `upstream`, listening on `port`, with the store at `store`.
fn site(upstream: SocketAddr, port: u16, store: &Path) -> String {
    let text = std::fs::read_to_string(repo("deploy/nginx/iiifd.conf")).expect("site");
    let out = text
        .replace("server 127.0.0.1:8080;", &format!("server {upstream};"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace(
            "alias /var/lib/iiifd/objects/;",
            &format!("alias {}/objects/;", store.display()),
        );
    assert_ne!(
        out, text,
        "the shipped config no longer has the expected placeholders"
    );
    out
}

#[test]
fn nginx_in_front_of_iiifd() {
    let s = Server::start_with(&[], &[("IIIFD_STORE__ACCEL_REDIRECT", "/_iiifd/")]);
    let nginx = Nginx::start(&site(s.addr, free_port(), &s.store));
    // info.json through nginx, with the public URL as id.
    let info = nginx.get("/iiif/3/chart/info.json");
    assert_eq!(info.status, 200);
    assert_eq!(
        info.json()["id"],
        format!("http://{}/iiif/3/chart", nginx.addr)
    );
    // %2F survives the proxy.
    let page = nginx.get("/iiif/2/collection%2Fpage/info.json");
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        page.json()["@id"],
        format!("http://{}/iiif/2/collection%2Fpage", nginx.addr)
    );
    // Miss: iiifd sends the bytes. Hit: iiifd sends only X-Accel-Redirect, nginx sends the file.
    let url = "/iiif/3/chart/full/400,/0/default.jpg";
    let miss = nginx.get(url);
    assert_eq!(miss.status, 200);
    let hit = nginx.get(url);
    assert_eq!(hit.status, 200);
    assert_eq!(hit.body, miss.body);
    assert_eq!(hit.header("content-type"), Some("image/jpeg"));
    assert_eq!(hit.header("etag"), miss.header("etag"));
    assert_eq!(hit.header("cache-status"), Some("iiifd; hit"));
    assert_eq!(hit.header("access-control-allow-origin"), Some("*"));
    let direct = s.get(url);
    assert!(
        direct.body.is_empty() && direct.header("x-accel-redirect").is_some(),
        "iiifd itself sends no body on a hit"
    );
    // The internal location and the admin listener are out of reach.
    let internal = direct.header("x-accel-redirect").unwrap_or("/_iiifd/x");
    assert_eq!(nginx.get(internal).status, 404);
    for admin in ["/metrics", "/admin/store/stats", "/ready"] {
        assert_eq!(nginx.get(admin).status, 404, "{admin} must not be proxied");
    }
}

/// The shipped site names each visitor in `X-Real-IP`, overwriting what the client sent: with
/// `admission.client_header` set to it, a class of loopback clients (everyone, through nginx here)
/// sees images degraded however a client names itself, while iiifd asked directly believes the
/// header (which is why it is only set behind a proxy).
#[test]
fn nginx_names_each_client_and_a_client_cannot_name_itself() {
    let s = Server::start_with(
        &[],
        &[
            ("IIIFD_ADMISSION__CLIENT_HEADER", "X-Real-IP"),
            (
                "IIIFD_ADMISSION__CLASSES",
                "[{name = \"local\", networks = [\"127.0.0.0/8\"], max_width = 64}]",
            ),
        ],
    );
    let nginx = Nginx::start(&site(s.addr, free_port(), &s.store));
    let url = "/iiif/3/chart/full/max/0/default.jpg";
    let spoofed = raw(
        nginx.addr,
        format!(
            "GET {url} HTTP/1.1\r\nHost: {}\r\nX-Real-IP: 203.0.113.9\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n",
            nginx.addr
        )
        .as_bytes(),
    );
    assert_eq!(spoofed.status, 200);
    assert_eq!(
        spoofed.image().width(),
        64,
        "nginx named the client: 127.0.0.1"
    );
    let direct = raw(
        s.addr,
        format!(
            "GET {url} HTTP/1.1\r\nHost: x\r\nX-Real-IP: 203.0.113.9\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(direct.image().width(), 1600);
}

/// `deploy/nginx/iiifd-auth.conf` for a test: plain HTTP on `port` (the TLS lines are nginx's own),
/// `upstream`, the store, and an htpasswd file with `alice:secret`.
pub(crate) fn auth_site(upstream: SocketAddr, port: u16, store: &Path, dir: &Path) -> String {
    let text = std::fs::read_to_string(repo("deploy/nginx/iiifd-auth.conf")).expect("site");
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, "alice:{PLAIN}secret\n").expect("htpasswd");
    let out: String = text
        .replace("server 127.0.0.1:8080;", &format!("server {upstream};"))
        .replace(
            "listen 443 ssl http2;",
            &format!("listen 127.0.0.1:{port};"),
        )
        .replace(
            "alias /var/lib/iiifd/objects/;",
            &format!("alias {}/objects/;", store.display()),
        )
        .replace("/etc/nginx/iiifd.htpasswd", &htpasswd.display().to_string())
        .lines()
        .filter(|l| !l.trim_start().starts_with("ssl_"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        out.contains(&upstream.to_string()) && out.contains(&htpasswd.display().to_string()),
        "the shipped auth site no longer has the expected placeholders"
    );
    out
}

/// Auth 2.0 behind the shipped nginx site: nginx signs the visitor in at the access service only
/// (a name sent by a client anywhere is dropped), and a restricted image stored earlier is not sent
/// through X-Accel-Redirect without the cookie; with it, nginx keeps iiifd's private caching.
#[test]
fn nginx_signs_in_and_never_sends_a_restricted_hit_without_the_cookie() {
    let conf = tempfile::tempdir().expect("tempdir");
    let config = conf.path().join("iiifd.toml");
    std::fs::write(
        &config,
        "[access]\nsecret = \"nginx-test-secret-0123456789abcdef\"\ncookie_secure = false\n\
         [[access.rules]]\nidentifiers = \"chart\"\npolicy = \"restricted\"\n",
    )
    .expect("config");
    let config = config.display().to_string();
    let s = Server::start_with(
        &["--config", &config],
        &[("IIIFD_STORE__ACCEL_REDIRECT", "/_iiifd/")],
    );
    let nginx = Nginx::start(&auth_site(s.addr, free_port(), &s.store, conf.path()));
    let get = |path: &str, headers: &str| {
        raw(
            nginx.addr,
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\n{headers}Connection: close\r\n\r\n",
                nginx.addr
            )
            .as_bytes(),
        )
    };
    let access = "/iiif/auth/access?origin=https://viewer.example.org";
    assert_eq!(get(access, "").status, 401, "nginx asks for credentials");
    // A name claimed by the client is not a sign-in, there or anywhere else.
    let claimed = get(access, "X-Remote-User: mallory\r\n");
    assert_eq!(claimed.status, 401);
    assert!(claimed.header("set-cookie").is_none());
    // alice:secret
    let signed = get(access, "Authorization: Basic YWxpY2U6c2VjcmV0\r\n");
    assert_eq!(signed.status, 200, "{}", signed.text());
    let cookie = signed
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("cookie")
        .to_owned();
    let with = format!("Cookie: {cookie}\r\n");
    let url = "/iiif/3/chart/full/300,/0/default.jpg";
    let miss = get(url, &with);
    assert_eq!(miss.status, 200);
    let hit = get(url, &with);
    assert_eq!(hit.status, 200);
    assert_eq!(hit.body, miss.body);
    assert_eq!(
        hit.header("cache-status"),
        Some("iiifd; hit"),
        "sent by nginx"
    );
    assert!(
        hit.header("cache-control")
            .is_some_and(|c| c.starts_with("private")),
        "{:?}",
        hit.headers
    );
    assert!(hit.header("vary").is_some_and(|v| v.contains("Cookie")));
    // Stored, yet refused without the cookie or with a name claimed on the image route.
    assert_eq!(get(url, "").status, 401);
    assert_eq!(get(url, "X-Remote-User: alice\r\n").status, 401);
    assert!(get(url, "").body.len() < 200, "no image bytes");
    // Open images stay public through the same site.
    let open = get("/iiif/3/rings.png/full/64,/0/default.jpg", "");
    assert_eq!(open.status, 200);
    assert!(open
        .header("cache-control")
        .is_some_and(|c| c.starts_with("public")));
}

/// `deploy/nginx/iiifd-login.conf`: signed-in visitors see everything, others nothing; the
/// institution's sign-in check is played by nginx itself (a cookie `sso=ok` or not).
#[test]
fn nginx_login_site_lets_only_signed_in_visitors_in() {
    let s = Server::start_with(&[], &[("IIIFD_STORE__ACCEL_REDIRECT", "/_iiifd/")]);
    let port = free_port();
    let text = std::fs::read_to_string(repo("deploy/nginx/iiifd-login.conf")).expect("site");
    let conf: String = text
        .replace("server 127.0.0.1:8080;", &format!("server {};", s.addr))
        .replace(
            "listen 443 ssl http2;",
            &format!("listen 127.0.0.1:{port};"),
        )
        .replace(
            "alias /var/lib/iiifd/objects/;",
            &format!("alias {}/objects/;", s.store.display()),
        )
        .replace(
            "proxy_pass https://sso.example.org/validate;",
            "if ($http_cookie ~ \"sso=ok\") { return 204; } return 401;",
        )
        .lines()
        .filter(|l| !l.trim_start().starts_with("ssl_"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(conf.contains("return 204;") && conf.contains(&s.addr.to_string()));
    let nginx = Nginx::start(&conf);
    let get = |path: &str, cookie: &str| {
        raw(
            nginx.addr,
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\n{cookie}Connection: close\r\n\r\n",
                nginx.addr
            )
            .as_bytes(),
        )
    };
    let url = "/iiif/3/chart/full/300,/0/default.jpg";
    let signed = "Cookie: sso=ok\r\n";
    assert_eq!(get("/iiif/3/chart/info.json", "").status, 401);
    assert_eq!(get(url, "").status, 401);
    let miss = get(url, signed);
    assert_eq!(miss.status, 200);
    let hit = get(url, signed);
    assert_eq!(
        hit.header("cache-status"),
        Some("iiifd; hit"),
        "sent by nginx"
    );
    assert_eq!(hit.body, miss.body);
    for r in [&miss, &hit] {
        let cc: Vec<&str> = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("cache-control"))
            .map(|(_, v)| v.as_str())
            .collect();
        let cc = cc.join(", ");
        assert!(
            cc.contains("private") && cc.contains("max-age=3600") && !cc.contains("public"),
            "{cc}"
        );
    }
    // Stored, and still nothing without the sign-in.
    let refused = get(url, "Cookie: sso=no\r\n");
    assert_eq!(refused.status, 401);
    assert!(refused.header("cache-status").is_none());
}

/// The shipped cluster site, listening on a free port, in front of the instances at `addrs`.
fn cluster_conf(addrs: &[String]) -> String {
    let text =
        std::fs::read_to_string(repo("deploy/nginx/iiifd-cluster.conf")).expect("cluster conf");
    let mut conf = text.replace("listen 80;", &format!("listen 127.0.0.1:{};", free_port()));
    for (i, addr) in addrs.iter().enumerate() {
        for end in [";", " "] {
            conf = conf.replace(
                &format!("server 127.0.0.1:809{}{end}", i + 1),
                &format!("server {addr}{end}"),
            );
        }
    }
    conf
}

#[test]
fn cluster_routes_each_image_to_one_instance_and_fails_over() {
    let images: Vec<String> = (0..8).map(|i| format!("img{i}")).collect();
    let mut instances: Vec<Server> = (0..3).map(|_| Server::start()).collect();
    // All instances serve the same image tree: copies of the chart under eight identifiers.
    let shared = instances[0].images.clone();
    for name in &images {
        std::fs::copy(shared.join("chart.jpg"), shared.join(format!("{name}.jpg"))).expect("copy");
    }
    for s in &mut instances[1..] {
        for name in &images {
            std::fs::copy(
                shared.join("chart.jpg"),
                s.images.join(format!("{name}.jpg")),
            )
            .expect("copy");
        }
    }
    let addrs: Vec<String> = instances.iter().map(|s| s.addr.to_string()).collect();
    let conf = cluster_conf(&addrs);
    let nginx = Nginx::start(&conf);
    let urls: Vec<String> = images
        .iter()
        .flat_map(|id| {
            (0..3).map(move |t| format!("/iiif/3/{id}/{},0,200,200/100,/0/default.jpg", t * 200))
        })
        .collect();
    for _ in 0..2 {
        for u in &urls {
            assert_eq!(nginx.get(u).status, 200, "{u}");
        }
    }
    let renders: Vec<f64> = instances
        .iter()
        .map(|s| s.metric("iiifd_renders_total"))
        .collect();
    assert_eq!(
        renders.iter().sum::<f64>(),
        urls.len() as f64,
        "every derivative rendered exactly once: {renders:?}"
    );
    assert!(
        renders.iter().filter(|&&r| r > 0.0).count() >= 2,
        "the hash spreads images: {renders:?}"
    );
    // Stop the busiest instance: its images are re-rendered by the others.
    let busiest = (0..3)
        .max_by(|&a, &b| renders[a].total_cmp(&renders[b]))
        .unwrap_or(0);
    instances[busiest].kill9();
    for u in &urls {
        assert_eq!(nginx.get(u).status, 200, "failover for {u}");
    }
    let after: f64 = (0..3)
        .filter(|&i| i != busiest)
        .map(|i| instances[i].metric("iiifd_renders_total"))
        .sum();
    let before: f64 = (0..3).filter(|&i| i != busiest).map(|i| renders[i]).sum();
    assert_eq!(
        after - before,
        renders[busiest],
        "exactly the lost instance's derivatives were re-rendered"
    );
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/iiifd.service")).expect("unit");
    // Every IIIFD_* variable the unit sets must be a real configuration key.
    let example = std::fs::read_to_string(repo("examples/config.toml")).expect("example config");
    for var in unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|l| l.split('=').next())
    {
        assert!(
            example.contains(var),
            "{var} is not a documented configuration variable"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let templated = unit.replace("/usr/local/bin/iiifd", env!("CARGO_BIN_EXE_iiifd"));
    let path = dir.path().join("iiifd.service");
    std::fs::write(&path, templated).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed");
    let err = String::from_utf8_lossy(&out.stderr);
    // Outside a booted systemd, verify may complain about the environment itself; only unit errors count.
    let unit_errors: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("iiifd.service"))
        .collect();
    assert!(out.status.success() || unit_errors.is_empty(), "{err}");
    assert!(unit_errors.is_empty(), "{err}");
}

#[test]
fn sd_notify_ready_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let s = Server::start_with(&[], &[("NOTIFY_SOCKET", sock_path.to_str().unwrap_or(""))]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(s.terminate().success());
    let n = sock.recv(&mut buf).expect("STOPPING");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// `n` slow cold renders of the chart (arbitrary angles, large PNGs: tens of milliseconds each even in
/// a release build), each on its own connection; each thread returns the status, or 0 when the
/// connection closed without a complete response.
fn slow_renders(addr: SocketAddr, n: u32) -> Vec<std::thread::JoinHandle<u16>> {
    (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let url = format!("/iiif/3/chart/full/{},/{}/default.png", 900 + i, 3 + i * 7);
                let req = format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                crate::common::try_raw(addr, req.as_bytes()).map_or(0, |r| r.status)
            })
        })
        .collect()
}

/// Wait until `n` requests have reached the render pool (queued, running or done: each URL of
/// [`slow_renders`] is a distinct render). The finished count is read first: a render is counted only
/// after it leaves the pool, so one finishing between the two scrapes is missed, never counted twice,
/// and the sum can lag but never run ahead.
fn wait_in_pool(s: &Server, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.metric("iiifd_renders_total") + s.metric("iiifd_pool_pending") < n {
        assert!(Instant::now() < deadline, "renders never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigterm_finishes_fifty_in_flight_cold_renders() {
    // A grace period far longer than the renders can take, however loaded the machine: this test is
    // about finishing in-flight work, the next one about the grace period running out. (With the
    // default 30 s, a debug build on a busy CI machine ran out of grace, and the last request was
    // cut off with no response: the flake this test once had.)
    let s = Server::start_with(
        &[],
        &[
            ("IIIFD_RENDER__WORKERS", "2"),
            ("IIIFD_RENDER__QUEUE", "100"),
            // All fifty come from one client: let it have them all in flight.
            ("IIIFD_ADMISSION__PER_CLIENT_QUEUE", "100"),
            ("IIIFD_HTTP__SHUTDOWN_GRACE_SECS", "600"),
        ],
    );
    let handles = slow_renders(s.addr, 50);
    wait_in_pool(&s, 50.0);
    assert!(
        s.metric("iiifd_pool_pending") > 0.0,
        "every render finished before SIGTERM; the test proves nothing (make the renders slower)"
    );
    let status = s.terminate();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap_or(0)).collect();
    assert!(statuses.iter().all(|&st| st == 200), "{statuses:?}");
    assert!(status.success(), "{status:?}");
}

#[test]
fn requests_past_the_grace_period_get_503_not_a_dropped_connection() {
    let s = Server::start_with(
        &[],
        &[
            ("IIIFD_RENDER__WORKERS", "1"),
            ("IIIFD_RENDER__QUEUE", "100"),
            ("IIIFD_HTTP__SHUTDOWN_GRACE_SECS", "0"),
        ],
    );
    let handles = slow_renders(s.addr, 12);
    wait_in_pool(&s, 12.0);
    let started = Instant::now();
    let status = s.terminate();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap_or(0)).collect();
    assert!(
        statuses.iter().all(|&st| st == 200 || st == 503),
        "every request is answered: {statuses:?}"
    );
    assert!(
        statuses.contains(&503),
        "no request outlived the grace period; the test proves nothing: {statuses:?}"
    );
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[test]
fn shutdown_serves_connections_waiting_in_the_accept_queue() {
    // One connection at a time: a second client completes its handshake but waits in the kernel's
    // accept queue while the first one's render runs. At SIGTERM it must be served, not reset.
    let s = Server::start_with(
        &[],
        &[
            ("IIIFD_HTTP__MAX_CONNECTIONS", "1"),
            ("IIIFD_RENDER__WORKERS", "1"),
            ("IIIFD_HTTP__SHUTDOWN_GRACE_SECS", "600"),
        ],
    );
    let first = slow_renders(s.addr, 1);
    wait_in_pool(&s, 1.0);
    let addr = s.addr;
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let queued = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(120))).ok();
        use std::io::{Read, Write};
        stream
            .write_all(
                b"GET /iiif/3/chart/info.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .expect("write");
        let _ = sent_tx.send(());
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf);
        buf
    });
    let _ = sent_rx.recv_timeout(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(100));
    let status = s.terminate();
    let reply = queued.join().unwrap_or_default();
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "the queued connection was served: {:?}",
        String::from_utf8_lossy(&reply[..reply.len().min(200)])
    );
    let statuses: Vec<u16> = first.into_iter().map(|h| h.join().unwrap_or(0)).collect();
    assert_eq!(statuses, vec![200]);
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_cluster_sharing_its_derivatives_renders_each_once_and_survives_losing_a_node() {
    use crate::common::weed::{Weed, ACCESS_KEY, SECRET_KEY};
    let weed = Weed::start();
    weed.create_bucket("images");
    weed.create_bucket("shared");
    let chart = std::fs::read(crate::common::examples().join("chart.jpg")).expect("chart");
    weed.put("images", "chart.jpg", &chart);
    let endpoint = weed.endpoint();
    let env = [
        ("IIIFD_SOURCE__KIND", "s3"),
        ("IIIFD_SOURCE__S3__BUCKET", "images"),
        ("IIIFD_SOURCE__S3__ENDPOINT", endpoint.as_str()),
        ("IIIFD_STORE__SHARED__BUCKET", "shared"),
        ("IIIFD_STORE__SHARED__ENDPOINT", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("IIIFD_COMPAT__FLASK_IIIF", "true"),
    ];
    // Outside the ephemeral range: the owner's address is bound again after its kill -9.
    let listens: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", crate::common::quiet_port()))
        .collect();
    let start = |listen: &str| Server::start_with(&["--listen", listen], &env);
    let mut nodes: Vec<Server> = listens.iter().map(|l| start(l)).collect();
    let conf = cluster_conf(&listens);
    let nginx = Nginx::start(&conf);
    // A viewer's tiles of one image over 3.0 and 2.1, twice.
    let urls: Vec<String> = [3, 2]
        .into_iter()
        .flat_map(|v| crate::crawl::osd_tiles("chart", 1600, 1000, v))
        .collect();
    let replay = |what: &str| {
        for u in &urls {
            let r = nginx.get(u);
            assert_eq!(r.status, 200, "{what}: {u}: {}", r.text());
        }
    };
    replay("first viewing");
    replay("second viewing");
    for n in &nodes {
        crate::cluster::settle(n);
    }
    let renders = |nodes: &[Server]| -> Vec<f64> {
        nodes
            .iter()
            .map(|s| s.metric("iiifd_renders_total"))
            .collect()
    };
    let first = renders(&nodes);
    let total: f64 = first.iter().sum();
    // Each derivative rendered once in the whole cluster, and stored once in the shared tier.
    assert_eq!(total, weed.keys("shared").len() as f64, "{first:?}");
    assert!(total > 0.0);
    let owner = (0..3).find(|&i| first[i] > 0.0).expect("an owner");
    assert_eq!(first[owner], total, "one image, one node: {first:?}");
    // Flask-IIIF's route for the same image reaches the same node.
    let flask = nginx.get("/api/multimedia/image/v2/chart/full/200,/0/default.jpg");
    assert_eq!(flask.status, 200, "{}", flask.text());
    let now = renders(&nodes);
    assert_eq!(now[owner], first[owner] + 1.0, "{now:?}");
    assert_eq!(now.iter().sum::<f64>(), total + 1.0, "{now:?}");
    crate::cluster::settle(&nodes[owner]);
    // The owner dies: its successors serve every tile from the shared tier.
    nodes[owner].kill9();
    replay("after kill -9");
    let survivors: f64 = (0..3)
        .filter(|&i| i != owner)
        .map(|i| nodes[i].metric("iiifd_renders_total"))
        .sum();
    assert_eq!(survivors, 0.0, "no render on the survivors");
    // A fresh node with an empty store in its place: nginx sends the image back to it once the
    // dead node's fail_timeout (10 s) has run out.
    nodes[owner] = start(&listens[owner]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes[owner].metric("iiifd_shared_hits_total") == 0.0 {
        assert!(
            Instant::now() < deadline,
            "nginx never sent the image back to its node"
        );
        std::thread::sleep(Duration::from_secs(1));
        replay("with the replacement");
    }
    replay("with the replacement");
    assert_eq!(
        nodes[owner].metric("iiifd_renders_total"),
        0.0,
        "no render on the fresh node"
    );
    // A purge on any node empties the shared tier of the image, whoever rendered it.
    let other = (owner + 1) % 3;
    let purged = raw(
        nodes[other].admin,
        b"POST /admin/store/purge?id=chart HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(purged.status, 200, "{}", purged.text());
    assert!(weed.keys("shared").is_empty(), "{:?}", weed.keys("shared"));
}

/// A caching nginx (`proxy_cache`) as the CDN stand-in in front of iiifd.
fn cdn_site(upstream: SocketAddr, port: u16, cache: &Path) -> String {
    format!(
        "proxy_cache_path {} keys_zone=cdn:1m;\n\
         server {{\n  listen 127.0.0.1:{port};\n  location / {{\n    proxy_pass http://{upstream};\n    \
         proxy_set_header Host $host;\n    proxy_cache cdn;\n    \
         add_header X-Cdn $upstream_cache_status always;\n  }}\n}}\n",
        cache.display()
    )
}

/// `[cdn]` with a real cache in front: every kind of answer for an identifier carries its tag (the
/// same on all of them, hits of the CDN and of iiifd's memo included), and `stale-if-error` lets
/// the cache keep answering while iiifd is down.
#[test]
fn a_cache_in_front_sees_one_tag_per_image_and_serves_stale_through_an_outage() {
    let mut s = Server::start_with(
        &[],
        &[
            ("IIIFD_CDN__TAG_HEADER", "Surrogate-Key"),
            ("IIIFD_CDN__STALE_IF_ERROR_SECS", "3600"),
            ("IIIFD_CDN__STALE_WHILE_REVALIDATE_SECS", "30"),
            ("IIIFD_HTTP__MAX_AGE", "1"),
        ],
    );
    let cache = tempfile::tempdir().expect("tempdir");
    let nginx = Nginx::start(&cdn_site(s.addr, free_port(), &cache.path().join("c")));
    let tile = "/iiif/3/chart/0,0,256,256/256,/0/default.jpg";
    let mut tags = std::collections::BTreeSet::new();
    for path in [
        "/iiif/3/chart",
        "/iiif/3/chart/info.json",
        "/iiif/2/chart/info.json",
        tile,
        tile,
        "/iiif/3/chart/full/!200,200/0/default.png",
    ] {
        let r = nginx.get(path);
        assert!(matches!(r.status, 200 | 303), "{path}: {}", r.status);
        let tag = r.header("surrogate-key").unwrap_or_default().to_owned();
        let (hashed, raw) = tag.split_once(' ').unwrap_or_default();
        assert!(hashed.starts_with("iiif-"), "{path}: {tag:?}");
        assert_eq!(raw, "chart", "{path}");
        tags.insert(tag);
        if r.status == 200 {
            let cc = r.header("cache-control").unwrap_or_default();
            assert!(cc.contains("stale-if-error=3600"), "{path}: {cc}");
            assert!(cc.contains("stale-while-revalidate=30"), "{path}: {cc}");
        }
    }
    assert_eq!(
        tags.len(),
        1,
        "one tag for every answer of one image: {tags:?}"
    );
    // Another image, another tag; and iiifd's own memo hit carries it too.
    let other = s.get("/iiif/3/page/info.json");
    assert_ne!(
        other.header("surrogate-key"),
        tags.iter().next().map(String::as_str)
    );
    assert_eq!(s.get(tile).header("cache-status"), Some("iiifd; hit"));
    assert_eq!(
        s.get(tile).header("surrogate-key"),
        tags.iter().next().map(String::as_str)
    );

    // iiifd gone, the cached answers expired: the cache still answers, from its stale copy.
    let fresh = nginx.get(tile);
    assert_eq!(fresh.status, 200);
    s.kill9();
    // max-age=1 on nginx's one-second clock: past it for sure.
    std::thread::sleep(Duration::from_millis(2_500));
    let stale = nginx.get(tile);
    assert_eq!(stale.status, 200, "{}", stale.text());
    assert_eq!(stale.header("x-cdn"), Some("STALE"));
    assert_eq!(stale.body, fresh.body);
    // What the cache never held is an error.
    assert!(nginx.get("/iiif/3/chart/full/64,/0/default.jpg").status >= 500);
}

/// A purge endpoint on loopback that records each call (request line and `Authorization`) and
/// refuses the first `refuse` calls with 503.
fn purge_recorder(refuse: usize) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&calls);
    std::thread::spawn(move || {
        let mut n = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = vec![0u8; 8192];
            let len = stream.read(&mut buf).unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            let line = text.lines().next().unwrap_or("").to_owned();
            let auth = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("authorization: ")
                        .or(l.strip_prefix("Authorization: "))
                })
                .unwrap_or("")
                .to_owned();
            n += 1;
            let status = if n <= refuse { "503 Busy" } else { "200 OK" };
            // A slow CDN API: every answer takes a second.
            std::thread::sleep(Duration::from_secs(1));
            if let Ok(mut calls) = seen.lock() {
                calls.push(format!("{line} | {auth} | {status}"));
            }
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (addr, calls)
}

/// Wait until `calls` holds `n` entries (or fail after 20 s).
fn wait_for_calls(calls: &std::sync::Mutex<Vec<String>>, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = calls.lock().map(|c| c.clone()).unwrap_or_default();
        if now.len() >= n {
            return now;
        }
        assert!(Instant::now() < deadline, "purge calls: {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `cdn.purge_url`: an admin purge of one identifier calls it once with the image's tag (its
/// token from the environment); a changed source calls it too; a refused call is retried and
/// counted, and never holds a request up.
#[test]
fn purges_reach_the_cdn_with_the_tag_and_are_retried_when_refused() {
    let (addr, calls) = purge_recorder(2);
    let url = format!("http://{addr}/purge/{{tag}}");
    let s = Server::start_with(
        &[],
        &[
            ("IIIFD_CDN__TAG_HEADER", "Cache-Tag"),
            ("IIIFD_CDN__PURGE_URL", &url),
            (
                "IIIFD_CDN__PURGE_HEADERS",
                r#"["Authorization: Bearer ${TEST_CDN_TOKEN}"]"#,
            ),
            ("TEST_CDN_TOKEN", "t0ken"),
        ],
    );
    let tag_of = |id: &str| {
        let r = s.get(&format!("/iiif/3/{id}/info.json"));
        assert_eq!(r.status, 200, "{id}");
        let tag = r.header("cache-tag").unwrap_or_default();
        tag.split(',').next().unwrap_or_default().to_owned()
    };
    let chart = tag_of("chart");
    assert!(s.get("/iiif/3/chart/full/64,/0/default.jpg").status == 200);

    // Refused twice (503), then accepted: one purge, two retries, sent.
    let r = s.admin_post("/admin/store/purge?id=chart", "");
    assert_eq!(r.status, 200, "{}", r.text());
    // Answered while the CDN purge is still under way (three slow calls and two backoffs, over
    // 3.75 s): the request did not wait for it.
    assert_eq!(
        s.metric("iiifd_cdn_purges_pending"),
        1.0,
        "the purge waited for the CDN"
    );
    let got = wait_for_calls(&calls, 3);
    for call in &got {
        assert!(
            call.starts_with(&format!("POST /purge/{chart} HTTP/1.1")),
            "{call}"
        );
        assert!(call.contains("| Bearer t0ken |"), "{call}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric("iiifd_cdn_purges_total{result=\"sent\"}") < 1.0 {
        assert!(Instant::now() < deadline, "not counted sent");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.metric("iiifd_cdn_purge_retries_total"), 2.0);
    assert_eq!(s.metric("iiifd_cdn_purges_pending"), 0.0);

    // A source that changes: seen on the next request, purged once.
    let src = s.images.join("changing.png");
    let write = |w: u32| {
        let img = image::RgbImage::from_pixel(w, 40, image::Rgb([200, 10, 10]));
        img.save(&src).expect("png");
    };
    write(60);
    let changing = tag_of("changing.png");
    std::thread::sleep(Duration::from_millis(1_100)); // a new mtime second
    write(70);
    assert_eq!(s.get("/iiif/3/changing.png/info.json").json()["width"], 70);
    let got = wait_for_calls(&calls, 4);
    assert!(
        got[3].starts_with(&format!("POST /purge/{changing} ")),
        "{got:?}"
    );
    assert_eq!(got.len(), 4, "one purge per change: {got:?}");
}
