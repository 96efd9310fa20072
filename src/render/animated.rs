//! Animated GIF and WebP sources asked for whole as a `gif` or a `webp`: every frame, with its
//! delay, goes through the request's resize, rotation, mirror and quality, as Flask-IIIF (which
//! iiifd replaces) kept them animated; the source's loop count is kept. Any other region or format
//! is rendered from the first frame.
//!
//! The frames decoded count against the decode budget together (each a full RGBA canvas), so an
//! animation of thousands of frames is refused as a huge still image is.

use crate::iiif::canonical::{CanonicalRequest, Rect};
use crate::iiif::Format;
use crate::render::{ops, RenderError, Result};
use crate::source::{ObjectReader, SourceKind};
use image::codecs::gif::{GifDecoder, GifEncoder, Repeat};
use image::codecs::webp::WebPDecoder;
use image::metadata::LoopCount;
use image::{AnimationDecoder, DynamicImage, Frame, Frames, ImageDecoder, RgbaImage};
use std::io::BufReader;
use std::sync::Arc;

/// Decoded frames, each with its delay in milliseconds, and how often the animation plays.
struct Animation {
    frames: Vec<(RgbaImage, u32)>,
    loops: LoopCount,
}

/// The animation `req` asks for, every frame kept; `None` when the source has one frame, or `req`
/// is not the whole image as a gif or webp (the still route renders those).
pub(crate) fn render(
    reader: &dyn ObjectReader,
    kind: SourceKind,
    req: &CanonicalRequest,
    webp_quality: u8,
    max_decode_bytes: u64,
) -> Result<Option<Vec<u8>>> {
    // Checked before the source is opened: a tile of a still GIF or WebP (the common case) costs
    // nothing here.
    if !matches!(req.format(), Format::Gif | Format::Webp) || !req.is_full_region() {
        return Ok(None);
    }
    let Some(animation) = decode(reader, kind, req, max_decode_bytes)? else {
        return Ok(None);
    };
    match req.format() {
        Format::Webp => encode_webp(animation, webp_quality).map(Some),
        _ => encode_gif(animation).map(Some),
    }
}

/// Every frame of the source, transformed as `req` says, with its delay in milliseconds.
fn decode(
    reader: &dyn ObjectReader,
    kind: SourceKind,
    req: &CanonicalRequest,
    max: u64,
) -> Result<Option<Animation>> {
    let undecodable = |e: image::ImageError| RenderError::Undecodable(format!("{kind:?}: {e}"));
    let stream = || BufReader::new(reader.stream());
    // The decoders are generic over their reader; what leaves this match is not.
    let (size, loops, frames): ((u32, u32), LoopCount, Frames<'_>) = match kind {
        SourceKind::Gif => {
            let d = GifDecoder::new(stream()).map_err(undecodable)?;
            (d.dimensions(), d.loop_count(), d.into_frames())
        }
        SourceKind::Webp => {
            let d = WebPDecoder::new(stream()).map_err(undecodable)?;
            if !d.has_animation() {
                return Ok(None);
            }
            (d.dimensions(), d.loop_count(), d.into_frames())
        }
        _ => return Ok(None),
    };
    let (w, h) = size;
    let whole = Rect { x: 0, y: 0, w, h };
    if req.region() != whole {
        return Ok(None);
    }
    let canvas = u64::from(w) * u64::from(h) * 4;
    let mut decoded = Vec::new();
    for frame in frames {
        let frame = frame.map_err(undecodable)?;
        if (decoded.len() as u64 + 1).saturating_mul(canvas) > max {
            return Err(RenderError::TooLarge(format!(
                "{} frames of {w}x{h} would exceed render.max_decode_bytes ({max})",
                decoded.len() + 1
            )));
        }
        decoded.push(frame);
    }
    if decoded.len() < 2 {
        return Ok(None);
    }
    let frames = decoded
        .into_iter()
        .map(|frame| {
            let (num, den) = frame.delay().numer_denom_ms();
            let ms = num / den.max(1);
            let img = Arc::new(DynamicImage::ImageRgba8(frame.into_buffer()));
            let img = ops::apply(img, whole, req);
            (ops::quality(img, req.quality(), true).to_rgba8(), ms)
        })
        .collect();
    Ok(Some(Animation { frames, loops }))
}

fn encode_gif(animation: Animation) -> Result<Vec<u8>> {
    let encode_error = |e: image::ImageError| RenderError::Encode {
        format: "gif",
        reason: e.to_string(),
    };
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut out, 10);
        let repeat = match animation.loops {
            LoopCount::Infinite => Repeat::Infinite,
            LoopCount::Finite(n) => Repeat::Finite(u16::try_from(n.get()).unwrap_or(u16::MAX)),
        };
        encoder.set_repeat(repeat).map_err(encode_error)?;
        for (img, ms) in animation.frames {
            let delay = image::Delay::from_numer_denom_ms(ms, 1);
            encoder
                .encode_frame(Frame::from_parts(img, 0, 0, delay))
                .map_err(encode_error)?;
        }
    }
    Ok(out)
}

fn encode_webp(animation: Animation, quality: u8) -> Result<Vec<u8>> {
    let encode_error = |reason: String| RenderError::Encode {
        format: "webp",
        reason,
    };
    let Some((first, _)) = animation.frames.first() else {
        return Err(encode_error("no frames".into()));
    };
    let (w, h) = first.dimensions();
    let mut config =
        webp::WebPConfig::new().map_err(|()| encode_error("libwebp's configuration".into()))?;
    config.lossless = 0;
    config.quality = f32::from(quality);
    let mut encoder = webp::AnimEncoder::new(w, h, &config);
    encoder.set_loop_count(match animation.loops {
        LoopCount::Infinite => 0,
        LoopCount::Finite(n) => i32::try_from(n.get()).unwrap_or(i32::MAX),
    });
    // libwebp takes each frame's start time.
    let mut at = 0i32;
    for (img, ms) in &animation.frames {
        encoder.add_frame(webp::AnimFrame::from_rgba(img.as_raw(), w, h, at));
        at = at.saturating_add(i32::try_from(*ms).unwrap_or(i32::MAX));
    }
    let mut out = encoder
        .try_encode()
        .map(|m| m.to_vec())
        .map_err(|e| encode_error(format!("{e:?}")))?;
    // The binding ends the animation at time 0, so libwebp guesses the last frame's duration:
    // set it to what is left of the total.
    let total: u32 = animation.frames.iter().map(|(_, ms)| ms).sum();
    set_last_duration(&mut out, total);
    Ok(out)
}

/// Give the last frame (`ANMF` chunk) of an animated WebP the duration that makes the frames'
/// durations add up to `total` ms. libwebp merges a frame identical to the one before into it,
/// adding the durations, so the frames are counted from the file, not the source.
fn set_last_duration(webp: &mut [u8], total: u32) {
    let mut at = 12;
    let mut durations = 0u32;
    let mut last = None;
    while let Some(head) = webp.get(at..at + 8) {
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if &head[..4] == b"ANMF" && len >= 16 && webp.len() >= at + 8 + 16 {
            let d = at + 8 + 12;
            let ms = u32::from_le_bytes([webp[d], webp[d + 1], webp[d + 2], 0]);
            durations += ms;
            last = Some((d, ms));
        }
        at += 8 + len + len % 2;
    }
    if let Some((d, ms)) = last {
        let left = total.saturating_sub(durations - ms).min(0xFF_FFFF);
        webp[d..d + 3].copy_from_slice(&left.to_le_bytes()[..3]);
    }
}
