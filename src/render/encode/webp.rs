//! WebP output, lossy (libwebp), like the JPEG it usually replaces: lossless WebP of a
//! photographic tile is several times larger.

use crate::render::{RenderError, Result};
use image::DynamicImage;

/// Encode as lossy WebP at `quality` (1-100), keeping alpha when there is any.
pub(crate) fn encode(img: &DynamicImage, quality: u8) -> Result<Vec<u8>> {
    let q = f32::from(quality);
    let (w, h) = (img.width(), img.height());
    let encoded = if img.color().has_alpha() {
        let px = img.to_rgba8();
        webp::Encoder::from_rgba(px.as_raw(), w, h).encode_simple(false, q)
    } else {
        let px = img.to_rgb8();
        webp::Encoder::from_rgb(px.as_raw(), w, h).encode_simple(false, q)
    };
    encoded
        .map(|m| m.to_vec())
        .map_err(|e| RenderError::Encode {
            format: "webp",
            reason: format!("{e:?}"),
        })
}
