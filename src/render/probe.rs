//! The probe: an image's displayed size and its own tiles, from the header alone (no pixel is
//! decoded), read by the same parsers that render it, so a file the probe accepts is one the
//! renderer reads.

use super::decode::{jpeg, tiff_flat, whole};
use super::plan::Reading;
use super::{RenderError, Result};
use crate::formats::{jp2, orientation, tiff};
use crate::iiif::canonical::ImageSize;
use crate::source::{ObjectReader, SourceError, SourceKind};

/// Limits checked before any pixel is decoded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SourceLimits {
    /// Largest source area in pixels.
    pub(crate) max_source_pixels: u64,
    /// Largest source object in bytes.
    pub(crate) max_source_bytes: u64,
}

/// What the probe learns from a source's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    /// The displayed size (after EXIF orientation).
    pub(crate) size: ImageSize,
    /// The file's own tile width for a pyramidal tiled TIFF with square tiles (info.json then
    /// advertises it, so a viewer's tiles are the stored ones), else `None`.
    pub(crate) tile: Option<u32>,
    /// How its pixels are reached (what a render of it costs).
    pub(crate) reading: Reading,
}

/// Bumped when the probe learns to read something new, so cached probes of old versions are redone.
/// 5: the reading.
pub(crate) const PROBE_VERSION: u32 = 5;

/// Read the image's size from its header, then check the source limits.
pub(crate) fn probe(reader: &dyn ObjectReader, limits: &SourceLimits) -> Result<Probe> {
    let len = reader.size();
    if len > limits.max_source_bytes {
        return Err(SourceError::TooLarge(format!(
            "{len} bytes, above max_source_bytes ({})",
            limits.max_source_bytes
        ))
        .into());
    }
    let mut tile = None;
    let kind = SourceKind::of(reader).map_err(SourceError::from)?;
    let mut reading = match kind {
        SourceKind::Jpeg => Reading::Scaled,
        SourceKind::Jp2 => Reading::Levels,
        _ => Reading::Whole,
    };
    let (width, height) = match kind {
        SourceKind::Tiff => match tiff::read_pyramid(reader)? {
            Some(p) => {
                reading = Reading::Levels;
                let l = &p.levels[0];
                if l.tile_width == l.tile_height {
                    tile = Some(l.tile_width);
                }
                // The displayed size: the Orientation tag may turn the stored pixels a quarter.
                p.orientation.display_size(l.width, l.height)
            }
            // The directory the renderer reads, and the variants it decodes (501 for the rest).
            None => {
                let flat = tiff::read_flat(reader)?;
                tiff_flat::check(&flat)?;
                flat.orientation.display_size(flat.width, flat.height)
            }
        },
        SourceKind::Jp2 => {
            let head = reader.read_range(0, 1 << 20).map_err(SourceError::from)?;
            let h = jp2::read_header(&head)
                .ok_or_else(|| RenderError::Undecodable("unreadable JPEG 2000 header".into()))?;
            (h.width, h.height)
        }
        SourceKind::Jpeg => {
            // EXIF and the frame header sit before the pixels: 256 KiB holds them for practically
            // every JPEG; one with larger metadata in front is read whole.
            let head = reader.read_range(0, 256 << 10).map_err(SourceError::from)?;
            let (info, orient) = match jpeg::read_info(&head) {
                Ok(info) => (info, orientation::jpeg_orientation(&head)),
                Err(_) => {
                    let data = reader.read_all(limits.max_source_bytes)?;
                    (
                        jpeg::read_info(&data)?,
                        orientation::jpeg_orientation(&data),
                    )
                }
            };
            orient.display_size(info.width, info.height)
        }
        SourceKind::Png => match whole_dimensions(reader) {
            // As the renderer does (`decode::whole`): a PNG with wrong checksums is read anyway.
            Err(e) => whole::png_dimensions_ignoring_crc(reader).ok_or(e)?,
            Ok(dims) => dims,
        },
        SourceKind::Gif => match whole_dimensions(reader) {
            // As the renderer does: a GIF without any colour table is read with a gray ramp.
            Err(e) => whole::gif_with_gray_table(reader, limits.max_source_bytes)
                .map(crate::source::memory::bytes_reader)
                .and_then(|patched| whole_dimensions(&*patched).ok())
                .ok_or(e)?,
            Ok(dims) => dims,
        },
        SourceKind::Webp | SourceKind::Other => whole_dimensions(reader)?,
    };
    if width == 0 || height == 0 {
        return Err(RenderError::Undecodable("the image has no pixels".into()));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_source_pixels {
        return Err(SourceError::TooLarge(format!(
            "{width}x{height} = {pixels} pixels, above max_source_pixels ({})",
            limits.max_source_pixels
        ))
        .into());
    }
    Ok(Probe {
        size: ImageSize { width, height },
        tile,
        reading,
    })
}

/// The displayed dimensions the `image` crate reads from a header: stored dimensions, swapped when the
/// orientation (EXIF in PNG, WebP and JPEG; TIFF's tag) turns the image a quarter.
fn whole_dimensions(reader: &dyn ObjectReader) -> Result<(u32, u32)> {
    use image::ImageDecoder;
    let mut decoder = image::ImageReader::new(reader.stream())
        .with_guessed_format()
        .map_err(SourceError::from)?
        .into_decoder()
        .map_err(|e| match e {
            // The same answer the renderer would give (see `decode::whole`): 501 for a valid
            // variant it does not read, so info.json never promises what images cannot deliver.
            image::ImageError::Unsupported(u)
                if u.format_hint() != image::error::ImageFormatHint::Unknown =>
            {
                RenderError::Unsupported(u.to_string())
            }
            other => RenderError::Undecodable(other.to_string()),
        })?;
    let (w, h) = decoder.dimensions();
    // The renderer's own reading of the orientation (`whole::orientation_of`).
    Ok(whole::orientation_of(&mut decoder).display_size(w, h))
}
