//! A real viewer in a real browser: OpenSeadragon (npm) in Debian's Chromium, driven by Playwright
//! (`tests/browser/view.mjs`), over iiifd's `/viewer/{id}` page for a 6000x4000 image, with the 3.0 and
//! the 2.1 info.json. Every tile must load, down to full resolution, and the canvas must show the image.
//! Without the viewer script (no internet access), the page must still show the image.
//! Needs `chromium` (Debian) and `npm ci --prefix tests/browser`; `tests/setup.sh` installs both.

use crate::common::Server;
use std::path::Path;
use std::process::Command;

/// Run one of the Playwright scripts beside this file with `args`; its last output line, as JSON.
fn node(script: &str, args: &[&str]) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let out = Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("result JSON")
}

/// Chromium and Playwright are installed (tests/setup.sh), or the test says what is missing.
fn browser_ready() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir()
            && Path::new("/usr/bin/chromium").exists(),
        "needs Debian chromium and `npm ci --prefix tests/browser` (tests/setup.sh installs both)"
    );
}

#[test]
fn openseadragon_loads_every_tile_in_chromium() {
    browser_ready();
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
        let shot = shot.display().to_string();
        let r = node("view.mjs", &[&url, &shot]);
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
    let shot = shot.display().to_string();
    let r = node("view.mjs", &[&url, &shot, "--offline"]);
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

/// IIIF Authorization Flow 2.0 in Chromium (`tests/browser/auth.mjs`): a page on another origin than
/// the image server runs the client flow against a restricted image served by iiifd behind the
/// shipped nginx Auth 2.0 site (sign-in by nginx's basic authentication) and ends with the image
/// drawn; a page on a third origin holding the same cookie gets `invalidOrigin` and no image.
#[test]
fn the_auth2_client_flow_draws_a_restricted_image_in_chromium() {
    browser_ready();
    // The viewer pages' server (in auth.mjs) listens on this port, for two host names.
    let port = crate::common::quiet_port();
    let viewer = format!("http://viewer.example.test:{port}");
    let other = format!("http://other.example.test:{port}");
    let conf = tempfile::tempdir().expect("tempdir");
    let config = conf.path().join("iiifd.toml");
    std::fs::write(
        &config,
        format!(
            "[access]\nsecret = \"browser-test-secret-0123456789abcdef\"\ncookie_secure = false\n\
             allowed_origins = [\"{viewer}\", \"{other}\"]\n\
             [[access.rules]]\nidentifiers = \"chart\"\npolicy = \"restricted\"\n"
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let s = Server::start_with(
        &["--config", &config],
        &[("IIIFD_STORE__ACCEL_REDIRECT", "/_iiifd/")],
    );
    let nginx_port = crate::deploy::free_port();
    let nginx = crate::deploy::Nginx::start(&crate::deploy::auth_site(
        s.addr,
        nginx_port,
        &s.store,
        conf.path(),
    ));
    let images = format!("http://images.example.test:{}", nginx.addr.port());
    let info = format!("{images}/iiif/3/chart/info.json");
    let runs = node("auth.mjs", &[&info, &viewer, &other, "alice:secret"]);
    eprintln!("auth flow: {runs}");
    let step = |run: usize, name: &str| {
        runs[run]["log"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["step"] == name).cloned())
            .unwrap_or_else(|| panic!("run {run} has no step {name}: {runs}"))
    };
    for run in 0..2 {
        assert_eq!(runs[run]["pageErrors"], serde_json::json!([]), "{runs}");
        assert!(
            runs[run]["log"]
                .as_array()
                .is_some_and(|l| !l.iter().any(|s| s["step"] == "error")),
            "{runs}"
        );
        assert_eq!(step(run, "probe")["status"], 401);
        assert_eq!(step(run, "probe")["http"], 200);
    }
    // Before signing in: missingAspect, delivered to the page's own origin.
    assert_eq!(step(0, "token-before")["profile"], "missingAspect");
    // Signed in: a token from the image server's origin, the probe says 200, the image is drawn.
    let token = step(0, "token");
    assert_eq!(token["type"], "AuthAccessToken2", "{runs}");
    assert_eq!(token["from"], images);
    assert_eq!(step(0, "probe-with-token")["status"], 200);
    let image = step(0, "image");
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(400), Some(250)),
        "{runs}"
    );
    assert!(
        step(0, "shown")["stddev"].as_f64().unwrap_or(0.0) > 10.0,
        "the image is shown, not blank: {runs}"
    );
    // The other origin, with the first one's cookie: invalidOrigin, still 401, no image.
    assert_eq!(step(1, "token")["profile"], "invalidOrigin", "{runs}");
    assert_eq!(step(1, "probe-with-token")["status"], 401);
}

/// AVIF output as a browser shows it: Chromium decodes iiifd's avif (and, beside it, webp and png)
/// at the size asked, with the picture's colours where they should be.
#[test]
fn chromium_decodes_the_avif_output() {
    browser_ready();
    let s = Server::start();
    // Four flat quadrants: red, green, blue, gray.
    let quadrants = [[220, 30, 30], [30, 200, 40], [30, 40, 210], [128, 128, 128]];
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb(quadrants[usize::from(x >= 320) + 2 * usize::from(y >= 240)])
    });
    img.save(s.images.join("quad.png")).expect("test image");
    let base = format!("http://{}", s.addr);
    let urls: Vec<String> = ["avif", "webp", "png"]
        .iter()
        .map(|f| format!("{base}/iiif/3/quad/full/320,/0/default.{f}"))
        .collect();
    let mut args = vec![format!("{base}/iiif/3/quad/info.json")];
    args.extend(urls.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = node("decode.mjs", &args);
    for (i, f) in ["avif", "webp", "png"].iter().enumerate() {
        let d = &r[i];
        assert_eq!(d["ok"], true, "{f}: Chromium could not decode it: {d}");
        assert_eq!(
            (d["width"].as_u64(), d["height"].as_u64()),
            (Some(320), Some(240)),
            "{f}: {d}"
        );
        for (q, want) in quadrants.iter().enumerate() {
            let got = &d["samples"][q];
            for c in 0..3 {
                let v = got[c].as_i64().unwrap_or(-100);
                assert!(
                    (v - i64::from(want[c])).abs() <= 12,
                    "{f}: quadrant {q} channel {c}: {v} for {}: {d}",
                    want[c]
                );
            }
        }
    }
}
