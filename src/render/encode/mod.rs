//! Encoding, one file per output format. Adding a format is its file and its line in [`encode`] and
//! [`EncodeSettings::describe`] (and the format in `iiif::Format`, the spec's list).

#[cfg(feature = "avif")]
mod avif;
mod gif;
mod jp2;
pub(crate) mod jpeg;
#[cfg(feature = "jxl")]
mod jxl;
mod png;
mod tif;
mod webp;

use super::color::ColorMode;
use super::ops::flatten;
use super::{RenderError, Result};
use crate::config::TilePassthrough;
use crate::iiif::Format;
use image::DynamicImage;

/// Encoder settings. Part of every derivative key: changing them changes the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EncodeSettings {
    /// JPEG quality, 1-100.
    pub(crate) jpeg_quality: u8,
    /// Lossy WebP quality, 1-100.
    pub(crate) webp_quality: u8,
    /// Send a stored JPEG tile as it is when a request is exactly that tile.
    pub(crate) tile_passthrough: TilePassthrough,
    /// What happens to sources with an ICC profile (`render.color`).
    pub(crate) color: ColorMode,
}

impl Default for EncodeSettings {
    fn default() -> Self {
        EncodeSettings {
            jpeg_quality: 85,
            webp_quality: 80,
            tile_passthrough: TilePassthrough::Auto,
            color: ColorMode::Srgb,
        }
    }
}

impl EncodeSettings {
    /// A stable description of how `format` is encoded, for the derivative key. Includes the encoder
    /// generation so that a change of encoder library retires old derivatives.
    pub(crate) fn describe(&self, format: Format) -> String {
        let encoder = match format {
            Format::Jpg => format!(
                "jpeg-encoder-v1 q={} 420 passthrough={}",
                self.jpeg_quality,
                self.tile_passthrough.name()
            ),
            Format::Png => "image-png-v1 fast".into(),
            Format::Webp => format!("libwebp-v1 q={}", self.webp_quality),
            Format::Gif => "image-gif-v2 speed=10".into(),
            Format::Tif => "image-tiff-v1".into(),
            Format::Jp2 => format!("openjpeg-v1 q={}", self.jpeg_quality),
            Format::Avif => format!("ravif-v1 q={}", self.jpeg_quality),
            Format::Jxl => "zune-jpegxl-v1 lossless".into(),
            Format::Pdf => "unsupported".into(),
        };
        format!("{encoder} color={}", self.color.name())
    }
}

/// Encode pixels (their quality already applied) as `format`, with the ICC profile `icc` embedded
/// when given (gif has no place for one). Formats without transparency get any alpha composited onto
/// white.
pub(crate) fn encode(
    img: DynamicImage,
    format: Format,
    settings: &EncodeSettings,
    icc: Option<&[u8]>,
) -> Result<Vec<u8>> {
    match format {
        Format::Jpg => jpeg::encode(&flatten(img), settings.jpeg_quality, icc),
        Format::Png => png::encode(&img, icc),
        Format::Webp => webp::encode(&img, settings.webp_quality, icc),
        Format::Gif => gif::encode(img),
        Format::Tif => tif::encode(img, icc),
        Format::Jp2 => jp2::encode(&flatten(img), settings.jpeg_quality, icc),
        #[cfg(feature = "avif")]
        Format::Avif => avif::encode(&img, settings.jpeg_quality),
        #[cfg(feature = "jxl")]
        Format::Jxl => jxl::encode(&img),
        #[allow(unreachable_patterns)] // every format when avif and jxl are built in
        Format::Pdf | Format::Avif | Format::Jxl => Err(RenderError::Unsupported(format!(
            "format {format} cannot be rendered"
        ))),
    }
}

/// Encode with a quality and an encoder effort other than the settings' (benches/formats.rs, which
/// chose the defaults): `quality` is jpg's, webp's, jp2's and avif's; `effort` is avif's speed
/// (1-10) or jxl's effort (0-127), ignored by the others.
pub(crate) fn encode_tuned(
    img: DynamicImage,
    format: Format,
    quality: u8,
    effort: Option<u8>,
) -> Result<Vec<u8>> {
    let settings = EncodeSettings {
        jpeg_quality: quality,
        webp_quality: quality,
        ..EncodeSettings::default()
    };
    match (format, effort) {
        #[cfg(feature = "avif")]
        (Format::Avif, Some(speed)) => avif::encode_at(&img, quality, speed),
        #[cfg(feature = "jxl")]
        (Format::Jxl, Some(effort)) => jxl::encode_at(&img, effort),
        _ => encode(img, format, &settings, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rendered_format_encodes_and_decodes_back() {
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(33, 17, |x, y| {
            image::Rgba([
                (x * 7) as u8,
                (y * 11) as u8,
                128,
                if x < 3 { 0 } else { 255 },
            ])
        }));
        for &format in Format::RENDERED {
            let bytes =
                encode(img.clone(), format, &EncodeSettings::default(), None).expect("encodes");
            if matches!(format, Format::Avif | Format::Jxl | Format::Jp2) {
                continue; // the image crate reads none of them: checked in their own modules
            }
            let back = image::load_from_memory(&bytes).expect("decodes");
            assert_eq!((back.width(), back.height()), (33, 17), "{format}");
        }
        assert!(encode(img, Format::Pdf, &EncodeSettings::default(), None).is_err());
    }
}
