//! Sources decoded whole (PNG, GIF, WebP and CMYK JPEG by the `image` crate, flat TIFF by
//! [`super::tiff_flat`]), kept in the
//! decoded cache with a lazily built pyramid of 2x2 halvings: level 0 decoded once, every other
//! level halved from the one above, so a viewer's tiles of one image cost one decode.

use super::jpeg;
use crate::formats::orientation::{self, Orientation};
use crate::iiif::canonical::{CanonicalRequest, Rect};
use crate::render::cache::DecodedCache;
use crate::render::ops::halve;
use crate::render::{color, plan, RenderError, Result, SourceRef};
use crate::source::{ObjectReader, SourceKind};
use image::{DynamicImage, ImageDecoder};
use std::sync::Arc;

/// Level 0 (the whole image at full size, displayed orientation) of a flat source, through the
/// decoded cache.
pub(crate) fn full_image(
    src: SourceRef<'_>,
    cache: &DecodedCache,
    max: u64,
) -> Result<Arc<DynamicImage>> {
    if src.kind == SourceKind::Jpeg {
        if let Some(level) = jpeg::full_level(src, cache, max)? {
            return Ok(level);
        }
    }
    cache.get_or_build(src.fingerprint, 0, || decode(src.reader, src.kind, max))
}

/// The region from a pyramid level of a source decoded whole: level 0 by the `image` crate, every
/// other level by halving the one above.
pub(crate) fn cached_region(
    src: SourceRef<'_>,
    cache: &DecodedCache,
    req: &CanonicalRequest,
    max: u64,
) -> Result<(Arc<DynamicImage>, Rect)> {
    fn level(
        src: SourceRef<'_>,
        cache: &DecodedCache,
        k: usize,
        max: u64,
    ) -> Result<Arc<DynamicImage>> {
        cache.get_or_build(src.fingerprint, k, || {
            if k == 0 {
                decode(src.reader, src.kind, max)
            } else {
                Ok(halve(&*level(src, cache, k - 1, max)?))
            }
        })
    }
    let (k, region) = plan::pick_level(req);
    Ok((level(src, cache, k, max)?, region))
}

/// Decode the whole source into 8-bit gray or colour, with or without alpha, turned as its
/// orientation says (EXIF in JPEG, PNG `eXIf` and WebP `EXIF`; the TIFF Orientation tag): the
/// displayed image, whose size the probe reports.
pub(crate) fn decode(
    reader: &dyn ObjectReader,
    kind: SourceKind,
    max_decode_bytes: u64,
) -> Result<DynamicImage> {
    match kind {
        SourceKind::Tiff => return super::tiff_flat::decode(reader, max_decode_bytes),
        SourceKind::Jpeg => return cmyk_jpeg(reader, max_decode_bytes),
        _ => {}
    }
    let image_reader = image::ImageReader::new(reader.stream())
        .with_guessed_format()
        .map_err(|e| RenderError::Source(e.into()))?;
    match decode_reader(image_reader, max_decode_bytes) {
        // A PNG whose checksums are wrong: browsers and Pillow show it, so do we.
        Err(RenderError::Undecodable(first)) if kind == SourceKind::Png => {
            png_ignoring_crc(reader, max_decode_bytes)
                .map(|img| low_bit_gray_key(reader, img))
                .map_err(|_| RenderError::Undecodable(first))
        }
        // A GIF with no colour table at all: shown with a gray ramp, as Pillow shows it.
        Err(RenderError::Undecodable(first)) if kind == SourceKind::Gif => {
            let patched = gif_with_gray_table(reader, max_decode_bytes)
                .ok_or(RenderError::Undecodable(first))?;
            let patched = crate::source::memory::bytes_reader(patched);
            let image_reader = image::ImageReader::new(patched.stream())
                .with_guessed_format()
                .map_err(|e| RenderError::Source(e.into()))?;
            decode_reader(image_reader, max_decode_bytes)
        }
        Ok(img) if kind == SourceKind::Png => Ok(low_bit_gray_key(reader, img)),
        other => other,
    }
}

/// A gray PNG of 1, 2 or 4 bits with a tRNS key, made transparent where the key says. The `png`
/// crate compares each sample with the first byte of the two-byte key, which is 0 for these
/// depths, so level 0 turned transparent instead of the key's level. Applied again here on the
/// expanded samples: a sample of depth d is expanded by 255 / (2^d - 1), one level to one value.
/// A key above the depth's range is ignored (the PNG spec makes it invalid).
fn low_bit_gray_key(reader: &dyn ObjectReader, img: DynamicImage) -> DynamicImage {
    let Ok(png) = png::Decoder::new_with_options(reader.stream(), png_options()).read_info() else {
        return img;
    };
    let info = png.info();
    let depth = info.bit_depth as u8;
    if info.color_type != png::ColorType::Grayscale || depth >= 8 {
        return img;
    }
    let Some(&[hi, lo]) = info.trns.as_deref() else {
        return img;
    };
    let (key, top) = (u16::from_be_bytes([hi, lo]), (1u16 << depth) - 1);
    let level = (u32::from(key) * 255 / u32::from(top)) as u8;
    let mut la = img.to_luma_alpha8();
    for p in la.pixels_mut() {
        p.0[1] = if key <= top && p.0[0] == level {
            0
        } else {
            255
        };
    }
    DynamicImage::ImageLumaA8(la)
}

/// A CMYK or YCCK JPEG (the only JPEGs decoded whole: libjpeg's route takes the rest): its inks,
/// un-inverted when Adobe's APP14 says Photoshop inverted them, converted to sRGB through its
/// embedded CMYK profile (naively without one), turned as its EXIF says.
fn cmyk_jpeg(reader: &dyn ObjectReader, max: u64) -> Result<DynamicImage> {
    let data = reader.read_all(max)?;
    let (w, h, mut inks) = jpeg::cmyk_inks(&data, max)?;
    if jpeg::has_adobe_marker(&data) {
        inks.iter_mut().for_each(|v| *v = 255 - *v);
    }
    let rgb = color::cmyk_to_rgb(&inks, crate::formats::icc::jpeg_profile(reader).as_deref());
    let img = super::decoded_image(w as u32, h as u32, 3, rgb)?;
    Ok(orientation::jpeg_orientation(&data).apply(img))
}

/// The GIF in `reader` with a global colour table added (a gray ramp, index = level) when it has
/// none; `None` when it has one (the failure was something else) or is no GIF. The `gif` crate
/// refuses frames that have no table of their own and no global one.
pub(crate) fn gif_with_gray_table(reader: &dyn ObjectReader, max: u64) -> Option<Vec<u8>> {
    let bytes = reader.read_all(max).ok()?;
    let header = bytes.get(..13)?;
    if !(header.starts_with(b"GIF87a") || header.starts_with(b"GIF89a")) || header[10] & 0x80 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() + 768);
    out.extend_from_slice(&header[..10]);
    // Global table present, 2^(7+1) = 256 entries; keep the colour-resolution bits.
    out.push(header[10] | 0x80 | 0x07);
    out.extend_from_slice(&header[11..13]);
    out.extend((0..=255u8).flat_map(|v| [v, v, v]));
    out.extend_from_slice(&bytes[13..]);
    Some(out)
}

/// The orientation in a decoder's EXIF block (PNG `eXIf`, WebP `EXIF`), read by our own parser,
/// which also takes the `Exif\0\0`-prefixed blocks the `image` crate skips. A broken block is no
/// reason to refuse the pixels: they are shown as stored, as browsers do.
pub(crate) fn orientation_of(decoder: &mut dyn ImageDecoder) -> Orientation {
    decoder
        .exif_metadata()
        .ok()
        .flatten()
        .and_then(|exif| orientation::exif_orientation(&exif))
        .unwrap_or(Orientation::NORMAL)
}

fn png_options() -> png::DecodeOptions {
    let mut options = png::DecodeOptions::default();
    options.set_ignore_crc(true);
    options
}

/// A PNG decoded by the `png` crate with CRCs ignored (the `image` crate refuses a wrong one), to 8-bit
/// gray or colour. Only tried after the `image` crate has refused the file.
fn png_ignoring_crc(reader: &dyn ObjectReader, max: u64) -> Result<DynamicImage> {
    let bad = |e: png::DecodingError| RenderError::Undecodable(e.to_string());
    let mut decoder = png::Decoder::new_with_options(reader.stream(), png_options());
    decoder.set_limits(png::Limits {
        bytes: usize::try_from(max).unwrap_or(usize::MAX),
    });
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut png = decoder.read_info().map_err(bad)?;
    let size = png
        .output_buffer_size()
        .filter(|&n| n as u64 <= max)
        .ok_or_else(|| {
            RenderError::TooLarge("decoding it would exceed render.max_decode_bytes".into())
        })?;
    let mut buf = vec![0u8; size];
    let frame = png.next_frame(&mut buf).map_err(bad)?;
    buf.truncate(frame.buffer_size());
    let channels = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => 0,
    };
    super::from_samples(frame.width, frame.height, channels, buf)
        .ok_or_else(|| RenderError::Undecodable("PNG rows of an unexpected size".into()))
}

/// The size of a PNG the `image` crate refused, read with CRCs ignored (see [`png_ignoring_crc`]).
pub(crate) fn png_dimensions_ignoring_crc(reader: &dyn ObjectReader) -> Option<(u32, u32)> {
    let png = png::Decoder::new_with_options(reader.stream(), png_options())
        .read_info()
        .ok()?;
    let info = png.info();
    Some((info.width, info.height))
}

fn decode_reader<R: std::io::BufRead + std::io::Seek>(
    mut reader: image::ImageReader<R>,
    max_decode_bytes: u64,
) -> Result<DynamicImage> {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_decode_bytes);
    reader.limits(limits);
    let failed = |e: image::ImageError| match e {
        // The decode budget, not the file, is what stops a decompression bomb: the source is valid but
        // larger than this server decodes.
        image::ImageError::Limits(l) => RenderError::TooLarge(format!(
            "decoding it would exceed render.max_decode_bytes ({l})"
        )),
        // A valid file in a variant the decoders do not read (a TIFF compression, a sample
        // format): 501, as the README's table says, not "corrupt". A file of no known format is
        // not an image at all: 500.
        image::ImageError::Unsupported(u)
            if u.format_hint() != image::error::ImageFormatHint::Unknown =>
        {
            RenderError::Unsupported(u.to_string())
        }
        other => RenderError::Undecodable(other.to_string()),
    };
    let mut decoder = reader.into_decoder().map_err(failed)?;
    // `into_decoder` does not reserve the output against the limits as `decode` does (found by the
    // `decode` fuzz target: a PNG header promising 500 GB): the budget is checked here.
    if decoder.total_bytes() > max_decode_bytes {
        return Err(RenderError::TooLarge(format!(
            "decoding it would take {} bytes, above render.max_decode_bytes ({max_decode_bytes})",
            decoder.total_bytes()
        )));
    }
    let orientation = orientation_of(&mut decoder);
    let img = orientation.apply(DynamicImage::from_decoder(decoder).map_err(failed)?);
    // Found by the `decode` fuzz target: a GIF whose logical screen is 0x0 decodes to an empty image.
    if img.width() == 0 || img.height() == 0 {
        return Err(RenderError::Undecodable("the image has no pixels".into()));
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
