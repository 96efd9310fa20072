//! Tiled copies of large flat sources and JPEG 2000s. A 30-megapixel JPEG or PNG has no resolution
//! levels and no tiles, so every cold tile of it costs a decode of (much of) the file; a JPEG 2000
//! has levels, but its decoder pays tens of milliseconds per call however small the area. The
//! decoded cache helps only while the pixels stay in memory. The first time a viewer zooms into such
//! a source, iiifd writes a pyramidal BigTIFF of it (every level down to one tile, 512 px JPEG tiles
//! at quality 92 with full chroma) into the store as an ordinary object, and later renders read
//! tiles from it, after evictions and restarts too. Other IIIF servers leave this conversion to their
//! users (vips). A JPEG 2000's copy is made from its own resolutions, a strip of tiles at a time.
//!
//! The copy is keyed by the source's fingerprint (a replaced file gets a new copy), counted in the
//! store's budget, evicted, verified and purged like any derivative, and rebuilt when missing.

use super::cache::DecodedCache;
use super::decode::jp2::CopySource;
use super::decode::whole::full_image;
use super::encode::jpeg;
use super::ops::halve;
use super::{RenderError, Result, SourceRef};
use crate::iiif::canonical::{CanonicalRequest, ImageSize, Rect};
use crate::key::DerivativeKey;
use crate::source::{Fingerprint, SourceKind};
use image::{DynamicImage, GenericImageView};
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::sync::Arc;

/// The copy's extension in the store.
pub(crate) const EXTENSION: &str = "tif";
/// Tile size of the copy.
pub(crate) const TILE: u32 = 512;
/// JPEG quality of its tiles: an intermediate, decoded again before the output is encoded.
pub(crate) const QUALITY: u8 = 92;

/// A description of how copies are made, for their store key (a change retires old copies).
pub(crate) const DESCRIPTION: &str = "tiled-copy-v2 bigtiff jpeg q=92 444 tile=512 icc";

/// Whether a render of `req` should leave a tiled copy of its source behind: the source has at least
/// `min_pixels` (0 disables copies) and the request is a part of the image (a viewer zooming in; a
/// thumbnail of the whole image does not need one). Flatness is checked by the caller, which has the
/// source open.
pub(crate) fn wanted(size: ImageSize, min_pixels: u64, req: &CanonicalRequest) -> bool {
    let whole = req.region()
        == Rect {
            x: 0,
            y: 0,
            w: size.width,
            h: size.height,
        };
    min_pixels > 0 && u64::from(size.width) * u64::from(size.height) >= min_pixels && !whole
}

/// The store key of the copy of the source version `fingerprint`.
pub(crate) fn key(fingerprint: &Fingerprint) -> DerivativeKey {
    DerivativeKey::tiled_copy(fingerprint, DESCRIPTION)
}

/// How a copy's pixels are had: levels held whole (a flat source, decoded whole anyway), or decoded
/// strip by strip from a JPEG 2000's own resolutions.
pub(crate) enum CopyPlan {
    Levels(Vec<Arc<DynamicImage>>),
    Jp2(CopySource),
}

/// The plan for `source`'s copy, or `None` when it cannot have one.
pub(crate) fn plan(
    source: SourceRef<'_>,
    cache: &DecodedCache,
    max: u64,
) -> Result<Option<CopyPlan>> {
    if source.kind == SourceKind::Jp2 {
        return Ok(CopySource::open(source, TILE, max)?.map(CopyPlan::Jp2));
    }
    Ok(levels(source, cache, max)?.map(CopyPlan::Levels))
}

impl CopyPlan {
    /// Write the copy into `file` (see [`write_strips`]).
    pub(crate) fn write(
        &self,
        source: SourceRef<'_>,
        cache: &DecodedCache,
        icc: Option<&[u8]>,
        file: &mut File,
    ) -> io::Result<()> {
        match self {
            CopyPlan::Levels(levels) => write(levels, icc, file),
            CopyPlan::Jp2(jp2) => {
                let written = write_strips(&jp2.sizes, jp2.gray, icc, file, &mut |k, row| {
                    jp2.strip(source, cache, k, row, TILE)
                        .map_err(|e| io::Error::other(e.to_string()))
                });
                // The copy now serves what the open decoders would.
                cache.drop_parked(source.fingerprint);
                written
            }
        }
    }
}

/// The levels of `source`'s copy, full size first, down to one tile; `None` when it cannot have a
/// copy (alpha, 16-bit, or level 0 larger than `max` bytes). Uses and fills the decoded cache.
pub(crate) fn levels(
    source: SourceRef<'_>,
    cache: &DecodedCache,
    max: u64,
) -> Result<Option<Vec<Arc<DynamicImage>>>> {
    let level0 = match full_image(source, cache, max) {
        Ok(img) => img,
        Err(RenderError::TooLarge(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !matches!(
        *level0,
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_)
    ) {
        return Ok(None);
    }
    let mut levels = vec![level0];
    while let Some(last) = levels.last().cloned() {
        if last.width().max(last.height()) <= TILE {
            break;
        }
        let k = levels.len();
        levels.push(cache.get_or_build(source.fingerprint, k, || Ok(halve(&last)))?);
    }
    Ok(Some(levels))
}

/// Write `levels` as a BigTIFF with one IFD per level and JPEG tiles (YCbCr, or gray), streaming the
/// tiles to `file` (a copy can be tens of megabytes; it is never held in memory) and writing the
/// directories after them. The source's ICC profile, if any, goes into the first IFD (tag 34675): the
/// tiles hold the source's pixels, and renders from the copy handle colour as renders from the source.
pub(crate) fn write(
    levels: &[Arc<DynamicImage>],
    icc: Option<&[u8]>,
    file: &mut File,
) -> io::Result<()> {
    let sizes: Vec<(u32, u32)> = levels.iter().map(|l| (l.width(), l.height())).collect();
    let gray = levels
        .first()
        .is_some_and(|l| matches!(**l, DynamicImage::ImageLuma8(_)));
    write_strips(&sizes, gray, icc, file, &mut |k, row| {
        let img = &levels[k];
        let y = row * TILE;
        Ok(img.crop_imm(0, y, img.width(), TILE.min(img.height() - y)))
    })
}

/// Write a copy whose level `k` is `sizes[k]` pixels, gray or colour, taking its pixels one strip
/// of tiles at a time from `strip(k, row)`: rows `row * TILE` up to `TILE` more, the level's whole
/// width. A source decoded strip by strip (JPEG 2000) never holds a whole level in memory.
pub(crate) fn write_strips(
    sizes: &[(u32, u32)],
    gray: bool,
    icc: Option<&[u8]>,
    file: &mut File,
    strip: &mut dyn FnMut(usize, u32) -> io::Result<DynamicImage>,
) -> io::Result<()> {
    let mut out = BufWriter::new(&mut *file);
    out.write_all(b"II\x2b\0\x08\0\0\0")?;
    out.write_all(&0u64.to_le_bytes())?; // first IFD: patched at the end
    let mut at = 16u64;
    let mut tables = Vec::with_capacity(sizes.len());
    for (k, &(w, h)) in sizes.iter().enumerate() {
        let mut offsets = Vec::new();
        let mut counts = Vec::new();
        for row in 0..h.div_ceil(TILE) {
            let band = strip(k, row)?;
            if band.width() != w || band.height() != TILE.min(h - row * TILE) {
                return Err(io::Error::other(format!(
                    "level {k} row {row}: a {}x{} strip for a {w}x{h} level",
                    band.width(),
                    band.height()
                )));
            }
            for col in 0..w.div_ceil(TILE) {
                let tile = edge_padded_tile(&band, col * TILE, 0);
                let bytes = jpeg::encode_full_chroma(&tile, QUALITY)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                out.write_all(&bytes)?;
                offsets.push(at);
                counts.push(bytes.len() as u64);
                at += bytes.len() as u64;
            }
        }
        tables.push((offsets, counts));
    }
    // The directories, built in memory (a few bytes per tile) with their final offsets.
    let mut dir: Vec<u8> = Vec::new();
    let mut first_ifd = 0u64;
    let mut next_ptr_at: Option<usize> = None;
    for (n, (&(width, height), (offsets, counts))) in sizes.iter().zip(&tables).enumerate() {
        let samples: u16 = if gray { 1 } else { 3 };
        let mut entries: Vec<(u16, u16, u64, Vec<u8>)> = Vec::new();
        if n > 0 {
            entries.push((254, 4, 1, 1u32.to_le_bytes().to_vec())); // reduced-resolution level
        }
        entries.push((256, 4, 1, width.to_le_bytes().to_vec()));
        entries.push((257, 4, 1, height.to_le_bytes().to_vec()));
        let bits = (0..samples).flat_map(|_| 8u16.to_le_bytes()).collect();
        entries.push((258, 3, u64::from(samples), bits));
        entries.push((259, 3, 1, 7u16.to_le_bytes().to_vec())); // JPEG
        let photometric: u16 = if gray { 1 } else { 6 }; // YCbCr: what the JPEG tiles hold
        entries.push((262, 3, 1, photometric.to_le_bytes().to_vec()));
        entries.push((277, 3, 1, samples.to_le_bytes().to_vec()));
        entries.push((284, 3, 1, 1u16.to_le_bytes().to_vec()));
        entries.push((322, 4, 1, TILE.to_le_bytes().to_vec()));
        entries.push((323, 4, 1, TILE.to_le_bytes().to_vec()));
        let longs = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        entries.push((324, 16, offsets.len() as u64, longs(offsets)));
        entries.push((325, 16, counts.len() as u64, longs(counts)));
        if let (0, Some(icc)) = (n, icc) {
            entries.push((34675, 7, icc.len() as u64, icc.to_vec()));
        }
        // Values longer than the 8-byte field go before the IFD.
        let mut fields = Vec::with_capacity(entries.len());
        for (_, _, _, value) in &entries {
            if value.len() > 8 {
                fields.push(Some(at + dir.len() as u64));
                dir.extend_from_slice(value);
            } else {
                fields.push(None);
            }
        }
        if (at + dir.len() as u64) % 2 == 1 {
            dir.push(0);
        }
        let ifd = at + dir.len() as u64;
        match next_ptr_at {
            Some(p) => dir[p..p + 8].copy_from_slice(&ifd.to_le_bytes()),
            None => first_ifd = ifd,
        }
        dir.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for ((tag, typ, count, value), field) in entries.iter().zip(&fields) {
            dir.extend_from_slice(&tag.to_le_bytes());
            dir.extend_from_slice(&typ.to_le_bytes());
            dir.extend_from_slice(&count.to_le_bytes());
            let mut slot = [0u8; 8];
            match field {
                Some(off) => slot.copy_from_slice(&off.to_le_bytes()),
                None => slot[..value.len()].copy_from_slice(value),
            }
            dir.extend_from_slice(&slot);
        }
        next_ptr_at = Some(dir.len());
        dir.extend_from_slice(&0u64.to_le_bytes());
    }
    out.write_all(&dir)?;
    out.flush()?;
    drop(out);
    file.seek(SeekFrom::Start(8))?;
    file.write_all(&first_ifd.to_le_bytes())
}

/// The `TILE`-square tile at (`x`, `y`), its part outside the image filled by repeating the edge
/// pixels (so JPEG blocks at the edge carry no artificial contrast into the visible part).
fn edge_padded_tile(img: &DynamicImage, x: u32, y: u32) -> DynamicImage {
    let (w, h) = (img.width(), img.height());
    let src = |tx: u32, ty: u32| ((x + tx).min(w - 1), (y + ty).min(h - 1));
    match img {
        DynamicImage::ImageLuma8(b) => {
            DynamicImage::ImageLuma8(image::GrayImage::from_fn(TILE, TILE, |tx, ty| {
                let (sx, sy) = src(tx, ty);
                *b.get_pixel(sx, sy)
            }))
        }
        DynamicImage::ImageRgb8(b) => {
            DynamicImage::ImageRgb8(image::RgbImage::from_fn(TILE, TILE, |tx, ty| {
                let (sx, sy) = src(tx, ty);
                *b.get_pixel(sx, sy)
            }))
        }
        // `levels` only admits gray and RGB; anything else is converted once per tile, correctly
        // if slowly.
        other => DynamicImage::ImageRgb8(image::RgbImage::from_fn(TILE, TILE, |tx, ty| {
            let (sx, sy) = src(tx, ty);
            let p = other.get_pixel(sx, sy).0;
            image::Rgb([p[0], p[1], p[2]])
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::tiff;
    use crate::render::decode;
    use crate::source::memory::bytes_reader;
    use std::io::Read;

    #[test]
    fn the_copy_reads_back_as_a_pyramid() -> Result<()> {
        let err = |e: std::io::Error| RenderError::Internal(e.to_string());
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(1300, 700, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        }));
        let levels = vec![
            Arc::new(img.clone()),
            Arc::new(halve(&img)),
            Arc::new(halve(&halve(&img))),
        ];
        let mut f = tempfile::tempfile().map_err(err)?;
        write(&levels, None, &mut f).map_err(err)?;
        let mut bytes = Vec::new();
        f.seek(SeekFrom::Start(0)).map_err(err)?;
        f.read_to_end(&mut bytes).map_err(err)?;
        let f = bytes_reader(bytes);
        let p = tiff::read_pyramid(&*f)?.ok_or_else(|| RenderError::bug("not a pyramid"))?;
        let dims: Vec<_> = p.levels.iter().map(|l| (l.width, l.height)).collect();
        assert_eq!(dims, vec![(1300, 700), (650, 350), (325, 175)]);
        let tile = p.levels[0].read_tile(&*f, 2, 1, 1 << 20)?;
        let decoded = decode::jpeg::decode(&tile, 0, None, 1 << 30)?.to_rgb8();
        // Tile (2, 1) starts at (1024, 512): compare a pixel well inside it.
        let got = decoded.get_pixel(100, 50).0;
        let want = img.to_rgb8().get_pixel(1124, 562).0;
        for c in 0..3 {
            assert!(got[c].abs_diff(want[c]) <= 6, "{got:?} vs {want:?}");
        }
        Ok(())
    }
}
