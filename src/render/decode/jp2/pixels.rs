//! openjpeg's decoded components as 8-bit gray or colour, with or without alpha: components brought
//! to 8 bits, subsampled components (4:2:2, 4:2:0 chroma) upsampled by replication, sYCC converted
//! to RGB.

use crate::render::{RenderError, Result};
use image::DynamicImage;
use openjpeg_sys as opj;

/// One decoded component, borrowed from openjpeg's image.
struct Plane<'a> {
    w: usize,
    h: usize,
    dx: u32,
    dy: u32,
    prec: u32,
    signed: bool,
    data: &'a [i32],
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

/// openjpeg's components as 8-bit gray or colour, with or without alpha.
pub(super) fn pixels(img: &opj::opj_image_t) -> Result<DynamicImage> {
    if img.comps.is_null() || img.numcomps == 0 {
        return Err(RenderError::Undecodable(
            "JPEG 2000 without components".into(),
        ));
    }
    // SAFETY: openjpeg's image holds `numcomps` components, each with w*h decoded samples.
    let comps = unsafe { std::slice::from_raw_parts(img.comps, img.numcomps as usize) };
    let mut planes = Vec::new();
    for c in comps.iter().take(4) {
        let (w, h) = (c.w as usize, c.h as usize);
        if w == 0 || h == 0 || c.data.is_null() || !(1..=16).contains(&c.prec) {
            return Err(RenderError::Unsupported(
                "JPEG 2000 with empty or deeper than 16-bit components".into(),
            ));
        }
        planes.push(Plane {
            w,
            h,
            dx: c.dx,
            dy: c.dy,
            prec: c.prec,
            signed: c.sgnd != 0,
            // SAFETY: as above.
            data: unsafe { std::slice::from_raw_parts(c.data, w * h) },
        });
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
    let unsaid = matches!(
        img.color_space,
        opj::COLOR_SPACE::OPJ_CLRSPC_UNKNOWN | opj::COLOR_SPACE::OPJ_CLRSPC_UNSPECIFIED
    );
    let chroma_subsampled = planes.len() == 3
        && (planes[0].dx, planes[0].dy) == (rdx, rdy)
        && (planes[1].dx > rdx || planes[1].dy > rdy);
    let sycc = (matches!(
        img.color_space,
        opj::COLOR_SPACE::OPJ_CLRSPC_SYCC | opj::COLOR_SPACE::OPJ_CLRSPC_EYCC
    ) || (unsaid && chroma_subsampled))
        && planes.len() >= 3;
    if !matches!(
        img.color_space,
        opj::COLOR_SPACE::OPJ_CLRSPC_SRGB
            | opj::COLOR_SPACE::OPJ_CLRSPC_GRAY
            | opj::COLOR_SPACE::OPJ_CLRSPC_UNKNOWN
            | opj::COLOR_SPACE::OPJ_CLRSPC_UNSPECIFIED
    ) && !sycc
    {
        return Err(RenderError::Unsupported(format!(
            "JPEG 2000 colour space {:?}",
            img.color_space
        )));
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
        return crate::render::decode::from_samples(w as u32, h as u32, n, out)
            .ok_or_else(|| RenderError::Internal("JPEG 2000 buffer size mismatch".into()));
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
    crate::render::decode::from_samples(w as u32, h as u32, n, out)
        .ok_or_else(|| RenderError::Internal("JPEG 2000 buffer size mismatch".into()))
}
