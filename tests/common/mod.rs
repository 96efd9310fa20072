//! Test harness: start the real binary, talk raw HTTP/1.1 to it, stop it on drop.

#![allow(dead_code)]

pub mod images;
pub mod inproc;
pub mod relay;
pub mod weed;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A free loopback port below the kernel's ephemeral range (32768-60999 by default), for a service
/// that must bind it after the test chose it (SeaweedFS's eight ports, a node restarted on its
/// address): no outgoing connection and no `127.0.0.1:0` listener can take it in between. Picked at
/// random from 20000-32767 and checked by binding it.
pub fn quiet_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: AtomicU64 = AtomicU64::new(0);
    let mut x = SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ u64::from(std::process::id()).rotate_left(32)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    // Never the same port twice in one test process (tests run in parallel threads).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_768) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// A running `iiifd serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub images: PathBuf,
    pub store: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

/// The repository's sample images.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/images")
}

fn spawn(
    images: &Path,
    store: &Path,
    args: &[String],
    env: &[(String, String)],
) -> (Child, SocketAddr, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iiifd"));
    cmd.arg("serve");
    // A free port unless the test names one (`--listen` in `args`).
    if !args.iter().any(|a| a == "--listen") {
        cmd.arg("--listen").arg("127.0.0.1:0");
    }
    cmd.arg("--images").arg(images).arg("--store").arg(store);
    cmd.args(args);
    // A clean environment for config: no IIIFD_* from the developer's shell.
    for (k, _) in std::env::vars() {
        if k.starts_with("IIIFD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("IIIFD_LOG__LEVEL", "warn");
    cmd.env("IIIFD_ADMIN__LISTEN", "127.0.0.1:0");
    cmd.env("IIIFD_STORE__MIN_FREE_BYTES", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("start iiifd");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Keep draining after the two address lines so the child never blocks on a full pipe.
            let _ = tx.send(line);
        }
    });
    let mut addrs = Vec::new();
    while addrs.len() < 2 {
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("iiifd did not report its addresses");
            }
        };
        let addr: Option<SocketAddr> = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok());
        addrs.push(addr.unwrap_or_else(|| panic!("unexpected line: {line}")));
    }
    (child, addrs[0], addrs[1])
}

impl Server {
    /// Serve a copy of the example images (so tests may add or replace files).
    pub fn start() -> Server {
        Server::start_with(&[], &[])
    }

    /// Serve with extra CLI arguments and environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let images = tmp.path().join("images");
        copy_dir(&examples(), &images);
        Server::launch(tmp, images, args, env)
    }

    /// Serve the images in `images` as they are (not a copy), with a store of its own.
    pub fn start_on(images: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        Server::launch(tmp, images.to_path_buf(), args, env)
    }

    /// Serve `tmp/images` with the store `tmp/store`, both prepared by the test.
    pub fn start_prepared(tmp: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Server {
        let images = tmp.path().join("images");
        Server::launch(tmp, images, args, env)
    }

    /// Start on `images` with the store in `tmp`, which the server keeps until dropped.
    fn launch(
        tmp: tempfile::TempDir,
        images: PathBuf,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let store = tmp.path().join("store");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, addr, admin) = spawn(&images, &store, &args, &env);
        Server {
            child,
            addr,
            admin,
            images,
            store,
            args,
            env,
            _tmp: tmp,
        }
    }

    /// SIGKILL the server (no clean-up of any kind), wait for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the server again on the same images and store (after [`Server::kill9`]).
    pub fn restart(&mut self) {
        self.kill9();
        let (child, addr, admin) = spawn(&self.images, &self.store, &self.args, &self.env);
        self.child = child;
        self.addr = addr;
        self.admin = admin;
    }

    /// GET on the admin listener.
    pub fn admin_get(&self, path: &str) -> Response {
        raw(
            self.admin,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    }

    /// POST `body` to the admin listener.
    pub fn admin_post(&self, path: &str, body: &str) -> Response {
        raw(
            self.admin,
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    }

    /// The value of an unlabelled Prometheus metric.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.admin_get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found"))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[])
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        raw(self.addr, req.as_bytes())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the server so far, in bytes (Linux `VmHWM`).
    pub fn peak_rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .map(str::to_owned)
            })
            .and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().expect("wait");
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn image(&self) -> image::DynamicImage {
        image::load_from_memory(&self.body)
            .unwrap_or_else(|e| panic!("not an image ({e}), status {}", self.status))
    }
}

/// Send raw bytes, read the whole response (the request must ask for `Connection: close`).
pub fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok();
    stream.write_all(request).expect("write");
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    parse_response(&buf)
        .unwrap_or_else(|| panic!("malformed response: {:?}", String::from_utf8_lossy(&buf)))
}

/// [`raw`] for tests where a failure is an outcome to assert on: `None` when the connection fails or
/// closes without a complete response head.
pub fn try_raw(addr: SocketAddr, request: &[u8]) -> Option<Response> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(120))).ok();
    stream.write_all(request).ok()?;
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Option<Response> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Response {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    })
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Start one request in a thread that tolerates the server dying mid-way: the raw reply (possibly
/// truncated) or `None` if the connection failed.
pub fn fire(addr: SocketAddr, url: String) -> std::thread::JoinHandle<Option<(String, Vec<u8>)>> {
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .ok()?;
        stream
            .write_all(
                format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .ok()?;
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf);
        Some((url, buf))
    })
}

/// The body of a raw reply if it is a 200 whose body arrived whole (as long as its Content-Length).
pub fn complete_200(buf: &[u8]) -> Option<&[u8]> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())?;
    (head.starts_with("http/1.1 200") && len == body.len()).then_some(body)
}

/// Every file below `dir`, recursively.
/// The published objects of a store: files under `objects/`, without the hidden `.<key>…tmp` files
/// a render in flight writes beside them (a kill can leave one; the next recount sweeps it).
pub fn stored_objects(store: &std::path::Path) -> Vec<std::path::PathBuf> {
    files_under(&store.join("objects"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .collect()
}

pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
