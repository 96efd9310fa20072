//! JPEG XL output (feature `jxl`) through zune-jpegxl: pure Rust and lossless (a port of libjxl's
//! fast lossless mode). libjxl's bindings need cmake and the pure-Rust lossy encoder is AGPL, so
//! lossless it is: a derivative that is exact, several times lighter than PNG is not, and decodes
//! in every JPEG XL decoder. No profile is embedded, as for gif and avif.

use crate::render::{RenderError, Result};
use image::DynamicImage;
use zune_core::bit_depth::BitDepth;
use zune_core::colorspace::ColorSpace;
use zune_core::options::EncoderOptions;
use zune_jpegxl::JxlSimpleEncoder;

/// zune-jpegxl's effort (0-127): how many rows it samples to choose its entropy code. 2 is as
/// small as the default 5 on photographs within a per cent and faster (benches/formats.rs).
const EFFORT: u8 = 2;

/// Encode losslessly as JPEG XL: gray, gray and alpha, RGB or RGBA as the pixels are.
pub(crate) fn encode(img: &DynamicImage) -> Result<Vec<u8>> {
    encode_at(img, EFFORT)
}

/// [`encode`] at another effort (for benches/formats.rs).
pub(crate) fn encode_at(img: &DynamicImage, effort: u8) -> Result<Vec<u8>> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    // zune-jpegxl refuses a side of one pixel; so does iiifd, as a format it cannot write (501),
    // rather than as a failure.
    if w < 2 || h < 2 {
        return Err(RenderError::Unsupported(format!(
            "jxl output of {w}x{h}: the encoder needs at least 2 pixels a side"
        )));
    }
    let (space, px) = match (img.color().has_color(), img.color().has_alpha()) {
        (false, false) => (ColorSpace::Luma, img.to_luma8().into_raw()),
        (false, true) => (ColorSpace::LumaA, img.to_luma_alpha8().into_raw()),
        (true, false) => (ColorSpace::RGB, img.to_rgb8().into_raw()),
        (true, true) => (ColorSpace::RGBA, img.to_rgba8().into_raw()),
    };
    let options = EncoderOptions::new(w, h, space, BitDepth::Eight)
        .set_effort(effort)
        .set_num_threads(1);
    let mut out = Vec::with_capacity(px.len() / 2);
    JxlSimpleEncoder::new(&px, options)
        .encode(&mut out)
        .map_err(|e| RenderError::Encode {
            format: "jxl",
            reason: format!("{e:?}"),
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoded by jxl-oxide, the reference decoder of the Rust ecosystem, not by anything of ours.
    fn decode(bytes: &[u8]) -> (u32, u32, usize, Vec<f32>) {
        let image = jxl_oxide::JxlImage::builder()
            .read(std::io::Cursor::new(bytes))
            .expect("jxl-oxide reads it");
        let render = image.render_frame(0).expect("renders");
        let fb = render.image_all_channels();
        (
            fb.width() as u32,
            fb.height() as u32,
            fb.channels(),
            fb.buf().to_vec(),
        )
    }

    #[test]
    fn a_one_pixel_side_is_refused_as_unsupported_and_two_encode() {
        for (w, h) in [(1, 1), (1, 2), (2, 1), (1, 40)] {
            let img = DynamicImage::new_rgb8(w, h);
            assert!(
                matches!(encode(&img), Err(RenderError::Unsupported(_))),
                "{w}x{h}"
            );
        }
        let (w, h, _, _) = decode(&encode(&DynamicImage::new_rgb8(2, 2)).expect("encodes"));
        assert_eq!((w, h), (2, 2));
    }

    #[test]
    fn lossless_round_trip_through_a_reference_decoder() {
        let rgba = image::RgbaImage::from_fn(67, 31, |x, y| {
            image::Rgba([(x * 3) as u8, (y * 7) as u8, (x ^ y) as u8, (x * y) as u8])
        });
        let cases = [
            DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(rgba.clone()).to_rgb8()),
            DynamicImage::ImageRgba8(rgba.clone()),
            DynamicImage::ImageLuma8(DynamicImage::ImageRgba8(rgba).to_luma8()),
        ];
        for img in cases {
            let bytes = encode(&img).expect("encodes");
            let (w, h, channels, samples) = decode(&bytes);
            assert_eq!((w, h), (67, 31));
            let want: Vec<u8> = match channels {
                1 => img.to_luma8().into_raw(),
                3 => img.to_rgb8().into_raw(),
                4 => img.to_rgba8().into_raw(),
                c => panic!("{c} channels"),
            };
            assert_eq!(channels, usize::from(img.color().channel_count()));
            let back: Vec<u8> = samples.iter().map(|v| (v * 255.0).round() as u8).collect();
            assert_eq!(back, want);
        }
    }
}
