//! JPEG output through jpeg-encoder (pure Rust, AVX2 chosen at run time): baseline, 4:2:0 for
//! colour as every IIIF server does, or 4:4:4 for intermediates decoded again (tiled copies). The
//! same bytes whatever tools the server was built with.

use crate::render::{RenderError, Result};
use image::DynamicImage;

/// Encode 8-bit gray or RGB as a baseline JPEG (4:2:0 for colour, as every IIIF server does), with
/// `icc` in `APP2` segments when given.
pub(crate) fn encode(img: &DynamicImage, quality: u8, icc: Option<&[u8]>) -> Result<Vec<u8>> {
    encode_with(img, quality, jpeg_encoder::SamplingFactor::F_2_2, icc)
}

/// [`encode`] keeping full chroma resolution (4:4:4), for intermediates that are decoded again.
pub(crate) fn encode_full_chroma(img: &DynamicImage, quality: u8) -> Result<Vec<u8>> {
    encode_with(img, quality, jpeg_encoder::SamplingFactor::F_1_1, None)
}

pub(crate) fn encode_with(
    img: &DynamicImage,
    quality: u8,
    sampling: jpeg_encoder::SamplingFactor,
    icc: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let (w, h) = (img.width(), img.height());
    let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err(RenderError::Encode {
            format: "jpg",
            reason: format!("{w}x{h} is larger than a JPEG can be (65535 px a side)"),
        });
    };
    let mut out = Vec::with_capacity((w as usize * h as usize / 4).max(1024));
    let mut enc = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    enc.set_sampling_factor(sampling);
    if let Some(icc) = icc {
        enc.add_icc_profile(icc).map_err(|e| RenderError::Encode {
            format: "jpg",
            reason: format!("embedding the ICC profile: {e}"),
        })?;
    }
    let result = match img {
        DynamicImage::ImageLuma8(buf) => {
            enc.encode(buf.as_raw(), w16, h16, jpeg_encoder::ColorType::Luma)
        }
        DynamicImage::ImageRgb8(buf) => {
            enc.encode(buf.as_raw(), w16, h16, jpeg_encoder::ColorType::Rgb)
        }
        other => {
            let rgb = other.to_rgb8();
            enc.encode(rgb.as_raw(), w16, h16, jpeg_encoder::ColorType::Rgb)
        }
    };
    result.map_err(|e| RenderError::Encode {
        format: "jpg",
        reason: e.to_string(),
    })?;
    Ok(out)
}
