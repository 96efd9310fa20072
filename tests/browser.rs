//! A real viewer in a real browser: OpenSeadragon (npm) in Debian's Chromium, driven by Playwright
//! (`tests/browser/view.mjs`), over iiifd's `/viewer/{id}` page for a 6000x4000 image, with the 3.0 and
//! the 2.1 info.json. Every tile must load, down to full resolution, and the canvas must show the image.
//! Without the viewer script (no internet access), the page must still show the image.
//! Needs `chromium` (Debian) and `npm ci --prefix tests/browser`; `tests/setup.sh` installs both.

use crate::common::Server;
use std::path::Path;
use std::process::Command;

#[test]
fn openseadragon_loads_every_tile_in_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir()
            && Path::new("/usr/bin/chromium").exists(),
        "needs Debian chromium and `npm ci --prefix tests/browser` (tests/setup.sh installs both)"
    );
    let s = Server::start();
    let img = image::RgbImage::from_fn(6000, 4000, |x, y| {
        image::Rgb([
            (x / 24) as u8,
            (y / 16) as u8,
            if (x / 500 + y / 500) % 2 == 0 {
                40
            } else {
                220
            },
        ])
    });
    img.save(s.images.join("large.jpg")).expect("test image");
    for version in ["3", "2"] {
        let shot = std::env::var_os("IIIFD_BROWSER_SHOTS")
            .map(std::path::PathBuf::from)
            .or_else(|| s.store.parent().map(Path::to_path_buf))
            .unwrap_or_default()
            .join(format!("shot-{version}.png"));
        let url = format!("http://{}/viewer/large?version={version}", s.addr);
        let out = Command::new("node")
            .arg(dir.join("view.mjs"))
            .arg(&url)
            .arg(&shot)
            .output()
            .expect("node");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "version {version}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("result JSON");
        assert_eq!(
            r["failures"],
            serde_json::json!([]),
            "version {version}: tile-load-failed fired: {r}"
        );
        assert_eq!(
            r["pageErrors"],
            serde_json::json!([]),
            "version {version}: {r}"
        );
        assert!(
            r["loaded"].as_u64().unwrap_or(0) >= 20,
            "version {version}: {r}"
        );
        assert_eq!(
            r["level"], r["maxLevel"],
            "version {version}: full resolution was drawn: {r}"
        );
        assert!(
            r["stddev"].as_f64().unwrap_or(0.0) > 10.0,
            "version {version}: the canvas is not blank: {r}"
        );
        assert!(r["screenshotBytes"].as_u64().unwrap_or(0) > 2_000, "{r}");
        eprintln!("browser {version}: {r}");
    }
    assert!(s.metric("iiifd_renders_total") > 0.0);

    // The viewer script unreachable: a still image and a line on how to use a local copy.
    let shot = s
        .store
        .parent()
        .unwrap_or(Path::new("/tmp"))
        .join("shot-offline.png");
    let url = format!("http://{}/viewer/large", s.addr);
    let out = Command::new("node")
        .arg(dir.join("view.mjs"))
        .arg(&url)
        .arg(&shot)
        .arg("--offline")
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "offline: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("result JSON");
    assert_eq!(r["mode"], "still", "offline: {r}");
    assert_eq!(r["pageErrors"], serde_json::json!([]), "offline: {r}");
    assert_eq!(
        (r["width"].as_u64(), r["height"].as_u64()),
        (Some(1600), Some(1067)),
        "offline: the still image is full/!1600,1600 of 6000x4000: {r}"
    );
    assert!(
        r["stddev"].as_f64().unwrap_or(0.0) > 10.0,
        "offline: the still image is not blank: {r}"
    );
    assert!(
        r["note"]
            .as_str()
            .unwrap_or("")
            .contains("viewer.script_url"),
        "offline: the page says how to use a local copy: {r}"
    );
    eprintln!("browser offline: {r}");
}
