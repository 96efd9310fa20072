//! The structure of tiled, pyramidal TIFF and BigTIFF files (what `vips tiffsave --tile --pyramid`
//! and IIPImage users already have): each IFD is one resolution level cut into tiles. Only the
//! directory is read here; pixels stay on disk until a render reads the tiles it needs.
//!
//! Read tile by tile: 8-bit, chunky (planar config 1), gray or RGB/YCbCr, JPEG-compressed or
//! uncompressed tiles. Anything else (strips, LZW, 16-bit, separate planes) is left to the whole-image
//! decoder, which handles every TIFF the `image` crate can read.

use super::orientation::Orientation;
use crate::source::{ObjectReader, SourceError};

mod ifd;
use ifd::{io, Reader, Tag};

type Result<T> = std::result::Result<T, SourceError>;

/// A compression this reader decodes tile by tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TileCodec {
    /// Raw 8-bit samples.
    None,
    /// JPEG (TIFF compression 7), optionally with shared tables.
    Jpeg,
}

/// One resolution level.
#[derive(Clone, Debug)]
pub(crate) struct Level {
    /// Width in pixels.
    pub(crate) width: u32,
    /// Height in pixels.
    pub(crate) height: u32,
    /// Tile width.
    pub(crate) tile_width: u32,
    /// Tile height.
    pub(crate) tile_height: u32,
    /// 1 (gray) or 3 (colour).
    pub(crate) samples: u8,
    /// How tiles are compressed.
    pub(crate) codec: TileCodec,
    /// JPEGTables: quantisation and Huffman tables shared by the level's tiles.
    pub(crate) jpeg_tables: Option<Vec<u8>>,
    /// JPEG tiles whose components are R, G, B (Photometric RGB), not YCbCr: what Aperio SVS and other
    /// slide scanners write. Their JPEG markers do not say so, so the decoder must be told.
    pub(crate) rgb_jpeg: bool,
    offsets: Vec<u64>,
    counts: Vec<u64>,
}

impl Level {
    /// Tiles across and down.
    pub(crate) fn grid(&self) -> (u32, u32) {
        (
            self.width.div_ceil(self.tile_width),
            self.height.div_ceil(self.tile_height),
        )
    }

    /// Tiles in the directory (what caching it costs: an offset and a length each).
    pub(crate) fn tile_count(&self) -> usize {
        self.offsets.len()
    }

    /// The stored bytes of tile (`col`, `row`) as one standalone JPEG or raw samples. For JPEG the
    /// shared tables are spliced in front of the tile's own stream (tables' SOI..EOI without the EOI,
    /// then the tile without its SOI), which is what a plain JPEG decoder or a browser needs.
    pub(crate) fn read_tile(
        &self,
        file: &dyn ObjectReader,
        col: u32,
        row: u32,
        max_bytes: u64,
    ) -> Result<Vec<u8>> {
        let (cols, rows) = self.grid();
        if col >= cols || row >= rows {
            return Err(SourceError::Undecodable(format!(
                "TIFF tile {col},{row} outside the grid"
            )));
        }
        let i = (row as usize) * (cols as usize) + col as usize;
        let (Some(&off), Some(&len)) = (self.offsets.get(i), self.counts.get(i)) else {
            return Err(SourceError::Undecodable(format!(
                "TIFF tile {col},{row} missing"
            )));
        };
        if len > max_bytes {
            return Err(SourceError::Undecodable(format!(
                "TIFF tile of {len} bytes"
            )));
        }
        let mut tile = vec![0u8; len as usize];
        file.read_exact_at(&mut tile, off).map_err(|e| {
            SourceError::from_read(e, |e| {
                SourceError::Undecodable(format!("TIFF tile {col},{row}: {e}"))
            })
        })?;
        match (&self.jpeg_tables, self.codec) {
            (Some(tables), TileCodec::Jpeg) => Ok(with_tables(tables, tile)),
            _ => Ok(tile),
        }
    }
}

/// The levels of a tiled TIFF, full resolution first, each smaller than the one before.
#[derive(Clone, Debug)]
pub(crate) struct Pyramid {
    /// Levels, largest first.
    pub(crate) levels: Vec<Level>,
    /// The embedded ICC profile of the image (tag 34675 of its first directory).
    pub(crate) icc: Option<Vec<u8>>,
    /// How the stored pixels are to be turned for display (tag 274 of its first directory).
    pub(crate) orientation: Orientation,
}

/// Largest ICC profile read from a TIFF directory: real profiles are kilobytes (LUT-based ones up to
/// about a megabyte); anything larger is not a profile worth a read.
const MAX_ICC: u64 = 4 << 20;

const MAX_IFDS: usize = 64;
const MAX_TILES: u64 = 1 << 24;

/// Read the directory of a tiled TIFF. `Ok(None)` when the file is a TIFF this reader does not take
/// tile by tile (the caller decodes it whole); `Err` when the structure is broken.
pub(crate) fn read_pyramid(file: &dyn ObjectReader) -> Result<Option<Pyramid>> {
    let Some((r, next)) = header(file)? else {
        return Ok(None);
    };
    let mut levels: Vec<Level> = Vec::new();
    let mut icc = None;
    let mut orientation = Orientation::NORMAL;
    let mut seen = Vec::new();
    let mut queue = std::collections::VecDeque::from([next]);
    while let Some(at) = queue.pop_front() {
        if at == 0 || seen.len() >= MAX_IFDS {
            break;
        }
        if seen.contains(&at) {
            return Err(SourceError::Undecodable("TIFF directory loop".into()));
        }
        seen.push(at);
        let (tags, following) = r.ifd(at)?;
        // Reductions stored as SubIFDs of the first image (`vips --subifd`, OME-TIFF) are visited
        // before the next image of the chain.
        if levels.is_empty() {
            if let Some(t) = tags.iter().find(|t| t.code == 330) {
                for sub in r.values(t).into_iter().rev() {
                    queue.push_front(sub);
                }
            }
        }
        queue.push_back(following);
        if seen.len() == 1 {
            icc = tags
                .iter()
                .find(|t| t.code == 34675)
                .map(|t| t.value.clone())
                .filter(|v| !v.is_empty());
            if let Some(o) = tags.iter().find(|t| t.code == 274) {
                let value = r.values(o).first().copied().unwrap_or(1);
                orientation = Orientation::from_exif(u16::try_from(value).unwrap_or(1));
            }
        }
        let level = match tiled_level(&r, &tags)? {
            Some(l) => l,
            // The first directory is the image: if it cannot be read by tiles, none of it can.
            None if levels.is_empty() => return Ok(None),
            None => continue,
        };
        if let Some(prev) = levels.last() {
            // Reductions only: labels, macro images and masks are not levels.
            let smaller = level.width < prev.width && level.height < prev.height;
            if !smaller || level.samples != prev.samples {
                continue;
            }
        }
        levels.push(level);
    }
    Ok((!levels.is_empty()).then_some(Pyramid {
        levels,
        icc,
        orientation,
    }))
}

/// The byte order and format of a TIFF, and the offset of its first directory; `None` when the file
/// is not a TIFF at all.
/// Bytes laid over a file at offsets: (offset, bytes).
pub(crate) type Patches = Vec<(u64, Vec<u8>)>;

/// Directories followed in the chain when looking for pages: a book of a thousand pages with a
/// reduction or two each.
const MAX_PAGE_IFDS: usize = 4096;

/// How to read one page of a multi-page TIFF as a file of its own: byte patches (offset, bytes)
/// that point the header at the page's directory and end the chain after the page's reductions.
/// One entry per page, first page first; empty when the file is not a TIFF.
///
/// A page is a directory of the main chain that is not a reduced-resolution image (NewSubfileType
/// bit 0, as libtiff and vips mark pyramid levels); reductions that follow a page belong to it.
pub(crate) fn pages(file: &dyn ObjectReader) -> Result<Vec<Patches>> {
    let Some((r, first)) = header(file)? else {
        return Ok(Vec::new());
    };
    let encode = |v: u64| -> Vec<u8> {
        match (r.big, r.le) {
            (true, true) => v.to_le_bytes().to_vec(),
            (true, false) => v.to_be_bytes().to_vec(),
            (false, true) => (v as u32).to_le_bytes().to_vec(),
            (false, false) => (v as u32).to_be_bytes().to_vec(),
        }
    };
    // (the page's directory, where the last directory of the page keeps its next offset)
    let mut found: Vec<(u64, u64)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut at = first;
    while at != 0 && seen.len() < MAX_PAGE_IFDS {
        if !seen.insert(at) {
            return Err(SourceError::Undecodable("TIFF directory loop".into()));
        }
        let (tags, next) = r.ifd(at)?;
        let entries = tags.len() as u64;
        let next_at = if r.big {
            at + 8 + 20 * entries
        } else {
            at + 2 + 12 * entries
        };
        let reduced = tags
            .iter()
            .find(|t| t.code == 254)
            .and_then(|t| r.values(t).first().copied())
            .is_some_and(|v| v & 1 == 1);
        match found.last_mut() {
            Some(page) if reduced => page.1 = next_at,
            _ => found.push((at, next_at)),
        }
        at = next;
    }
    let head_at = if r.big { 8 } else { 4 };
    Ok(found
        .into_iter()
        .map(|(ifd, end)| vec![(head_at, encode(ifd)), (end, encode(0))])
        .collect())
}

fn header(file: &dyn ObjectReader) -> Result<Option<(Reader<'_>, u64)>> {
    let mut head = [0u8; 16];
    let n = file.read_at(&mut head, 0).map_err(io)?;
    let r = match (&head[..n.min(4)], n) {
        (b"II*\0", _) => Reader::new(file, true, false),
        (b"MM\0*", _) => Reader::new(file, false, false),
        (b"II+\0", 16) => Reader::new(file, true, true),
        (b"MM\0+", 16) => Reader::new(file, false, true),
        _ => return Ok(None),
    };
    let first = if r.big {
        r.u64_in(&head[8..16])
    } else {
        u64::from(r.u32_in(&head[4..8]))
    };
    Ok(Some((r, first)))
}

/// A TIFF's first image as the whole-image decoder (`render::decode::tiff_flat`) reads it: the
/// directory facts that decide how its pixels are stored. Structure only: no pixel is read here.
/// The probe and the renderer both start from this one reading, so a file that info.json describes
/// is one its images can be rendered from.
#[derive(Clone, Debug)]
pub(crate) struct Flat {
    /// Stored width.
    pub(crate) width: u32,
    /// Stored height.
    pub(crate) height: u32,
    /// Compression (tag 259): 1 none, 2 CCITT modified Huffman, 3 CCITT Group 3, 4 Group 4, 5 LZW,
    /// 6 old-style JPEG, 7 JPEG, 8 and 32946 Deflate, 32773 PackBits, 34925 LZMA, ...
    pub(crate) compression: u64,
    /// Photometric interpretation (tag 262).
    pub(crate) photometric: u64,
    /// Bits of every sample (tag 258; files that mix depths are refused).
    pub(crate) bits: u32,
    /// Samples per pixel (tag 277).
    pub(crate) samples: u32,
    /// 1 unsigned, 2 signed, 3 IEEE float (tag 339).
    pub(crate) sample_format: u64,
    /// Samples stored in separate planes (tag 284 = 2).
    pub(crate) planar: bool,
    /// FillOrder 2 (tag 266): the bits of every stored byte are reversed.
    pub(crate) lsb_first: bool,
    /// Predictor (tag 317): 1 none, 2 horizontal differencing, 3 floating point.
    pub(crate) predictor: u64,
    /// Width and height of one chunk (a tile, or a strip of full width).
    pub(crate) chunk: (u32, u32),
    /// Tiled (tags 322/323) rather than stripped: every tile decodes to a full tile.
    pub(crate) tiled: bool,
    /// Chunk offsets (tags 273 or 324).
    pub(crate) offsets: Vec<u64>,
    /// Chunk byte counts (tags 279 or 325); old writers omit them for a single strip.
    pub(crate) counts: Vec<u64>,
    /// The palette (tag 320): red, green then blue, 2^bits 16-bit entries each.
    pub(crate) colormap: Vec<u16>,
    /// The first extra sample is alpha: `Some(true)` associated (premultiplied), `Some(false)`
    /// unassociated (tag 338).
    pub(crate) alpha: Option<bool>,
    /// JPEGTables (tag 347).
    pub(crate) jpeg_tables: Vec<u8>,
    /// Old-style JPEG's interchange stream (tags 513/514): offset and length (0 when not given).
    pub(crate) ojpeg: Option<(u64, u64)>,
    /// YCbCr subsampling (tag 530), horizontal and vertical.
    pub(crate) subsampling: (u64, u64),
    /// T4Options (tag 292): bit 0 is 2-D coding.
    pub(crate) t4_options: u64,
    /// InkSet (tag 332): 1 is CMYK.
    pub(crate) inkset: u64,
    /// The embedded ICC profile (tag 34675).
    pub(crate) icc: Option<Vec<u8>>,
    /// How the stored pixels are to be turned for display (tag 274).
    pub(crate) orientation: Orientation,
    /// Byte order of multi-byte samples.
    pub(crate) little_endian: bool,
}

/// Largest side of a flat TIFF or of its chunks: beyond this the directory is broken.
const MAX_SIDE: u64 = 1 << 20;

/// Read the directory of a TIFF's first image (see [`Flat`]).
pub(crate) fn read_flat(file: &dyn ObjectReader) -> Result<Flat> {
    let bad = |what: &str| SourceError::Undecodable(format!("TIFF: {what}"));
    let (r, first) = header(file)?.ok_or_else(|| bad("not a TIFF file"))?;
    let (tags, _) = r.ifd(first)?;
    let get = |code: u16| tags.iter().find(|t| t.code == code);
    let all = |code: u16| get(code).map(|t| r.values(t)).unwrap_or_default();
    let one = |code: u16| all(code).first().copied();
    let (Some(w), Some(h)) = (one(256), one(257)) else {
        return Err(bad("no width or height"));
    };
    if !(1..=MAX_SIDE).contains(&w) || !(1..=MAX_SIDE).contains(&h) {
        return Err(bad("implausible dimensions"));
    }
    let bits_all = all(258);
    let bits = bits_all.first().copied().unwrap_or(1);
    // SamplesPerPixel is sometimes left out (it defaults to 1) by writers that list three depths.
    let samples = one(277)
        .unwrap_or(bits_all.len().max(1) as u64)
        .clamp(1, 64);
    // Only the depths of the samples there are count (GIMP has written a fourth for three).
    if bits_all.iter().take(samples as usize).any(|&b| b != bits) {
        return Err(SourceError::Unsupported(format!(
            "TIFF samples of different depths ({bits_all:?})"
        )));
    }
    let tiled = get(322).is_some() && get(323).is_some();
    let chunk = if tiled {
        (one(322).unwrap_or(0), one(323).unwrap_or(0))
    } else {
        (w, one(278).unwrap_or(h).clamp(1, h))
    };
    if !(1..=MAX_SIDE).contains(&chunk.0) || !(1..=MAX_SIDE).contains(&chunk.1) {
        return Err(bad("implausible tile size"));
    }
    let (offsets, counts) = if tiled {
        (all(324), all(325))
    } else {
        (all(273), all(279))
    };
    let subsampling = all(530);
    Ok(Flat {
        width: w as u32,
        height: h as u32,
        compression: one(259).unwrap_or(1),
        photometric: one(262).unwrap_or(1),
        bits: bits.min(255) as u32,
        samples: samples as u32,
        sample_format: one(339).unwrap_or(1),
        planar: one(284) == Some(2),
        lsb_first: one(266) == Some(2),
        predictor: one(317).unwrap_or(1),
        chunk: (chunk.0 as u32, chunk.1 as u32),
        tiled,
        offsets,
        counts,
        colormap: all(320).into_iter().map(|v| v as u16).collect(),
        alpha: match one(338) {
            Some(1) => Some(true),
            Some(2) => Some(false),
            // One sample beyond gray or RGB and no ExtraSamples at all: alpha, as libtiff-based
            // readers (Pillow) and the tiff crate take it.
            None if alpha_by_count(one(262).unwrap_or(1), samples) => Some(false),
            _ => None,
        },
        jpeg_tables: get(347).map(|t| t.value.clone()).unwrap_or_default(),
        ojpeg: one(513).map(|at| (at, one(514).unwrap_or(0))),
        subsampling: (
            subsampling.first().copied().unwrap_or(2),
            subsampling.get(1).copied().unwrap_or(2),
        ),
        t4_options: one(292).unwrap_or(0),
        inkset: one(332).unwrap_or(1),
        icc: get(34675)
            .map(|t| t.value.clone())
            .filter(|v| !v.is_empty()),
        orientation: Orientation::from_exif(u16::try_from(one(274).unwrap_or(1)).unwrap_or(1)),
        little_endian: r.le,
    })
}

/// Whether a sample count is gray or RGB plus exactly one more.
fn alpha_by_count(photometric: u64, samples: u64) -> bool {
    matches!((photometric, samples), (0 | 1, 2) | (2, 4))
}

impl Flat {
    /// The stored bytes of chunk `i`, at most `max` of them. A missing byte count (old writers omit
    /// it for a single strip) reads to the end of the file; a count past the end is cut there.
    pub(crate) fn read_chunk(
        &self,
        file: &dyn ObjectReader,
        i: usize,
        max: u64,
    ) -> Result<Vec<u8>> {
        let Some(&off) = self.offsets.get(i) else {
            return Err(SourceError::Undecodable(format!("TIFF: chunk {i} missing")));
        };
        let len = self.counts.get(i).copied().unwrap_or(u64::MAX);
        self.read_range(file, off, len, max)
    }

    /// Up to `len` bytes at `at` (cut at the end of the file), at most `max`.
    pub(crate) fn read_range(
        &self,
        file: &dyn ObjectReader,
        at: u64,
        len: u64,
        max: u64,
    ) -> Result<Vec<u8>> {
        let len = len.min(file.size().saturating_sub(at));
        if len > max {
            return Err(SourceError::TooLarge(format!(
                "a TIFF chunk of {len} bytes"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, at).map_err(io)?;
        Ok(buf)
    }
}

/// A JPEG chunk of a TIFF as one standalone stream: the shared JPEGTables (SOI..EOI, without the
/// EOI), then the chunk without its SOI; the chunk as it is when either is not so framed.
pub(crate) fn with_tables(tables: &[u8], chunk: Vec<u8>) -> Vec<u8> {
    if tables.len() < 4 || !tables.ends_with(&[0xFF, 0xD9]) || !chunk.starts_with(&[0xFF, 0xD8]) {
        return chunk;
    }
    let mut out = Vec::with_capacity(tables.len() + chunk.len());
    out.extend_from_slice(&tables[..tables.len() - 2]);
    out.extend_from_slice(&chunk[2..]);
    out
}

/// The level an IFD describes, if it is one this reader can read tile by tile.
fn tiled_level(r: &Reader<'_>, tags: &[Tag]) -> Result<Option<Level>> {
    let get = |code: u16| tags.iter().find(|t| t.code == code);
    let one = |code: u16| get(code).and_then(|t| r.values(t).first().copied());
    let (Some(w), Some(h), Some(tw), Some(th)) = (one(256), one(257), one(322), one(323)) else {
        return Ok(None);
    };
    let samples = one(277).unwrap_or(1);
    let bits_ok = get(258).is_none_or(|t| r.values(t).iter().all(|&b| b == 8));
    let planar_ok = one(284).unwrap_or(1) == 1;
    let photometric = one(262).unwrap_or(1);
    let codec = match one(259).unwrap_or(1) {
        1 => TileCodec::None,
        7 => TileCodec::Jpeg,
        _ => return Ok(None),
    };
    let colour_ok = match (samples, photometric, codec) {
        (1, 1, _) => true,
        (3, 2, _) => true,
        (3, 6, TileCodec::Jpeg) => true, // YCbCr inside JPEG: the JPEG decoder converts it
        _ => false,
    };
    if !(bits_ok && planar_ok && colour_ok) {
        return Ok(None);
    }
    let dims_ok = (1..=1 << 20).contains(&w)
        && (1..=1 << 20).contains(&h)
        && (16..=8192).contains(&tw)
        && (16..=8192).contains(&th);
    if !dims_ok {
        return Err(SourceError::Undecodable(
            "TIFF with implausible dimensions".into(),
        ));
    }
    let (w, h, tw, th) = (w as u32, h as u32, tw as u32, th as u32);
    let tiles = u64::from(w.div_ceil(tw)) * u64::from(h.div_ceil(th));
    let offsets = get(324).map(|t| r.values(t)).unwrap_or_default();
    let counts = get(325).map(|t| r.values(t)).unwrap_or_default();
    if tiles > MAX_TILES || (offsets.len() as u64) < tiles || (counts.len() as u64) < tiles {
        return Err(SourceError::Undecodable(
            "TIFF tile table incomplete".into(),
        ));
    }
    let jpeg_tables = get(347).map(|t| t.value.clone()).filter(|v| !v.is_empty());
    Ok(Some(Level {
        width: w,
        height: h,
        tile_width: tw,
        tile_height: th,
        samples: samples as u8,
        codec,
        jpeg_tables,
        rgb_jpeg: codec == TileCodec::Jpeg && samples == 3 && photometric == 2,
        offsets,
        counts,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::memory::bytes_reader;
    use proptest::prelude::*;

    /// One little-endian classic IFD: count, 12-byte entries (value inline), no next IFD.
    fn ifd_bytes(entries: &[(u16, u16, u32, u32)]) -> Vec<u8> {
        let mut v = (entries.len() as u16).to_le_bytes().to_vec();
        for &(tag, typ, count, value) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&typ.to_le_bytes());
            v.extend_from_slice(&count.to_le_bytes());
            v.extend_from_slice(&value.to_le_bytes());
        }
        v.extend_from_slice(&0u32.to_le_bytes());
        v
    }

    /// A classic little-endian TIFF with one tiled IFD (2x2 tiles of 16 px) whose entries follow.
    fn tiled_header() -> Vec<u8> {
        let mut v = b"II*\0\x08\0\0\0".to_vec();
        let entries: [(u16, u16, u32, u32); 8] = [
            (256, 4, 1, 32),
            (257, 4, 1, 32),
            (259, 3, 1, 1),
            (262, 3, 1, 1),
            (322, 4, 1, 16),
            (323, 4, 1, 16),
            (324, 4, 4, 200),
            (325, 4, 4, 216),
        ];
        v.extend(ifd_bytes(&entries));
        v.resize(200, 0);
        for off in [232u32, 488, 744, 1000] {
            v.extend_from_slice(&off.to_le_bytes());
        }
        for _ in 0..4 {
            v.extend_from_slice(&256u32.to_le_bytes());
        }
        v.resize(1256, 7);
        v
    }

    /// Two tiled levels: 32x32 in IFD0, 16x16 as its SubIFD (tag 330), nothing chained.
    fn subifd_file() -> Vec<u8> {
        let ifd = |w: u32, offsets: u32, sub: Option<u32>| {
            let mut entries: Vec<(u16, u16, u32, u32)> = vec![
                (256, 4, 1, w),
                (257, 4, 1, w),
                (259, 3, 1, 1),
                (262, 3, 1, 1),
                (322, 4, 1, 16),
                (323, 4, 1, 16),
                (324, 4, 1, offsets),
                (325, 4, 1, 256),
            ];
            if let Some(s) = sub {
                entries.push((330, 13, 1, s));
            }
            ifd_bytes(&entries)
        };
        // 32x32 with 16 px tiles needs 4 tiles: give it an offsets array instead of one value.
        let mut v = b"II*\0\x08\0\0\0".to_vec();
        let mut first = ifd(32, 400, Some(300));
        // Patch entries 324/325 of the first IFD to count 4 (arrays at 400 and 416).
        for (n, (tag, at)) in [(324u16, 400u32), (325, 416)].iter().enumerate() {
            let e = 2 + (6 + n) * 12;
            assert_eq!(u16::from_le_bytes([first[e], first[e + 1]]), *tag);
            first[e + 4..e + 8].copy_from_slice(&4u32.to_le_bytes());
            first[e + 8..e + 12].copy_from_slice(&at.to_le_bytes());
        }
        v.extend(first);
        v.resize(300, 0);
        v.extend(ifd(16, 1600, None));
        v.resize(400, 0);
        for off in [432u32, 688, 944, 1200] {
            v.extend_from_slice(&off.to_le_bytes());
        }
        for _ in 0..4 {
            v.extend_from_slice(&256u32.to_le_bytes());
        }
        v.resize(1856, 9);
        v
    }

    #[test]
    fn reads_reductions_kept_in_subifds() -> Result<()> {
        let p = read(&subifd_file())?.ok_or_else(|| io(std::io::Error::other("not read")))?;
        let dims: Vec<_> = p.levels.iter().map(|l| (l.width, l.height)).collect();
        assert_eq!(dims, vec![(32, 32), (16, 16)]);
        Ok(())
    }

    fn read(bytes: &[u8]) -> Result<Option<Pyramid>> {
        read_pyramid(&*bytes_reader(bytes.to_vec()))
    }

    #[test]
    fn reads_a_tiled_level_and_its_tiles() -> Result<()> {
        let bytes = tiled_header();
        let p = read(&bytes)?.ok_or_else(|| io(std::io::Error::other("not read")))?;
        let l = &p.levels[0];
        assert_eq!(
            (l.width, l.height, l.tile_width, l.grid()),
            (32, 32, 16, (2, 2))
        );
        let f = bytes_reader(bytes);
        assert_eq!(l.read_tile(&*f, 1, 1, 1 << 20)?, vec![7u8; 256]);
        assert!(l.read_tile(&*f, 2, 0, 1 << 20).is_err(), "outside the grid");
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// A damaged directory is an error or "not tiled", never a panic or a huge allocation.
        #[test]
        fn damaged_directories_never_panic(at in 0usize..1256, len in 1usize..16, byte in any::<u8>()) {
            let mut bytes = tiled_header();
            for b in bytes.iter_mut().skip(at).take(len) {
                *b = byte;
            }
            let _ = read(&bytes);
        }
    }
}
