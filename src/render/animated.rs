//! Animated GIF sources asked for as a GIF of the whole image: every frame, with its delay, goes
//! through the request's resize, rotation, mirror and quality, as Flask-IIIF (which iiifd
//! replaces) kept them animated. Any other region or format is rendered from the first frame.
//!
//! The frames decoded count against the decode budget together (each a full RGBA canvas), so a
//! GIF of thousands of frames is refused as a huge still image is.

use crate::iiif::canonical::{CanonicalRequest, Rect};
use crate::render::{ops, RenderError, Result};
use crate::source::ObjectReader;
use image::codecs::gif::{GifDecoder, GifEncoder, Repeat};
use image::{AnimationDecoder, DynamicImage, Frame};
use std::sync::Arc;

/// The GIF `req` asks for, every frame kept; `None` when the source has one frame or `req` is
/// not the whole image (the still route renders those).
pub(crate) fn render(
    reader: &dyn ObjectReader,
    req: &CanonicalRequest,
    max_decode_bytes: u64,
) -> Result<Option<Vec<u8>>> {
    let undecodable = |e: image::ImageError| RenderError::Undecodable(format!("GIF: {e}"));
    let decoder = GifDecoder::new(std::io::BufReader::new(reader.stream())).map_err(undecodable)?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let whole = Rect { x: 0, y: 0, w, h };
    if req.region() != whole {
        return Ok(None);
    }
    let canvas = u64::from(w) * u64::from(h) * 4;
    let mut frames = Vec::new();
    for frame in decoder.into_frames() {
        let frame = frame.map_err(undecodable)?;
        let decoded = (frames.len() as u64 + 1).saturating_mul(canvas);
        if decoded > max_decode_bytes {
            return Err(RenderError::TooLarge(format!(
                "{} frames of {w}x{h} would exceed render.max_decode_bytes ({max_decode_bytes})",
                frames.len() + 1
            )));
        }
        frames.push(frame);
    }
    if frames.len() < 2 {
        return Ok(None);
    }
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut out, 10);
        let encode_error = |e: image::ImageError| RenderError::Encode {
            format: "gif",
            reason: e.to_string(),
        };
        encoder.set_repeat(Repeat::Infinite).map_err(encode_error)?;
        for frame in frames {
            let delay = frame.delay();
            let img = Arc::new(DynamicImage::ImageRgba8(frame.into_buffer()));
            let img = ops::apply(img, whole, req);
            let img = ops::quality(img, req.quality(), true);
            encoder
                .encode_frame(Frame::from_parts(img.to_rgba8(), 0, 0, delay))
                .map_err(encode_error)?;
        }
    }
    Ok(Some(out))
}
