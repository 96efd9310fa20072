//! TIFF output (uncompressed, the image crate's writer).

use crate::render::{RenderError, Result};
use image::codecs::tiff::TiffEncoder;
use image::{DynamicImage, ImageEncoder};
use std::io::Cursor;

/// Encode as TIFF (gray+alpha is written as RGBA, which every TIFF reader understands), with `icc` in
/// tag 34675 when given.
pub(crate) fn encode(img: DynamicImage, icc: Option<&[u8]>) -> Result<Vec<u8>> {
    let img = match img {
        DynamicImage::ImageLumaA8(_) => DynamicImage::ImageRgba8(img.to_rgba8()),
        other => other,
    };
    let err = |reason: String| RenderError::Encode {
        format: "tif",
        reason,
    };
    let mut out = Cursor::new(Vec::new());
    let mut enc = TiffEncoder::new(&mut out);
    if let Some(icc) = icc {
        enc.set_icc_profile(icc.to_vec())
            .map_err(|e| err(e.to_string()))?;
    }
    img.write_with_encoder(enc)
        .map_err(|e| err(e.to_string()))?;
    Ok(out.into_inner())
}
