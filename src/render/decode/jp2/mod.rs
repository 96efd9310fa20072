//! JPEG 2000 (`.jp2`/`.jph` files and raw `.j2k`/`.j2c` codestreams, classic or HTJ2K code-blocks)
//! through openjpeg: decoded at the largest resolution reduction that still covers the output, and
//! only over the blocks the request needs ([`blocks`]), which the decoded cache keeps for the
//! neighbouring tiles a viewer asks for next.

mod blocks;
mod ffi;
mod pixels;

use crate::iiif::canonical::{CanonicalRequest, Rect};
use crate::render::cache::{DecodedCache, Part};
use crate::render::{plan, RenderError, Result, SourceRef};
use crate::source::{jp2, SourceError};
use blocks::{Grid, Route};
use image::DynamicImage;
use std::sync::Arc;

/// openjpeg holds every sample as an i32 while decoding, up to four components.
const DECODE_BYTES_PER_PIXEL: u64 = 4 * 4;

/// The region of a JPEG 2000 source at the chosen reduction, and the part of the returned image
/// that is the region.
pub(crate) fn region(
    src: SourceRef<'_>,
    cache: &DecodedCache,
    req: &CanonicalRequest,
    max: u64,
) -> Result<(Arc<DynamicImage>, Rect)> {
    let head = src
        .reader
        .read_range(0, 1 << 20)
        .map_err(SourceError::from)?;
    let header = jp2::read_header(&head)
        .ok_or_else(|| RenderError::Undecodable("unreadable JPEG 2000 header".into()))?;
    let reduce = plan::jp2_reduce(req, header.levels);
    let codestream = head.starts_with(&[0xFF, 0x4F]);
    let grid = Grid {
        x0: header.x0,
        y0: header.y0,
        width: header.width,
        height: header.height,
    };
    let fits = |w: u64, h: u64| w.saturating_mul(h).saturating_mul(DECODE_BYTES_PER_PIXEL) <= max;
    match blocks::route(grid, reduce, req.region(), fits) {
        Route::Block {
            col,
            row,
            area,
            rect,
        } => {
            let part = Part::Block { reduce, col, row };
            let block = cache.get_or_build_part(src.fingerprint, part, || {
                ffi::decode(src.reader, codestream, reduce, area, 1)
            })?;
            // A damaged codestream can decode short: never cut outside what came back.
            if rect.x + rect.w > block.width() || rect.y + rect.h > block.height() {
                return Err(RenderError::Undecodable(format!(
                    "JPEG 2000 block decoded as {}x{}, short of the region",
                    block.width(),
                    block.height()
                )));
            }
            Ok((block, rect))
        }
        Route::Direct { area } => {
            let (w, h) = blocks::decoded_size(area, reduce);
            if !fits(w, h) {
                return Err(RenderError::TooLarge(format!(
                    "decoding {w}x{h} pixels would exceed render.max_decode_bytes ({max})"
                )));
            }
            let img = ffi::decode(src.reader, codestream, reduce, area, 1)?;
            let whole = Rect {
                x: 0,
                y: 0,
                w: img.width(),
                h: img.height(),
            };
            Ok((Arc::new(img), whole))
        }
    }
}
