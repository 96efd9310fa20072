//! Hostile images, generated here (never downloaded): truncated and empty files of every format,
//! headers claiming enormous sizes, a zlib bomb, a GIF with 10,000 frames, 16-bit PNG and TIFF, a palette
//! PNG with transparency, a TIFF whose IFD chain loops, a JP2 that is nothing but a huge header. Each
//! must give an image or a clear 4xx/5xx, quickly and in bounded memory, and the server must live on.

use crate::common::Server;
use image::{ImageBuffer, ImageFormat, Rgb, RgbImage};
use std::io::Cursor;
use std::path::Path;
use std::time::{Duration, Instant};

fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A little-endian TIFF with one IFD of (tag, type, count, value) entries and `next` as the next-IFD offset.
fn tiff(entries: &[(u16, u16, u32, u32)], next: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = b"II*\0".to_vec();
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, count, value) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&next.to_le_bytes());
    out.extend_from_slice(pixels);
    out
}

/// Write every hostile file into `dir`; returns their identifiers (file names).
pub fn generate(dir: &Path) -> Vec<String> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let img: RgbImage =
        ImageBuffer::from_fn(300, 200, |x, y| Rgb([x as u8, y as u8, (x ^ y) as u8]));
    for (ext, format) in [
        ("jpg", ImageFormat::Jpeg),
        ("png", ImageFormat::Png),
        ("gif", ImageFormat::Gif),
        ("tif", ImageFormat::Tiff),
        ("webp", ImageFormat::WebP),
    ] {
        let bytes = encode(&img, format);
        files.push((format!("empty.{ext}"), Vec::new()));
        for pct in [5, 50, 95] {
            files.push((
                format!("truncated{pct}.{ext}"),
                bytes[..bytes.len() * pct / 100].to_vec(),
            ));
        }
    }
    // Headers claiming 100000 x 100000 (JPEG and GIF top out at 65535).
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    files.push(("huge-header.png".into(), png));
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x3b]);
    files.push(("huge-header.gif".into(), gif));
    let jpeg = [
        &[0xff, 0xd8][..],
        &[
            0xff, 0xc0, 0x00, 0x11, 0x08, 0xff, 0xff, 0xff, 0xff, 0x03, 0x01, 0x22, 0x00, 0x02,
            0x11, 0x01, 0x03, 0x11, 0x01,
        ],
        &[0xff, 0xd9],
    ]
    .concat();
    files.push(("huge-header.jpg".into(), jpeg));
    files.push((
        "huge-header.tif".into(),
        tiff(
            &[
                (256, 4, 1, 100_000),
                (257, 4, 1, 100_000),
                (258, 3, 1, 8),
                (262, 3, 1, 1),
                (273, 4, 1, 8),
                (279, 4, 1, 1),
            ],
            0,
            &[],
        ),
    ));
    // A zlib bomb: 12000 x 12000 gray zeros compress to a few hundred kilobytes.
    let mut bomb = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bomb, 12_000, 12_000);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header().expect("png header");
        w.write_image_data(&vec![0u8; 12_000 * 12_000])
            .expect("png data");
    }
    files.push(("zlib-bomb.png".into(), bomb));
    // 10,000 frames.
    let mut frames = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut frames);
        let frame = image::RgbaImage::from_pixel(8, 8, image::Rgba([200, 0, 0, 255]));
        for _ in 0..10_000 {
            enc.encode_frame(image::Frame::new(frame.clone()))
                .expect("frame");
        }
    }
    files.push(("frames.gif".into(), frames));
    // 16-bit PNG and TIFF.
    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(120, 80, |x, y| {
        Rgb([(x * 500) as u16, (y * 800) as u16, 65535])
    });
    for (ext, format) in [("png", ImageFormat::Png), ("tif", ImageFormat::Tiff)] {
        let mut out = Cursor::new(Vec::new());
        deep.write_to(&mut out, format).expect("16-bit");
        files.push((format!("sixteen-bit.{ext}"), out.into_inner()));
    }
    // Palette PNG with a transparent entry.
    let mut palette = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut palette, 64, 64);
        enc.set_color(png::ColorType::Indexed);
        enc.set_palette(vec![255, 0, 0, 0, 0, 255]);
        enc.set_trns(vec![0u8, 255]);
        let mut w = enc.write_header().expect("palette header");
        w.write_image_data(&(0..64 * 64).map(|i| (i % 2) as u8).collect::<Vec<_>>())
            .expect("palette data");
    }
    files.push(("palette-trns.png".into(), palette));
    // A TIFF whose next-IFD offset points back at its own IFD.
    files.push((
        "ifd-loop.tif".into(),
        tiff(
            &[
                (256, 3, 1, 2),
                (257, 3, 1, 2),
                (258, 3, 1, 8),
                (262, 3, 1, 1),
                (273, 4, 1, 8 + 2 + 6 * 12 + 4),
                (279, 4, 1, 4),
            ],
            8,
            &[1, 2, 3, 4],
        ),
    ));
    // A JPEG 2000 signature followed by a codestream header claiming 2^32-1 squared pixels.
    let mut jp2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n".to_vec();
    jp2.extend_from_slice(&[0xff, 0x4f, 0xff, 0x51, 0x00, 0x29, 0x00, 0x00]);
    jp2.extend_from_slice(&[0xff; 32]);
    files.push(("huge-codestream.jp2".into(), jp2));
    // CMYK and YCCK JPEGs (Adobe APP14), 64 x 48.
    for (name, color) in [
        ("cmyk.jpg", jpeg_encoder::ColorType::Cmyk),
        ("ycck.jpg", jpeg_encoder::ColorType::Ycck),
    ] {
        let pixels: Vec<u8> = (0..64 * 48)
            .flat_map(|i| [(i % 64 * 4) as u8, (i / 64 * 5) as u8, 40, 10])
            .collect();
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 90)
            .encode(&pixels, 64, 48, color)
            .expect("cmyk jpeg");
        files.push((name.into(), out));
    }
    // A 1-bit (bilevel) TIFF, 16 x 2, rows of alternating bytes.
    files.push((
        "one-bit.tif".into(),
        tiff(
            &[
                (256, 3, 1, 16),
                (257, 3, 1, 2),
                (258, 3, 1, 1),
                (259, 3, 1, 1),
                (262, 3, 1, 1),
                (273, 4, 1, 8 + 2 + 7 * 12 + 4),
                (279, 4, 1, 4),
            ],
            0,
            &[0xf0, 0x0f, 0xaa, 0x55],
        ),
    ));
    // EXIF orientations 1-8: a JPEG with an APP1 Exif segment holding only the Orientation tag.
    let base = encode(&img, ImageFormat::Jpeg);
    for orientation in 1u16..=8 {
        let mut tiff_le = b"II*\0\x08\0\0\0\x01\0".to_vec();
        tiff_le.extend_from_slice(&0x0112u16.to_le_bytes());
        tiff_le.extend_from_slice(&3u16.to_le_bytes());
        tiff_le.extend_from_slice(&1u32.to_le_bytes());
        tiff_le.extend_from_slice(&u32::from(orientation).to_le_bytes());
        tiff_le.extend_from_slice(&0u32.to_le_bytes());
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff_le);
        let mut jpeg = base[..2].to_vec();
        jpeg.extend_from_slice(&[0xff, 0xe1]);
        jpeg.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        jpeg.extend_from_slice(&app1);
        jpeg.extend_from_slice(&base[2..]);
        files.push((format!("exif-orientation-{orientation}.jpg"), jpeg));
    }
    let mut names = Vec::new();
    for (name, bytes) in files {
        std::fs::write(dir.join(&name), bytes).expect("write hostile file");
        names.push(name);
    }
    names
}

#[test]
fn hostile_images_get_an_image_or_a_clear_error() {
    let mut s = Server::start_with(&[], &[("IIIFD_RENDER__MAX_DECODE_BYTES", "268435456")]);
    let names = generate(&s.images);
    assert!(names.len() >= 40);
    let mut report = Vec::new();
    for name in &names {
        let id = name.replace('.', "%2E");
        for path in [
            format!("/iiif/3/{id}/info.json"),
            format!("/iiif/3/{id}/full/100,/0/default.png"),
        ] {
            let started = Instant::now();
            let r = s.get(&path);
            let took = started.elapsed();
            assert!(took < Duration::from_secs(30), "{path} took {took:?}");
            assert!(
                matches!(r.status, 200 | 400 | 404 | 500 | 501),
                "{path}: {}",
                r.status
            );
            if r.status == 200 && path.ends_with(".png") {
                assert_eq!(r.image().width(), 100, "{path}");
            }
            if r.status >= 500 {
                assert!(
                    !r.text().trim().is_empty(),
                    "{path}: errors say what went wrong"
                );
            }
            report.push(format!("{name} {}", r.status));
        }
    }
    // The ones that must work.
    for good in [
        "sixteen-bit%2Epng",
        "sixteen-bit%2Etif",
        "palette-trns%2Epng",
        "frames%2Egif",
    ] {
        let r = s.get(&format!("/iiif/3/{good}/full/max/0/default.png"));
        assert_eq!(r.status, 200, "{good}: {}", r.text());
    }
    let huge = s.get("/iiif/3/huge-header%2Epng/full/100,/0/default.jpg");
    assert_eq!(huge.status, 501, "refused before decoding: {}", huge.text());
    assert!(s.alive());
    assert_eq!(s.get("/health").status, 200);
    let peak = s.peak_rss();
    assert!(peak < 1 << 30, "peak RSS {peak} bytes");
    eprintln!(
        "hostile files: {} requests, peak RSS {} MiB\n{}",
        report.len(),
        peak >> 20,
        report.join("\n")
    );
}

/// Inputs the fuzzers found (tests/fuzz-regressions/<target>/), kept as regression tests.
#[test]
fn fuzz_regressions_decode_to_an_error_or_a_real_image() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions/decode");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("regressions").flatten() {
        let bytes = std::fs::read(entry.path()).expect("read");
        if let Ok(img) = iiifd::internals::decode_bytes(&bytes, 64 << 20) {
            assert!(
                img.width() > 0 && img.height() > 0,
                "{}",
                entry.path().display()
            );
        }
        n += 1;
    }
    assert!(n >= 1);
}

/// A file whose header is sound and whose data is not (a PNG cut in its pixel data): info.json is
/// answered from the header, but once a render has decoded the file and found it corrupt, info.json
/// answers the same 500 as its images, instead of promising an image that never comes.
#[test]
fn a_source_found_corrupt_is_refused_by_info_json_too() {
    let server = Server::start();
    let img: RgbImage = ImageBuffer::from_fn(300, 200, |x, y| Rgb([x as u8, y as u8, 7]));
    let png = encode(&img, ImageFormat::Png);
    std::fs::write(server.images.join("cut.png"), &png[..png.len() / 2]).expect("write");
    assert_eq!(server.get("/iiif/3/cut/info.json").status, 200);
    let image = server.get("/iiif/3/cut/full/max/0/default.png");
    assert_eq!(image.status, 500, "{}", image.text());
    assert!(
        image.text().contains("could not be decoded"),
        "{}",
        image.text()
    );
    let info = server.get("/iiif/3/cut/info.json");
    assert_eq!(info.status, 500, "{}", info.text());
    assert_eq!(
        server.get("/iiif/3/cut/0,0,10,10/max/0/default.jpg").status,
        500
    );
    // A new version of the file is judged afresh.
    std::fs::write(server.images.join("cut.png"), &png).expect("write");
    assert_eq!(server.get("/iiif/3/cut/info.json").status, 200);
    assert_eq!(server.get("/iiif/3/cut/full/max/0/default.png").status, 200);
}
