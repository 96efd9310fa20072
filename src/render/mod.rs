//! Rendering: decode a source, then apply the request's operations in the spec's order
//! (3.0 §4: region -> size -> mirror -> rotation -> quality -> format) and encode.
//!
//! Pure CPU work on a file path and a [`CanonicalRequest`]: no async, no store, no HTTP. It runs on the
//! bounded worker pool ([`pool`]), never on the async threads.

pub mod cache;
pub mod jpeg;
mod jpeg_simd;
pub mod pool;
pub mod resize;
pub mod tiled_copy;

use crate::error::{Error, Result};
use crate::iiif::canonical::{CanonicalRequest, Rect};
use crate::iiif::{Format, Quality};
use crate::source::{jp2, orientation, tiff};
use cache::{halve, DecodedCache};
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgba, RgbaImage};
use std::fs::File;
use std::io::{Cursor, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Encoder settings. Part of every derivative key: changing them changes the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeSettings {
    /// JPEG quality, 1-100.
    pub jpeg_quality: u8,
    /// Lossy WebP quality, 1-100.
    pub webp_quality: u8,
    /// Send a stored JPEG tile as it is when a request is exactly that tile.
    pub tile_passthrough: bool,
}

impl Default for EncodeSettings {
    fn default() -> Self {
        EncodeSettings {
            jpeg_quality: 85,
            webp_quality: 80,
            tile_passthrough: true,
        }
    }
}

impl EncodeSettings {
    /// A stable description of how `format` is encoded, for the derivative key. Includes the encoder
    /// generation so that a change of encoder library retires old derivatives.
    pub fn describe(&self, format: Format) -> String {
        match format {
            Format::Jpg => format!(
                "jpeg-encoder-v1 q={} 420 passthrough={}",
                self.jpeg_quality, self.tile_passthrough
            ),
            Format::Png => "image-png-v1 fast".into(),
            Format::Webp => format!("libwebp-v1 q={}", self.webp_quality),
            Format::Gif => "image-gif-v2 speed=10".into(),
            Format::Tif => "image-tiff-v1".into(),
            Format::Jp2 | Format::Pdf => "unsupported".into(),
        }
    }
}

/// The source of a render: its file, and the key under which its decoded pixels are cached (the
/// caller makes it unique per file version).
pub struct Source<'a> {
    /// The file.
    pub path: &'a Path,
    /// Cache key: path and fingerprint.
    pub cache_key: &'a str,
}

/// Produce the encoded image that `req` describes. Each source format takes its cheapest route to
/// the pixels of the region at (at least) the output's resolution: tiles of a pyramidal TIFF, a
/// DCT-scaled and cropped JPEG decode, or a cached pyramid level of anything else.
pub fn render(
    source: &Source<'_>,
    cache: &DecodedCache,
    req: &CanonicalRequest,
    settings: &EncodeSettings,
    max_decode_bytes: u64,
) -> Result<Vec<u8>> {
    let file = File::open(source.path)
        .map_err(|e| Error::Internal(format!("cannot read the source: {e}")))?;
    let mut magic = [0u8; 12];
    let n = file.read_at(&mut magic, 0).unwrap_or(0);
    let (img, region) = match &magic[..n.min(4)] {
        [0xFF, 0xD8, 0xFF, ..] => match jpeg_region(source, &file, cache, req, max_decode_bytes)? {
            Some(found) => found,
            None => cached_region(source, cache, req, max_decode_bytes)?,
        },
        b"II*\0" | b"MM\0*" | b"II+\0" | b"MM\0+" => match tiff::read_pyramid(&file)? {
            Some(pyramid) => {
                return render_pyramid(&file, &pyramid, req, settings, max_decode_bytes);
            }
            None => cached_region(source, cache, req, max_decode_bytes)?,
        },
        _ if jp2::is_jpeg2000(&magic[..n]) => {
            jp2_region(source.path, &file, req, max_decode_bytes)?
        }
        _ => cached_region(source, cache, req, max_decode_bytes)?,
    };
    let img = apply(&img, region, req);
    encode(img, req.format(), req.quality(), settings)
}

/// Render `req` from a source's tiled copy (see [`tiled_copy`]). `None` when the copy cannot be
/// read (evicted meanwhile, or damaged): the caller renders from the source instead.
pub fn render_tiled_copy(
    copy: &Path,
    req: &CanonicalRequest,
    settings: &EncodeSettings,
    max_decode_bytes: u64,
) -> Option<Result<Vec<u8>>> {
    let file = File::open(copy).ok()?;
    let pyramid = tiff::read_pyramid(&file).ok()??;
    // The copy's tiles are an intermediate (quality 92, 4:4:4), never sent as they are.
    let settings = EncodeSettings {
        tile_passthrough: false,
        ..*settings
    };
    Some(render_pyramid(
        &file,
        &pyramid,
        req,
        &settings,
        max_decode_bytes,
    ))
}

/// Whether the decoded level `req` would be cut from is in the decoded cache already.
pub fn level_in_memory(cache: &DecodedCache, cache_key: &str, req: &CanonicalRequest) -> bool {
    cache.peek(cache_key, pick_level(req).0).is_some()
}

/// True for sources without resolution levels or tiles of their own (everything but pyramidal TIFF
/// and JPEG 2000): the ones a [`tiled_copy`] helps.
pub fn flat_source(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut magic = [0u8; 12];
    let n = file.read_at(&mut magic, 0).unwrap_or(0);
    match &magic[..n.min(4)] {
        b"II*\0" | b"MM\0*" | b"II+\0" | b"MM\0+" => matches!(tiff::read_pyramid(&file), Ok(None)),
        _ => !jp2::is_jpeg2000(&magic[..n]),
    }
}

/// Level 0 (the whole image at full size, displayed orientation) of a flat source, through the
/// decoded cache.
fn full_image(source: &Source<'_>, cache: &DecodedCache, max: u64) -> Result<Arc<DynamicImage>> {
    let file = File::open(source.path)
        .map_err(|e| Error::Internal(format!("cannot read the source: {e}")))?;
    let mut magic = [0u8; 3];
    let n = file.read_at(&mut magic, 0).unwrap_or(0);
    if magic[..n] == [0xFF, 0xD8, 0xFF] {
        let jpg = JpegFile::new(&file, max);
        let (info, orient) = jpg.header()?;
        if !info.cmyk {
            return jpeg_level(source.cache_key, &jpg, orient, cache, 0, true);
        }
    }
    cache.get_or_build(source.cache_key, 0, || decode(source.path, max))
}

/// The region from a pyramid level of a source decoded whole (PNG, GIF, WebP, flat TIFF, CMYK JPEG):
/// level 0 by the `image` crate, every other level by halving the one above.
fn cached_region(
    source: &Source<'_>,
    cache: &DecodedCache,
    req: &CanonicalRequest,
    max_decode_bytes: u64,
) -> Result<(Arc<DynamicImage>, Rect)> {
    fn level(
        source: &Source<'_>,
        cache: &DecodedCache,
        k: usize,
        max: u64,
    ) -> Result<Arc<DynamicImage>> {
        cache.get_or_build(source.cache_key, k, || {
            if k == 0 {
                decode(source.path, max)
            } else {
                Ok(halve(&*level(source, cache, k - 1, max)?))
            }
        })
    }
    let (k, region) = pick_level(req);
    Ok((level(source, cache, k, max_decode_bytes)?, region))
}

/// The region of a JPEG: from a cached level when the level fits the cache (a viewer will ask for
/// its neighbours next), otherwise decoded alone, cropped and DCT-scaled, so a tile or thumbnail of
/// a 20000 px scan never holds the full image. `None` for JPEGs the JPEG route does not convert to RGB
/// (CMYK, YCCK), which take the whole-image route.
fn jpeg_region(
    source: &Source<'_>,
    file: &File,
    cache: &DecodedCache,
    req: &CanonicalRequest,
    max: u64,
) -> Result<Option<(Arc<DynamicImage>, Rect)>> {
    let jpg = JpegFile::new(file, max);
    let (info, orient) = jpg.header()?;
    if info.cmyk {
        return Ok(None);
    }
    let (dw, dh) = orient.display_size(info.width, info.height);
    let (k, region) = pick_level(req);
    let bytes_at = |k: usize| {
        u64::from(jpeg::scaled(dw, k as u32))
            * u64::from(jpeg::scaled(dh, k as u32))
            * u64::from(info.channels)
    };
    let fits = |bytes: u64| bytes <= cache.budget() && bytes <= max;
    // Every decode of a JPEG pays for entropy-decoding the whole file, whatever the scale: that is
    // most of its cost. A part of the image means a viewer is zooming and more levels will follow,
    // so decode it once at full size and halve; the whole image (a thumbnail) is usually asked for
    // once, so decode just its level at DCT scale.
    let whole = req.region()
        == Rect {
            x: 0,
            y: 0,
            w: dw,
            h: dh,
        };
    if !whole && fits(bytes_at(0)) {
        let img = jpeg_level(source.cache_key, &jpg, orient, cache, k, true)?;
        return Ok(Some((img, region)));
    }
    if fits(bytes_at(k)) {
        let img = jpeg_level(source.cache_key, &jpg, orient, cache, k, false)?;
        return Ok(Some((img, region)));
    }
    let kd = (k as u32).min(jpeg::MAX_SCALE_LOG2);
    let at = level_rect(req.region(), kd as usize);
    let stored = orient.stored_rect(at, jpeg::scaled(dw, kd), jpeg::scaled(dh, kd));
    let img = orient.apply(jpeg::decode(jpg.data()?, kd, Some(stored), max)?);
    let whole = Rect {
        x: 0,
        y: 0,
        w: img.width(),
        h: img.height(),
    };
    Ok(Some((Arc::new(img), whole)))
}

/// Level `k` of a JPEG, in displayed orientation. `via_full`: halve down from a full-size decode;
/// otherwise levels 0-3 come straight from the IDCT (or are halved from the level above when that is
/// already in memory: cheaper than decoding again) and coarser ones are halved.
fn jpeg_level(
    key: &str,
    jpg: &JpegFile<'_>,
    orient: orientation::Orientation,
    cache: &DecodedCache,
    k: usize,
    via_full: bool,
) -> Result<Arc<DynamicImage>> {
    cache.get_or_build(key, k, || {
        if k > 0 {
            let above = if via_full || k as u32 > jpeg::MAX_SCALE_LOG2 {
                Some(jpeg_level(key, jpg, orient, cache, k - 1, via_full)?)
            } else {
                cache.peek(key, k - 1)
            };
            if let Some(above) = above {
                return Ok(halve(&above));
            }
        }
        Ok(orient.apply(jpeg::decode(jpg.data()?, k as u32, None, jpg.max)?))
    })
}

/// A pyramidal TIFF: the smallest level that still covers the output, and only its tiles that meet
/// the region. A request that is exactly one stored JPEG tile, unchanged, is answered with the
/// tile's bytes (IIPImage's codec passthrough): no decode, no encode.
fn render_pyramid(
    file: &File,
    pyramid: &tiff::Pyramid,
    req: &CanonicalRequest,
    settings: &EncodeSettings,
    max: u64,
) -> Result<Vec<u8>> {
    let full = &pyramid.levels[0];
    let (fw, fh) = (u64::from(full.width), u64::from(full.height));
    let r = req.region();
    let (ow, oh) = (u64::from(req.width()), u64::from(req.height()));
    let level = pyramid
        .levels
        .iter()
        .rev()
        .find(|l| {
            u64::from(r.w) * u64::from(l.width) >= ow * fw
                && u64::from(r.h) * u64::from(l.height) >= oh * fh
        })
        .unwrap_or(full);
    let (lw, lh) = (u64::from(level.width), u64::from(level.height));
    let x0 = (u64::from(r.x) * lw / fw).min(lw - 1);
    let y0 = (u64::from(r.y) * lh / fh).min(lh - 1);
    let x1 = ((u64::from(r.x) + u64::from(r.w)) * lw)
        .div_ceil(fw)
        .clamp(x0 + 1, lw);
    let y1 = ((u64::from(r.y) + u64::from(r.h)) * lh)
        .div_ceil(fh)
        .clamp(y0 + 1, lh);
    let rect = Rect {
        x: x0 as u32,
        y: y0 as u32,
        w: (x1 - x0) as u32,
        h: (y1 - y0) as u32,
    };
    let (tw, th) = (level.tile_width, level.tile_height);
    let passthrough = settings.tile_passthrough
        && level.codec == tiff::TileCodec::Jpeg
        && req.format() == Format::Jpg
        && matches!(req.quality(), Quality::Default | Quality::Color)
        && !req.mirror()
        && req.degrees() == 0.0
        && rect.x % tw == 0
        && rect.y % th == 0
        && (rect.w, rect.h) == (tw, th)
        && (req.width(), req.height()) == (tw, th);
    if passthrough {
        return level.read_tile(file, rect.x / tw, rect.y / th, max);
    }
    let img = read_tiles(file, level, rect, max)?;
    let whole = Rect {
        x: 0,
        y: 0,
        w: rect.w,
        h: rect.h,
    };
    encode(
        apply(&img, whole, req),
        req.format(),
        req.quality(),
        settings,
    )
}

/// The pixels of `rect` of a tiled level, decoding each tile that meets it (only the part it needs).
fn read_tiles(file: &File, level: &tiff::Level, rect: Rect, max: u64) -> Result<DynamicImage> {
    let ch = usize::from(level.samples);
    let out_bytes = u64::from(rect.w) * u64::from(rect.h) * ch as u64;
    if out_bytes > max {
        return Err(Error::SourceTooLarge(format!(
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
            let pixels: Vec<u8> = match level.codec {
                tiff::TileCodec::Jpeg => {
                    let img = jpeg::decode(&bytes, 0, Some(part), max)?;
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
                        let line = bytes
                            .get(start..start + part.w as usize * ch)
                            .ok_or_else(|| Error::Undecodable("TIFF tile too short".into()))?;
                        v.extend_from_slice(line);
                    }
                    v
                }
            };
            let line = part.w as usize * ch;
            if pixels.len() < line * part.h as usize {
                return Err(Error::Undecodable("TIFF tile decoded short".into()));
            }
            for (i, src) in pixels.chunks_exact(line).take(part.h as usize).enumerate() {
                let y = (iy0 - rect.y) as usize + i;
                let at = y * stride + (ix0 - rect.x) as usize * ch;
                out[at..at + line].copy_from_slice(src);
            }
        }
    }
    from_samples(rect.w, rect.h, ch, out)
        .ok_or_else(|| Error::Internal("tile buffer size mismatch".into()))
}

/// The region of a JPEG 2000 source, decoded by openjpeg at the largest resolution reduction that
/// still covers the output and only over the region (with a file-backed stream: openjpeg's
/// in-memory stream fails on tiled files).
fn jp2_region(
    path: &Path,
    file: &File,
    req: &CanonicalRequest,
    max: u64,
) -> Result<(Arc<DynamicImage>, Rect)> {
    let mut head = vec![0u8; 1 << 20];
    let n = file.read_at(&mut head, 0).unwrap_or(0);
    head.truncate(n);
    let header = jp2::read_header(&head)
        .ok_or_else(|| Error::Undecodable("unreadable JPEG 2000 header".into()))?;
    let (k, _) = pick_level(req);
    let reduce = (k as u32).min(u32::from(header.levels));
    let r = req.region();
    // openjpeg holds every sample as an i32 while decoding, up to four components.
    let (rw, rh) = (
        u64::from(jpeg::scaled(r.w, reduce)),
        u64::from(jpeg::scaled(r.h, reduce)),
    );
    if rw * rh * 4 * 4 > max {
        return Err(Error::SourceTooLarge(format!(
            "decoding {rw}x{rh} pixels would exceed render.max_decode_bytes ({max})"
        )));
    }
    let area = jpeg2k::DecodeArea::new(
        header.x0 + r.x,
        header.y0 + r.y,
        header.x0 + r.x + r.w,
        header.y0 + r.y + r.h,
    );
    let params = jpeg2k::DecodeParameters::new()
        .reduce(reduce)
        .decode_area(Some(area));
    let decoded = jpeg2k::Image::from_file_with(path, params)
        .map_err(|e| Error::Undecodable(format!("JPEG 2000: {e}")))?;
    let img = jp2_pixels(&decoded)?;
    let whole = Rect {
        x: 0,
        y: 0,
        w: img.width(),
        h: img.height(),
    };
    Ok((Arc::new(img), whole))
}

/// openjpeg's components as 8-bit gray or colour, with or without alpha.
fn jp2_pixels(img: &jpeg2k::Image) -> Result<DynamicImage> {
    use jpeg2k::ColorSpace as C;
    if !matches!(
        img.color_space(),
        C::SRGB | C::Gray | C::Unknown | C::Unspecified
    ) {
        return Err(Error::UnsupportedSource(format!(
            "JPEG 2000 colour space {:?}",
            img.color_space()
        )));
    }
    let comps = img.components();
    let Some(first) = comps.first() else {
        return Err(Error::Undecodable("JPEG 2000 without components".into()));
    };
    let (w, h) = (first.width(), first.height());
    let usable = |c: &jpeg2k::ImageComponent| {
        (c.width(), c.height()) == (w, h) && (1..=16).contains(&c.precision())
    };
    if w == 0 || h == 0 || !comps.iter().all(usable) {
        return Err(Error::UnsupportedSource(
            "JPEG 2000 with subsampled or deeper than 16-bit components".into(),
        ));
    }
    let planes: Vec<Vec<u8>> = comps
        .iter()
        .take(4)
        .map(|c| c.data_u8().collect())
        .collect();
    let interleave = |n: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(w as usize * h as usize * n);
        for i in 0..w as usize * h as usize {
            for p in &planes[..n] {
                out.push(p.get(i).copied().unwrap_or(0));
            }
        }
        out
    };
    from_samples(w, h, planes.len(), interleave(planes.len()))
        .ok_or_else(|| Error::Internal("JPEG 2000 buffer size mismatch".into()))
}

/// 8-bit interleaved samples as an image: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA channels. `None` when
/// the buffer does not hold `w` x `h` pixels. The one place that maps the decoders' and resizer's raw
/// buffers back to the layouts everything downstream works on.
pub(crate) fn from_samples(w: u32, h: u32, channels: usize, buf: Vec<u8>) -> Option<DynamicImage> {
    match channels {
        1 => image::GrayImage::from_raw(w, h, buf).map(DynamicImage::ImageLuma8),
        2 => image::GrayAlphaImage::from_raw(w, h, buf).map(DynamicImage::ImageLumaA8),
        3 => image::RgbImage::from_raw(w, h, buf).map(DynamicImage::ImageRgb8),
        4 => image::RgbaImage::from_raw(w, h, buf).map(DynamicImage::ImageRgba8),
        _ => None,
    }
}

/// A JPEG source read lazily: the header from the first bytes, the whole file only when a decode
/// needs it, so a render cut from a cached level never reads the (possibly 100 MB) file.
struct JpegFile<'a> {
    file: &'a File,
    max: u64,
    whole: std::cell::OnceCell<Vec<u8>>,
}

impl<'a> JpegFile<'a> {
    fn new(file: &'a File, max: u64) -> JpegFile<'a> {
        JpegFile {
            file,
            max,
            whole: std::cell::OnceCell::new(),
        }
    }

    fn data(&self) -> Result<&[u8]> {
        if let Some(d) = self.whole.get() {
            return Ok(d);
        }
        let d = read_all(self.file, self.max)?;
        Ok(self.whole.get_or_init(|| d))
    }

    /// Frame header and EXIF orientation. 256 KiB holds them for practically every JPEG; one with
    /// larger metadata in front (big ICC profiles, XMP) is read whole.
    fn header(&self) -> Result<(jpeg::JpegInfo, orientation::Orientation)> {
        let mut head = vec![0u8; 256 << 10];
        let n = self
            .file
            .read_at(&mut head, 0)
            .map_err(|e| Error::Internal(format!("cannot read the source: {e}")))?;
        head.truncate(n);
        match jpeg::read_info(&head) {
            Ok(info) => Ok((info, orientation::jpeg_orientation(&head))),
            Err(_) => {
                let data = self.data()?;
                Ok((jpeg::read_info(data)?, orientation::jpeg_orientation(data)))
            }
        }
    }
}

/// The whole file, refusing files larger than the decode budget (a JPEG's compressed size is far
/// below its decoded size, so a valid source never gets near it).
fn read_all(file: &File, max: u64) -> Result<Vec<u8>> {
    let len = file
        .metadata()
        .map_err(|e| Error::Internal(format!("cannot read the source: {e}")))?
        .len();
    if len > max {
        return Err(Error::SourceTooLarge(format!(
            "{len} bytes, above render.max_decode_bytes ({max})"
        )));
    }
    let mut data = Vec::with_capacity(len as usize);
    let mut f = file;
    f.read_to_end(&mut data)
        .map_err(|e| Error::Internal(format!("cannot read the source: {e}")))?;
    Ok(data)
}

/// The coarsest pyramid level that still has at least the output's resolution, and the request's region
/// in that level's pixels. Tiles of scale factor s start at multiples of 512*s, so at level log2(s)
/// their edges stay on whole pixels.
fn pick_level(req: &CanonicalRequest) -> (usize, Rect) {
    let r = req.region();
    let (ow, oh) = (req.width(), req.height());
    let mut k = 0usize;
    while k < 16 && (r.w >> (k + 1)) >= ow && (r.h >> (k + 1)) >= oh {
        k += 1;
    }
    (k, level_rect(r, k))
}

/// Region `r` (full-size pixels) in the pixels of level `k`, widened to whole pixels.
fn level_rect(r: Rect, k: usize) -> Rect {
    if k == 0 {
        return r;
    }
    let (x0, y0) = (r.x >> k, r.y >> k);
    let x1 = (u64::from(r.x) + u64::from(r.w)).div_ceil(1 << k) as u32;
    let y1 = (u64::from(r.y) + u64::from(r.h)).div_ceil(1 << k) as u32;
    Rect {
        x: x0,
        y: y0,
        w: (x1 - x0).max(1),
        h: (y1 - y0).max(1),
    }
}

/// Decode the whole source into 8-bit gray or colour, with or without alpha.
fn decode(path: &Path, max_decode_bytes: u64) -> Result<DynamicImage> {
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| Error::Internal(format!("cannot read the source: {e}")))?;
    decode_reader(reader, max_decode_bytes)
}

/// Decode an image held in memory, with the same limits and normalisation as a source file (for the
/// fuzzers and the hostile-input tests).
pub fn decode_bytes(bytes: &[u8], max_decode_bytes: u64) -> Result<DynamicImage> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) && !jpeg::read_info(bytes).is_ok_and(|i| i.cmyk) {
        return jpeg::decode(bytes, 0, None, max_decode_bytes);
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Undecodable(e.to_string()))?;
    decode_reader(reader, max_decode_bytes)
}

fn decode_reader<R: std::io::BufRead + std::io::Seek>(
    mut reader: image::ImageReader<R>,
    max_decode_bytes: u64,
) -> Result<DynamicImage> {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_decode_bytes);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        // The decode budget, not the file, is what stops a decompression bomb: the source is valid but
        // larger than this server decodes.
        image::ImageError::Limits(l) => Error::SourceTooLarge(format!(
            "decoding it would exceed render.max_decode_bytes ({l})"
        )),
        other => Error::Undecodable(other.to_string()),
    })?;
    // Found by the `decode` fuzz target: a GIF whose logical screen is 0x0 decodes to an empty image.
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::Undecodable("the image has no pixels".into()));
    }
    use image::ColorType as C;
    // Everything downstream works on 8-bit samples; gray stays gray (a third of the memory of RGB).
    Ok(match img.color() {
        C::L8 | C::La8 | C::Rgb8 | C::Rgba8 => img,
        C::L16 => DynamicImage::ImageLuma8(img.to_luma8()),
        C::La16 => DynamicImage::ImageLumaA8(img.to_luma_alpha8()),
        c if c.has_alpha() => DynamicImage::ImageRgba8(img.to_rgba8()),
        _ => DynamicImage::ImageRgb8(img.to_rgb8()),
    })
}

/// Region, size, mirror, rotation, in that order. `r` is the region in `img`'s pixels (clamped here,
/// since a level's edge may round one pixel short).
fn apply(img: &DynamicImage, r: Rect, req: &CanonicalRequest) -> DynamicImage {
    let x = r.x.min(img.width().saturating_sub(1));
    let y = r.y.min(img.height().saturating_sub(1));
    let (w, h) = (
        r.w.min(img.width() - x).max(1),
        r.h.min(img.height() - y).max(1),
    );
    let img = if (w, h) == (req.width(), req.height()) {
        img.crop_imm(x, y, w, h)
    } else {
        let rect = Rect { x, y, w, h };
        resize::crop_resize(img, rect, req.width(), req.height()).unwrap_or_else(|| {
            img.crop_imm(x, y, w, h).resize_exact(
                req.width(),
                req.height(),
                image::imageops::FilterType::Triangle,
            )
        })
    };
    let img = if req.mirror() { img.fliph() } else { img };
    let degrees = req.degrees() % 360.0;
    if degrees == 0.0 {
        img
    } else if degrees == 90.0 {
        img.rotate90()
    } else if degrees == 180.0 {
        img.rotate180()
    } else if degrees == 270.0 {
        img.rotate270()
    } else {
        DynamicImage::ImageRgba8(rotate_arbitrary(&img.to_rgba8(), degrees))
    }
}

/// Output size of a rotation by `degrees` (2.1 appendix A): the bounding box of the rotated image.
pub fn rotated_size(w: u32, h: u32, degrees: f64) -> (u32, u32) {
    let (s, c) = degrees.to_radians().sin_cos();
    let (wf, hf) = (f64::from(w), f64::from(h));
    let bw = (wf * c).abs() + (hf * s).abs();
    let bh = (hf * c).abs() + (wf * s).abs();
    // Round up so no rotated content is cut off; the epsilon keeps 1000.0000001 from becoming 1001.
    let px = |v: f64| ((v - 1e-6).ceil().max(1.0)) as u32;
    (px(bw), px(bh))
}

/// Rotate clockwise by any angle into the bounding box, sampling bilinearly; corners are transparent.
fn rotate_arbitrary(src: &RgbaImage, degrees: f64) -> RgbaImage {
    let (w, h) = src.dimensions();
    let (ow, oh) = rotated_size(w, h, degrees);
    let (s, c) = degrees.to_radians().sin_cos();
    let (cx, cy) = (f64::from(w) / 2.0, f64::from(h) / 2.0);
    let (ocx, ocy) = (f64::from(ow) / 2.0, f64::from(oh) / 2.0);
    let sample = |x: i64, y: i64| -> [f64; 4] {
        if x < 0 || y < 0 || x >= i64::from(w) || y >= i64::from(h) {
            [0.0; 4]
        } else {
            let p = src.get_pixel(x as u32, y as u32).0;
            // Premultiply so transparent neighbours do not darken edges.
            let a = f64::from(p[3]) / 255.0;
            [
                f64::from(p[0]) * a,
                f64::from(p[1]) * a,
                f64::from(p[2]) * a,
                f64::from(p[3]),
            ]
        }
    };
    ImageBuffer::from_fn(ow, oh, |ox, oy| {
        // Inverse of a clockwise rotation (y points down) about the centres.
        let dx = f64::from(ox) + 0.5 - ocx;
        let dy = f64::from(oy) + 0.5 - ocy;
        let sx = dx * c + dy * s + cx - 0.5;
        let sy = -dx * s + dy * c + cy - 0.5;
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        let (p00, p10, p01, p11) = (
            sample(x0, y0),
            sample(x0 + 1, y0),
            sample(x0, y0 + 1),
            sample(x0 + 1, y0 + 1),
        );
        let mut out = [0f64; 4];
        for i in 0..4 {
            let top = p00[i] * (1.0 - fx) + p10[i] * fx;
            let bottom = p01[i] * (1.0 - fx) + p11[i] * fx;
            out[i] = top * (1.0 - fy) + bottom * fy;
        }
        let a = out[3];
        let un = |v: f64| {
            if a > 0.0 {
                (v * 255.0 / a).round().clamp(0.0, 255.0) as u8
            } else {
                0
            }
        };
        Rgba([
            un(out[0]),
            un(out[1]),
            un(out[2]),
            a.round().clamp(0.0, 255.0) as u8,
        ])
    })
}

/// Composite any alpha onto white (for formats and qualities without transparency).
fn flatten(img: DynamicImage) -> DynamicImage {
    let blend = |c: u8, a: u8| {
        ((u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a)) + 127) / 255) as u8
    };
    match img {
        DynamicImage::ImageRgba8(buf) => {
            let (w, h) = buf.dimensions();
            DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
                let p = buf.get_pixel(x, y).0;
                image::Rgb([blend(p[0], p[3]), blend(p[1], p[3]), blend(p[2], p[3])])
            }))
        }
        DynamicImage::ImageLumaA8(buf) => {
            let (w, h) = buf.dimensions();
            DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| {
                let p = buf.get_pixel(x, y).0;
                Luma([blend(p[0], p[1])])
            }))
        }
        other if other.color().has_alpha() => flatten(DynamicImage::ImageRgba8(other.to_rgba8())),
        other => other,
    }
}

/// [`encode`] for the criterion benches (the stage alone, default quality).
#[doc(hidden)]
pub fn encode_for_bench(
    img: DynamicImage,
    format: Format,
    settings: &EncodeSettings,
) -> Result<Vec<u8>> {
    encode(img, format, Quality::Default, settings)
}

/// Quality (after rotation), then the encoder.
fn encode(
    img: DynamicImage,
    format: Format,
    quality: Quality,
    settings: &EncodeSettings,
) -> Result<Vec<u8>> {
    let keep_alpha = format.has_alpha() && img.color().has_alpha();
    let img = match quality {
        Quality::Default | Quality::Color => img,
        Quality::Gray if keep_alpha => DynamicImage::ImageLumaA8(img.to_luma_alpha8()),
        Quality::Gray => DynamicImage::ImageLuma8(flatten(img).to_luma8()),
        Quality::Bitonal => {
            let mut gray = flatten(img).to_luma8();
            for p in gray.pixels_mut() {
                p.0[0] = if p.0[0] >= 128 { 255 } else { 0 };
            }
            DynamicImage::ImageLuma8(gray)
        }
    };
    let mut out = Cursor::new(Vec::new());
    let err = |e: image::ImageError| Error::Internal(format!("encoding {format} failed: {e}"));
    match format {
        Format::Jpg => {
            return jpeg::encode(&flatten(img), settings.jpeg_quality);
        }
        Format::Png => {
            use image::codecs::png::{CompressionType, FilterType, PngEncoder};
            // Fast compression: ~15x cheaper than the default for ~11 % more bytes; derivatives are
            // stored once and served many times, but the first viewer waits for this.
            let enc =
                PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
            img.write_with_encoder(enc).map_err(err)?;
        }
        Format::Webp => {
            // Lossy, like the JPEG it usually replaces: lossless WebP of a photographic tile is
            // several times larger.
            let q = f32::from(settings.webp_quality);
            let (w, h) = (img.width(), img.height());
            let encoded = if img.color().has_alpha() {
                let px = img.to_rgba8();
                webp::Encoder::from_rgba(px.as_raw(), w, h).encode_simple(false, q)
            } else {
                let px = img.to_rgb8();
                webp::Encoder::from_rgb(px.as_raw(), w, h).encode_simple(false, q)
            };
            return encoded
                .map(|m| m.to_vec())
                .map_err(|e| Error::Internal(format!("encoding webp failed: {e:?}")));
        }
        Format::Gif => {
            // NeuQuant at speed 10 (the image crate's default is 1): a 512 px tile in ~25 ms instead
            // of ~250 ms, visually the same palette.
            let enc = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 10);
            DynamicImage::ImageRgba8(img.to_rgba8())
                .write_with_encoder(enc)
                .map_err(err)?;
        }
        Format::Tif => {
            let img = match img {
                DynamicImage::ImageLumaA8(_) => DynamicImage::ImageRgba8(img.to_rgba8()),
                other => other,
            };
            img.write_to(&mut out, ImageFormat::Tiff).map_err(err)?;
        }
        Format::Jp2 | Format::Pdf => {
            return Err(Error::Internal(format!(
                "format {format} cannot be rendered"
            )));
        }
    }
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_bounding_boxes() {
        assert_eq!(rotated_size(100, 50, 90.0), (50, 100));
        assert_eq!(rotated_size(100, 100, 45.0), (142, 142));
        assert_eq!(rotated_size(100, 50, 180.0), (100, 50));
    }

    #[test]
    fn arbitrary_rotation_keeps_content_and_clears_corners() {
        let src = RgbaImage::from_pixel(40, 20, Rgba([200, 10, 10, 255]));
        let out = rotate_arbitrary(&src, 30.0);
        assert_eq!(out.dimensions(), rotated_size(40, 20, 30.0));
        assert_eq!(out.get_pixel(0, 0).0[3], 0, "corner is transparent");
        let c = out.get_pixel(out.width() / 2, out.height() / 2).0;
        assert_eq!(c, [200, 10, 10, 255], "centre keeps its colour");
    }

    #[test]
    fn flatten_composites_on_white() {
        let img = DynamicImage::ImageRgba8(RgbaImage::from_pixel(1, 1, Rgba([0, 0, 0, 0])));
        assert_eq!(flatten(img).to_rgb8().get_pixel(0, 0).0, [255, 255, 255]);
    }
}
