//! Encoding, one file per output format. Adding a format is its file and its line in [`encode`] and
//! [`EncodeSettings::describe`] (and the format in `iiif::Format`, the spec's list).

mod gif;
pub(crate) mod jpeg;
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
            Format::Jp2 | Format::Pdf => "unsupported".into(),
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
        Format::Jp2 | Format::Pdf => Err(RenderError::Unsupported(format!(
            "format {format} cannot be rendered"
        ))),
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
        for format in Format::RENDERED {
            let bytes =
                encode(img.clone(), format, &EncodeSettings::default(), None).expect("encodes");
            let back = image::load_from_memory(&bytes).expect("decodes");
            assert_eq!((back.width(), back.height()), (33, 17), "{format}");
        }
        assert!(encode(img, Format::Pdf, &EncodeSettings::default(), None).is_err());
    }
}
