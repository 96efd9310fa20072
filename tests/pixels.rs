//! Speed must not cost correctness: every source format iiifd reads by a fast path (libjpeg-turbo with
//! DCT scaling and cropping, EXIF orientation, pyramidal TIFF and BigTIFF tiles, tile passthrough) is
//! checked against a reference: the `image` crate's own decoders (a different JPEG decoder) or the
//! pixels the file was written from, cropped, scaled, mirrored, rotated and reduced in quality
//! independently here. Outputs are compared with a tolerance, never byte for byte.

use crate::common::images::{
    flat_huge_jpeg, jpeg, split_tables, tiled_tiff, with_orientation, TileCoding,
};
use crate::common::inproc::InProcess;
use crate::common::{Response, Server};
use iiifd::source::memory::MemoryBackend;
use image::{imageops::FilterType, DynamicImage, RgbImage};
use std::sync::Arc;

/// Anything that answers GET: the real binary, or the library in-process.
trait Get {
    fn get(&self, path: &str) -> Response;
}

impl Get for Server {
    fn get(&self, path: &str) -> Response {
        Server::get(self, path)
    }
}

impl Get for InProcess {
    fn get(&self, path: &str) -> Response {
        InProcess::get(self, path)
    }
}

/// A smooth test picture with edges: gradients, a disc and bars (no noise, so resampler differences
/// stay small and real errors stand out).
pub(crate) fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let d = ((fx - 0.6).powi(2) + (fy - 0.4).powi(2)).sqrt();
        if d < 0.18 {
            image::Rgb([230, 40, 40])
        } else if (x / 97) % 2 == 0 && fy > 0.75 {
            image::Rgb([20, 20, 120])
        } else {
            image::Rgb([(fx * 255.0) as u8, (fy * 255.0) as u8, 160])
        }
    })
}

/// One request and how to reproduce it: region in full-size pixels, output size, mirror, rotation
/// (multiple of 90) and quality.
pub(crate) struct Case {
    pub(crate) path: &'static str,
    region: (u32, u32, u32, u32),
    size: (u32, u32),
    mirror: bool,
    degrees: u32,
    quality: &'static str,
}

pub(crate) const W: u32 = 1200;
pub(crate) const H: u32 = 900;

pub(crate) fn cases() -> Vec<Case> {
    let c = |path, region, size, mirror, degrees, quality| Case {
        path,
        region,
        size,
        mirror,
        degrees,
        quality,
    };
    vec![
        c(
            "full/max/0/default.png",
            (0, 0, W, H),
            (W, H),
            false,
            0,
            "default",
        ),
        c(
            "full/!300,300/0/default.png",
            (0, 0, W, H),
            (300, 225),
            false,
            0,
            "default",
        ),
        c(
            "512,256,256,256/256,256/0/default.png",
            (512, 256, 256, 256),
            (256, 256),
            false,
            0,
            "default",
        ),
        c(
            "1024,768,176,132/176,132/0/default.png",
            (1024, 768, 176, 132),
            (176, 132),
            false,
            0,
            "default",
        ),
        c(
            "0,0,1024,900/256,225/0/default.png",
            (0, 0, 1024, 900),
            (256, 225),
            false,
            0,
            "default",
        ),
        c(
            "100,50,700,400/350,200/0/default.png",
            (100, 50, 700, 400),
            (350, 200),
            false,
            0,
            "default",
        ),
        c(
            "120,180,600,450/200,150/90/gray.png",
            (120, 180, 600, 450),
            (200, 150),
            false,
            90,
            "gray",
        ),
        c(
            "full/300,225/180/default.png",
            (0, 0, W, H),
            (300, 225),
            false,
            180,
            "default",
        ),
        c(
            "600,300,400,400/200,200/!270/default.png",
            (600, 300, 400, 400),
            (200, 200),
            true,
            270,
            "default",
        ),
        c(
            "full/150,113/0/bitonal.png",
            (0, 0, W, H),
            (150, 113),
            false,
            0,
            "bitonal",
        ),
        c(
            "50,60,300,200/300,200/0/default.jpg",
            (50, 60, 300, 200),
            (300, 200),
            false,
            0,
            "default",
        ),
        c(
            "256,256,256,256/256,256/0/default.jpg",
            (256, 256, 256, 256),
            (256, 256),
            false,
            0,
            "default",
        ),
        c(
            "full/300,225/0/default.webp",
            (0, 0, W, H),
            (300, 225),
            false,
            0,
            "default",
        ),
        c(
            "300,200,600,450/300,225/0/default.gif",
            (300, 200, 600, 450),
            (300, 225),
            false,
            0,
            "default",
        ),
        c(
            "300,200,600,450/300,225/0/default.tif",
            (300, 200, 600, 450),
            (300, 225),
            false,
            0,
            "default",
        ),
    ]
}

/// What `case` should look like, made from `full` (the displayed source) with the image crate.
fn reference(full: &DynamicImage, case: &Case) -> DynamicImage {
    let (x, y, w, h) = case.region;
    let img = full.crop_imm(x, y, w, h);
    let img = if (w, h) == case.size {
        img
    } else {
        img.resize_exact(case.size.0, case.size.1, FilterType::Triangle)
    };
    let img = if case.mirror { img.fliph() } else { img };
    let img = match case.degrees {
        90 => img.rotate90(),
        180 => img.rotate180(),
        270 => img.rotate270(),
        _ => img,
    };
    match case.quality {
        "gray" => DynamicImage::ImageLuma8(img.to_luma8()),
        "bitonal" => {
            let mut g = img.to_luma8();
            for p in g.pixels_mut() {
                p.0[0] = if p.0[0] >= 128 { 255 } else { 0 };
            }
            DynamicImage::ImageLuma8(g)
        }
        _ => img,
    }
}

/// Mean absolute difference per sample, and the share of pixels off by more than 48 in any sample.
fn difference(a: &DynamicImage, b: &DynamicImage) -> (f64, f64) {
    let (a, b) = (a.to_rgb8(), b.to_rgb8());
    assert_eq!(a.dimensions(), b.dimensions(), "output size");
    let mut sum = 0u64;
    let mut far = 0u64;
    for (p, q) in a.pixels().zip(b.pixels()) {
        let d: Vec<u32> = (0..3).map(|c| u32::from(p[c].abs_diff(q[c]))).collect();
        sum += d.iter().map(|&v| u64::from(v)).sum::<u64>();
        far += u64::from(d.iter().any(|&v| v > 48));
    }
    let n = u64::from(a.width()) * u64::from(a.height());
    (sum as f64 / (3 * n) as f64, far as f64 / n as f64)
}

fn check(server: &impl Get, identifier: &str, full: &DynamicImage, mean_limit: f64) {
    for case in cases() {
        let url = format!("/iiif/3/{identifier}/{}", case.path);
        let r = server.get(&url);
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        let got = r.image();
        let want = reference(full, &case);
        let (mean, far) = difference(&got, &want);
        // Bitonal flips pixels near the threshold wherever the resamplers differ by one level.
        let (mean_limit, far_limit) = match case.quality {
            "bitonal" => (mean_limit * 4.0, 0.05),
            // Lossy encoders (JPEG, WebP) and GIF's 256-colour palette add their own error.
            _ if !case.path.ends_with(".png") => (mean_limit + 4.0, 0.03),
            _ => (mean_limit, 0.02),
        };
        assert!(
            mean <= mean_limit && far <= far_limit,
            "{url}: mean difference {mean:.2} (limit {mean_limit}), {:.2} % far off",
            far * 100.0
        );
    }
}

/// The sources of the pixel checks, by file name: the picture as PNG, flat TIFF, WebP, GIF and JPEG
/// (decoded whole by the image crate, or by libjpeg), a JPEG with EXIF orientation 6, and pyramidal
/// TIFFs and BigTIFFs with each tile coding.
pub(crate) fn corpus(pic: &RgbImage) -> Vec<(&'static str, Vec<u8>)> {
    let encoded = |format: image::ImageFormat| {
        let mut out = std::io::Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(pic.clone())
            .write_to(&mut out, format)
            .expect("encode");
        out.into_inner()
    };
    let turned = DynamicImage::ImageRgb8(pic.clone()).rotate270().to_rgb8();
    let levels: Vec<RgbImage> = (0..4)
        .map(|k| {
            let (w, h) = (W.div_ceil(1 << k), H.div_ceil(1 << k));
            image::imageops::resize(pic, w, h, FilterType::Triangle)
        })
        .collect();
    vec![
        ("p.png", encoded(image::ImageFormat::Png)),
        ("flat.tif", encoded(image::ImageFormat::Tiff)),
        ("p.webp", encoded(image::ImageFormat::WebP)),
        ("p.gif", encoded(image::ImageFormat::Gif)),
        ("p.jpg", jpeg(pic, 95)),
        ("turned.jpg", with_orientation(&jpeg(&turned, 95), 6)),
        (
            "pyr.tif",
            tiled_tiff(&levels, 256, TileCoding::JpegTables, false),
        ),
        (
            "pyr-full-jpeg.tif",
            tiled_tiff(&levels, 256, TileCoding::Jpeg, false),
        ),
        (
            "pyr-raw.tif",
            tiled_tiff(&levels, 256, TileCoding::Raw, false),
        ),
        (
            "pyr-big.tif",
            tiled_tiff(&levels, 256, TileCoding::JpegTables, true),
        ),
    ]
}

/// The picture as JPEG 2000, written by opj_compress (Debian's libopenjp2-tools, installed by
/// tests/setup.sh), lossless: tiled with five resolutions, and untiled as a raw codestream.
pub(crate) fn jp2_corpus(pic: &RgbImage) -> Vec<(&'static str, Vec<u8>)> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let png = tmp.path().join("for-jp2.png");
    DynamicImage::ImageRgb8(pic.clone())
        .save(&png)
        .expect("png");
    [
        ("tiled.jp2", &["-t", "256,256", "-n", "5"][..]),
        ("plain.j2k", &["-n", "4"][..]),
    ]
    .into_iter()
    .map(|(name, extra)| {
        let out = tmp.path().join(name);
        let status = std::process::Command::new("opj_compress")
            .arg("-i")
            .arg(&png)
            .arg("-o")
            .arg(&out)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("opj_compress (apt-get install libopenjp2-tools) must be installed");
        assert!(status.success(), "opj_compress failed for {name}");
        (name, std::fs::read(&out).expect("read"))
    })
    .collect()
}

#[test]
fn the_memory_backend_answers_like_the_directory() {
    let pic = picture(W, H);
    let mut files = corpus(&pic);
    files.extend(jp2_corpus(&pic));
    let memory = Arc::new(MemoryBackend::new());
    for (name, bytes) in &files {
        memory.insert(name, bytes.clone());
    }
    let from_memory = InProcess::with(|_| {}, Some(memory));
    let from_dir = InProcess::start();
    for (name, bytes) in &files {
        std::fs::write(from_dir.images.join(name), bytes).expect("write");
    }
    for (name, _) in &files {
        let info = format!("/iiif/3/{name}/info.json");
        let (a, b) = (from_memory.get(&info), from_dir.get(&info));
        assert_eq!(
            (a.status, a.json()["width"].clone()),
            (b.status, b.json()["width"].clone()),
            "{info}"
        );
        for case in cases() {
            let url = format!("/iiif/3/{name}/{}", case.path);
            let (a, b) = (from_memory.get(&url), from_dir.get(&url));
            assert_eq!(a.status, 200, "{url}: {}", a.text());
            assert_eq!(a.status, b.status, "{url}");
            assert!(
                a.body == b.body,
                "{url}: the two backends rendered different bytes"
            );
        }
    }
    // Nothing of the memory backend's reached the file system: no source path was ever looked at.
    assert_eq!(from_memory.get("/iiif/3/chart/info.json").status, 404);
}

#[test]
fn every_source_format_matches_a_reference_decoder() {
    let server = Server::start();
    let pic = picture(W, H);
    let dir = &server.images;
    let files = corpus(&pic);
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes).expect("write");
    }
    for id in ["p.png", "flat.tif", "p.webp", "p.gif", "p.jpg"] {
        let full = image::open(dir.join(id)).expect("reference decode");
        check(&server, id, &full, 2.5);
    }

    // EXIF orientation 6 (stored turned a quarter anticlockwise): stored 900x1200, displayed 1200x900.
    let info = server.get("/iiif/3/turned.jpg/info.json").json();
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(1200), Some(900))
    );
    let shown = image::open(dir.join("turned.jpg"))
        .expect("decode")
        .rotate90();
    check(&server, "turned.jpg", &shown, 2.5);

    // Pyramidal TIFF and BigTIFF: the reference is the picture the levels were made from.
    let full = DynamicImage::ImageRgb8(pic.clone());
    for name in ["pyr.tif", "pyr-full-jpeg.tif", "pyr-raw.tif", "pyr-big.tif"] {
        let info = server.get(&format!("/iiif/3/{name}/info.json")).json();
        assert_eq!(
            info["tiles"][0]["width"], 256,
            "{name}: the file's own tile size"
        );
        check(&server, name, &full, 3.0);
    }
}

#[test]
fn jpeg2000_sources_match_the_reference() {
    let server = Server::start();
    let pic = picture(W, H);
    let dir = &server.images;
    for (name, bytes) in jp2_corpus(&pic) {
        std::fs::write(dir.join(name), bytes).expect("write");
        let info = server.get(&format!("/iiif/3/{name}/info.json")).json();
        assert_eq!(
            (info["width"].as_u64(), info["height"].as_u64()),
            (Some(1200), Some(900))
        );
        check(&server, name, &DynamicImage::ImageRgb8(pic.clone()), 2.5);
    }
    // A broken file is a clear error, not a crash.
    std::fs::write(
        dir.join("broken.jp2"),
        b"\0\0\0\x0cjP  \r\n\x87\n\0\0\0\x08jp2c\xff\x4f",
    )
    .expect("write");
    let r = server.get("/iiif/3/broken.jp2/full/max/0/default.jpg");
    assert!(r.status == 500 || r.status == 501, "{}", r.status);
    // Cut short: openjpeg decodes what is there or fails; either way an answer, and the server lives.
    let whole = std::fs::read(dir.join("tiled.jp2")).expect("read");
    std::fs::write(dir.join("cut.jp2"), &whole[..whole.len() * 3 / 5]).expect("write");
    let r = server.get("/iiif/3/cut.jp2/full/max/0/default.jpg");
    assert!(matches!(r.status, 200 | 500), "{}", r.status);
    assert_eq!(
        server
            .get("/iiif/3/tiled.jp2/full/64,/0/default.jpg")
            .status,
        200
    );
}

/// HTJ2K (Part 15 code-blocks) in a raw codestream, a `.jph` file and a `.j2c` from another encoder:
/// served, and the pixels are opj_decompress's (see tests/fixtures/htj2k/README.md).
#[test]
fn htj2k_sources_match_the_reference_decoder() {
    let server = Server::start();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/htj2k");
    for (name, reference) in [
        ("ht-grk.j2k", "ht-grk.opj.png"),
        ("ht-grk.jph", "ht-grk.opj.png"),
        ("ht-ojph.j2c", "ht-ojph.opj.png"),
    ] {
        std::fs::copy(fixtures.join(name), server.images.join(name)).expect("copy fixture");
        let want = image::open(fixtures.join(reference))
            .expect("reference")
            .to_rgb8();
        let info = server.get(&format!("/iiif/3/{name}/info.json"));
        assert_eq!(info.status, 200, "{name}: {}", info.text());
        assert_eq!(
            (
                info.json()["width"].as_u64(),
                info.json()["height"].as_u64()
            ),
            (Some(320), Some(240)),
            "{name}"
        );
        let full = server.get(&format!("/iiif/3/{name}/full/max/0/default.png"));
        assert_eq!(full.status, 200, "{name}: {}", full.text());
        assert!(
            full.image().to_rgb8() == want,
            "{name}: pixels differ from opj_decompress"
        );
        let part = server.get(&format!("/iiif/3/{name}/100,60,150,90/max/0/default.png"));
        assert_eq!(part.status, 200, "{name}");
        let crop = image::imageops::crop_imm(&want, 100, 60, 150, 90).to_image();
        assert!(part.image().to_rgb8() == crop, "{name}: region differs");
        // A reduced resolution: the decoder's own half-size level, resized to the request.
        let small = server.get(&format!("/iiif/3/{name}/full/100,/0/default.png"));
        assert_eq!(small.status, 200, "{name}");
        assert_eq!(small.image().width(), 100);
    }
    // Found without their extensions, as every other source kind is.
    std::fs::copy(fixtures.join("ht-grk.jph"), server.images.join("alone.jph")).expect("copy");
    for bare in ["alone", "ht-ojph"] {
        let r = server.get(&format!("/iiif/3/{bare}/info.json"));
        assert_eq!(r.status, 200, "{bare}: {}", r.text());
    }
}

/// Codestreams whose every component is subsampled (conformance file p0_02's shape, which Pillow
/// refuses): the image is as big as its components and every pixel is opj_decompress's, also from an
/// odd origin, in a region and at a reduced size.
#[test]
fn jpeg2000_with_every_component_subsampled_matches_opj_decompress() {
    let server = Server::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let gray = image::GrayImage::from_fn(127, 126, |x, y| {
        image::Luma([((x * 7 + y * 3) % 256) as u8])
    });
    let color = RgbImage::from_fn(127, 126, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 2) as u8, ((x * y) % 256) as u8])
    });
    DynamicImage::ImageLuma8(gray)
        .save(tmp.path().join("g.png"))
        .expect("gray png");
    DynamicImage::ImageRgb8(color)
        .save(tmp.path().join("c.png"))
        .expect("colour png");
    let run = |args: &[&str]| {
        let status = std::process::Command::new(args[0])
            .args(&args[1..])
            .current_dir(tmp.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{}: {e} (tests/setup.sh installs it)", args[0]));
        assert!(status.success(), "{args:?}");
    };
    for (name, input, extra) in [
        ("sub21.j2k", "g.png", ["-s", "2,1", "-d", "3,0"]),
        ("sub22.j2k", "c.png", ["-s", "2,2", "-d", "0,5"]),
    ] {
        let mut args = vec!["opj_compress", "-i", input, "-o", name, "-n", "3"];
        args.extend(extra);
        run(&args);
        run(&["opj_decompress", "-i", name, "-o", &format!("{name}.png")]);
        let want = image::open(tmp.path().join(format!("{name}.png")))
            .expect("reference")
            .to_rgb8();
        std::fs::copy(tmp.path().join(name), server.images.join(name)).expect("copy");
        let info = server.get(&format!("/iiif/3/{name}/info.json"));
        assert_eq!(info.status, 200, "{name}: {}", info.text());
        let size = (
            info.json()["width"].as_u64(),
            info.json()["height"].as_u64(),
        );
        assert_eq!(
            size,
            (
                Some(u64::from(want.width())),
                Some(u64::from(want.height()))
            ),
            "{name}"
        );
        let full = server.get(&format!("/iiif/3/{name}/full/max/0/default.png"));
        assert_eq!(full.status, 200, "{name}: {}", full.text());
        assert!(
            full.image().to_rgb8() == want,
            "{name}: pixels differ from opj_decompress"
        );
        let part = server.get(&format!("/iiif/3/{name}/9,17,31,40/max/0/default.png"));
        assert_eq!(part.status, 200, "{name}");
        let crop = image::imageops::crop_imm(&want, 9, 17, 31, 40).to_image();
        assert!(part.image().to_rgb8() == crop, "{name}: region differs");
        let small = server.get(&format!("/iiif/3/{name}/full/20,/0/default.png"));
        assert_eq!((small.status, small.image().width()), (200, 20), "{name}");
    }
}

/// `pic` as an archive writes JPEG 2000 (opj_compress: RPCL, 256 px precincts, 64 px code blocks,
/// PLT markers, untiled), losslessly.
fn write_archive_jp2(pic: &RgbImage, out: &std::path::Path) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let png = tmp.path().join("for-jp2.png");
    DynamicImage::ImageRgb8(pic.clone())
        .save(&png)
        .expect("png");
    let status = std::process::Command::new("opj_compress")
        .arg("-i")
        .arg(&png)
        .arg("-o")
        .arg(out)
        .args([
            "-n",
            "6",
            "-p",
            "RPCL",
            "-c",
            "[256,256]",
            "-b",
            "64,64",
            "-PLT",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("opj_compress (apt-get install libopenjp2-tools) must be installed");
    assert!(status.success());
}

/// A JPEG 2000 gets a tiled copy too, made from its own resolutions strip by strip: later lossy
/// renders of its parts read the copy (close to the picture), lossless ones the master (exact).
#[test]
fn a_jpeg2000_gets_a_tiled_copy_made_from_its_own_resolutions() {
    let env = [
        ("IIIFD_RENDER__TILED_COPY_MIN_PIXELS", "1000000"),
        ("IIIFD_RENDER__DECODED_CACHE_BYTES", "0"),
    ];
    let server = Server::start_with(&[], &env);
    let (w, h) = (2600, 1800);
    let pic = picture(w, h);
    write_archive_jp2(&pic, &server.images.join("arch.jp2"));
    let r = server.get("/iiif/3/arch.jp2/1024,512,512,512/256,256/0/default.jpg");
    assert_eq!(r.status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while server.metric("iiifd_tiled_copies_total") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no tiled copy written"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let full = DynamicImage::ImageRgb8(pic.clone());
    for (x, y, rw, rh, ow) in [
        (0, 0, 1024, 1024, 256),
        (2048, 1024, 552, 776, 276),
        (1000, 900, 700, 500, 700),
        (0, 0, w, h, 650),
        (2560, 1792, 40, 8, 40),
    ] {
        let url = format!("/iiif/3/arch.jp2/{x},{y},{rw},{rh}/{ow},/0/default.jpg");
        let r = server.get(&url);
        assert_eq!(r.status, 200, "{url}");
        let got = r.image();
        let want = full.crop_imm(x, y, rw, rh).resize_exact(
            got.width(),
            got.height(),
            FilterType::Triangle,
        );
        let (mean, _) = difference(&got, &want);
        assert!(mean < 4.0, "{url}: mean difference {mean}");
    }
    let renders = server.metric("iiifd_tiled_copy_renders_total");
    assert!(renders >= 4.0, "renders of parts read the copy: {renders}");
    let png = server.get("/iiif/3/arch.jp2/1500,700,300,200/max/0/default.png");
    assert_eq!(png.status, 200);
    let crop = image::imageops::crop_imm(&pic, 1500, 700, 300, 200).to_image();
    assert!(
        png.image().to_rgb8() == crop,
        "lossless output from the master"
    );
    assert_eq!(server.metric("iiifd_tiled_copy_renders_total"), renders);
}

/// A JPEG 2000 larger than one block: tiles come from cached 1024 px blocks of a resolution,
/// regions across blocks from their own decode, and both are the picture exactly (lossless file,
/// png output at the region's size), whatever order they are asked in.
#[test]
fn jpeg2000_blocks_and_regions_across_them_are_exact() {
    let server = Server::start();
    let (w, h) = (2600, 1800);
    let pic = picture(w, h);
    write_archive_jp2(&pic, &server.images.join("big.jp2"));
    let exact = |x: u32, y: u32, rw: u32, rh: u32| {
        let url = format!("/iiif/3/big.jp2/{x},{y},{rw},{rh}/max/0/default.png");
        let r = server.get(&url);
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        let got = r.image().to_rgb8();
        assert_eq!((got.width(), got.height()), (rw, rh), "{url}");
        let want = image::imageops::crop_imm(&pic, x, y, rw, rh).to_image();
        assert!(got == want, "{url}: pixels differ from the picture");
    };
    // Tiles inside blocks (1024 px at full size), twice: the second time from the cached block.
    for _ in 0..2 {
        exact(1024, 0, 256, 256);
        exact(2048 + 256, 1024 + 512, 296, 264);
        exact(0, 0, 1024, 1024);
    }
    // Across a block edge, and the image's last pixels.
    exact(1000, 1000, 100, 60);
    exact(w - 7, h - 5, 7, 5);
    // A reduced resolution (1300x900: decoded whole) against the reference decoder's pixels.
    let r = server.get("/iiif/3/big.jp2/full/1300,/0/default.png");
    assert_eq!(r.status, 200);
    let got = r.image();
    assert_eq!((got.width(), got.height()), (1300, 900));
    let tile = server.get("/iiif/3/big.jp2/1024,1024,1024,776/512,/0/default.png");
    assert_eq!(tile.status, 200);
    let part = image::imageops::crop_imm(&got.to_rgb8(), 512, 512, 512, 388).to_image();
    assert!(
        tile.image().to_rgb8() == part,
        "a reduced tile is the same pixels as the reduced whole"
    );
    // On a budget too small to decode the whole image at once (48 MiB: 2600x1800 takes 75 MB in
    // openjpeg), a full-size request is put together from its blocks, each within the budget.
    let small = Server::start_with(&[], &[("IIIFD_RENDER__MAX_DECODE_BYTES", "50331648")]);
    std::fs::copy(server.images.join("big.jp2"), small.images.join("big.jp2")).expect("copy");
    let r = small.get("/iiif/3/big.jp2/full/max/0/default.png");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.image().to_rgb8() == pic,
        "composed from blocks, exactly the picture"
    );
}

/// `render.tile_passthrough`: a request that is exactly one stored JPEG tile is answered with the
/// tile's bytes when they are no heavier than a re-encode would be (`auto`), always, or never.
#[test]
fn stored_jpeg_tiles_pass_through_when_they_are_no_heavier() {
    let pic = picture(W, H);
    let tile = RgbImage::from_fn(256, 256, |x, y| *pic.get_pixel(256 + x, 512 + y));
    // The scan of tile (1, 2) as written at quality `q`.
    let scan = |q: u8| {
        let (_, abbreviated) = split_tables(&jpeg(&tile, q));
        let sos = abbreviated
            .windows(2)
            .position(|w| w == [0xFF, 0xDA])
            .expect("scan");
        abbreviated[sos..].to_vec()
    };
    let url = |name: &str| format!("/iiif/3/{name}/256,512,256,256/256,256/0/default.jpg");
    let write = |server: &Server, name: &str, q: u8| {
        let file = tiled_tiff(
            std::slice::from_ref(&pic),
            256,
            TileCoding::JpegTablesAt(q),
            false,
        );
        std::fs::write(server.images.join(name), file).expect("tif");
    };

    // auto (the default): a Q80 4:2:0 tile is lighter than our Q85 encode: sent as it is.
    let server = Server::start();
    write(&server, "q80.tif", 80);
    let r = server.get(&url("q80.tif"));
    assert_eq!(r.status, 200);
    assert!(r.body.ends_with(&scan(80)), "a light tile was re-encoded");
    // A Q97 tile is far heavier: re-encoded (once: the second answer is a hit), and lighter.
    write(&server, "q97.tif", 97);
    let r = server.get(&url("q97.tif"));
    assert!(
        !r.body.ends_with(&scan(97)),
        "a heavy tile was passed through"
    );
    assert!(
        r.body.len() < scan(97).len(),
        "{} >= {}",
        r.body.len(),
        scan(97).len()
    );
    assert_eq!(r.image().to_rgb8().dimensions(), (256, 256));
    assert_eq!(
        server.get(&url("q97.tif")).header("cache-status"),
        Some("iiifd; hit")
    );
    // Anything that changes the pixels is rendered, not passed through.
    let gray = server.get("/iiif/3/q80.tif/256,512,256,256/256,256/0/gray.jpg");
    assert!(!gray.body.ends_with(&scan(80)));
    assert_eq!(gray.image().color(), image::ColorType::L8);

    // always: the heavy tile too.
    let server = Server::start_with(&[], &[("IIIFD_RENDER__TILE_PASSTHROUGH", "always")]);
    write(&server, "q97.tif", 97);
    assert!(server.get(&url("q97.tif")).body.ends_with(&scan(97)));

    // never (`false`, as earlier versions spelled it): even the light one is decoded and encoded.
    let server = Server::start_with(&[], &[("IIIFD_RENDER__TILE_PASSTHROUGH", "false")]);
    write(&server, "q80.tif", 80);
    let r = server.get(&url("q80.tif"));
    assert_eq!(r.status, 200);
    assert!(!r.body.ends_with(&scan(80)), "re-encoded");
    assert_eq!(r.image().to_rgb8().dimensions(), (256, 256));
}

#[test]
fn a_huge_jpeg_gets_thumbnails_and_tiles_within_a_gigabyte() {
    let server = Server::start_with(&[], &[("IIIFD_LIMITS__MAX_SOURCE_PIXELS", "400000000")]);
    // 20000x15000: 900 MB of RGB if decoded whole; the file is ~10 MB.
    std::fs::write(server.images.join("huge.jpg"), flat_huge_jpeg(20000, 15000)).expect("jpg");
    for (url, size) in [
        ("/iiif/3/huge.jpg/full/!256,256/0/default.jpg", (256, 192)),
        (
            "/iiif/3/huge.jpg/10240,7168,512,512/512,512/0/default.jpg",
            (512, 512),
        ),
        (
            "/iiif/3/huge.jpg/19968,14848,32,152/32,152/0/default.png",
            (32, 152),
        ),
        (
            "/iiif/3/huge.jpg/8192,8192,4096,4096/512,512/0/default.jpg",
            (512, 512),
        ),
    ] {
        let r = server.get(url);
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        let img = r.image().to_rgb8();
        assert_eq!(img.dimensions(), size, "{url}");
        let p = img.get_pixel(size.0 / 2, size.1 / 2).0;
        assert!(
            p.iter().all(|&c| c.abs_diff(128) <= 2),
            "{url}: flat grey, got {p:?}"
        );
    }
    let rss = server.peak_rss();
    eprintln!("20000x15000 JPEG: peak RSS {} MiB", rss >> 20);
    assert!(rss < 1 << 30, "peak RSS {} MiB", rss >> 20);
}

#[test]
fn a_large_flat_source_gets_a_tiled_copy_that_later_renders_use() {
    let env = [
        ("IIIFD_RENDER__TILED_COPY_MIN_PIXELS", "1000000"),
        // No decoded cache: every render not served by the copy decodes the JPEG again.
        ("IIIFD_RENDER__DECODED_CACHE_BYTES", "0"),
    ];
    let mut server = Server::start_with(&[], &env);
    let pic = picture(W, H);
    let jpg = jpeg(&pic, 95);
    std::fs::write(server.images.join("big.jpg"), &jpg).expect("jpg");
    let wait_for_copy = |server: &Server, n: f64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while server.metric("iiifd_tiled_copies_total") < n {
            assert!(
                std::time::Instant::now() < deadline,
                "no tiled copy written"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };

    // A thumbnail of the whole image does not ask for a copy.
    assert_eq!(
        server
            .get("/iiif/3/big.jpg/full/!200,200/0/default.jpg")
            .status,
        200
    );
    // (Asked for by the render itself, before its answer: a copy would be counted by now.)
    assert_eq!(server.metric("iiifd_tiled_copies_wanted_total"), 0.0);

    // Zooming in does; once it is written, renders read from it and still match the reference.
    assert_eq!(
        server
            .get("/iiif/3/big.jpg/512,0,256,256/256,256/0/default.jpg")
            .status,
        200
    );
    assert_eq!(server.metric("iiifd_tiled_copies_wanted_total"), 1.0);
    wait_for_copy(&server, 1.0);
    let objects = server.metric("iiifd_store_objects");
    let full = image::load_from_memory(&jpg).expect("reference decode");
    check(&server, "big.jpg", &full, 3.0);
    // Lossy outputs of the image's parts are read from the copy (lossless ones never are: below).
    for (x, y) in [
        (0, 0),
        (256, 0),
        (768, 0),
        (0, 256),
        (512, 512),
        (768, 512),
        (0, 640),
        (944, 640),
    ] {
        let r = server.get(&format!(
            "/iiif/3/big.jpg/{x},{y},256,256/128,128/0/default.jpg"
        ));
        assert_eq!(r.status, 200);
    }
    let from_copy = server.metric("iiifd_tiled_copy_renders_total");
    assert!(from_copy >= 10.0, "{from_copy} renders from the copy");
    assert_eq!(
        server.metric("iiifd_tiled_copies_total"),
        1.0,
        "written once"
    );

    // It survives a crash: after kill -9 a new tile is read from it, nothing is rebuilt.
    server.restart();
    let r = server.get("/iiif/3/big.jpg/700,500,300,300/150,150/0/default.jpg");
    assert_eq!(r.status, 200);
    assert_eq!(server.metric("iiifd_tiled_copy_renders_total"), 1.0);
    assert_eq!(server.metric("iiifd_tiled_copies_total"), 0.0);
    // After kill -9 the store serves at once and recounts its objects in the background (the saved
    // totals predate the crash): the count catches up, within a bound, rather than at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while server.metric("iiifd_store_objects") <= objects {
        assert!(
            std::time::Instant::now() < deadline,
            "store count {} never passed {objects}",
            server.metric("iiifd_store_objects")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // A lossless output never comes from the (JPEG-tiled) copy: its pixels are those of a render
    // from the source, whether or not the copy exists (they used to drift by up to 4 levels).
    let png = server.get("/iiif/3/big.jpg/640,480,200,100/max/0/default.png");
    assert_eq!(png.status, 200);
    assert_eq!(
        server.metric("iiifd_tiled_copy_renders_total"),
        1.0,
        "not from the copy"
    );
    let fresh = Server::start_with(&[], &env);
    std::fs::write(fresh.images.join("big.jpg"), &jpg).expect("jpg");
    let without_copy = fresh.get("/iiif/3/big.jpg/640,480,200,100/max/0/default.png");
    assert_eq!(without_copy.status, 200);
    assert_eq!(fresh.metric("iiifd_tiled_copies_total"), 0.0);
    assert!(
        png.body == without_copy.body,
        "one URL, one set of pixels, with or without a tiled copy"
    );
    drop(fresh);

    // A replaced source gets a new copy; the old one is never used for it.
    let negative = RgbImage::from_fn(W, H, |x, y| {
        let p = pic.get_pixel(x, y).0;
        image::Rgb([255 - p[0], 255 - p[1], 255 - p[2]])
    });
    let jpg2 = jpeg(&negative, 95);
    std::fs::write(server.images.join("big.jpg"), &jpg2).expect("jpg");
    let r = server.get("/iiif/3/big.jpg/100,100,400,400/200,200/0/default.jpg");
    assert_eq!(r.status, 200);
    let want = image::load_from_memory(&jpg2)
        .expect("decode")
        .crop_imm(100, 100, 400, 400)
        .resize_exact(200, 200, FilterType::Triangle);
    let (mean, _) = difference(&r.image(), &want);
    assert!(
        mean < 3.0,
        "rendered from the new file, mean difference {mean}"
    );
    assert_eq!(server.metric("iiifd_tiled_copy_renders_total"), 1.0);
    wait_for_copy(&server, 1.0);
}

/// PNGs with a wrong checksum (in `IHDR`, or in the image data) are shown, as browsers and Pillow show
/// them; a PNG whose data is really damaged is still a clear 500.
#[test]
fn a_png_with_wrong_checksums_is_served() {
    let s = InProcess::start();
    let pic = picture(120, 90);
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(pic.clone())
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    let crc_after = |png: &[u8], kind: &[u8]| {
        let at = png.windows(4).position(|w| w == kind).expect("chunk");
        let len = u32::from_be_bytes([png[at - 4], png[at - 3], png[at - 2], png[at - 1]]) as usize;
        at + 4 + len
    };
    let mut bad_ihdr = png.clone();
    let at = crc_after(&png, b"IHDR");
    bad_ihdr[at] ^= 0xFF;
    let mut bad_idat = png.clone();
    let at = crc_after(&png, b"IDAT");
    bad_idat[at + 1] ^= 0x5A;
    for (name, bytes) in [("crc-ihdr.png", &bad_ihdr), ("crc-idat.png", &bad_idat)] {
        assert!(
            image::load_from_memory(bytes).is_err(),
            "{name}: the image crate refuses it"
        );
        std::fs::write(s.images.join(name), bytes).expect("write");
        let info = s.get(&format!("/iiif/3/{name}/info.json"));
        assert_eq!(info.status, 200, "{name}");
        let r = s.get(&format!("/iiif/3/{name}/full/max/0/default.png"));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.image().to_rgb8(), pic, "{name}: the pixels as written");
    }
    // Damaged compressed data is an error, not pixels made up.
    let mut damaged = png.clone();
    let at = crc_after(&png, b"IDAT");
    for b in &mut damaged[at - 40..at - 10] {
        *b = 0xAA;
    }
    std::fs::write(s.images.join("damaged.png"), &damaged).expect("write");
    let r = s.get("/iiif/3/damaged.png/full/max/0/default.png");
    assert_eq!(r.status, 500, "{}", r.text());
}

/// The quirks real JPEGs carry, which browsers and Pillow show and libjpeg only warns about: stray
/// bytes before a marker (Photoshop, cameras), an ICC marker whose pieces do not add up, a truncated
/// Adobe APP14 segment; and arithmetic coding (a DAC marker), which libjpeg decodes.
#[test]
fn jpeg_quirks_are_shown_as_browsers_show_them() {
    let s = InProcess::start();
    let pic = picture(160, 120);
    let good = jpeg(&pic, 92);
    let reference = image::load_from_memory(&good).expect("decodes").to_rgb8();
    // Segments: SOI, then marker segments up to SOS.
    let after_segment = |data: &[u8], marker: u8| {
        let mut at = 2;
        loop {
            let m = data[at + 1];
            let len = usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]]));
            if m == marker {
                return at + 2 + len;
            }
            at += 2 + len;
        }
    };
    let mut extraneous = good.clone();
    let at = after_segment(&good, 0xDB);
    extraneous.splice(at..at, [0x00, 0x13, 0x37]);
    let mut bad_icc = good.clone();
    let mut app2 = vec![0xFF, 0xE2, 0, 20];
    app2.extend_from_slice(b"ICC_PROFILE\0");
    app2.extend([1, 2, 0xAB, 0xCD]); // piece 1 of 2, and no piece 2
    bad_icc.splice(2..2, app2);
    let mut short_app14 = good.clone();
    short_app14.splice(2..2, [0xFF, 0xEE, 0, 7, b'A', b'd', b'o', b'b', b'e']);
    let tmp = tempfile::tempdir().expect("tempdir");
    let ppm = tmp.path().join("in.ppm");
    let mut pnm = format!("P6\n{} {}\n255\n", pic.width(), pic.height()).into_bytes();
    pnm.extend_from_slice(pic.as_raw());
    std::fs::write(&ppm, pnm).expect("colour png");
    let arith = std::process::Command::new("cjpeg")
        .args(["-arithmetic", "-quality", "92"])
        .arg(&ppm)
        .output()
        .expect("cjpeg (apt-get install libjpeg-turbo-progs) must be installed");
    assert!(
        arith.status.success() && arith.stdout.windows(2).any(|w| w == [0xFF, 0xCC]),
        "DAC marker"
    );
    for (name, bytes, limit) in [
        ("extraneous.jpg", &extraneous, 1.0),
        ("bad-icc.jpg", &bad_icc, 1.0),
        ("short-app14.jpg", &short_app14, 1.0),
        ("arithmetic.jpg", &arith.stdout, 3.0),
    ] {
        std::fs::write(s.images.join(name), bytes).expect("write");
        assert_eq!(
            s.get(&format!("/iiif/3/{name}/info.json")).status,
            200,
            "{name}"
        );
        let r = s.get(&format!("/iiif/3/{name}/full/max/0/default.png"));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let got = r.image().to_rgb8();
        let mean = got
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / got.len() as f64;
        assert!(
            mean <= limit,
            "{name}: mean difference {mean:.2} from the clean file"
        );
    }
}

/// A GIF with no colour table at all (neither global nor local), 8x4, whose pixel indices are
/// `index(x, y)`: LZW with a clear code first and 9-bit literal codes (the table never passes 512
/// entries in 32 pixels, so the code width stays 9).
fn gif_without_colour_table(index: impl Fn(u32, u32) -> u8) -> Vec<u8> {
    let (w, h) = (8u16, 4u16);
    let mut out = b"GIF89a".to_vec();
    out.extend(w.to_le_bytes());
    out.extend(h.to_le_bytes());
    out.extend([0x00, 0, 0]); // no global table
    out.push(0x2C);
    out.extend([0, 0, 0, 0]);
    out.extend(w.to_le_bytes());
    out.extend(h.to_le_bytes());
    out.push(0x00); // no local table, not interlaced
    out.push(8); // LZW minimum code size
    let mut codes = vec![256u16];
    for y in 0..u32::from(h) {
        for x in 0..u32::from(w) {
            codes.push(u16::from(index(x, y)));
        }
    }
    codes.push(257);
    let (mut bits, mut nbits, mut data) = (0u32, 0u32, Vec::new());
    for c in codes {
        bits |= u32::from(c) << nbits;
        nbits += 9;
        while nbits >= 8 {
            data.push(bits as u8);
            bits >>= 8;
            nbits -= 8;
        }
    }
    if nbits > 0 {
        data.push(bits as u8);
    }
    for block in data.chunks(255) {
        out.push(block.len() as u8);
        out.extend_from_slice(block);
    }
    out.extend([0x00, 0x3B]);
    out
}

/// A GIF without any colour table is shown with a gray ramp (index = level), as Pillow shows it, for
/// info.json and images alike.
#[test]
fn a_gif_without_a_colour_table_is_shown_in_gray() {
    let s = InProcess::start();
    let index = |x: u32, y: u32| (x * 30 + y * 7) as u8;
    let gif = gif_without_colour_table(index);
    assert!(
        image::load_from_memory(&gif).is_err(),
        "the image crate refuses it"
    );
    std::fs::write(s.images.join("no-table.gif"), &gif).expect("write");
    let info = s.get("/iiif/3/no-table.gif/info.json");
    assert_eq!(info.status, 200, "{}", info.text());
    assert_eq!(info.json()["width"], 8);
    let r = s.get("/iiif/3/no-table.gif/full/max/0/default.png");
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.image().to_rgb8();
    for (x, y, p) in got.enumerate_pixels() {
        let v = index(x, y);
        assert_eq!(p.0, [v, v, v], "pixel {x},{y}");
    }
}

/// A pyramidal TIFF whose Orientation tag turns it (6: a quarter clockwise) is served turned: the
/// displayed size in info.json, every region cut from the displayed image, at every level.
#[test]
fn a_turned_pyramidal_tiff_is_served_as_displayed() {
    let s = InProcess::start();
    let stored = picture(600, 400);
    let half = image::imageops::resize(&stored, 300, 200, FilterType::Triangle);
    let tif = crate::common::images::tiled_tiff_with(
        &[stored.clone(), half],
        128,
        TileCoding::Raw,
        false,
        &[(274, 6)],
    );
    std::fs::write(s.images.join("turned.tif"), &tif).expect("write");
    let shown = image::imageops::rotate90(&stored);
    let info = s.get("/iiif/3/turned.tif/info.json").json();
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(400), Some(600))
    );
    // Full size, raw tiles: exactly the turned picture, whole and in part.
    let full = s
        .get("/iiif/3/turned.tif/full/max/0/default.png")
        .image()
        .to_rgb8();
    assert_eq!(full, shown);
    let part = s
        .get("/iiif/3/turned.tif/100,200,128,256/max/0/default.png")
        .image()
        .to_rgb8();
    assert_eq!(
        part,
        image::imageops::crop_imm(&shown, 100, 200, 128, 256).to_image()
    );
    // From the reduced level: close to the turned picture scaled.
    let small = s
        .get("/iiif/3/turned.tif/full/200,/0/default.png")
        .image()
        .to_rgb8();
    let want = image::imageops::resize(&shown, 200, 300, FilterType::Triangle);
    let (mean, _) = difference(
        &DynamicImage::ImageRgb8(small),
        &DynamicImage::ImageRgb8(want),
    );
    assert!(mean < 3.0, "reduced level: mean difference {mean:.2}");
}

/// A GIF of `frames` frames of `w` x `h`, frame i lasting `delay(i)` hundredths of a second.
fn animated_gif(w: u32, h: u32, frames: u32, delay: impl Fn(u32) -> u32) -> Vec<u8> {
    looping_gif(w, h, frames, delay, image::codecs::gif::Repeat::Infinite)
}

fn looping_gif(
    w: u32,
    h: u32,
    frames: u32,
    delay: impl Fn(u32) -> u32,
    repeat: image::codecs::gif::Repeat,
) -> Vec<u8> {
    use image::codecs::gif::GifEncoder;
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut out, 30);
        enc.set_repeat(repeat).expect("repeat");
        for i in 0..frames {
            let img = image::RgbaImage::from_fn(w, h, |x, y| {
                let on = (x + i * 3) % 40 < 20;
                image::Rgba([
                    if on { 220 } else { 20 },
                    (y * 255 / h) as u8,
                    (i * 2) as u8,
                    255,
                ])
            });
            let d = image::Delay::from_numer_denom_ms(delay(i) * 10, 1);
            enc.encode_frame(image::Frame::from_parts(img, 0, 0, d))
                .expect("frame");
        }
    }
    out
}

/// Frame count, each frame's duration (ms) and the size, as Pillow reads the GIF or WebP.
fn pillow_frames(gif: &[u8]) -> (u64, Vec<u64>, (u64, u64)) {
    let (n, delays, size, _) = pillow_animation(gif);
    (n, delays, size)
}

/// [`pillow_frames`], with the format Pillow found and its loop count: "GIF 0" (forever).
fn pillow_animation(gif: &[u8]) -> (u64, Vec<u64>, (u64, u64), String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("animation");
    std::fs::write(&path, gif).expect("write");
    let script = "import sys, json\nfrom PIL import Image\nim = Image.open(sys.argv[1])\nd = []\n\
                  for i in range(im.n_frames):\n    im.seek(i)\n    im.load()\n    d.append(im.info.get('duration', 0))\n\
                  print(json.dumps([im.n_frames, d, list(im.size), '%s %s' % (im.format, im.info.get('loop'))]))\n";
    let out = std::process::Command::new(crate::corpus::reference_python())
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let delays = v[1]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_u64()).collect())
        .unwrap_or_default();
    (
        v[0].as_u64().unwrap_or(0),
        delays,
        (v[2][0].as_u64().unwrap_or(0), v[2][1].as_u64().unwrap_or(0)),
        v[3].as_str().unwrap_or("").to_owned(),
    )
}

/// An animated GIF asked for whole as a GIF keeps every frame and its delay through a resize
/// (checked by Pillow); a region, another format or a still GIF gets one frame; frames count
/// against the decode budget together.
#[test]
fn animated_gifs_stay_animated_through_a_resize() {
    let server = Server::start_with(&[], &[("IIIFD_RENDER__MAX_DECODE_BYTES", "40000000")]);
    let delay = |i: u32| if i % 3 == 0 { 7 } else { 4 };
    std::fs::write(
        server.images.join("anim.gif"),
        animated_gif(300, 200, 120, delay),
    )
    .expect("gif");
    let r = server.get("/iiif/3/anim.gif/full/!200,200/0/default.gif");
    assert_eq!(r.status, 200, "{}", r.text());
    let (n, delays, size) = pillow_frames(&r.body);
    assert_eq!(n, 120);
    assert_eq!(size, (200, 133));
    let want: Vec<u64> = (0..120).map(|i| u64::from(delay(i)) * 10).collect();
    assert_eq!(delays, want);
    // Rotated and gray: still every frame, turned.
    let r = server.get("/iiif/3/anim.gif/full/!200,200/90/gray.gif");
    assert_eq!(r.status, 200);
    let (n, _, size) = pillow_frames(&r.body);
    assert_eq!((n, size), (120, (133, 200)));
    // A region, or another format: the first frame.
    let r = server.get("/iiif/3/anim.gif/0,0,100,100/max/0/default.gif");
    assert_eq!(pillow_frames(&r.body).0, 1);
    assert_eq!(
        server
            .get("/iiif/3/anim.gif/full/!200,200/0/default.png")
            .image()
            .width(),
        200
    );
    // A still GIF stays one frame.
    std::fs::write(
        server.images.join("still.gif"),
        animated_gif(300, 200, 1, delay),
    )
    .expect("gif");
    let r = server.get("/iiif/3/still.gif/full/!200,200/0/default.gif");
    assert_eq!(r.status, 200);
    assert_eq!(pillow_frames(&r.body).0, 1);
    // 200 frames of 300x200 RGBA are 48 MB: past the 40 MB budget, refused with a reason.
    std::fs::write(
        server.images.join("long.gif"),
        animated_gif(300, 200, 200, delay),
    )
    .expect("gif");
    let r = server.get("/iiif/3/long.gif/full/!200,200/0/default.gif");
    assert_eq!(r.status, 501, "{}", r.text());
    assert!(r.text().contains("frames"), "{}", r.text());

    // As an animated WebP: the same frames and delays (Pillow reads it).
    let r = server.get("/iiif/3/anim.gif/full/!200,200/0/default.webp");
    assert_eq!(r.status, 200, "{}", r.text());
    let (n, delays, size, kind) = pillow_animation(&r.body);
    assert_eq!((n, size, kind.as_str()), (120, (200, 133), "WEBP 0"));
    assert_eq!(delays, want);
    // An animated WebP source: animated out as gif and webp, its region a still.
    std::fs::write(server.images.join("anim2.webp"), &r.body).expect("webp");
    let r = server.get("/iiif/3/anim2/full/!100,100/0/default.gif");
    assert_eq!(r.status, 200, "{}", r.text());
    let (n, delays, size, kind) = pillow_animation(&r.body);
    assert_eq!((n, size, kind.as_str()), (120, (100, 67), "GIF 0"));
    assert_eq!(delays, want);
    let r = server.get("/iiif/3/anim2/full/!100,100/180/default.webp");
    assert_eq!(pillow_frames(&r.body).0, 120);
    let r = server.get("/iiif/3/anim2/10,10,50,50/max/0/default.webp");
    assert_eq!(pillow_frames(&r.body).0, 1);
    // A source's own loop count is kept.
    std::fs::write(
        server.images.join("thrice.gif"),
        looping_gif(60, 40, 5, delay, image::codecs::gif::Repeat::Finite(3)),
    )
    .expect("gif");
    for f in ["gif", "webp"] {
        let r = server.get(&format!("/iiif/3/thrice/full/max/0/default.{f}"));
        let (n, _, _, kind) = pillow_animation(&r.body);
        assert_eq!(n, 5);
        assert!(kind.ends_with(" 3"), "{f}: {kind}");
    }
}

/// The formats beyond the spec's usual four, each decoded by a reference decoder that is not
/// ours: jp2 by opj_decompress (OpenJPEG's own tool), jxl by jxl-oxide (lossless: exact). avif is
/// decoded by Chromium in tests/browser.rs. Listed in extraFormats, and a region, a size and
/// gray work through them as through jpg.
#[test]
fn jp2_and_jxl_output_decode_in_reference_decoders() {
    let s = Server::start();
    let pic = picture(600, 400);
    DynamicImage::ImageRgb8(pic.clone())
        .save(s.images.join("pic.png"))
        .expect("png");
    let info: serde_json::Value =
        serde_json::from_slice(&s.get("/iiif/3/pic/info.json").body).expect("info");
    for f in ["jp2", "avif", "jxl"] {
        assert!(
            info["extraFormats"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == f)),
            "{f} in {info}"
        );
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let opj = |bytes: &[u8]| -> DynamicImage {
        let (from, to) = (tmp.path().join("out.jp2"), tmp.path().join("out.png"));
        std::fs::write(&from, bytes).expect("write");
        let status = std::process::Command::new("opj_decompress")
            .arg("-i")
            .arg(&from)
            .arg("-o")
            .arg(&to)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("opj_decompress (libopenjp2-tools) must be installed");
        assert!(status.success(), "opj_decompress refused iiifd's jp2");
        image::open(&to).expect("png")
    };
    let r = s.get("/iiif/3/pic/full/max/0/default.jp2");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/jp2"));
    let back = opj(&r.body).to_rgb8();
    let err = crate::common::images::mean_diff(&back, &pic);
    assert!(err < 3.0, "jp2 mean error {err}");
    let r = s.get("/iiif/2/pic/100,50,300,200/150,/0/gray.jp2");
    assert_eq!(r.status, 200);
    let back = opj(&r.body);
    assert_eq!((back.width(), back.height()), (150, 100));
    assert!(!back.color().has_color(), "gray is one component");

    let jxl = |bytes: &[u8]| -> RgbImage {
        let img = jxl_oxide::JxlImage::builder()
            .read(std::io::Cursor::new(bytes))
            .expect("jxl-oxide reads iiifd's jxl");
        let render = img.render_frame(0).expect("renders");
        let fb = render.image_all_channels();
        assert_eq!(fb.channels(), 3);
        let px = fb.buf().iter().map(|v| (v * 255.0).round() as u8).collect();
        RgbImage::from_raw(fb.width() as u32, fb.height() as u32, px).expect("size")
    };
    let r = s.get("/iiif/3/pic/full/max/0/default.jxl");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/jxl"));
    assert_eq!(jxl(&r.body), pic, "jxl is lossless");
    let r = s.get("/iiif/3/pic/100,50,300,200/max/0/default.jxl");
    let want = image::imageops::crop_imm(&pic, 100, 50, 300, 200).to_image();
    assert_eq!(jxl(&r.body), want);
    // A side of one pixel: the jxl encoder cannot write it (501 with the reason); the others can.
    let r = s.get("/iiif/3/pic/full/1,1/0/default.jxl");
    assert_eq!(r.status, 501, "{}", r.text());
    assert!(r.text().contains("2 pixels a side"), "{}", r.text());
    for f in ["jp2", "avif", "webp", "png", "gif", "tif", "jpg"] {
        for size in ["1,1", "1,2", "2,1"] {
            let r = s.get(&format!("/iiif/3/pic/full/{size}/0/default.{f}"));
            assert_eq!(r.status, 200, "{size}.{f}: {}", r.text());
        }
    }
}

/// A multi-page TIFF's pages by identifier suffix (`book;3`): each page has its own info.json and
/// pixels, checked against the page written; a page past the last is 404, and the identifier
/// alone is the first page.
#[test]
fn pages_of_a_multi_page_tiff_are_served_by_suffix() {
    let s = Server::start();
    let page = |i: u32| -> RgbImage {
        let (w, h) = (300 + 37 * i, 200 + 11 * i);
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(i * 50) as u8, (x * 255 / w) as u8, (y * 255 / h) as u8])
        })
    };
    let mut file = Vec::new();
    {
        let mut enc =
            tiff::encoder::TiffEncoder::new(std::io::Cursor::new(&mut file)).expect("tiff");
        for i in 1..=5 {
            let p = page(i);
            enc.write_image::<tiff::encoder::colortype::RGB8>(p.width(), p.height(), p.as_raw())
                .expect("page");
        }
    }
    std::fs::write(s.images.join("book.tif"), &file).expect("write");

    let info = |id: &str| -> (u16, serde_json::Value) {
        let r = s.get(&format!("/iiif/3/{id}/info.json"));
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
        )
    };
    let (status, v) = info("book;3");
    assert_eq!(status, 200);
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(411), Some(233))
    );
    assert!(
        v["id"].as_str().is_some_and(|id| id.ends_with("/book%3B3")),
        "{v}"
    );
    let (_, first) = info("book");
    assert_eq!(first["width"].as_u64(), Some(337));

    let png = |path: &str| -> RgbImage {
        let r = s.get(path);
        assert_eq!(r.status, 200, "{path}");
        image::load_from_memory(&r.body).expect("png").to_rgb8()
    };
    assert_eq!(png("/iiif/3/book;3/full/max/0/default.png"), page(3));
    let want = image::imageops::crop_imm(&page(3), 100, 50, 200, 150).to_image();
    assert_eq!(png("/iiif/3/book;3/100,50,200,150/max/0/default.png"), want);
    assert_eq!(png("/iiif/2/book;5/full/full/0/default.png"), page(5));
    assert_eq!(png("/iiif/3/book/full/max/0/default.png"), page(1));

    for missing in ["book;6", "book;0", "book;-1", "nothing;2"] {
        assert_eq!(info(missing).0, 404, "{missing}");
        assert_eq!(
            s.get(&format!("/iiif/3/{missing}/full/max/0/default.jpg"))
                .status,
            404,
            "{missing}"
        );
    }

    // The book replaced by one of three other pages: page 3 is the new third page, 5 is gone.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut file = Vec::new();
    {
        let mut enc =
            tiff::encoder::TiffEncoder::new(std::io::Cursor::new(&mut file)).expect("tiff");
        for i in 6..=8 {
            let p = page(i);
            enc.write_image::<tiff::encoder::colortype::RGB8>(p.width(), p.height(), p.as_raw())
                .expect("page");
        }
    }
    std::fs::write(s.images.join("book.tif"), &file).expect("write");
    assert_eq!(png("/iiif/3/book;3/full/max/0/default.png"), page(8));
    assert_eq!(info("book;5").0, 404);
}

/// An output whose encoder would need more than the decode budget is refused (501, with the reason)
/// before anything is decoded, as a decode that large is; a smaller size of it, or another format,
/// is served.
#[test]
fn outputs_whose_encoder_exceeds_the_budget_are_refused() {
    let s = Server::start_with(&[], &[("IIIFD_RENDER__MAX_DECODE_BYTES", "4000000")]);
    DynamicImage::ImageRgb8(picture(600, 400))
        .save(s.images.join("pic.png"))
        .expect("png");
    // 600x400 as jp2 holds about 20 bytes a pixel in OpenJPEG (4.8 MB), as avif 30 (7.2 MB).
    for f in ["jp2", "avif"] {
        let r = s.get(&format!("/iiif/3/pic/full/max/0/default.{f}"));
        assert_eq!(r.status, 501, "{f}: {}", r.text());
        assert!(r.text().contains("encoding 600x400"), "{f}: {}", r.text());
        let r = s.get(&format!("/iiif/3/pic/full/300,/0/default.{f}"));
        assert_eq!(r.status, 200, "{f} at 300x200: {}", r.text());
    }
    assert_eq!(s.get("/iiif/3/pic/full/max/0/default.jxl").status, 200);
    assert_eq!(s.get("/iiif/3/pic/full/max/0/default.jpg").status, 200);
}
