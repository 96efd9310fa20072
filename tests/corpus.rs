//! The real-world corpus: every image file Pillow's source distribution ships as its own test data
//! (JPEG, PNG, GIF, WebP, TIFF and JPEG 2000 in their odd variants, truncated and hostile files
//! among them; fetched by `tests/setup.sh`, pinned by hash), with the classes it lacks made by
//! `tests/corpus/fixtures.py`, asked of the real binary and compared
//! with Pillow's decode of the same file (`tests/corpus/reference.py` says how the reference is
//! normalised).
//!
//! What must hold: every file Pillow decodes is served (200) with its pixels (a mean difference of
//! at most 3 levels and at most 0.5 % of samples more than 24 levels off), except the files listed
//! with a reason in `tests/corpus/known.txt`, and those must still differ (a fixed file leaves the
//! list), both of its image requests succeed; nothing hangs or drops a connection; and the peak
//! resident memory stays within the bound the configuration states (`render.max_memory_bytes`).

use crate::common::Server;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn cache() -> PathBuf {
    std::env::var_os("IIIFD_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/iiifd-test")
        })
}

/// The Python with Pillow (and its lcms2) that `tests/setup.sh` installs as the reference decoder.
pub fn reference_python() -> PathBuf {
    let python = cache().join("corpus/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run tests/setup.sh",
        python.display()
    );
    python
}

/// `tests/corpus/known.txt`: file name, then why it is not served as Pillow shows it.
fn known() -> HashMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/known.txt");
    std::fs::read_to_string(path)
        .expect("tests/corpus/known.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (file, why) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (file.to_string(), why.trim().to_string())
        })
        .collect()
}

#[test]
fn real_world_files_are_served_as_the_reference_decoder_shows_them() {
    let corpus = cache().join("corpus");
    let images = corpus.join("images");
    let python = reference_python();
    assert!(
        images.is_dir(),
        "the corpus is missing from {}: run tests/setup.sh",
        corpus.display()
    );
    // The classes the public corpus lacks, made here as the tools that produce them do
    // (tests/corpus/fixtures.py: palette and low-bit gray PNGs with tRNS, one huge IDAT, old-style JPEG TIFF of one
    // strip, compat-order LZW, CMYK variants), beside it.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/fixtures.py");
    let made = Command::new(&python)
        .arg(&fixtures)
        .arg(&images)
        .output()
        .expect("run the fixture script");
    assert!(
        made.status.success(),
        "fixtures.py failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    // Under a memory target (render.max_memory_bytes), which the pass must stay within.
    let server = Server::start_on(
        &images,
        &[],
        &[
            ("IIIFD_RENDER__MAX_MEMORY_BYTES", "536870912"),
            ("IIIFD_RENDER__DECODED_CACHE_BYTES", "67108864"),
        ],
    );
    let bound = server.metric("iiifd_memory_bound_bytes") as u64;
    assert!(bound > 0 && bound <= 512 << 20, "bound {bound}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/reference.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("http://{}", server.addr))
        .arg(&images)
        .output()
        .expect("run the reference script");
    assert!(
        out.status.success(),
        "reference.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    let rows = report["files"].as_array().expect("files");
    assert!(rows.len() >= 500, "only {} corpus files", rows.len());
    let known = known();
    let ours = rows
        .iter()
        .filter(|r| r["file"].as_str().is_some_and(|f| f.starts_with("iiifd-")))
        .count();
    assert_eq!(
        ours, 12,
        "every fixture of tests/corpus/fixtures.py is in the pass"
    );

    let mut failures = Vec::new();
    let mut by_status: HashMap<String, usize> = HashMap::new();
    let mut reference_ok = 0;
    let mut slowest = (0.0f64, String::new());
    for row in rows {
        let file = row["file"].as_str().unwrap_or("?").to_string();
        let status: Vec<u64> = row["status"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        for s in &status {
            *by_status.entry(s.to_string()).or_default() += 1;
        }
        let secs = row["slowest"].as_f64().unwrap_or(0.0);
        if secs > slowest.0 {
            slowest = (secs, file.clone());
        }
        if status.len() != 3 || status.contains(&0) {
            failures.push(format!("{file}: a request got no answer: {row}"));
            continue;
        }
        let decodes = row["reference"] == "ok";
        reference_ok += usize::from(decodes);
        if !decodes {
            // A broken file may fail at full size and not at a reduced one (JPEG 2000 decodes
            // fewer resolution levels for a thumbnail), or exceed the decode budget only at full size.
            continue;
        }
        if status[1] != status[2] {
            failures.push(format!("{file}: png {} but jpg {}", status[1], status[2]));
        }
        let mean = row["mean"].as_f64();
        let large = row["large"].as_f64();
        let right = status[1] == 200
            && row.get("size").is_none()
            && mean.is_some_and(|m| m <= 3.0)
            && large.is_some_and(|l| l <= 0.005);
        match (right, known.get(&file)) {
            (true, Some(_)) => failures.push(format!(
                "{file} is now served right: remove it from tests/corpus/known.txt"
            )),
            (false, None) => failures.push(format!(
                "{file}: Pillow decodes it, we answer {status:?}, mean {mean:?}, large {large:?}, {}",
                row.get("size").or(row.get("message")).unwrap_or(&serde_json::Value::Null)
            )),
            _ => {}
        }
    }
    for file in known.keys() {
        if !rows.iter().any(|r| r["file"] == file.as_str()) {
            failures.push(format!("{file} is in known.txt but not in the corpus"));
        }
    }
    let peak = server.peak_rss();
    eprintln!(
        "corpus: {} files ({} decoded by Pillow), {} requests, by status {:?}; slowest {:.2} s ({}); \
         peak RSS {} MiB of a {} MiB bound",
        rows.len(),
        reference_ok,
        rows.len() * 3,
        by_status,
        slowest.0,
        slowest.1,
        peak >> 20,
        bound >> 20
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        peak <= bound,
        "peak RSS {peak} above the memory bound {bound}"
    );
    assert!(
        slowest.0 < 30.0,
        "a request took {:.1} s ({})",
        slowest.0,
        slowest.1
    );
}
