//! openjpeg's decoded components as 8-bit gray or colour, with or without alpha: components brought
//! to 8 bits, subsampled components (4:2:2, 4:2:0 chroma) upsampled by replication, sYCC converted
//! to RGB.
//!
//! Pure: works on the planes `ffi` borrows from openjpeg's image.

use crate::render::{RenderError, Result};
use image::DynamicImage;

/// One decoded component, borrowed from openjpeg's image.
pub(super) struct Plane<'a> {
    pub(super) w: usize,
    pub(super) h: usize,
    pub(super) dx: u32,
    pub(super) dy: u32,
    /// Bits per sample, 1 to 16.
    pub(super) prec: u32,
    pub(super) signed: bool,
    /// `w * h` samples, row by row.
    pub(super) data: &'a [i32],
}

/// What the file says of its colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Colour {
    Srgb,
    Gray,
    /// sYCC or e-sYCC.
    Ycc,
    /// Nothing (a raw codestream) or unspecified.
    Unsaid,
    /// Anything else (CMYK, e-sRGB, ...).
    Other,
}

impl Plane<'_> {
    /// The sample under output pixel (x, y) of the reference plane (`ref_dx`, `ref_dy`), at 8 bits.
    fn at(&self, x: usize, y: usize, ref_dx: u32, ref_dy: u32) -> i32 {
        let sx = (x * ref_dx as usize / self.dx.max(1) as usize).min(self.w - 1);
        let sy = (y * ref_dy as usize / self.dy.max(1) as usize).min(self.h - 1);
        self.to_8_bits(self.data[sy * self.w + sx])
    }

    /// A sample brought to 8 bits, unsigned (not yet clamped), as Pillow brings it: signed samples
    /// moved up by half their range, deeper ones shifted down with rounding, shallower ones
    /// shifted up (a 1-bit 1 is 128, a 4-bit 15 is 240), so the corpus compares like with like.
    fn to_8_bits(&self, mut v: i32) -> i32 {
        if self.signed {
            v += 1 << (self.prec - 1);
        }
        match self.prec.cmp(&8) {
            std::cmp::Ordering::Greater => (v + (1 << (self.prec - 9))) >> (self.prec - 8),
            std::cmp::Ordering::Less => v << (8 - self.prec),
            std::cmp::Ordering::Equal => v,
        }
    }
}

/// openjpeg's components as 8-bit gray or colour, with or without alpha (the first four).
pub(super) fn pixels(planes: &[Plane<'_>], colour: Colour) -> Result<DynamicImage> {
    let planes = &planes[..planes.len().min(4)];
    if planes
        .iter()
        .any(|p| p.w == 0 || p.h == 0 || !(1..=16).contains(&p.prec) || p.data.len() != p.w * p.h)
    {
        return Err(RenderError::Unsupported(
            "JPEG 2000 with empty or deeper than 16-bit components".into(),
        ));
    }
    // The output grid is the finest component's.
    let Some(reference) = planes.iter().min_by_key(|p| (p.dx, p.dy)) else {
        return Err(RenderError::Undecodable(
            "JPEG 2000 without components".into(),
        ));
    };
    let (w, h, rdx, rdy) = (reference.w, reference.h, reference.dx, reference.dy);
    // A raw codestream says nothing of its colours; three components whose second is subsampled
    // are luma and chroma (what opj_decompress and Pillow assume too).
    let unsaid = colour == Colour::Unsaid;
    let chroma_subsampled = planes.len() == 3
        && (planes[0].dx, planes[0].dy) == (rdx, rdy)
        && (planes[1].dx > rdx || planes[1].dy > rdy);
    let sycc = (colour == Colour::Ycc || (unsaid && chroma_subsampled)) && planes.len() >= 3;
    if colour == Colour::Other || (colour == Colour::Ycc && !sycc) {
        return Err(RenderError::Unsupported(
            "JPEG 2000 colour space other than sRGB, gray or sYCC".into(),
        ));
    }
    let n = planes.len();
    if !sycc && planes.iter().all(|p| (p.w, p.h) == (w, h)) {
        // Every component at full size, the common case: one pass per component, no lookups.
        let mut out = vec![0u8; w * h * n];
        for (i, p) in planes.iter().enumerate() {
            for (px, &v) in out.chunks_exact_mut(n).zip(p.data) {
                px[i] = p.to_8_bits(v).clamp(0, 255) as u8;
            }
        }
        return crate::render::decode::decoded_image(w as u32, h as u32, n, out);
    }
    let mut out = Vec::with_capacity(w * h * n);
    for y in 0..h {
        for x in 0..w {
            let mut px = [0i32; 4];
            for (i, p) in planes.iter().enumerate() {
                px[i] = p.at(x, y, rdx, rdy);
            }
            if sycc {
                // sYCC (IEC 61966-2-1 Annex F), as openjpeg's own conversion does it.
                let (yy, cb, cr) = (
                    f64::from(px[0]),
                    f64::from(px[1] - 128),
                    f64::from(px[2] - 128),
                );
                px[0] = (yy + 1.402 * cr).round() as i32;
                px[1] = (yy - 0.344 * cb - 0.714 * cr).round() as i32;
                px[2] = (yy + 1.772 * cb).round() as i32;
            }
            out.extend(px[..n].iter().map(|&v| v.clamp(0, 255) as u8));
        }
    }
    crate::render::decode::decoded_image(w as u32, h as u32, n, out)
}
