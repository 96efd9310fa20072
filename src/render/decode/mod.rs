//! Decoding, one file per source kind: [`jpeg`] (libjpeg with DCT scaling and cropping, our SIMD
//! kernels), [`tiff`] (the tiles of a pyramid level), [`jp2`] (openjpeg: resolution reduction and
//! decode area, reading through the backend), and [`whole`] (everything decoded whole by the `image`
//! crate, with a cached pyramid of halvings; flat TIFF by [`tiff_flat`]). Each returns the region's pixels in one of the 8-bit
//! layouts [`from_samples`] builds.

pub(crate) mod jp2;
pub(crate) mod jpeg;
mod jpeg_simd;
mod libjpeg;
pub(crate) mod tiff;
pub(crate) mod tiff_flat;
pub(crate) mod whole;

use crate::formats::{icc, jp2 as jp2_dir, tiff as tiff_dir};
use crate::source::{ObjectReader, SourceKind};
use image::{DynamicImage, ImageDecoder};

/// The ICC profile embedded in a source, read from its headers (never its pixels): JPEG's `APP2`
/// segments, TIFF's tag 34675, JP2's `colr` box, and the `image` crate's decoders for PNG (`iCCP`),
/// WebP (`ICCP`) and GIF. Any failure is "no profile": a source is never refused for its profile.
pub(crate) fn profile(reader: &dyn ObjectReader, kind: SourceKind) -> Option<Vec<u8>> {
    embedded_profile(reader, kind).filter(|p| crate::render::color::describes_rgb_or_gray(p))
}

fn embedded_profile(reader: &dyn ObjectReader, kind: SourceKind) -> Option<Vec<u8>> {
    match kind {
        SourceKind::Jpeg => icc::jpeg_profile(reader),
        SourceKind::Tiff => match tiff_dir::read_pyramid(reader) {
            Ok(Some(pyramid)) => pyramid.icc,
            _ => tiff_dir::read_flat(reader).ok()?.icc,
        },
        // The JP2 header boxes come before the codestream: the first mebibyte holds them.
        SourceKind::Jp2 => jp2_dir::icc_profile(&reader.read_range(0, 1 << 20).ok()?),
        SourceKind::Png | SourceKind::Gif | SourceKind::Webp | SourceKind::Other => {
            decoder_profile(reader)
        }
    }
}

fn decoder_profile(reader: &dyn ObjectReader) -> Option<Vec<u8>> {
    let mut decoder = image::ImageReader::new(reader.stream())
        .with_guessed_format()
        .ok()?
        .into_decoder()
        .ok()?;
    decoder.icc_profile().ok().flatten()
}

/// 8-bit interleaved samples as an image: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA channels. `None` when
/// the buffer does not hold `w` x `h` pixels. The one place that maps the decoders' and resizer's raw
/// buffers back to the layouts everything downstream works on.
pub(crate) fn from_samples(w: u32, h: u32, channels: usize, buf: Vec<u8>) -> Option<DynamicImage> {
    samples_to_image(w, h, channels, buf)
}

/// [`from_samples`] for a decoder's output, whose length a decoder of ours computed: a mismatch
/// is a bug of ours, reported as one.
pub(crate) fn decoded_image(
    w: u32,
    h: u32,
    channels: usize,
    buf: Vec<u8>,
) -> crate::render::Result<DynamicImage> {
    let len = buf.len();
    samples_to_image(w, h, channels, buf).ok_or_else(|| {
        crate::render::RenderError::bug(format!(
            "{len} decoded bytes for {w}x{h} with {channels} channels"
        ))
    })
}

fn samples_to_image(w: u32, h: u32, channels: usize, buf: Vec<u8>) -> Option<DynamicImage> {
    match channels {
        1 => image::GrayImage::from_raw(w, h, buf).map(DynamicImage::ImageLuma8),
        2 => image::GrayAlphaImage::from_raw(w, h, buf).map(DynamicImage::ImageLumaA8),
        3 => image::RgbImage::from_raw(w, h, buf).map(DynamicImage::ImageRgb8),
        4 => image::RgbaImage::from_raw(w, h, buf).map(DynamicImage::ImageRgba8),
        _ => None,
    }
}
