//! The HTTP API, in-process: the library's `App` answers `http::Request` values (no socket, no
//! process). Routes, headers, conditional requests, CORS, errors and the admin API. What needs a
//! process (exit codes, signals) is at the end, against the real binary.

use crate::common::inproc::InProcess;
use crate::common::Server;
use image::GenericImageView;
use std::process::Command;

/// The public URL the in-process harness's `Host` header gives.
const ORIGIN: &str = "http://iiifd.test";

const CHART: &str = "/iiif/3/chart";

#[test]
fn readme_example_serves_a_jpeg() {
    let s = InProcess::start();
    let r = s.get(&format!("{CHART}/full/max/0/default.jpg"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.image().dimensions(), (1600, 1000));
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn info_json_in_every_version() {
    let s = InProcess::start();
    let v3 = s.get(&format!("{CHART}/info.json"));
    assert_eq!(v3.status, 200);
    assert_eq!(
        v3.header("content-type"),
        Some("application/ld+json;profile=\"http://iiif.io/api/image/3/context.json\""),
        "3.0 §6: JSON-LD with the profile when the client does not say"
    );
    assert_eq!(
        v3.header("link"),
        Some("<http://iiif.io/api/image/3/level2.json>;rel=\"profile\"")
    );
    let j = v3.json();
    assert_eq!(j["id"], format!("{ORIGIN}/iiif/3/chart"));
    assert_eq!(
        (j["width"].as_u64(), j["height"].as_u64()),
        (Some(1600), Some(1000))
    );
    assert_eq!(j["type"], "ImageService3");
    assert_eq!(j["tiles"][0]["scaleFactors"], serde_json::json!([1, 2, 4]));
    assert!(v3
        .text()
        .starts_with("{\"@context\":\"http://iiif.io/api/image/3/context.json\""));

    let ld = s.request(
        "GET",
        &format!("{CHART}/info.json"),
        &[("Accept", "application/ld+json")],
    );
    assert_eq!(
        ld.header("content-type"),
        Some("application/ld+json;profile=\"http://iiif.io/api/image/3/context.json\"")
    );

    let v2 = s.get("/iiif/2/chart/info.json").json();
    assert_eq!(v2["@id"], format!("{ORIGIN}/iiif/2/chart"));
    assert_eq!(v2["profile"][0], "http://iiif.io/api/image/2/level2.json");
    let v1 = s.get("/iiif/1/chart/info.json").json();
    assert_eq!(
        v1["@context"],
        "http://library.stanford.edu/iiif/image-api/1.1/context.json"
    );
    assert_eq!(v1["tile_width"], 512);
}

#[test]
fn public_id_follows_forwarded_headers_and_config() {
    let s = InProcess::start();
    let fwd = s.request(
        "GET",
        "/iiif/3/chart/info.json",
        &[
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "images.example.org"),
            ("X-Forwarded-Prefix", "/museum"),
        ],
    );
    assert_eq!(
        fwd.json()["id"],
        "https://images.example.org/museum/iiif/3/chart"
    );
    let hostile = s.request(
        "GET",
        "/iiif/3/chart/info.json",
        &[("X-Forwarded-Host", "evil\"><script>")],
    );
    assert_eq!(hostile.json()["id"], format!("{ORIGIN}/iiif/3/chart"));
    drop(s);
    let s = InProcess::with(
        |c| c.public_base_url = "https://cdn.example.org/iiif".into(),
        None,
    );
    assert_eq!(
        s.get("/iiif/2/chart/info.json").json()["@id"],
        "https://cdn.example.org/iiif/2/chart"
    );
}

#[test]
fn base_uri_redirects_to_info() {
    let s = InProcess::start();
    let r = s.get("/iiif/3/collection%2Fpage");
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some(format!("{ORIGIN}/iiif/3/collection%2Fpage/info.json").as_str())
    );
}

#[test]
fn encoded_slash_names_a_subfolder() {
    let s = InProcess::start();
    let info = s.get("/iiif/3/collection%2Fpage/info.json");
    assert_eq!(info.status, 200);
    assert_eq!(
        info.json()["id"],
        format!("{ORIGIN}/iiif/3/collection%2Fpage")
    );
    let img = s.get("/iiif/2/collection%2Fpage/full/300,/0/default.png");
    assert_eq!(img.status, 200);
    assert_eq!(img.image().dimensions(), (300, 400));
    // Decoded exactly once: %252F is a literal "%2F" in the identifier, which names nothing.
    assert_eq!(s.get("/iiif/3/collection%252Fpage/info.json").status, 404);
}

#[test]
fn head_and_options() {
    let s = InProcess::start();
    let get = s.get(&format!("{CHART}/full/200,/0/default.jpg"));
    let head = s.request("HEAD", &format!("{CHART}/full/200,/0/default.jpg"), &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), get.header("content-length"));
    assert_eq!(head.header("etag"), get.header("etag"));
    let pre = s.request(
        "OPTIONS",
        &format!("{CHART}/info.json"),
        &[
            ("Origin", "http://viewer.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
    );
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    assert!(pre
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("GET")));
    let post = s.request(
        "POST",
        &format!("{CHART}/info.json"),
        &[("Content-Length", "0")],
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn equivalent_spellings_share_etag_and_canonical_link() {
    let s = InProcess::start();
    let spellings = [
        "/iiif/3/chart/full/pct:50/0/default.jpg",
        "/iiif/3/chart/0,0,1600,1000/800,500/0/default.jpg",
        "/iiif/3/chart/pct:0,0,100,100/800,/0/default.jpg",
        "/iiif/3/chart/full/!800,800/0/default.jpg",
        "/iiif/2/chart/full/800,/0/default.jpg",
        "/iiif/1/chart/full/,500/0/native.jpg",
    ];
    let responses: Vec<_> = spellings.iter().map(|p| s.get(p)).collect();
    for (p, r) in spellings.iter().zip(&responses) {
        assert_eq!(r.status, 200, "{p}");
        assert_eq!(r.header("etag"), responses[0].header("etag"), "{p}");
        assert_eq!(r.image().dimensions(), (800, 500), "{p}");
    }
    let base = ORIGIN;
    assert_eq!(
        responses[0].header("link"),
        Some(
            format!(
                "<{base}/iiif/3/chart/full/800,500/0/default.jpg>;rel=\"canonical\", <http://iiif.io/api/image/3/level2.json>;rel=\"profile\""
            )
            .as_str()
        )
    );
    assert!(responses[4]
        .header("link")
        .is_some_and(|l| l.starts_with(&format!("<{base}/iiif/2/chart/full/800,/0/default.jpg>"))));
    let etag = responses[0].header("etag").unwrap_or("");
    assert!(
        etag.len() == 66 && etag.starts_with('"'),
        "strong ETag: {etag}"
    );
}

#[test]
fn conditional_requests() {
    let s = InProcess::start();
    let url = format!("{CHART}/full/100,/0/default.jpg");
    let first = s.get(&url);
    let etag = first.header("etag").unwrap_or("").to_owned();
    let modified = first.header("last-modified").unwrap_or("").to_owned();
    assert_eq!(
        first.header("cache-control"),
        Some("public, max-age=2592000")
    );
    let r = s.request("GET", &url, &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(
        s.request("GET", &url, &[("If-Modified-Since", &modified)])
            .status,
        304
    );
    assert_eq!(
        s.request("GET", &url, &[("If-Modified-Since", "not a date")])
            .status,
        200
    );
    assert_eq!(
        s.request("GET", &url, &[("If-None-Match", "\"other\"")])
            .status,
        200
    );
    let info = s.get(&format!("{CHART}/info.json"));
    let info_modified = info.header("last-modified").unwrap_or("").to_owned();
    assert_eq!(
        s.request(
            "GET",
            &format!("{CHART}/info.json"),
            &[("If-Modified-Since", &info_modified)]
        )
        .status,
        304
    );
}

/// Spec point 4: info.json has an ETag over its text, and its `Last-Modified` is never older than the
/// process, so after a configuration change (here the tile size) a revalidating cache gets the new
/// document, not a 304 that keeps the old one for 30 days.
#[test]
fn info_json_validators_follow_the_configuration() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let first = {
        let store = store.clone();
        InProcess::with(move |c| c.store.path = store, None)
    };
    let a = first.get(&format!("{CHART}/info.json"));
    let etag = a.header("etag").expect("info.json has an ETag").to_owned();
    let modified = a.header("last-modified").unwrap_or("").to_owned();
    assert_eq!(
        first
            .request(
                "GET",
                &format!("{CHART}/info.json"),
                &[("If-None-Match", &etag)]
            )
            .status,
        304
    );
    let image_modified = first
        .get(&format!("{CHART}/full/64,/0/default.jpg"))
        .header("last-modified")
        .unwrap_or("")
        .to_owned();
    drop(first);
    // HTTP dates have a one-second resolution: the restarted process must start in a later second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = InProcess::with(
        move |c| {
            c.store.path = store;
            c.tile_size = 256;
        },
        None,
    );
    let url = format!("{CHART}/info.json");
    let by_tag = second.request("GET", &url, &[("If-None-Match", &etag)]);
    assert_eq!(
        by_tag.status, 200,
        "the old tag must not match the new document"
    );
    assert_eq!(by_tag.json()["tiles"][0]["width"], 256);
    assert_ne!(by_tag.header("etag"), Some(etag.as_str()));
    for since in [&modified, &image_modified] {
        let by_date = second.request("GET", &url, &[("If-Modified-Since", since)]);
        assert_eq!(by_date.status, 200, "If-Modified-Since {since}");
    }
}

/// info.json carries what the institution adds: `[info]` for every image, a sidecar per image (merged
/// over it, validated: a bad one is left out, never breaking the image).
#[test]
fn info_json_extras_from_config_and_sidecars() {
    let s = InProcess::with(
        |c| {
            c.info.rights = "http://creativecommons.org/licenses/by/4.0/".into();
            c.info.preferred_formats = vec!["webp".into(), "jpg".into()];
            c.info.sidecars = true;
        },
        None,
    );
    let v3 = s.get(&format!("{CHART}/info.json")).json();
    assert_eq!(v3["rights"], "http://creativecommons.org/licenses/by/4.0/");
    assert_eq!(v3["preferredFormats"], serde_json::json!(["webp", "jpg"]));
    assert_eq!(
        s.get("/iiif/2/chart/info.json").json()["license"],
        "http://creativecommons.org/licenses/by/4.0/"
    );
    std::fs::write(
        s.images.join("chart.json"),
        r#"{"rights": "http://rightsstatements.org/vocab/InC/1.0/",
            "partOf": [{"id": "https://example.org/iiif/manifest/7", "type": "Manifest"}],
            "attribution": "Example Museum"}"#,
    )
    .expect("sidecar");
    let v3 = s.get(&format!("{CHART}/info.json")).json();
    assert_eq!(v3["rights"], "http://rightsstatements.org/vocab/InC/1.0/");
    assert_eq!(v3["partOf"][0]["id"], "https://example.org/iiif/manifest/7");
    assert_eq!(v3["preferredFormats"], serde_json::json!(["webp", "jpg"]));
    assert!(v3.get("attribution").is_none());
    assert_eq!(
        s.get("/iiif/2/chart/info.json").json()["attribution"],
        "Example Museum"
    );
    // A sidecar that tries to change what the server computes is ignored, not obeyed.
    std::fs::write(
        s.images.join("chart.json"),
        r#"{"width": 1, "rights": "http://x.org/r"}"#,
    )
    .expect("sidecar");
    let r = s.get(&format!("{CHART}/info.json"));
    assert_eq!(r.status, 200);
    let v3 = r.json();
    assert_eq!(v3["width"], 1600);
    assert_eq!(v3["rights"], "http://creativecommons.org/licenses/by/4.0/");
    std::fs::write(s.images.join("chart.json"), "not json").expect("sidecar");
    assert_eq!(s.get(&format!("{CHART}/info.json")).status, 200);
    drop(s);
    // A configured value the spec does not allow stops the server at start, naming the key.
    let bad = Command::new(env!("CARGO_BIN_EXE_iiifd"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("IIIFD_INFO__PREFERRED_FORMATS", "[\"pdf\"]")
        .output()
        .expect("runs");
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("info.preferred_formats"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// The spec and HTTP points the official validator does not check (issue 16), over HTTP.
#[test]
fn spec_points_the_validator_misses() {
    // 1: limits below the tile size: every listed tile and size is answered.
    let s = InProcess::with(
        |c| {
            c.limits.max_width = 300;
            c.limits.max_area = 40_000;
        },
        None,
    );
    for v in ["3", "2"] {
        let info = s.get(&format!("/iiif/{v}/chart/info.json")).json();
        let tile = info["tiles"][0]["width"].as_u64().expect("tile width");
        assert!(tile <= 200, "v{v}: tile {tile}");
        let sizes = info["sizes"].as_array().expect("sizes");
        assert!(!sizes.is_empty(), "v{v}: sizes must not be empty");
        for size in sizes {
            let (w, h) = (
                size["width"].as_u64().unwrap_or(0),
                size["height"].as_u64().unwrap_or(0),
            );
            let r = s.get(&format!("/iiif/{v}/chart/full/{w},{h}/0/default.jpg"));
            assert_eq!(r.status, 200, "v{v}: listed size {w}x{h}");
        }
        let r = s.get(&format!(
            "/iiif/{v}/chart/0,0,{tile},{tile}/{tile},{tile}/0/default.jpg"
        ));
        assert_eq!(r.status, 200, "v{v}: a listed tile");
    }
    // 5: 2.1 `full` above the limits is refused; `max` is scaled.
    assert_eq!(s.get("/iiif/2/chart/full/full/0/default.jpg").status, 400);
    assert_eq!(s.get("/iiif/1/chart/full/full/0/native.jpg").status, 400);
    let max = s.get("/iiif/2/chart/full/max/0/default.jpg");
    assert_eq!(max.status, 200);
    // 7: ... and `max` is the `w,` size, so its canonical link is `w,`, not a distorting `w,h`.
    let link = max.header("link").unwrap_or("").to_owned();
    let (mw, mh) = max.image().dimensions();
    assert!(
        link.contains(&format!("/full/{mw},/0/default.jpg>")),
        "{link}"
    );
    assert_eq!(
        s.get(&format!("/iiif/2/chart/full/{mw},/0/default.jpg"))
            .image()
            .dimensions(),
        (mw, mh)
    );
    drop(s);

    let s = InProcess::start();
    // 6: every 2.1 `sizes` entry is what its `w,` request returns. On a narrow image the level height
    // (`ceil(h / 2^k)`) and the `w,` height differ most: 33x2001 lists 17x1031 (`17,`), not 17x1001.
    image::RgbImage::from_pixel(33, 2001, image::Rgb([90, 120, 30]))
        .save(s.images.join("narrow.png"))
        .expect("write narrow.png");
    for id in ["chart", "narrow"] {
        let info = s.get(&format!("/iiif/2/{id}/info.json")).json();
        for size in info["sizes"].as_array().expect("sizes") {
            let (w, h) = (
                size["width"].as_u64().unwrap_or(0),
                size["height"].as_u64().unwrap_or(0),
            );
            let got = s
                .get(&format!("/iiif/2/{id}/full/{w},/0/default.png"))
                .image()
                .dimensions();
            assert_eq!((u64::from(got.0), u64::from(got.1)), (w, h), "{id}");
        }
    }
    // 2: Accept q-values decide info.json's media type.
    let info = format!("{CHART}/info.json");
    let ct = |accept: &str| {
        s.request("GET", &info, &[("Accept", accept)])
            .header("content-type")
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(
        ct("application/ld+json;q=0, application/json"),
        "application/json"
    );
    assert!(ct("application/json;q=0.5, application/ld+json")
        .starts_with("application/ld+json;profile="));
    assert_eq!(s.get(&info).header("vary"), Some("Accept"));
    // 3: a 1.1 request whose format came from Accept varies on Accept; one with an extension does not.
    let negotiated = s.request(
        "GET",
        "/iiif/1/chart/full/64,/0/native",
        &[("Accept", "image/png")],
    );
    assert_eq!(negotiated.status, 200);
    assert_eq!(negotiated.header("content-type"), Some("image/png"));
    assert_eq!(negotiated.header("vary"), Some("Accept"));
    assert_eq!(
        s.get("/iiif/1/chart/full/64,/0/native.jpg").header("vary"),
        None
    );
    // 8: X-Forwarded-Port and RFC 7239 Forwarded reach `id`, the 303 Location and the canonical Link.
    let port = [
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "images.example.org"),
        ("X-Forwarded-Port", "8443"),
    ];
    let j = s.request("GET", &info, &port).json();
    assert_eq!(j["id"], "https://images.example.org:8443/iiif/3/chart");
    let redirect = s.request("GET", CHART, &port);
    assert_eq!(
        redirect.header("location"),
        Some("https://images.example.org:8443/iiif/3/chart/info.json")
    );
    let std = [(
        "Forwarded",
        "for=192.0.2.1;proto=https;host=iiif.example.org",
    )];
    let tile = s.request("GET", &format!("{CHART}/full/64,/0/default.jpg"), &std);
    assert!(
        tile.header("link")
            .unwrap_or("")
            .starts_with("<https://iiif.example.org/iiif/3/chart/full/64,40/0/default.jpg>"),
        "{:?}",
        tile.header("link")
    );
}

#[test]
fn replaced_source_gets_a_new_key() {
    let s = InProcess::start();
    let url = "/iiif/3/rings/full/64,/0/default.png";
    let before = s.get(url);
    let path = s.images.join("rings.png");
    let replacement = image::RgbaImage::from_pixel(640, 640, image::Rgba([0, 0, 255, 255]));
    let tmp = s.images.join("rings.tmp.png");
    replacement.save(&tmp).expect("write");
    std::fs::rename(&tmp, &path).expect("replace");
    let after = s.get(url);
    assert_eq!(after.status, 200);
    assert_ne!(before.header("etag"), after.header("etag"));
    assert_eq!(
        after.image().to_rgba8().get_pixel(32, 32).0,
        [0, 0, 255, 255]
    );
}

/// Mean absolute difference per channel between two RGB images of one size.
fn mean_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

#[test]
fn pixels_follow_region_size_mirror_rotation_quality() {
    let s = InProcess::start();
    let source = image::open(s.images.join("chart.jpg"))
        .expect("decode source")
        .to_rgb8();
    // Region + size: compare with the reference crop scaled by the reference decoder.
    let r = s
        .get("/iiif/3/chart/400,200,400,300/200,150/0/default.png")
        .image()
        .to_rgb8();
    let reference = image::imageops::resize(
        &image::imageops::crop_imm(&source, 400, 200, 400, 300).to_image(),
        200,
        150,
        image::imageops::FilterType::Triangle,
    );
    assert!(
        mean_diff(&r, &reference) < 3.0,
        "region/size pixels differ: {}",
        mean_diff(&r, &reference)
    );
    // Mirror: the mirrored output equals the flipped unmirrored one.
    let plain = s
        .get("/iiif/3/chart/0,0,300,200/max/0/default.png")
        .image()
        .to_rgb8();
    let mirrored = s
        .get("/iiif/3/chart/0,0,300,200/max/!0/default.png")
        .image()
        .to_rgb8();
    assert!(mean_diff(&image::imageops::flip_horizontal(&plain), &mirrored) < 0.5);
    // Rotation by 90: dimensions swap and pixels match the reference rotation.
    let rotated = s
        .get("/iiif/3/chart/0,0,300,200/max/90/default.png")
        .image()
        .to_rgb8();
    assert!(mean_diff(&image::imageops::rotate90(&plain), &rotated) < 0.5);
    // Mirror is applied before rotation (3.0 §4.3).
    let mr = s
        .get("/iiif/3/chart/0,0,300,200/max/!90/default.png")
        .image()
        .to_rgb8();
    assert!(
        mean_diff(
            &image::imageops::rotate90(&image::imageops::flip_horizontal(&plain)),
            &mr
        ) < 0.5
    );
    // Arbitrary rotation: png corners transparent, jpg corners white, bounding box grows.
    let png = s
        .get("/iiif/3/rings/full/200,/30/default.png")
        .image()
        .to_rgba8();
    assert_eq!(png.dimensions(), (274, 274));
    assert_eq!(png.get_pixel(0, 0).0[3], 0);
    let jpg = s
        .get("/iiif/3/chart/full/200,/45/default.jpg")
        .image()
        .to_rgb8();
    assert!(
        jpg.get_pixel(1, 1).0.iter().all(|&c| c > 240),
        "white corner: {:?}",
        jpg.get_pixel(1, 1)
    );
    // Quality.
    let gray = s.get("/iiif/3/chart/full/100,/0/gray.png").image();
    assert!(matches!(gray.color(), image::ColorType::L8));
    let bitonal = s
        .get("/iiif/3/chart/full/100,/0/bitonal.png")
        .image()
        .to_luma8();
    assert!(bitonal.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    // Every rendered format decodes.
    for fmt in ["jpg", "png", "gif", "tif", "webp"] {
        let r = s.get(&format!("/iiif/3/rings/full/50,/0/default.{fmt}"));
        assert_eq!(r.status, 200, "{fmt}");
        assert_eq!(r.image().dimensions(), (50, 50), "{fmt}");
    }
}

#[test]
fn corrupt_and_oversized_sources() {
    let s = InProcess::start();
    let bytes = std::fs::read(s.images.join("chart.jpg")).expect("read");
    std::fs::write(s.images.join("truncated.jpg"), &bytes[..bytes.len() / 3]).expect("write");
    std::fs::write(s.images.join("garbage.png"), b"this is not an image").expect("write");
    let r = s.get("/iiif/3/garbage/full/max/0/default.jpg");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("could not be decoded"), "{}", r.text());
    let r = s.get("/iiif/3/truncated/full/max/0/default.jpg");
    assert!(
        r.status == 500 || r.status == 200,
        "a truncated JPEG is an error or a partial decode, never a crash: {}",
        r.status
    );
    assert_eq!(s.get("/health").status, 200);
    drop(s);
    let s = InProcess::with(|c| c.limits.max_source_pixels = 1_000_000, None);
    let r = s.get("/iiif/3/chart/full/100,/0/default.jpg");
    assert_eq!(r.status, 501);
    assert!(r.text().contains("max_source_pixels"), "{}", r.text());
    assert_eq!(
        s.get("/iiif/3/rings/info.json").status,
        200,
        "small images still work"
    );
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    // Twelve clients with one render each: no client is over its share, the queue is just full.
    // (One client asking for twelve hears 429: `admission.rs`.)
    let s = InProcess::with(
        |c| {
            c.render.workers = 1;
            c.render.queue = 0;
            c.admission.client_header = "X-Real-IP".into();
        },
        None,
    );
    let responses: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let s = &s;
                scope.spawn(move || {
                    let who = format!("192.0.{i}.1");
                    s.request(
                        "GET",
                        &format!("/iiif/3/chart/full/^{},/{}/default.png", 3000 + i, i),
                        &[("x-real-ip", who.as_str())],
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let busy: Vec<_> = responses.iter().filter(|r| r.status == 503).collect();
    assert!(
        !busy.is_empty(),
        "statuses: {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(busy.iter().all(|r| r.header("retry-after") == Some("1")));
    assert!(responses.iter().all(|r| r.status == 200 || r.status == 503));
    assert!(responses.iter().any(|r| r.status == 200));
    assert_eq!(
        s.get("/iiif/3/rings/full/10,/0/default.jpg").status,
        200,
        "recovers when idle"
    );
}

#[test]
fn errors_name_the_problem_with_the_right_status() {
    let s = InProcess::start();
    for (path, status, says) in [
        ("/iiif/3/chart/full/max/0/default.jpgx", 400, "format"),
        ("/iiif/3/chart/nonsense/max/0/default.jpg", 400, "region"),
        ("/iiif/3/chart/0,0,10,10/20,20/0/default.jpg", 400, "upscal"),
        ("/iiif/3/nothing/info.json", 404, "no image"),
        ("/iiif/3/chart/full/max/0/default.pdf", 501, "pdf"),
        ("/iiif/9/chart/info.json", 400, "version"),
        ("/elsewhere", 404, "expected"),
    ] {
        let r = s.get(path);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(
            r.text().to_lowercase().contains(says),
            "{path}: {}",
            r.text()
        );
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{path}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
    }
    let put = s.request("PUT", "/iiif/3/chart/info.json", &[]);
    assert_eq!(
        (put.status, put.header("allow")),
        (405, Some("GET, HEAD, OPTIONS"))
    );
}

#[test]
fn admin_api_in_process() {
    let s = InProcess::with(|c| c.admin.token = "sesame".into(), None);
    let auth = [("Authorization", "Bearer sesame")];
    // Health needs no token; everything else does, and says how to give it.
    assert_eq!(s.admin("GET", "/health", &[], b"").status, 200);
    let denied = s.admin("GET", "/metrics", &[], b"");
    assert_eq!(denied.status, 401);
    assert_eq!(denied.header("www-authenticate"), Some("Bearer"));
    assert_eq!(s.get("/iiif/3/chart/full/64,/0/default.jpg").status, 200);
    let metrics = s.admin("GET", "/metrics", &auth, b"").text();
    assert!(metrics.contains("iiifd_renders_total 1"), "{metrics}");
    let stats = s.admin("GET", "/admin/store/stats", &auth, b"").json();
    assert_eq!(stats["objects"], 1, "{stats}");
    let verify = s.admin("POST", "/admin/store/verify", &auth, b"").json();
    assert_eq!(verify["bad"], 0, "{verify}");
    let purge = s
        .admin("POST", "/admin/store/purge?id=chart", &auth, b"")
        .json();
    assert_eq!(purge["purged"], 1, "{purge}");
    assert_eq!(
        s.admin("POST", "/admin/store/purge", &auth, b"").status,
        400,
        "purge without an id"
    );
    let wrong = s.admin("DELETE", "/admin/store/stats", &auth, b"");
    assert_eq!(
        (wrong.status, wrong.header("allow")),
        (405, Some("GET, POST"))
    );
    // The crawl API: validated by serde, unknown jobs are 404, jobs run to "done".
    for bad in [
        &b"{\"versions\": [7], \"identifiers\": [\"chart\"]}"[..],
        b"not json",
        b"{}",
    ] {
        assert_eq!(
            s.admin("POST", "/admin/crawl", &auth, bad).status,
            400,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        s.admin(
            "POST",
            "/admin/crawl",
            &auth,
            b"{\"identifiers\": [\"nothing\"]}"
        )
        .status,
        404
    );
    let accepted = s.admin(
        "POST",
        "/admin/crawl",
        &auth,
        br#"{"identifiers": ["rings"], "levels": [1], "thumbnails": ["!100,100"]}"#,
    );
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let id = accepted.json()["id"].as_str().unwrap_or("").to_owned();
    s.wait_for("the crawl job", |s| {
        s.admin("GET", &format!("/admin/crawl/{id}"), &auth, b"")
            .json()["state"]
            == "done"
    });
    let job = s
        .admin("GET", &format!("/admin/crawl/{id}"), &auth, b"")
        .json();
    assert!(job["rendered"].as_u64().unwrap_or(0) >= 3, "{job}");
    assert_eq!(s.admin("GET", "/admin/crawl/nope", &auth, b"").status, 404);
    assert_eq!(
        s.admin("DELETE", "/admin/crawl/nope", &auth, b"").status,
        404
    );
    assert_eq!(
        s.admin("GET", "/admin/crawl", &auth, b"").json()[0]["id"],
        id.as_str()
    );
}

#[test]
fn invalid_config_exits_2_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_iiifd"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("IIIFD_LIMITS__MAX_AREA", "lots")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_area"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_iiifd"))
        .args(["serve", "--config", "/nonexistent.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_iiifd"))
        .arg("--version")
        .output()
        .expect("run");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    // The JPEG codec and whether SIMD code is in use, plainly.
    assert!(version.contains("JPEG: libjpeg"), "{version}");
    assert!(
        version.contains("SIMD") || version.contains("AVX2") || version.contains("plain C"),
        "{version}"
    );
}

#[test]
fn sigterm_exits_cleanly() {
    let s = Server::start();
    assert_eq!(s.get("/health").status, 200);
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
}

/// The negative cache with the directory backend: a 404 is remembered for `source.negative_secs`
/// (a file dropped in meanwhile waits for the window), 0 turns it off.
#[test]
fn a_missing_identifier_is_remembered_for_the_negative_window() {
    let pic = crate::pixels::picture(64, 48);
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(pic)
        .write_to(&mut png, image::ImageFormat::Png)
        .expect("png");
    let png = png.into_inner();

    let server = Server::start_with(&[], &[("IIIFD_SOURCE__NEGATIVE_SECS", "5")]);
    assert_eq!(server.get("/iiif/3/later.png/info.json").status, 404);
    let missed = std::time::Instant::now();
    std::fs::write(server.images.join("later.png"), &png).expect("write");
    let r = server.get("/iiif/3/later.png/info.json");
    assert_eq!(r.status, 404, "answered from the negative cache");
    assert!(server.metric("iiifd_source_negative_hits_total") >= 1.0);
    std::thread::sleep(std::time::Duration::from_millis(5_300).saturating_sub(missed.elapsed()));
    let r = server.get("/iiif/3/later.png/info.json");
    assert_eq!(r.status, 200, "after the window: {}", r.text());
    assert_eq!(r.json()["width"], 64);

    let off = Server::start_with(&[], &[("IIIFD_SOURCE__NEGATIVE_SECS", "0")]);
    assert_eq!(off.get("/iiif/3/later.png/info.json").status, 404);
    std::fs::write(off.images.join("later.png"), &png).expect("write");
    assert_eq!(off.get("/iiif/3/later.png/info.json").status, 200);
    assert_eq!(off.metric("iiifd_source_negative_hits_total"), 0.0);
}
