//! JPEG 2000 (`.jp2`/`.jph` files and raw `.j2k`/`.j2c` codestreams, classic or HTJ2K code-blocks)
//! through openjpeg: decoded at the largest resolution reduction that still covers the output, and
//! only over the blocks the request needs ([`blocks`]), which the decoded cache keeps for the
//! neighbouring tiles a viewer asks for next. An untiled codestream stays open between renders
//! ([`ffi::Decoder`], parked in the decoded cache per resolution reduction), so the next block does
//! not read and index the codestream again.
//!
//! openjpeg's own threads are not used: it starts a pool per codec, and on the benchmark's
//! thumbnails a quarter of the CPU went to waking its threads while every core already had a
//! render.

mod blocks;
pub(crate) mod ffi;
mod pixels;

use crate::formats::jp2;
use crate::iiif::canonical::{CanonicalRequest, Rect};
use crate::render::cache::{DecodedCache, Part};
use crate::render::{plan, RenderError, Result, SourceRef};
use crate::source::SourceError;
use blocks::{Area, Grid, Route};
use ffi::Decoder;
use image::DynamicImage;
use std::sync::Arc;

/// openjpeg holds every sample as an i32 while decoding, up to four components.
const DECODE_BYTES_PER_PIXEL: u64 = 4 * 4;

/// What an opened untiled codestream weighs, per byte of file: openjpeg keeps the codestream and
/// its code-block structures (63 MB of heap for the benchmark's 7.2 MB archive after a full-size
/// block, 41 MB after a 1/8 one).
const OPEN_BYTES_PER_FILE_BYTE: u64 = 9;

/// Decode `area` at `reduce`: through the decoder parked for this source and reduction when there
/// is one, else through a new one; parked (again) after when `again` says another area of this
/// resolution is likely (not for a resolution decoded whole: a thumbnail's decoder would only hold
/// memory, 17 MB for each of the benchmark's 4000x3000 thumbnails).
fn decode_area(
    src: SourceRef<'_>,
    cache: &DecodedCache,
    header: &jp2::Jp2Header,
    codestream: bool,
    reduce: u32,
    area: Area,
    again: bool,
) -> Result<DynamicImage> {
    // openjpeg keeps nothing worth reusing between areas of a tiled codestream.
    let parked = if header.single_tile {
        cache
            .unpark(src.fingerprint, reduce)
            .and_then(|p| p.downcast::<Decoder>().ok())
            .filter(|d| d.reduce() == reduce)
    } else {
        None
    };
    let keep = header.single_tile && (again || parked.is_some());
    let mut decoder = match parked {
        Some(d) => *d,
        None => Decoder::open(src.reader, codestream, reduce)?,
    };
    // A failed decode drops the decoder (openjpeg's state after an error is not reusable).
    let img = decoder.decode(src.reader, reference_area(header, area))?;
    if keep {
        let weight = src.reader.size().saturating_mul(OPEN_BYTES_PER_FILE_BYTE) + (1 << 20);
        cache.park(src.fingerprint, reduce, Box::new(decoder), weight);
    }
    Ok(img)
}

/// Block `at` (column, row) of resolution `reduce`, which covers `area`, from the decoded cache or
/// decoded (once for every render waiting on it).
fn cached_block(
    src: SourceRef<'_>,
    cache: &DecodedCache,
    header: &jp2::Jp2Header,
    codestream: bool,
    reduce: u32,
    at: (u32, u32),
    area: Area,
) -> Result<Arc<DynamicImage>> {
    let part = Part::Block {
        reduce,
        col: at.0,
        row: at.1,
    };
    let again = !blocks::is_whole(grid_of(header), reduce);
    cache.get_or_build_part(src.fingerprint, part, || {
        decode_area(src, cache, header, codestream, reduce, area, again)
    })
}

fn short(block: &DynamicImage) -> RenderError {
    RenderError::Undecodable(format!(
        "JPEG 2000 block decoded as {}x{}, short of the region",
        block.width(),
        block.height()
    ))
}

/// A request across blocks, put together from them.
fn compose(
    src: SourceRef<'_>,
    cache: &DecodedCache,
    header: &jp2::Jp2Header,
    codestream: bool,
    reduce: u32,
    cover: &blocks::Cover,
) -> Result<(Arc<DynamicImage>, Rect)> {
    let grid = grid_of(header);
    let mut out: Option<DynamicImage> = None;
    for row in cover.rows.clone() {
        for col in cover.cols.clone() {
            let (area, bx, by) = blocks::block(grid, reduce, col, row);
            let block = cached_block(src, cache, header, codestream, reduce, (col, row), area)?;
            // The part of the request in this block, in the block's pixels and in the output's.
            let (x0, y0) = (cover.x.max(bx), cover.y.max(by));
            let x1 = (cover.x + cover.w).min(bx + block.width());
            let y1 = (cover.y + cover.h).min(by + block.height());
            if x1 <= x0 || y1 <= y0 {
                return Err(short(&block));
            }
            let part = block.crop_imm(x0 - bx, y0 - by, x1 - x0, y1 - y0);
            let target =
                out.get_or_insert_with(|| DynamicImage::new(cover.w, cover.h, block.color()));
            if target.color() != block.color() {
                return Err(RenderError::Undecodable(
                    "JPEG 2000 blocks decoded with different channels".into(),
                ));
            }
            image::imageops::replace(
                target,
                &part,
                i64::from(x0 - cover.x),
                i64::from(y0 - cover.y),
            );
        }
    }
    let img = out.ok_or_else(|| RenderError::Undecodable("JPEG 2000: no blocks".into()))?;
    let whole = Rect {
        x: 0,
        y: 0,
        w: img.width(),
        h: img.height(),
    };
    Ok((Arc::new(img), whole))
}

/// A JPEG 2000 source read for its tiled copy: the file's own resolutions, strip by strip, then
/// halvings of its smallest one (see `render::tiled_copy`).
pub(crate) struct CopySource {
    header: jp2::Jp2Header,
    codestream: bool,
    /// Level sizes, full size first, down to one `tile`.
    pub(crate) sizes: Vec<(u32, u32)>,
    pub(crate) gray: bool,
    /// The levels past the file's resolutions, whole (small: the file's smallest and below).
    tail: Vec<DynamicImage>,
}

impl CopySource {
    /// What a copy of `src` needs, or `None` when it cannot have one (alpha, or a strip of its full
    /// size larger than `max` bytes to decode).
    pub(crate) fn open(src: SourceRef<'_>, tile: u32, max: u64) -> Result<Option<CopySource>> {
        let head = src
            .reader
            .read_range(0, 1 << 20)
            .map_err(SourceError::from)?;
        let header = jp2::read_header(&head)
            .ok_or_else(|| RenderError::Undecodable("unreadable JPEG 2000 header".into()))?;
        let codestream = head.starts_with(&[0xFF, 0x4F]);
        let grid = grid_of(&header);
        let mut sizes = Vec::new();
        let (mut w, mut h) = blocks::resolution_size(grid, 0);
        loop {
            if w == 0 || h == 0 || w > u64::from(u32::MAX) || h > u64::from(u32::MAX) {
                return Ok(None);
            }
            sizes.push((w as u32, h as u32));
            if w.max(h) <= u64::from(tile) {
                break;
            }
            let k = sizes.len() as u32;
            (w, h) = if k <= u32::from(header.levels) {
                blocks::resolution_size(grid, k)
            } else {
                (w.div_ceil(2), h.div_ceil(2))
            };
        }
        let strip_bytes = u64::from(sizes[0].0) * u64::from(tile) * DECODE_BYTES_PER_PIXEL;
        // The file's smallest resolution the copy uses, decoded whole: its channels decide
        // whether there can be a copy, and the levels below it are halved from it.
        let native = (sizes.len() - 1).min(usize::from(header.levels));
        let (nw, nh) = sizes[native];
        if strip_bytes > max || u64::from(nw) * u64::from(nh) * DECODE_BYTES_PER_PIXEL > max {
            return Ok(None);
        }
        let area = blocks::strip_area(grid, native as u32, 0, nh);
        let smallest = Decoder::open(src.reader, codestream, native as u32)?
            .decode(src.reader, reference_area(&header, area))?;
        let gray = match smallest {
            DynamicImage::ImageLuma8(_) => true,
            DynamicImage::ImageRgb8(_) => false,
            _ => return Ok(None),
        };
        let mut tail = Vec::new();
        let mut last = smallest;
        for _ in native + 1..sizes.len() {
            let next = crate::render::ops::halve(&last);
            tail.push(last);
            last = next;
        }
        tail.push(last);
        Ok(Some(CopySource {
            header,
            codestream,
            sizes,
            gray,
            tail,
        }))
    }

    /// Rows `row * tile` up to `tile` more of level `k`, its whole width.
    pub(crate) fn strip(
        &self,
        src: SourceRef<'_>,
        cache: &DecodedCache,
        k: usize,
        row: u32,
        tile: u32,
    ) -> Result<DynamicImage> {
        let (w, h) = self.sizes.get(k).copied().ok_or_else(|| {
            RenderError::bug(format!("tiled copy level {k} of {}", self.sizes.len()))
        })?;
        let y = row * tile;
        let rows = tile.min(h.saturating_sub(y));
        let native = usize::from(self.header.levels).min(self.sizes.len() - 1);
        if k >= native {
            let img = &self.tail[k - native];
            return Ok(img.crop_imm(0, y, w, rows));
        }
        let area = blocks::strip_area(grid_of(&self.header), k as u32, y, rows);
        decode_area(
            src,
            cache,
            &self.header,
            self.codestream,
            k as u32,
            area,
            true,
        )
    }
}

/// `area` on the image's grid scaled to openjpeg's reference grid (the same but for files whose
/// every component is subsampled): component pixel `c` spans reference columns `[c*dx, (c+1)*dx)`,
/// and openjpeg decodes the components' samples `ceil(x0/dx)..ceil(x1/dx)` of an area, so scaling
/// the ends gives back exactly the pixels asked for.
fn reference_area(header: &jp2::Jp2Header, area: Area) -> Area {
    let scale = |v: u32, by: u32, end: u32| v.saturating_mul(by).min(end);
    Area {
        x0: scale(area.x0, header.dx, header.ref_x1),
        y0: scale(area.y0, header.dy, header.ref_y1),
        x1: scale(area.x1, header.dx, header.ref_x1),
        y1: scale(area.y1, header.dy, header.ref_y1),
    }
}

fn grid_of(header: &jp2::Jp2Header) -> Grid {
    Grid {
        x0: header.x0,
        y0: header.y0,
        width: header.width,
        height: header.height,
    }
}

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
    let grid = grid_of(&header);
    // A resolution decoded whole is decoded once; one in blocks is decoded again and again.
    let again = !blocks::is_whole(grid, reduce);
    let fits = |w: u64, h: u64| w.saturating_mul(h).saturating_mul(DECODE_BYTES_PER_PIXEL) <= max;
    match blocks::route(grid, reduce, req.region(), fits) {
        Route::Block {
            col,
            row,
            area,
            rect,
        } => {
            let block = cached_block(src, cache, &header, codestream, reduce, (col, row), area)?;
            // A damaged codestream can decode short: never cut outside what came back.
            if rect.x + rect.w > block.width() || rect.y + rect.h > block.height() {
                return Err(short(&block));
            }
            Ok((block, rect))
        }
        Route::Direct { area, cover } => {
            let (w, h) = blocks::decoded_size(area, reduce);
            if !fits(w, h) {
                // Too large to decode at once (a full-size request of a large image on a small
                // budget): put together from its blocks, each decoded within the budget.
                let one_block = u64::from(blocks::BLOCK).pow(2) * DECODE_BYTES_PER_PIXEL;
                let output = w.saturating_mul(h).saturating_mul(4);
                return match cover {
                    Some(c) if one_block.saturating_add(output) <= max => {
                        compose(src, cache, &header, codestream, reduce, &c)
                    }
                    _ => Err(RenderError::TooLarge(format!(
                        "decoding {w}x{h} pixels would exceed render.max_decode_bytes ({max})"
                    ))),
                };
            }
            let img = decode_area(src, cache, &header, codestream, reduce, area, again)?;
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

/// A whole JPEG 2000 image at full resolution, decoded at once within `max` (in-memory bytes: the
/// fuzzers, the hostile-input tests, and checks of iiifd's own jp2 output).
pub(crate) fn whole(reader: &dyn crate::source::ObjectReader, max: u64) -> Result<DynamicImage> {
    let head = reader.read_range(0, 1 << 20).map_err(SourceError::from)?;
    let header = jp2::read_header(&head)
        .ok_or_else(|| RenderError::Undecodable("unreadable JPEG 2000 header".into()))?;
    let (w, h) = (u64::from(header.width), u64::from(header.height));
    if w.saturating_mul(h).saturating_mul(DECODE_BYTES_PER_PIXEL) > max {
        return Err(RenderError::TooLarge(format!(
            "decoding {w}x{h} pixels would exceed render.max_decode_bytes ({max})"
        )));
    }
    let area = Area {
        x0: header.x0,
        y0: header.y0,
        x1: header.x0.saturating_add(header.width),
        y1: header.y0.saturating_add(header.height),
    };
    let mut decoder = Decoder::open(reader, head.starts_with(&[0xFF, 0x4F]), 0)?;
    decoder.decode(reader, reference_area(&header, area))
}
