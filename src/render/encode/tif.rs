//! TIFF output (uncompressed, the image crate's writer).

use crate::render::{RenderError, Result};
use image::{DynamicImage, ImageFormat};
use std::io::Cursor;

/// Encode as TIFF (gray+alpha is written as RGBA, which every TIFF reader understands).
pub(crate) fn encode(img: DynamicImage) -> Result<Vec<u8>> {
    let img = match img {
        DynamicImage::ImageLumaA8(_) => DynamicImage::ImageRgba8(img.to_rgba8()),
        other => other,
    };
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Tiff)
        .map_err(|e| RenderError::Encode {
            format: "tif",
            reason: e.to_string(),
        })?;
    Ok(out.into_inner())
}
