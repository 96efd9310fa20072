//! Crashes and disk faults: `kill -9` at varying points during cold renders and crawls, a disk that
//! fills up and frees again, a corrupted index.

use crate::common::Server;
use std::process::Command;
use std::time::Duration;

fn verify_offline(store: &std::path::Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_iiifd"))
        .args(["store", "verify", "--store"])
        .arg(store)
        .env("IIIFD_LOG__LEVEL", "error")
        .output()
        .expect("iiifd store verify");
    assert!(
        out.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("verify JSON")
}

fn available(path: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a writable statvfs.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

#[test]
fn twenty_kill_9_cycles_during_renders_and_crawls() {
    let mut s = Server::start_with(&[], &[("IIIFD_RENDER__WORKERS", "2")]);
    let mut complete = Vec::new();
    for cycle in 0..20u64 {
        // A crawl job in the background plus a burst of cold renders in the foreground.
        let body = r#"{"identifiers": ["chart", "rings", "collection/page"], "versions": [3, 2], "thumbnails": ["!200,200"]}"#;
        let crawl = s.admin_post("/admin/crawl", body);
        assert!(
            crawl.status == 202 || crawl.status == 200,
            "{}",
            crawl.text()
        );
        let addr = s.addr;
        let burst: Vec<_> = (0..8)
            .map(|i| {
                let url = format!(
                    "/iiif/3/chart/full/{},/{}/default.png",
                    150 + cycle * 10 + i,
                    (i % 4) * 90
                );
                crate::common::fire(addr, url)
            })
            .collect();
        // Kill at a different moment each cycle (a deterministic spread from 20 ms to ~600 ms).
        std::thread::sleep(Duration::from_millis(20 + (cycle * 131) % 600));
        s.kill9();
        for h in burst {
            let Some((url, buf)) = h.join().expect("client") else {
                continue;
            };
            if let Some(body) = crate::common::complete_200(&buf) {
                assert!(
                    image::load_from_memory(body).is_ok(),
                    "complete 200 bodies are images: {url}"
                );
                complete.push((url, body.to_vec()));
            }
        }
        let report = verify_offline(&s.store);
        assert_eq!(report["verify"]["bad"], 0, "cycle {cycle}: {report}");
        s.restart();
    }
    for (url, body) in &complete {
        assert_eq!(
            &s.get(url).body,
            body,
            "{url}: what was served before a crash is what is served now"
        );
    }
    eprintln!(
        "kill -9 cycles survived: 20; complete responses checked: {}",
        complete.len()
    );
}

#[test]
fn full_disk_then_space_returns() {
    let probe = tempfile::tempdir().expect("tempdir");
    let free = available(probe.path());
    let margin: u64 = 96 << 20;
    assert!(free > 2 * margin, "test needs some free disk space");
    let min_free = (free - margin).to_string();
    let s = Server::start_with(&[], &[("IIIFD_STORE__MIN_FREE_BYTES", min_free.as_str())]);
    let first = s.get("/iiif/3/chart/full/123,/0/default.jpg");
    assert_eq!(
        first.header("cache-status"),
        Some("iiifd; fwd=miss; stored")
    );
    // Fill the disk past min_free_bytes.
    let filler = s.store.parent().expect("parent").join("filler");
    std::fs::write(&filler, vec![0u8; (2 * margin) as usize]).expect("filler");
    let full = s.get("/iiif/3/chart/full/124,/0/default.jpg");
    assert_eq!(full.status, 200, "requests are still answered");
    assert_eq!(full.header("cache-status"), Some("iiifd; fwd=miss"));
    assert_eq!(full.image().width(), 124);
    assert!(s.metric("iiifd_store_write_errors_total") >= 1.0);
    let verify = s.admin_post("/admin/store/verify", "");
    assert_eq!(verify.json()["bad"], 0);
    // Space returns: writes resume.
    std::fs::remove_file(&filler).expect("remove filler");
    let again = s.get("/iiif/3/chart/full/124,/0/default.jpg");
    assert_eq!(
        again.header("cache-status"),
        Some("iiifd; fwd=miss; stored")
    );
    assert_eq!(
        s.get("/iiif/3/chart/full/124,/0/default.jpg")
            .header("cache-status"),
        Some("iiifd; hit")
    );
}

#[test]
fn corrupted_index_is_rebuilt_from_the_files() {
    let mut s = Server::start();
    let url = "/iiif/3/rings/full/90,/0/default.png";
    let first = s.get(url);
    s.get("/iiif/3/chart/full/90,/0/default.png");
    s.kill9();
    // Overwrite every file of the sled index with garbage.
    for entry in std::fs::read_dir(s.store.join("index"))
        .expect("index dir")
        .flatten()
    {
        if entry.path().is_file() {
            std::fs::write(entry.path(), b"\x00garbage\xffgarbage").expect("corrupt");
        }
    }
    s.restart();
    let again = s.get(url);
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body);
    assert_eq!(
        again.header("cache-status"),
        Some("iiifd; hit"),
        "served from its file while the index is rebuilt"
    );
    // The background recount counts both files again; until then the totals say they are
    // approximate.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while s.metric("iiifd_store_reconcile_passes_total") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no recount");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(s.metric("iiifd_store_objects"), 2.0);
    assert_eq!(s.metric("iiifd_store_totals_approximate"), 0.0);
    // The files kept their hashes: nothing to adopt, nothing to render again.
    assert_eq!(s.metric("iiifd_store_adopted_total"), 0.0);
    assert_eq!(s.get(url).header("cache-status"), Some("iiifd; hit"));
}
