//! What each output format costs per 512 px tile: bytes, milliseconds and PSNR against the source
//! pixels, beside JPEG at the default quality, for the settings iiifd could use. The defaults of
//! `src/render/encode/{jp2,avif,jxl}.rs` were chosen from this table (the README's format table).
//!
//! `cargo bench --bench formats` (release; under `cargo test` only a quick check). The source is `FORMATS_SOURCE`, else the peer
//! benchmark's photograph (`/tmp/iiif-bench/corpus/source.jpg`), else examples/images/chart.jpg.
//! avif's PSNR needs `avifdec` (Debian's libavif-bin); without it the column says `-`.

use iiifd::iiif::Format;
use iiifd::internals::{decode_bytes, encode_tuned};
use image::DynamicImage;
use std::path::PathBuf;
use std::time::Instant;

fn source() -> PathBuf {
    if let Some(p) = std::env::var_os("FORMATS_SOURCE") {
        return p.into();
    }
    let peer = PathBuf::from("/tmp/iiif-bench/corpus/source.jpg");
    if peer.exists() {
        return peer;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/images/chart.jpg")
}

fn psnr(a: &DynamicImage, b: &DynamicImage) -> f64 {
    let (a, b) = (a.to_rgb8(), b.to_rgb8());
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// The format's own decoder, or a reference one where the library has none.
fn decode(format: Format, bytes: &[u8]) -> Option<DynamicImage> {
    match format {
        Format::Avif => {
            let dir = tempfile::tempdir().ok()?;
            let (from, to) = (dir.path().join("t.avif"), dir.path().join("t.png"));
            std::fs::write(&from, bytes).ok()?;
            let ok = std::process::Command::new("avifdec")
                .arg(&from)
                .arg(&to)
                .stdout(std::process::Stdio::null())
                .status()
                .ok()?
                .success();
            ok.then(|| image::open(&to).ok()).flatten()
        }
        Format::Jxl => {
            let img = jxl_oxide::JxlImage::builder()
                .read(std::io::Cursor::new(bytes))
                .ok()?;
            let render = img.render_frame(0).ok()?;
            let fb = render.image_all_channels();
            let px = fb.buf().iter().map(|v| (v * 255.0).round() as u8).collect();
            image::RgbImage::from_raw(fb.width() as u32, fb.height() as u32, px)
                .map(DynamicImage::ImageRgb8)
        }
        _ => decode_bytes(bytes, 1 << 30).ok(),
    }
}

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: a quick check that every
    // format encodes and decodes back at its size, not the measurement.
    if !std::env::args().any(|a| a == "--bench") {
        let tile = image::open(source())
            .expect("the source image opens")
            .crop_imm(0, 0, 64, 48);
        for format in [
            Format::Jpg,
            Format::Webp,
            Format::Png,
            Format::Jp2,
            Format::Avif,
            Format::Jxl,
        ] {
            let Ok(bytes) = encode_tuned(tile.clone(), format, 85, None) else {
                continue; // not built in
            };
            if let Some(back) = decode(format, &bytes) {
                assert_eq!((back.width(), back.height()), (64, 48), "{format}");
            }
        }
        println!(
            "formats: every built-in format encodes (run `cargo bench --bench formats` to measure)"
        );
        return;
    }
    let path = source();
    let img = image::open(&path).expect("the source image opens");
    let (w, h) = (img.width(), img.height());
    // Four full-resolution tiles from across the picture (a viewer's deepest zoom).
    let tiles: Vec<DynamicImage> = [(0.3, 0.3), (0.6, 0.4), (0.4, 0.7), (0.7, 0.6)]
        .iter()
        .map(|(fx, fy)| {
            let (x, y) = ((f64::from(w) * fx) as u32, (f64::from(h) * fy) as u32);
            img.crop_imm(x.min(w - 512), y.min(h - 512), 512, 512)
        })
        .collect();
    println!(
        "source: {} ({w}x{h}), 4 tiles of 512x512, median of 3 encodes each",
        path.display()
    );
    println!(
        "{:<6} {:<14} {:>9} {:>9} {:>8}",
        "format", "setting", "bytes", "ms", "PSNR dB"
    );
    let cases: &[(Format, u8, Option<u8>, &str)] = &[
        (Format::Jpg, 85, None, "q85 (default)"),
        (Format::Webp, 80, None, "q80 (default)"),
        (Format::Png, 0, None, "lossless"),
        (Format::Jp2, 85, None, "q85 (default)"),
        (Format::Jp2, 90, None, "q90"),
        (Format::Jp2, 80, None, "q80"),
        (Format::Avif, 85, Some(10), "q85 speed 10"),
        (Format::Avif, 85, Some(8), "q85 speed 8"),
        (Format::Avif, 85, Some(6), "q85 speed 6"),
        (Format::Avif, 70, Some(10), "q70 speed 10"),
        (Format::Avif, 97, Some(10), "q97 speed 10"),
        (Format::Jxl, 0, Some(2), "effort 2"),
        (Format::Jxl, 0, Some(5), "effort 5"),
        (Format::Jxl, 0, Some(20), "effort 20"),
    ];
    for &(format, quality, effort, label) in cases {
        let (mut bytes, mut ms, mut db, mut decoded) = (0usize, Vec::new(), 0.0, 0);
        for tile in &tiles {
            let mut times = Vec::new();
            let mut out = Vec::new();
            for _ in 0..3 {
                let t = Instant::now();
                out = match encode_tuned(tile.clone(), format, quality, effort) {
                    Ok(out) => out,
                    Err(e) => {
                        println!("{format:<6} {label:<14} not built in: {e}");
                        return;
                    }
                };
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            times.sort_by(f64::total_cmp);
            ms.push(times[1]);
            bytes += out.len();
            if let Some(back) = decode(format, &out) {
                db += psnr(tile, &back).min(99.0);
                decoded += 1;
            }
        }
        ms.sort_by(f64::total_cmp);
        let psnr = if decoded == tiles.len() {
            format!("{:.2}", db / decoded as f64)
        } else {
            "-".into()
        };
        println!(
            "{:<6} {:<14} {:>9} {:>9.1} {:>8}",
            format.extension(),
            label,
            bytes / tiles.len(),
            (ms[1] + ms[2]) / 2.0,
            psnr
        );
    }
}
