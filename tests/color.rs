//! Colour and orientation as real sources carry them: embedded ICC profiles converted to sRGB by
//! default (`render.color = "srgb"`) or kept and embedded (`"preserve"`), and orientation from every
//! carrier (EXIF in PNG `eXIf` and WebP `EXIF` as well as JPEG). The reference for the conversion is
//! computed here from the published definitions of Adobe RGB (1998) and sRGB, not by a CMS.

use crate::common::images::{jpeg, mean_diff};
use crate::common::inproc::InProcess;
use iiifd::config::ColorMode;
use image::{ImageDecoder, ImageEncoder, RgbImage};

/// An Adobe RGB (1998) profile, as a scanner would embed it.
fn adobe_profile() -> Vec<u8> {
    moxcms::ColorProfile::new_adobe_rgb()
        .encode()
        .expect("profile encodes")
}

/// Adobe RGB (1998) to sRGB by the definitions (Adobe RGB (1998) Color Image Encoding, 2005; IEC
/// 61966-2-1): both have a D65 white, so linearise, one matrix through XYZ, clip, encode.
fn adobe_to_srgb(p: [u8; 3]) -> [f64; 3] {
    let lin = |v: u8| (f64::from(v) / 255.0).powf(563.0 / 256.0);
    let (r, g, b) = (lin(p[0]), lin(p[1]), lin(p[2]));
    let x = 0.576_700 * r + 0.185_556 * g + 0.188_212 * b;
    let y = 0.297_361 * r + 0.627_355 * g + 0.075_285 * b;
    let z = 0.027_032 * r + 0.070_687 * g + 0.991_248 * b;
    let rl = 3.240_454_2 * x - 1.537_138_5 * y - 0.498_531_4 * z;
    let gl = -0.969_266_0 * x + 1.876_010_8 * y + 0.041_556_0 * z;
    let bl = 0.055_643_4 * x - 0.204_025_9 * y + 1.057_225_2 * z;
    let enc = |v: f64| {
        let v = v.clamp(0.0, 1.0);
        255.0
            * if v <= 0.003_130_8 {
                12.92 * v
            } else {
                1.055 * v.powf(1.0 / 2.4) - 0.055
            }
    };
    [enc(rl), enc(gl), enc(bl)]
}

/// Saturated colours and greys: where Adobe RGB and sRGB differ most and least.
fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = (x * 255 / (w - 1), y * 255 / (h - 1));
        match (x * 4 / w, y * 2 / h) {
            (0, 0) => image::Rgb([u as u8, 255, 0]),
            (1, 0) => image::Rgb([255, v as u8, u as u8]),
            (2, 0) => image::Rgb([0, u as u8, 255]),
            (3, 0) => image::Rgb([u as u8, u as u8, u as u8]),
            _ => image::Rgb([u as u8, v as u8, ((u + v) / 2) as u8]),
        }
    })
}

fn png_with_profile(img: &RgbImage, icc: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = image::codecs::png::PngEncoder::new(&mut out);
    if let Some(icc) = icc {
        enc.set_icc_profile(icc.to_vec())
            .expect("png takes a profile");
    }
    enc.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
    .expect("png");
    out
}

/// A 4:4:4 JPEG at quality 95, with `icc` in APP2 when given.
fn jpeg_with_profile(img: &RgbImage, icc: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 95);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_1_1);
    if let Some(icc) = icc {
        enc.add_icc_profile(icc).expect("jpeg takes a profile");
    }
    enc.encode(
        img.as_raw(),
        img.width() as u16,
        img.height() as u16,
        jpeg_encoder::ColorType::Rgb,
    )
    .expect("jpeg");
    out
}

/// Per-sample differences between an output and the reference conversion of `source`.
fn against_reference(out: &RgbImage, source: &RgbImage) -> (f64, f64) {
    assert_eq!(out.dimensions(), source.dimensions());
    let (mut sum, mut max) = (0.0f64, 0.0f64);
    for (o, s) in out.pixels().zip(source.pixels()) {
        let want = adobe_to_srgb(s.0);
        for (got, want) in o.0.iter().zip(want) {
            let d = (f64::from(*got) - want).abs();
            sum += d;
            max = max.max(d);
        }
    }
    (sum / (out.len() as f64), max)
}

/// The ICC profile an output of `format` carries, read by the `image` crate's decoder for it.
fn embedded_profile(format: &str, body: Vec<u8>) -> Option<Vec<u8>> {
    use image::codecs::{jpeg::JpegDecoder, png::PngDecoder, tiff::TiffDecoder, webp::WebPDecoder};
    let cursor = std::io::Cursor::new(body);
    let profile = match format {
        "png" => PngDecoder::new(cursor).expect("png").icc_profile(),
        "jpg" => JpegDecoder::new(cursor).expect("jpg").icc_profile(),
        "webp" => WebPDecoder::new(cursor).expect("webp").icc_profile(),
        "tif" => TiffDecoder::new(cursor).expect("tif").icc_profile(),
        other => panic!("no decoder for {other}"),
    };
    profile.expect("reads")
}

/// The image at `path`, which must answer 200.
fn rgb(s: &InProcess, path: &str) -> RgbImage {
    let r = s.get(path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.image().to_rgb8()
}

fn max_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

#[test]
fn adobe_rgb_sources_are_converted_to_srgb() {
    let s = InProcess::start();
    let pic = picture(96, 64);
    let icc = adobe_profile();
    std::fs::write(
        s.images.join("adobe.png"),
        png_with_profile(&pic, Some(&icc)),
    )
    .expect("png");
    std::fs::write(s.images.join("plain.png"), png_with_profile(&pic, None)).expect("png");
    let jpg = jpeg_with_profile(&pic, Some(&icc));
    std::fs::write(s.images.join("adobe.jpg"), &jpg).expect("jpg");

    // Lossless in, lossless out: within a level or two of the definition (the CMS works in fixed point).
    let out = s.get("/iiif/3/adobe.png/full/max/0/default.png");
    assert_eq!(out.status, 200);
    let out = out.image().to_rgb8();
    let (mean, max) = against_reference(&out, &pic);
    assert!(
        mean < 0.7 && max <= 3.0,
        "png: mean {mean:.2}, max {max:.1}"
    );
    // The conversion did something: Adobe RGB's green is far outside sRGB.
    assert!(max_diff(&out, &pic) > 40, "pixels were not converted");
    // No profile in the output: sRGB is what an untagged image means.
    let body = s.get("/iiif/3/adobe.png/full/max/0/default.png").body;
    assert_eq!(embedded_profile("png", body), None);
    // An untagged source is left alone.
    let plain = rgb(&s, "/iiif/3/plain.png/full/max/0/default.png");
    assert_eq!(max_diff(&plain, &pic), 0);

    // JPEG source, jpg output: the reference of the decoded source, within JPEG's own error (what
    // the same source without a profile loses through the same route).
    let decoded = image::load_from_memory(&jpg).expect("decodes").to_rgb8();
    let out = rgb(&s, "/iiif/3/adobe.jpg/full/max/0/default.jpg");
    let (mean, _) = against_reference(&out, &decoded);
    let untagged = jpeg_with_profile(&pic, None);
    std::fs::write(s.images.join("plain.jpg"), &untagged).expect("jpg");
    let plain_decoded = image::load_from_memory(&untagged)
        .expect("decodes")
        .to_rgb8();
    let plain_out = rgb(&s, "/iiif/3/plain.jpg/full/max/0/default.jpg");
    let own_error = mean_diff(&plain_out, &plain_decoded);
    assert!(
        mean < own_error + 1.0,
        "jpg: mean {mean:.2} from the reference; jpg alone loses {own_error:.2}"
    );
}

#[test]
fn tiles_of_a_tagged_image_agree_with_its_full_size_render() {
    let s = InProcess::start();
    let pic = picture(1024, 768);
    std::fs::write(
        s.images.join("big.jpg"),
        jpeg_with_profile(&pic, Some(&adobe_profile())),
    )
    .expect("jpg");
    let full = rgb(&s, "/iiif/3/big.jpg/full/max/0/default.png");
    for (x, y) in [(0, 0), (512, 0), (0, 384), (512, 384)] {
        let tile = rgb(
            &s,
            &format!("/iiif/3/big.jpg/{x},{y},512,384/max/0/default.png"),
        );
        let want = image::imageops::crop_imm(&full, x, y, 512, 384).to_image();
        let d = max_diff(&tile, &want);
        assert!(d <= 1, "tile at {x},{y} differs by {d}");
    }
    // A reduced level too: the same pixels, converted the same way, as the full render scaled.
    let half = rgb(&s, "/iiif/3/big.jpg/full/512,/0/default.png");
    let tile = rgb(&s, "/iiif/3/big.jpg/512,384,512,384/256,/0/default.png");
    let want = image::imageops::crop_imm(&half, 256, 192, 256, 192).to_image();
    let mean = mean_diff(&tile, &want);
    assert!(
        mean < 1.5,
        "scaled tile against the scaled full render: mean {mean:.2}"
    );
}

#[test]
fn preserve_keeps_the_pixels_and_embeds_the_profile() {
    let s = InProcess::with(|c| c.render.color = ColorMode::Preserve, None);
    let pic = picture(96, 64);
    let icc = adobe_profile();
    std::fs::write(
        s.images.join("adobe.png"),
        png_with_profile(&pic, Some(&icc)),
    )
    .expect("png");
    let png = s.get("/iiif/3/adobe.png/full/max/0/default.png");
    assert_eq!(max_diff(&png.image().to_rgb8(), &pic), 0, "pixels kept");
    assert_eq!(
        embedded_profile("png", png.body).as_deref(),
        Some(icc.as_slice())
    );
    for format in ["jpg", "webp", "tif"] {
        let body = s
            .get(&format!("/iiif/3/adobe.png/full/max/0/default.{format}"))
            .body;
        assert_eq!(
            embedded_profile(format, body).as_deref(),
            Some(icc.as_slice()),
            "{format}"
        );
    }

    // The setting is part of the key: the same URL under `srgb` is another derivative.
    let preserved = s.get("/iiif/3/adobe.png/full/64,/0/default.png");
    let etag = preserved.header("etag").unwrap_or("").to_owned();
    drop(s);
    let s = InProcess::start();
    std::fs::write(
        s.images.join("adobe.png"),
        png_with_profile(&pic, Some(&icc)),
    )
    .expect("png");
    let converted = s.get("/iiif/3/adobe.png/full/64,/0/default.png");
    assert_ne!(converted.header("etag").unwrap_or(""), etag);
}

/// A TIFF (big-endian) block holding one Orientation entry, as EXIF payloads carry it.
fn exif_block(orientation: u16) -> Vec<u8> {
    let mut t = b"MM\0\x2a\0\0\0\x08\0\x01".to_vec();
    t.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1]);
    t.extend_from_slice(&orientation.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    t
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `png` with an `eXIf` chunk (orientation only) inserted after `IHDR`.
fn png_with_exif(png: &[u8], orientation: u16) -> Vec<u8> {
    let data = exif_block(orientation);
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    let mut typed = b"eXIf".to_vec();
    typed.extend(&data);
    chunk.extend(&typed);
    chunk.extend(crc32(&typed).to_be_bytes());
    let after_ihdr = 8 + 8 + 13 + 4;
    let mut out = png[..after_ihdr].to_vec();
    out.extend(chunk);
    out.extend_from_slice(&png[after_ihdr..]);
    out
}

/// A lossless WebP of `img` in an extended container with an `EXIF` chunk.
fn webp_with_exif(img: &RgbImage, orientation: u16) -> Vec<u8> {
    let mut simple = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut simple)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("webp");
    let chunk = |fourcc: &[u8], body: &[u8]| {
        let mut c = fourcc.to_vec();
        c.extend((body.len() as u32).to_le_bytes());
        c.extend_from_slice(body);
        if body.len() % 2 == 1 {
            c.push(0);
        }
        c
    };
    let mut vp8x = [0u8; 10];
    vp8x[0] = 0x08; // EXIF present
    vp8x[4..7].copy_from_slice(&(img.width() - 1).to_le_bytes()[..3]);
    vp8x[7..10].copy_from_slice(&(img.height() - 1).to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    body.extend(chunk(b"VP8X", &vp8x));
    body.extend_from_slice(&simple[12..]);
    body.extend(chunk(b"EXIF", &exif_block(orientation)));
    let mut out = b"RIFF".to_vec();
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

#[test]
fn orientation_from_png_and_webp_exif_is_applied() {
    let s = InProcess::start();
    let stored = picture(64, 40);
    // EXIF 6: the stored pixels are shown turned 90 degrees clockwise.
    let shown = image::imageops::rotate90(&stored);
    std::fs::write(
        s.images.join("turned.png"),
        png_with_exif(&png_with_profile(&stored, None), 6),
    )
    .expect("png");
    std::fs::write(s.images.join("turned.webp"), webp_with_exif(&stored, 6)).expect("webp");
    // The same picture as a JPEG with EXIF 6, served as it always was: the three must agree.
    std::fs::write(
        s.images.join("turned.jpg"),
        crate::common::images::with_orientation(&jpeg(&stored, 95), 6),
    )
    .expect("jpg");
    for id in ["turned.png", "turned.webp", "turned.jpg"] {
        let info = s.get(&format!("/iiif/3/{id}/info.json")).json();
        assert_eq!(
            (info["width"].as_u64(), info["height"].as_u64()),
            (Some(40), Some(64)),
            "{id}: displayed size"
        );
        let out = s.get(&format!("/iiif/3/{id}/full/max/0/default.png"));
        assert_eq!(out.status, 200, "{id}");
        let out = out.image().to_rgb8();
        let limit = if id.ends_with(".jpg") { 40 } else { 0 };
        let d = max_diff(&out, &shown);
        assert!(d <= limit, "{id}: differs from the turned picture by {d}");
        // A region of the displayed image is cut from the displayed image.
        let part = rgb(&s, &format!("/iiif/3/{id}/0,32,40,32/max/0/default.png"));
        let want = image::imageops::crop_imm(&shown, 0, 32, 40, 32).to_image();
        assert!(max_diff(&part, &want) <= limit, "{id}: region");
    }
}

/// `jp2` with its `colr` box replaced by one carrying `icc` (method 2, restricted ICC).
fn jp2_with_profile(jp2: &[u8], icc: &[u8]) -> Vec<u8> {
    let boxes = |data: &[u8]| {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 8 <= data.len() {
            let len =
                u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
            let len = if len == 0 { data.len() - at } else { len };
            out.push((
                data[at + 4..at + 8].to_vec(),
                data[at + 8..at + len].to_vec(),
            ));
            at += len;
        }
        out
    };
    let write = |kind: &[u8], body: &[u8]| {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    };
    let mut out = Vec::new();
    for (kind, body) in boxes(jp2) {
        if kind == b"jp2h" {
            let mut header = Vec::new();
            for (k, b) in boxes(&body) {
                if k == b"colr" {
                    let mut colr = vec![2, 0, 0];
                    colr.extend_from_slice(icc);
                    header.extend(write(b"colr", &colr));
                } else {
                    header.extend(write(&k, &b));
                }
            }
            out.extend(write(b"jp2h", &header));
        } else {
            out.extend(write(&kind, &body));
        }
    }
    out
}

#[test]
fn a_jpeg2000_with_an_embedded_profile_is_converted() {
    let s = InProcess::start();
    let pic = picture(128, 96);
    let tmp = tempfile::tempdir().expect("tempdir");
    let png = tmp.path().join("in.png");
    let jp2 = tmp.path().join("out.jp2");
    pic.save(&png).expect("png");
    let status = std::process::Command::new("opj_compress")
        .args([
            "-i".as_ref(),
            png.as_os_str(),
            "-o".as_ref(),
            jp2.as_os_str(),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("opj_compress (libopenjp2-tools) must be installed");
    assert!(status.success());
    let plain = std::fs::read(&jp2).expect("read");
    std::fs::write(s.images.join("plain.jp2"), &plain).expect("write");
    std::fs::write(
        s.images.join("adobe.jp2"),
        jp2_with_profile(&plain, &adobe_profile()),
    )
    .expect("write");
    // Lossless JPEG 2000 (opj_compress's default): the untagged one is the picture itself, the tagged
    // one its conversion.
    let untagged = rgb(&s, "/iiif/3/plain.jp2/full/max/0/default.png");
    assert_eq!(max_diff(&untagged, &pic), 0);
    let tagged = s.get("/iiif/3/adobe.jp2/full/max/0/default.png");
    assert_eq!(tagged.status, 200, "{}", tagged.text());
    let (mean, max) = against_reference(&tagged.image().to_rgb8(), &pic);
    assert!(
        mean < 0.7 && max <= 3.0,
        "jp2: mean {mean:.2}, max {max:.1}"
    );
}

/// An uncompressed RGBA TIFF (one strip, little-endian) whose ExtraSamples tag says `extra` (1:
/// associated alpha, the colour premultiplied; 2: unassociated).
fn rgba_tiff(w: u32, h: u32, samples: &[u8], extra: u16) -> Vec<u8> {
    strip_tiff(w, h, 2, 4, samples, &[(338, 3, 1, u32::from(extra))], None)
}

/// An uncompressed 8-bit TIFF, one strip, little-endian: `spp` samples a pixel under the
/// Photometric tag `photometric`, with `extra` entries and an embedded ICC profile if given.
fn strip_tiff(
    w: u32,
    h: u32,
    photometric: u16,
    spp: u16,
    samples: &[u8],
    extra: &[(u16, u16, u32, u32)],
    icc: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = b"II*\0".to_vec();
    let data_at = 8u32;
    let bits_at = data_at + samples.len() as u32;
    let icc_at = bits_at + 2 * u32::from(spp);
    let icc = icc.unwrap_or_default();
    let ifd_at = (icc_at + icc.len() as u32).next_multiple_of(2);
    out.extend(ifd_at.to_le_bytes());
    out.extend_from_slice(samples);
    out.extend((0..spp).flat_map(|_| 8u16.to_le_bytes()));
    out.extend_from_slice(icc);
    out.resize(ifd_at as usize, 0);
    let mut entries: Vec<(u16, u16, u32, u32)> = vec![
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, u32::from(spp), bits_at),
        (259, 3, 1, 1),
        (262, 3, 1, u32::from(photometric)),
        (273, 4, 1, data_at),
        (277, 3, 1, u32::from(spp)),
        (278, 4, 1, h),
        (279, 4, 1, samples.len() as u32),
        (284, 3, 1, 1),
        (296, 3, 1, 1),
    ];
    if !icc.is_empty() {
        entries.push((34675, 7, icc.len() as u32, icc_at));
    }
    entries.extend_from_slice(extra);
    entries.sort_by_key(|e| e.0);
    out.extend((entries.len() as u16).to_le_bytes());
    for (tag, typ, count, value) in entries {
        out.extend(tag.to_le_bytes());
        out.extend(typ.to_le_bytes());
        out.extend(count.to_le_bytes());
        out.extend(value.to_le_bytes());
    }
    out.extend(0u32.to_le_bytes());
    out
}

/// A CMYK printer profile (ICC v2, Lab PCS) whose A2B0 is a lut8 with two grid points per ink: the
/// sixteen corners of CMYK space each map to a chosen Lab colour. Corner colours are exact under any
/// interpolation, so a CMS's answer for them is fixed by this table alone.
fn cmyk_profile() -> Vec<u8> {
    let s15 = |v: f64| ((v * 65536.0).round() as i32).to_be_bytes();
    let mut lut = b"mft1\0\0\0\0".to_vec();
    lut.extend([4u8, 3, 2, 0]);
    for v in [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0] {
        lut.extend(s15(v));
    }
    for _ in 0..4 {
        lut.extend(0..=255u8);
    }
    // Corners, C slowest, K fastest: a rough press, each ink darkening and tinting.
    for c in 0..2 {
        for m in 0..2 {
            for y in 0..2 {
                for k in 0..2 {
                    let (c, m, y, k) = (f64::from(c), f64::from(m), f64::from(y), f64::from(k));
                    let l = (100.0 - 45.0 * c - 52.0 * m - 11.0 * y).max(8.0) * (1.0 - 0.85 * k);
                    let a = (-37.0 * c + 74.0 * m - 5.0 * y) * (1.0 - 0.8 * k);
                    let b = (-50.0 * c - 3.0 * m + 93.0 * y) * (1.0 - 0.8 * k);
                    lut.push((l * 2.55).round() as u8);
                    lut.push((a + 128.0).round() as u8);
                    lut.push((b + 128.0).round() as u8);
                }
            }
        }
    }
    for _ in 0..3 {
        lut.extend(0..=255u8);
    }
    let mut wtpt = b"XYZ \0\0\0\0".to_vec();
    for v in [0.9642, 1.0, 0.8249] {
        wtpt.extend(s15(v));
    }
    let mut desc = b"desc\0\0\0\0".to_vec();
    desc.extend(5u32.to_be_bytes());
    desc.extend(b"test\0");
    desc.extend([0u8; 4 + 4 + 2 + 1 + 67]);
    let tags: [(&[u8; 4], &Vec<u8>); 3] = [(b"desc", &desc), (b"wtpt", &wtpt), (b"A2B0", &lut)];
    let mut body = Vec::new();
    let mut table = (tags.len() as u32).to_be_bytes().to_vec();
    let mut at = 128 + 4 + 12 * tags.len();
    for (sig, data) in tags {
        table.extend(sig);
        table.extend((at as u32).to_be_bytes());
        table.extend((data.len() as u32).to_be_bytes());
        body.extend(data.iter());
        while body.len() % 4 != 0 {
            body.push(0);
        }
        at = 128 + 4 + 12 * tags.len() + body.len();
    }
    let mut head = vec![0u8; 128];
    let size = 128 + table.len() + body.len();
    head[0..4].copy_from_slice(&(size as u32).to_be_bytes());
    head[8..12].copy_from_slice(&[2, 0x10, 0, 0]);
    head[12..16].copy_from_slice(b"prtr");
    head[16..20].copy_from_slice(b"CMYK");
    head[20..24].copy_from_slice(b"Lab ");
    head[36..40].copy_from_slice(b"acsp");
    for (i, v) in [0.9642, 1.0, 0.8249].iter().enumerate() {
        head[68 + 4 * i..72 + 4 * i].copy_from_slice(&s15(*v));
    }
    [head, table, body].concat()
}

/// A CMYK source with an embedded CMYK profile is converted through that profile, as lcms2 (Pillow's
/// ImageCms, the reference) converts it, not naively; the same inks without a profile are converted
/// naively, as Pillow shows them.
#[test]
fn cmyk_sources_are_converted_through_their_profile() {
    let profile = cmyk_profile();
    // The sixteen corners of CMYK space, a 16 x 16 block each, side by side: 256 x 16.
    let (w, h) = (256u32, 16u32);
    let inks: Vec<u8> = (0..w * h)
        .flat_map(|p| {
            let corner = (p % w) / 16;
            [8u32, 4, 2, 1].map(|bit| if corner & bit != 0 { 255u8 } else { 0 })
        })
        .collect();
    let s = InProcess::start();
    let tagged = strip_tiff(w, h, 5, 4, &inks, &[], Some(&profile));
    std::fs::write(s.images.join("cmyk-tagged.tif"), &tagged).expect("tif");
    std::fs::write(
        s.images.join("cmyk-plain.tif"),
        strip_tiff(w, h, 5, 4, &inks, &[], None),
    )
    .expect("tif");
    // And as JPEG (jpeg-encoder writes Adobe's APP14 and inverted inks, as Photoshop does).
    let mut jpeg = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut jpeg, 100);
    encoder.add_icc_profile(&profile).expect("profile");
    encoder
        .encode(&inks, w as u16, h as u16, jpeg_encoder::ColorType::Cmyk)
        .expect("cmyk jpeg");
    std::fs::write(s.images.join("cmyk-tagged.jpg"), &jpeg).expect("jpg");
    let python = crate::corpus::reference_python();
    for name in ["cmyk-tagged.tif", "cmyk-plain.tif", "cmyk-tagged.jpg"] {
        let got = rgb(&s, &format!("/iiif/3/{name}/full/max/0/default.png"));
        let out = std::process::Command::new(&python)
            .arg("-c")
            .arg(
                "import sys, io\nfrom PIL import Image, ImageCms\nim = Image.open(sys.argv[1])\n\
                 icc = im.info.get('icc_profile')\n\
                 im = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(icc)), \
                 ImageCms.createProfile('sRGB'), outputMode='RGB') if icc else im.convert('RGB')\n\
                 sys.stdout.buffer.write(im.tobytes())",
            )
            .arg(s.images.join(name))
            .output()
            .expect("run Pillow");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = RgbImage::from_raw(w, h, out.stdout).expect("the reference's pixels");
        let (mean, max) = (mean_diff(&got, &want), max_diff(&got, &want));
        assert!(
            mean <= 2.0 && max <= 12,
            "{name}: mean {mean:.2}, max {max}"
        );
    }
    // The profile mattered: the two differ by far more than the tolerance.
    let tagged = rgb(&s, "/iiif/3/cmyk-tagged.tif/full/max/0/default.png");
    let plain = rgb(&s, "/iiif/3/cmyk-plain.tif/full/max/0/default.png");
    assert!(mean_diff(&tagged, &plain) > 10.0);
}

#[test]
fn associated_alpha_is_served_as_straight_alpha() {
    let s = InProcess::start();
    let (w, h) = (40u32, 30u32);
    let straight = image::RgbaImage::from_fn(w, h, |x, y| {
        image::Rgba([
            200,
            (x * 6) as u8,
            (y * 8) as u8,
            [255, 128, 64, 0][(x / 10) as usize],
        ])
    });
    let premultiplied: Vec<u8> = straight
        .pixels()
        .flat_map(|p| {
            let a = u32::from(p.0[3]);
            let m = |c: u8| ((u32::from(c) * a + 127) / 255) as u8;
            [m(p.0[0]), m(p.0[1]), m(p.0[2]), p.0[3]]
        })
        .collect();
    std::fs::write(
        s.images.join("assoc.tif"),
        rgba_tiff(w, h, &premultiplied, 1),
    )
    .expect("tif");
    std::fs::write(
        s.images.join("unassoc.tif"),
        rgba_tiff(w, h, straight.as_raw(), 2),
    )
    .expect("tif");
    for id in ["assoc.tif", "unassoc.tif"] {
        let r = s.get(&format!("/iiif/3/{id}/full/max/0/default.png"));
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        let got = r.image().to_rgba8();
        for (g, want) in got.pixels().zip(straight.pixels()) {
            assert_eq!(g.0[3], want.0[3], "{id}: alpha kept");
            if want.0[3] == 0 {
                continue;
            }
            // Division after 8-bit premultiplication loses up to 255 / alpha / 2 levels.
            let tolerance = 255 / u32::from(want.0[3]);
            for c in 0..3 {
                let d = u32::from(g.0[c].abs_diff(want.0[c]));
                assert!(d <= tolerance, "{id}: {:?} for {:?}", g.0, want.0);
            }
        }
    }
}

/// A valid TIFF in a variant the decoders do not read (JPEG 2000 compression, 34712) is 501 for
/// info.json and images alike, never "200, then 500 on every tile"; bytes of no image format are 500.
#[test]
fn unsupported_variants_are_501_and_garbage_is_500() {
    let s = InProcess::start();
    let mut tif = rgba_tiff(4, 4, &[9u8; 64], 2);
    let entry = [0x03, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00];
    let at = tif
        .windows(entry.len())
        .position(|w| w == entry)
        .expect("compression entry");
    tif[at + 8..at + 10].copy_from_slice(&34712u16.to_le_bytes());
    std::fs::write(s.images.join("j2k-in-tiff.tif"), &tif).expect("tif");
    let info = s.get("/iiif/3/j2k-in-tiff.tif/info.json");
    let image = s.get("/iiif/3/j2k-in-tiff.tif/full/max/0/default.jpg");
    assert_eq!((info.status, image.status), (501, 501), "{}", image.text());
    std::fs::write(s.images.join("noise.tif"), b"II*\0 this is no directory").expect("tif");
    assert_eq!(
        s.get("/iiif/3/noise.tif/full/max/0/default.jpg").status,
        500
    );
}
