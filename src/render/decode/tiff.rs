//! Pyramidal TIFF: the smallest level that still covers the output, and only its tiles that meet
//! the region (JPEG tiles with shared tables, or raw tiles). A request that is exactly one stored
//! JPEG tile, unchanged, is answered with the tile's bytes.

use crate::config::TilePassthrough;
use crate::formats::orientation::Orientation;
use crate::formats::tiff;
use crate::iiif::canonical::{CanonicalRequest, Rect};
use crate::render::color::ColorPlan;
use crate::render::{finish, plan, EncodeSettings, RenderError, Result};
use crate::source::ObjectReader;
use image::DynamicImage;
use std::sync::Arc;

/// Render `req` from `pyramid`: pass a stored tile through (when `passes(level, tile)` says its
/// bytes may be sent as they are), or decode the tiles under the region at the chosen level and
/// finish the image.
pub(crate) fn render(
    file: &dyn ObjectReader,
    pyramid: &tiff::Pyramid,
    req: &CanonicalRequest,
    settings: &EncodeSettings,
    max: u64,
    passes: &dyn Fn(usize, &[u8]) -> bool,
) -> Result<Vec<u8>> {
    let sizes: Vec<(u32, u32)> = pyramid.levels.iter().map(|l| (l.width, l.height)).collect();
    // The request is in the displayed image; the levels hold the stored one. Turned files (the
    // Orientation tag) are read in stored coordinates and turned after.
    let o = pyramid.orientation;
    let (index, rect) = match sizes.first() {
        Some(&(sw, sh)) if o != Orientation::NORMAL => {
            let (dw, dh) = o.display_size(sw, sh);
            let out = if o.swaps_axes() {
                (req.height(), req.width())
            } else {
                (req.width(), req.height())
            };
            plan::pyramid_level_for(&sizes, o.stored_rect(req.region(), dw, dh), out)
        }
        _ => plan::pyramid_level(&sizes, req),
    };
    let Some(level) = pyramid.levels.get(index) else {
        return Err(RenderError::bug("pyramid level out of range"));
    };
    let (tw, th) = (level.tile_width, level.tile_height);
    let color = ColorPlan::new(pyramid.icc.clone(), settings.color);
    // A stored tile's pixels are in the source's colour space and carry no profile: it is sent as
    // it is only when the source needs no colour handling.
    if color.is_keep()
        && o == Orientation::NORMAL
        && level.codec == tiff::TileCodec::Jpeg
        && plan::is_tile_part(req, rect, (tw, th))
    {
        let tile = level.read_tile(file, rect.x / tw, rect.y / th, max)?;
        if settings.tile_passthrough != TilePassthrough::Never
            && plan::is_stored_tile(req, rect, (tw, th))
        {
            // RGB-coded tiles pass only when their own markers say RGB (vips writes the ids 'R',
            // 'G', 'B'); unmarked ones (Aperio) would be shown as YCbCr by browsers, so they are
            // re-encoded.
            let marked =
                !level.rgb_jpeg || super::jpeg::read_info(&tile).is_ok_and(|i| i.marked_rgb);
            if marked && passes(index, &tile) {
                return Ok(tile);
            }
        }
        // Re-encoded from the bytes in hand (one tile, or the image's part of an edge tile):
        // under `auto` in the DCT domain (a fraction of a decode and an encode), else from pixels.
        if settings.tile_passthrough == TilePassthrough::Auto {
            let quality = settings.jpeg_quality;
            if let Some(bytes) =
                super::jpeg::requantize(&tile, (rect.w, rect.h), quality, level.rgb_jpeg)?
            {
                return Ok(bytes);
            }
        }
        let part = Rect {
            x: 0,
            y: 0,
            w: rect.w,
            h: rect.h,
        };
        let img = super::jpeg::decode_coded(&tile, 0, Some(part), max, level.rgb_jpeg)?;
        return finish(Arc::new(img), part, req, settings, &color);
    }
    let img = o.apply(read_tiles(file, level, rect, max)?);
    let whole = Rect {
        x: 0,
        y: 0,
        w: img.width(),
        h: img.height(),
    };
    finish(Arc::new(img), whole, req, settings, &color)
}

/// The pixels of `rect` of a tiled level, decoding each tile that meets it (only the part it needs).
fn read_tiles(
    file: &dyn ObjectReader,
    level: &tiff::Level,
    rect: Rect,
    max: u64,
) -> Result<DynamicImage> {
    let ch = usize::from(level.samples);
    let out_bytes = u64::from(rect.w) * u64::from(rect.h) * ch as u64;
    if out_bytes > max {
        return Err(RenderError::TooLarge(format!(
            "{}x{} pixels would exceed render.max_decode_bytes ({max})",
            rect.w, rect.h
        )));
    }
    let (tw, th) = (level.tile_width, level.tile_height);
    let mut out = vec![0u8; out_bytes as usize];
    let stride = rect.w as usize * ch;
    for row in rect.y / th..(rect.y + rect.h).div_ceil(th) {
        for col in rect.x / tw..(rect.x + rect.w).div_ceil(tw) {
            // The part of this tile inside the region, in tile pixels.
            let (tx, ty) = (col * tw, row * th);
            let ix0 = rect.x.max(tx);
            let iy0 = rect.y.max(ty);
            let ix1 = (rect.x + rect.w).min(tx + tw);
            let iy1 = (rect.y + rect.h).min(ty + th);
            let part = Rect {
                x: ix0 - tx,
                y: iy0 - ty,
                w: ix1 - ix0,
                h: iy1 - iy0,
            };
            let bytes = level.read_tile(file, col, row, max)?;
            let pixels: Vec<u8> =
                match level.codec {
                    tiff::TileCodec::Jpeg => {
                        let img =
                            super::jpeg::decode_coded(&bytes, 0, Some(part), max, level.rgb_jpeg)?;
                        if ch == 1 {
                            img.into_luma8().into_raw()
                        } else {
                            img.into_rgb8().into_raw()
                        }
                    }
                    tiff::TileCodec::None => {
                        let mut v = Vec::with_capacity(part.w as usize * part.h as usize * ch);
                        for y in part.y..part.y + part.h {
                            let start = (y as usize * tw as usize + part.x as usize) * ch;
                            let line = bytes.get(start..start + part.w as usize * ch).ok_or_else(
                                || RenderError::Undecodable("TIFF tile too short".into()),
                            )?;
                            v.extend_from_slice(line);
                        }
                        v
                    }
                };
            let line = part.w as usize * ch;
            if pixels.len() < line * part.h as usize {
                return Err(RenderError::Undecodable("TIFF tile decoded short".into()));
            }
            for (i, src) in pixels.chunks_exact(line).take(part.h as usize).enumerate() {
                let y = (iy0 - rect.y) as usize + i;
                let at = y * stride + (ix0 - rect.x) as usize * ch;
                out[at..at + line].copy_from_slice(src);
            }
        }
    }
    super::decoded_image(rect.w, rect.h, ch, out)
}
