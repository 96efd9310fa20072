//! AVIF output (feature `avif`) through ravif and rav1e, pure Rust without rav1e's assembly (the
//! build needs no nasm). One thread per encode: the render pool already runs one encode per core.
//!
//! AV1 is slow to encode: the speed and quality below were chosen with `benches/formats.rs` (the
//! README's format table gives bytes and milliseconds per 512 px tile beside JPEG). A profile is not
//! embedded (ravif writes sRGB's colour description); `render.color = "srgb"` converts to it.

use crate::render::{RenderError, Result};
use image::DynamicImage;
use ravif::{Encoder, Img, RGB8, RGBA8};

/// ravif's speed, 1 (slowest) to 10: 10 halves the time of 8 for a few per cent more bytes.
const SPEED: u8 = 10;

/// The AVIF quality `jpeg_quality` stands for: ravif's scale is meant to look like JPEG's at the
/// same number, a little lower keeps the bytes of the JPEG (benches/formats.rs).
fn quality(jpeg_quality: u8) -> f32 {
    f32::from(jpeg_quality.clamp(1, 100)) * 0.85
}

/// Encode as AVIF, keeping alpha when there is any.
pub(crate) fn encode(img: &DynamicImage, jpeg_quality: u8) -> Result<Vec<u8>> {
    encode_at(img, jpeg_quality, SPEED)
}

/// [`encode`] at another speed (for benches/formats.rs).
pub(crate) fn encode_at(img: &DynamicImage, jpeg_quality: u8, speed: u8) -> Result<Vec<u8>> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let encoder = Encoder::new()
        .with_quality(quality(jpeg_quality))
        .with_alpha_quality(quality(jpeg_quality))
        .with_speed(speed.clamp(1, 10))
        .with_num_threads(Some(1));
    let encoded = if img.color().has_alpha() {
        let px: Vec<RGBA8> = img
            .to_rgba8()
            .as_raw()
            .chunks_exact(4)
            .map(|p| RGBA8::new(p[0], p[1], p[2], p[3]))
            .collect();
        encoder.encode_rgba(Img::new(px.as_slice(), w, h))
    } else {
        let px: Vec<RGB8> = img
            .to_rgb8()
            .as_raw()
            .chunks_exact(3)
            .map(|p| RGB8::new(p[0], p[1], p[2]))
            .collect();
        encoder.encode_rgb(Img::new(px.as_slice(), w, h))
    };
    encoded
        .map(|e| e.avif_file)
        .map_err(|e| RenderError::Encode {
            format: "avif",
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_avif_container_of_the_right_size() {
        for (w, h, alpha) in [(64, 48, false), (17, 9, true), (1, 1, false)] {
            let img = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(w, h, |x, y| {
                image::Rgba([
                    (x * 3) as u8,
                    (y * 5) as u8,
                    90,
                    if alpha { 128 } else { 255 },
                ])
            }));
            let img = if alpha {
                img
            } else {
                DynamicImage::ImageRgb8(img.to_rgb8())
            };
            let bytes = encode(&img, 85).expect("encodes");
            // An ISO-BMFF `ftyp` box with the `avif` brand, then the image's `ispe` size.
            assert_eq!(&bytes[4..12], b"ftypavif");
            let ispe = bytes
                .windows(4)
                .position(|b| b == b"ispe")
                .expect("ispe box");
            let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4"));
            assert_eq!((be(ispe + 8), be(ispe + 12)), (w, h));
        }
    }
}
