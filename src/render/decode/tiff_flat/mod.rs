//! Flat TIFF (anything that is not a JPEG- or raw-tiled pyramid): the first image decoded whole, in
//! every variant Pillow (libtiff) shows. Our own reader, rather than the `tiff` crate the `image`
//! crate wraps: that crate refuses palette images below 8 bits, 2/4/12-bit gray, CIELab, signed and
//! 32-bit integers as the `image` crate maps them, CCITT Group 3 and modified Huffman, LZMA and
//! old-style JPEG, and it ignores FillOrder; extending a reader we own by one function per
//! compression and per photometric interpretation is less code than patching around another's.
//!
//! Stages: the directory ([`tiff::Flat`], read once by the probe and again here) -> each chunk's
//! stored bytes, bit-reversed when FillOrder is 2 -> decompressed ([`decompress`]) -> the predictor
//! undone -> every sample scaled to 8 bits in one buffer of the whole image -> pixels by the
//! photometric interpretation (gray, RGB, palette, CMYK through its ICC profile, YCbCr, CIELab) ->
//! associated alpha un-premultiplied -> the Orientation tag applied.
//!
//! Samples deeper than 8 bits are scaled to 8 (everything downstream works on 8-bit samples); signed
//! integers are shifted by half their range (the most negative value is black); floating point is
//! taken as 0.0 = black, 1.0 = white, clamped.

mod colour;
mod compression;

use super::{decoded_image, jpeg};
use crate::formats::tiff::{self, Flat};
use crate::render::{color, ops, RenderError, Result};
use crate::source::ObjectReader;
use colour::{lab_to_srgb, palette, unpremultiply};
use compression::decompress;
use image::DynamicImage;
use std::io::Write;

/// Whether this server decodes the image `flat` describes: `Err(Unsupported)` (501) for a valid
/// variant it does not read, so the probe refuses exactly what the renderer would.
pub(crate) fn check(flat: &Flat) -> Result<()> {
    let no = |what: String| Err(RenderError::Unsupported(format!("TIFF {what}")));
    let f = flat;
    match f.compression {
        1 | 5 | 8 | 32946 | 32773 | 34925 => {}
        2..=4 => {
            if f.bits != 1 || f.samples != 1 {
                return no(format!("CCITT coding of {} x {} bits", f.samples, f.bits));
            }
            if f.compression == 3 && f.t4_options & 1 != 0 {
                return no("CCITT Group 3 with 2-D coding".into());
            }
            if f.width > u32::from(u16::MAX) {
                return no("CCITT image wider than 65535 pixels".into());
            }
        }
        6 | 7 => {
            if f.bits != 8 || f.planar || (f.photometric == 5 && f.compression == 6) {
                return no("JPEG compression of this layout".into());
            }
            if f.compression == 6 && f.ojpeg.is_none() {
                return no("old-style JPEG without an interchange stream".into());
            }
        }
        c => return no(format!("compression {c}")),
    }
    let depth_ok = match f.sample_format {
        1 | 2 => (1..=32).contains(&f.bits),
        3 => matches!(f.bits, 16 | 32 | 64),
        s => return no(format!("sample format {s}")),
    };
    if !depth_ok {
        return no(format!(
            "samples of {} bits in format {}",
            f.bits, f.sample_format
        ));
    }
    if matches!(f.predictor, 2 | 3) && !matches!(f.bits, 8 | 16 | 32 | 64) {
        return no(format!(
            "predictor {} on {}-bit samples",
            f.predictor, f.bits
        ));
    }
    if f.predictor == 3 && f.sample_format != 3 {
        return no("floating-point predictor on integer samples".into());
    }
    let colour = f.samples.saturating_sub(u32::from(f.alpha.is_some()));
    let layout_ok = match f.photometric {
        0 | 1 => f.samples >= 1,
        2 => colour >= 3,
        3 => f.samples >= 1 && f.bits <= 8 && f.colormap.len() >= 3 << f.bits,
        5 => f.inkset == 1 && f.samples >= 4,
        // YCbCr: JPEG converts it itself; uncompressed only without subsampling.
        6 => f.samples >= 3 && (matches!(f.compression, 6 | 7) || f.subsampling == (1, 1)),
        8 | 9 => f.samples >= 3,
        _ => false,
    };
    if !layout_ok {
        return no(format!(
            "photometric interpretation {} with {} samples of {} bits",
            f.photometric, f.samples, f.bits
        ));
    }
    Ok(())
}

/// Decode the first image of a flat TIFF to 8-bit gray or colour, with or without alpha, turned as
/// its Orientation tag says.
pub(crate) fn decode(file: &dyn ObjectReader, max: u64) -> Result<DynamicImage> {
    let flat = tiff::read_flat(file)?;
    check(&flat)?;
    let (w, h) = (flat.width as usize, flat.height as usize);
    let pixels = w as u64 * h as u64;
    let out_channels = out_channels(&flat);
    // The sample buffer and the pixels built from it are alive together.
    let need = pixels * (u64::from(flat.samples) + out_channels as u64);
    if need > max {
        return Err(RenderError::TooLarge(format!(
            "decoding {w}x{h} pixels would exceed render.max_decode_bytes ({max})"
        )));
    }
    let samples = match flat.compression {
        6 | 7 => jpeg_samples(file, &flat, max)?,
        _ => chunk_samples(file, &flat, max)?,
    };
    let img = pixels_of(&flat, samples)?;
    Ok(flat.orientation.apply(img))
}

/// Channels of the decoded image: gray or RGB, plus alpha when an extra sample is alpha.
fn out_channels(f: &Flat) -> usize {
    let colour = match f.photometric {
        0 | 1 => 1,
        _ => 3,
    };
    colour + usize::from(f.alpha.is_some())
}

/// How one sample's stored value becomes 8 bits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Unsigned, scaled from its range.
    Uint,
    /// Signed, shifted by half its range and scaled.
    Int,
    /// IEEE float, 0.0..=1.0.
    Float,
    /// An index, kept as it is (palettes).
    Index,
}

fn kind_of(f: &Flat, sample: usize) -> Kind {
    match (f.photometric, f.sample_format, sample) {
        (3, _, 0) => Kind::Index,
        // CIELab's a* and b* are signed whatever SampleFormat says.
        (8, _, 1 | 2) => Kind::Int,
        (_, 2, _) => Kind::Int,
        (_, 3, _) => Kind::Float,
        _ => Kind::Uint,
    }
}

/// The whole image's samples, 8 bits each, interleaved (`samples` per pixel), from its chunks.
fn chunk_samples(file: &dyn ObjectReader, f: &Flat, max: u64) -> Result<Vec<u8>> {
    let (w, h) = (f.width as usize, f.height as usize);
    let spp = f.samples as usize;
    let (cw, ch) = (f.chunk.0 as usize, f.chunk.1 as usize);
    let across = w.div_ceil(cw);
    let per_plane = across * h.div_ceil(ch);
    let planes = if f.planar { spp } else { 1 };
    let chunk_spp = spp / planes;
    let row_bytes = (cw * chunk_spp * f.bits as usize).div_ceil(8);
    let kinds: Vec<Kind> = (0..spp).map(|s| kind_of(f, s)).collect();
    let mut out = vec![0u8; w * h * spp];
    let mut row8 = vec![0u8; cw * chunk_spp];
    for plane in 0..planes {
        for j in 0..per_plane {
            let (cx, cy) = (j % across, j / across);
            let (x0, y0) = (cx * cw, cy * ch);
            // Strips hold only the rows left in the image; tiles are always whole.
            let rows = if f.tiled { ch } else { ch.min(h - y0) };
            let raw = f.read_chunk(file, plane * per_plane + j, max)?;
            let mut data = decompress(f, raw, row_bytes, rows, max)?;
            // A short chunk (a truncated file) is shown with what it has, as libtiff-based viewers
            // show it; the rest stays black.
            data.resize(row_bytes * rows, 0);
            undo_predictor(f, &mut data, row_bytes, cw * chunk_spp);
            let visible = cw.min(w - x0);
            for r in 0..rows.min(h - y0) {
                let row = &data[r * row_bytes..(r + 1) * row_bytes];
                let kinds = if f.planar {
                    &kinds[plane..=plane]
                } else {
                    &kinds[..]
                };
                to_8bit(row, visible * chunk_spp, f, kinds, &mut row8);
                let at = ((y0 + r) * w + x0) * spp;
                if f.planar {
                    for (x, &v) in row8[..visible].iter().enumerate() {
                        out[at + x * spp + plane] = v;
                    }
                } else {
                    out[at..at + visible * spp].copy_from_slice(&row8[..visible * spp]);
                }
            }
        }
    }
    Ok(out)
}

/// Scale the first `n` samples of a stored row to 8 bits each, into `out`.
fn to_8bit(row: &[u8], n: usize, f: &Flat, kinds: &[Kind], out: &mut [u8]) {
    let bits = f.bits as usize;
    let max = if f.bits >= 32 {
        u64::from(u32::MAX)
    } else {
        (1u64 << f.bits) - 1
    };
    for (i, o) in out[..n].iter_mut().enumerate() {
        let kind = kinds[i % kinds.len()];
        let raw = match bits {
            8 => u64::from(row[i]),
            16 | 32 | 64 => {
                let b = &row[i * bits / 8..(i + 1) * bits / 8];
                let mut v = 0u64;
                if f.little_endian {
                    b.iter().rev().for_each(|&x| v = v << 8 | u64::from(x));
                } else {
                    b.iter().for_each(|&x| v = v << 8 | u64::from(x));
                }
                v
            }
            _ => read_bits(row, i * bits, bits),
        };
        *o = match kind {
            Kind::Index => raw as u8,
            Kind::Uint => scale(raw, max),
            // Flipping the sign bit maps the most negative value to 0 and the most positive to max.
            Kind::Int => scale(raw ^ (1u64 << (bits.min(64) - 1)), max),
            Kind::Float => {
                let v = match bits {
                    16 => half_to_f32(raw as u16),
                    32 => f32::from_bits(raw as u32),
                    _ => f64::from_bits(raw) as f32,
                };
                if v.is_nan() {
                    0
                } else {
                    (v.clamp(0.0, 1.0) * 255.0).round() as u8
                }
            }
        };
    }
}

/// `v` of a range 0..=`max` as 0..=255, rounded.
fn scale(v: u64, max: u64) -> u8 {
    if max == 255 {
        return v as u8;
    }
    ((u128::from(v.min(max)) * 255 + u128::from(max / 2)) / u128::from(max)) as u8
}

/// `n` bits (at most 32) at bit offset `at` of `row`, most significant bit first.
fn read_bits(row: &[u8], at: usize, n: usize) -> u64 {
    let mut v = 0u64;
    for k in at..at + n {
        let bit = row.get(k / 8).map_or(0, |b| (b >> (7 - k % 8)) & 1);
        v = v << 1 | u64::from(bit);
    }
    v
}

/// IEEE half precision to single.
fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// Undo the predictor in place, row by row (`n` samples a row).
fn undo_predictor(f: &Flat, data: &mut [u8], row_bytes: usize, n: usize) {
    let spp = if f.planar { 1 } else { f.samples as usize };
    let bytes = (f.bits / 8) as usize;
    match f.predictor {
        2 => {
            for row in data.chunks_exact_mut(row_bytes) {
                match bytes {
                    1 => {
                        for i in spp..n.min(row.len()) {
                            row[i] = row[i].wrapping_add(row[i - spp]);
                        }
                    }
                    2 | 4 | 8 => {
                        let get = |row: &[u8], i: usize| {
                            let b = &row[i * bytes..(i + 1) * bytes];
                            let mut v = 0u64;
                            if f.little_endian {
                                b.iter().rev().for_each(|&x| v = v << 8 | u64::from(x));
                            } else {
                                b.iter().for_each(|&x| v = v << 8 | u64::from(x));
                            }
                            v
                        };
                        for i in spp..n.min(row.len() / bytes) {
                            let v = get(row, i).wrapping_add(get(row, i - spp));
                            let b = &mut row[i * bytes..(i + 1) * bytes];
                            for (k, x) in b.iter_mut().enumerate() {
                                let shift = if f.little_endian {
                                    8 * k
                                } else {
                                    8 * (bytes - 1 - k)
                                };
                                *x = (v >> shift) as u8;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        // Floating point: the bytes of a row are differenced, then stored most significant byte of
        // every sample first, then the next byte of every sample, and so on.
        3 if bytes > 0 => {
            let mut tmp = vec![0u8; n * bytes];
            for row in data.chunks_exact_mut(row_bytes) {
                let len = (n * bytes).min(row.len());
                for i in spp..len {
                    row[i] = row[i].wrapping_add(row[i - spp]);
                }
                tmp[..len].copy_from_slice(&row[..len]);
                for i in 0..n {
                    for k in 0..bytes {
                        let Some(&v) = tmp.get(k * n + i) else {
                            continue;
                        };
                        // Byte k is the k-th most significant; written in the file's order.
                        let at = if f.little_endian { bytes - 1 - k } else { k };
                        if let Some(x) = row.get_mut(i * bytes + at) {
                            *x = v;
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// The samples of a JPEG-compressed TIFF (new style: each chunk a JPEG stream sharing the
/// JPEGTables; old style: one interchange stream for the whole image), decoded to 8-bit gray or
/// RGB, which is what the pixel stage then reads them as.
fn jpeg_samples(file: &dyn ObjectReader, f: &Flat, max: u64) -> Result<Vec<u8>> {
    let (w, h) = (f.width as usize, f.height as usize);
    // RGB-coded JPEG (Photometric RGB) must be told; YCbCr is the JPEG default.
    let rgb_coded = f.photometric == 2;
    let channels = match f.photometric {
        0 | 1 => 1,
        5 => 4,
        _ => 3,
    };
    if f.samples as usize != channels {
        return Err(RenderError::Unsupported(format!(
            "JPEG-compressed TIFF with {} samples",
            f.samples
        )));
    }
    let mut out = vec![0u8; w * h * channels];
    if f.compression == 6 {
        let img = ojpeg(file, f, max)?;
        copy_into(&mut out, w, h, channels, &img, 0, 0);
        return Ok(out);
    }
    let (cw, ch) = (f.chunk.0 as usize, f.chunk.1 as usize);
    let across = w.div_ceil(cw);
    let count = across * h.div_ceil(ch);
    let tables = &f.jpeg_tables;
    for j in 0..count {
        let chunk = f.read_chunk(file, j, max)?;
        let stream = tiff::with_tables(tables, chunk);
        let (x0, y0) = ((j % across) * cw, (j / across) * ch);
        if channels == 4 {
            let (iw, ih, inks) = jpeg::cmyk_inks(&stream, max)?;
            copy_samples(&mut out, w, h, 4, &inks, iw, ih, x0, y0);
        } else {
            let img =
                jpeg::decode_coded(&stream, 0, None, max, rgb_coded).map_err(cmyk_unsupported)?;
            copy_into(&mut out, w, h, channels, &img, x0, y0);
        }
    }
    Ok(out)
}

/// libjpeg's CMYK and YCCK streams inside a TIFF are not read here.
fn cmyk_unsupported(e: RenderError) -> RenderError {
    match e {
        RenderError::Internal(m) => RenderError::Unsupported(format!("JPEG-compressed TIFF: {m}")),
        other => other,
    }
}

/// Old-style JPEG (compression 6): the interchange stream named by tags 513/514. When that stream
/// stops before its scan (tables and frame header only, as some writers made it), the strips hold
/// the scan and are appended.
fn ojpeg(file: &dyn ObjectReader, f: &Flat, max: u64) -> Result<DynamicImage> {
    let Some((at, len)) = f.ojpeg else {
        return Err(RenderError::Unsupported(
            "old-style JPEG without an interchange stream".into(),
        ));
    };
    let len = if len == 0 { u64::MAX } else { len };
    let mut stream = f.read_range(file, at, len, max)?;
    let has_scan = stream.windows(2).any(|m| m == [0xFF, 0xDA]);
    if !has_scan {
        if stream.ends_with(&[0xFF, 0xD9]) {
            stream.truncate(stream.len() - 2);
        }
        for i in 0..f.offsets.len() {
            stream.extend_from_slice(&f.read_chunk(file, i, max)?);
        }
        if !stream.ends_with(&[0xFF, 0xD9]) {
            stream.extend_from_slice(&[0xFF, 0xD9]);
        }
    }
    jpeg::decode_coded(&stream, 0, None, max, f.photometric == 2).map_err(cmyk_unsupported)
}

/// Copy a decoded chunk's pixels into the image's sample buffer at (`x0`, `y0`), cut at the image's
/// edges (tiles overhang them).
fn copy_into(
    out: &mut [u8],
    w: usize,
    h: usize,
    channels: usize,
    img: &DynamicImage,
    x0: usize,
    y0: usize,
) {
    let raw = if channels == 1 {
        img.to_luma8().into_raw()
    } else {
        img.to_rgb8().into_raw()
    };
    copy_samples(
        out,
        w,
        h,
        channels,
        &raw,
        img.width() as usize,
        img.height() as usize,
        x0,
        y0,
    );
}

/// Copy `iw` x `ih` interleaved samples into the image's sample buffer at (`x0`, `y0`), cut at the
/// image's edges.
#[allow(clippy::too_many_arguments)]
fn copy_samples(
    out: &mut [u8],
    w: usize,
    h: usize,
    channels: usize,
    raw: &[u8],
    iw: usize,
    ih: usize,
    x0: usize,
    y0: usize,
) {
    if x0 >= w || y0 >= h || raw.len() < iw * ih * channels {
        return;
    }
    let cols = iw.min(w - x0);
    for r in 0..ih.min(h - y0) {
        let src = &raw[r * iw * channels..(r * iw + cols) * channels];
        let at = ((y0 + r) * w + x0) * channels;
        out[at..at + cols * channels].copy_from_slice(src);
    }
}

/// The pixels from the 8-bit samples, by the photometric interpretation.
fn pixels_of(f: &Flat, samples: Vec<u8>) -> Result<DynamicImage> {
    let (w, h) = (f.width, f.height);
    let jpeg = matches!(f.compression, 6 | 7);
    let spp = if jpeg {
        samples.len() / (w as usize * h as usize).max(1)
    } else {
        f.samples as usize
    };
    let alpha_at = f.alpha.map(|_| match f.photometric {
        0 | 1 => 1,
        5 => 4,
        _ => 3,
    });
    let oc = out_channels(f);
    // The samples are already the pixels: JPEG's decoded gray or RGB, or stored 8-bit gray
    // (BlackIsZero) or RGB, with or without alpha, with no samples beyond those.
    let img = if jpeg && f.photometric != 5 {
        decoded_image(w, h, spp, samples)?
    } else if matches!(f.photometric, 1 | 2) && spp == oc {
        decoded_image(w, h, oc, samples)?
    } else {
        let mut out = Vec::with_capacity(w as usize * h as usize * oc);
        let lut = (f.photometric == 3).then(|| palette(f));
        for px in samples.chunks_exact(spp) {
            match f.photometric {
                0 => out.push(255 - px[0]),
                1 => out.push(px[0]),
                2 => out.extend_from_slice(&px[..3]),
                3 => {
                    let i = usize::from(px[0]);
                    match &lut {
                        Some(lut) => out.extend_from_slice(&lut[i * 3..i * 3 + 3]),
                        None => out.extend_from_slice(&[0, 0, 0]),
                    }
                }
                5 => out.extend_from_slice(&[0, 0, 0]), // filled in one pass below
                6 => out.extend_from_slice(&ops::ycbcr_to_rgb([px[0], px[1], px[2]])),
                8 | 9 => out.extend_from_slice(&lab_to_srgb(px[0], px[1], px[2])),
                p => {
                    return Err(RenderError::Unsupported(format!(
                        "TIFF photometric interpretation {p}"
                    )))
                }
            }
            if let Some(a) = alpha_at {
                out.push(px.get(a).copied().unwrap_or(255));
            }
        }
        if f.photometric == 5 {
            let inks: Vec<u8> = samples
                .chunks_exact(spp)
                .flat_map(|px| [px[0], px[1], px[2], px[3]])
                .collect();
            let rgb = color::cmyk_to_rgb(&inks, f.icc.as_deref());
            for (o, c) in out.chunks_exact_mut(oc).zip(rgb.chunks_exact(3)) {
                o[..3].copy_from_slice(c);
            }
        }
        decoded_image(w, h, oc, out)?
    };
    Ok(if f.alpha == Some(true) {
        unpremultiply(img)
    } else {
        img
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use compression::packbits;
    use proptest::prelude::*;

    #[test]
    fn samples_scale_from_every_depth() {
        assert_eq!(scale(1, 1), 255);
        assert_eq!(scale(2, 3), 170);
        assert_eq!(scale(15, 15), 255);
        assert_eq!(scale(4095, 4095), 255);
        assert_eq!(scale(2048, 4095), 128);
        assert_eq!(scale(65535, 65535), 255);
        assert_eq!(scale(257 * 100, 65535), 100);
        assert_eq!(scale(u64::from(u32::MAX), u64::from(u32::MAX)), 255);
    }

    #[test]
    fn bits_are_read_most_significant_first() {
        let row = [0b1011_0010, 0b0111_0000];
        assert_eq!(read_bits(&row, 0, 1), 1);
        assert_eq!(read_bits(&row, 1, 1), 0);
        assert_eq!(read_bits(&row, 0, 4), 0b1011);
        assert_eq!(read_bits(&row, 6, 4), 0b1001);
        assert_eq!(read_bits(&row, 4, 12), 0b0010_0111_0000);
        // Past the end reads zeros rather than panicking.
        assert_eq!(read_bits(&row, 14, 4), 0);
    }

    #[test]
    fn half_floats_convert() {
        assert_eq!(half_to_f32(0x3C00), 1.0);
        assert_eq!(half_to_f32(0x3800), 0.5);
        assert_eq!(half_to_f32(0x0000), 0.0);
        assert_eq!(half_to_f32(0xC000), -2.0);
        assert!(half_to_f32(0x7E00).is_nan());
    }

    #[test]
    fn packbits_expands_runs_and_literals() {
        // Apple's example: literal, run, literal.
        let data = [
            0xFE, 0xAA, 0x02, 0x80, 0x00, 0x2A, 0xFD, 0xAA, 0x03, 0x80, 0x00, 0x2A, 0x22, 0xF7,
            0xAA,
        ];
        let mut out = Vec::new();
        packbits(&data, &mut out, 24);
        assert_eq!(
            out,
            [
                0xAA, 0xAA, 0xAA, 0x80, 0x00, 0x2A, 0xAA, 0xAA, 0xAA, 0xAA, 0x80, 0x00, 0x2A, 0x22,
                0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA
            ]
        );
    }

    #[test]
    fn lab_white_black_and_primaries_land_where_srgb_puts_them() {
        assert_eq!(lab_to_srgb(255, 128, 128), [255, 255, 255]);
        assert_eq!(lab_to_srgb(0, 128, 128), [0, 0, 0]);
        // sRGB red is L* 54.29, a* 80.8, b* 69.9 in D50 (Bradford).
        let red = lab_to_srgb((54.29f64 * 2.55).round() as u8, 128 + 81, 128 + 70);
        assert!(red[0] > 245 && red[1] < 30 && red[2] < 30, "{red:?}");
        // Mid gray: L* 50 is sRGB 119.
        let gray = lab_to_srgb(128, 128, 128);
        assert!(gray.iter().all(|&v| (118..=120).contains(&v)), "{gray:?}");
    }

    proptest! {
        /// Any byte string, as any compression, decompresses to at most the chunk's size and never
        /// panics.
        #[test]
        fn decompression_is_bounded(data in proptest::collection::vec(any::<u8>(), 0..300),
                                    c in prop::sample::select(vec![1u64, 2, 3, 4, 5, 8, 32773, 34925]),
                                    rows in 1usize..20) {
            let f = test_flat(c);
            let row_bytes = (f.width as usize).div_ceil(8);
            if let Ok(out) = decompress(&f, data, row_bytes, rows, 1 << 20) {
                prop_assert!(out.len() <= row_bytes * rows);
            }
        }

        /// Horizontal differencing undone matches a running sum, for 8 and 16 bits.
        #[test]
        fn predictor_two_is_a_running_sum(deltas in proptest::collection::vec(any::<u8>(), 1..64)) {
            let mut f = test_flat(1);
            f.samples = 1;
            f.predictor = 2;
            f.bits = 8;
            let n = deltas.len();
            let mut data = deltas.clone();
            undo_predictor(&f, &mut data, n, n);
            let mut sum = 0u8;
            for (i, &d) in deltas.iter().enumerate() {
                sum = sum.wrapping_add(d);
                prop_assert_eq!(data[i], sum);
            }
        }
    }

    fn test_flat(compression: u64) -> Flat {
        Flat {
            width: 37,
            height: 20,
            compression,
            photometric: 0,
            bits: 1,
            samples: 1,
            sample_format: 1,
            planar: false,
            lsb_first: false,
            predictor: 1,
            chunk: (37, 20),
            tiled: false,
            offsets: vec![],
            counts: vec![],
            colormap: vec![],
            alpha: None,
            jpeg_tables: vec![],
            ojpeg: None,
            subsampling: (1, 1),
            t4_options: 0,
            inkset: 1,
            icc: None,
            orientation: crate::formats::orientation::Orientation::NORMAL,
            little_endian: true,
        }
    }
}
