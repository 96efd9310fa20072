//! Pure pixel operations, in the order Image API 3.0 §4 applies them: region and size (one step:
//! the crop is the resampler's source window), mirror, rotation, then quality. Also the 2x2 halving
//! that builds pyramid levels. No I/O; every function takes pixels and returns pixels.
//!
//! Resizing is `fast_image_resize` (SIMD convolution) behind one non-generic function
//! ([`crop_resize`]), so the crate's heavy generics are instantiated once and rebuilds stay quick.

use crate::iiif::canonical::{CanonicalRequest, Rect};
use crate::iiif::Quality;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageBuffer, Luma, Rgba, RgbaImage};
use std::sync::Arc;

/// Region, size, mirror, rotation, in that order. `r` is the region in `img`'s pixels (clamped here,
/// since a level's edge may round one pixel short).
pub(crate) fn apply(img: Arc<DynamicImage>, r: Rect, req: &CanonicalRequest) -> DynamicImage {
    let x = r.x.min(img.width().saturating_sub(1));
    let y = r.y.min(img.height().saturating_sub(1));
    let (w, h) = (
        r.w.min(img.width() - x).max(1),
        r.h.min(img.height() - y).max(1),
    );
    let img = if (x, y, w, h) == (0, 0, img.width(), img.height())
        && (w, h) == (req.width(), req.height())
    {
        // All of it at its own size (a tile read from a pyramid, a region decoded to the crop):
        // no copy unless the pixels are shared with the decoded cache.
        Arc::unwrap_or_clone(img)
    } else if (w, h) == (req.width(), req.height()) {
        img.crop_imm(x, y, w, h)
    } else {
        let rect = Rect { x, y, w, h };
        crop_resize(&img, rect, req.width(), req.height()).unwrap_or_else(|| {
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

/// The quality (3.0 §4.4), after rotation: gray and bitonal from the colours (composited on white
/// unless the output keeps alpha), default and color as they are.
pub(crate) fn quality(img: DynamicImage, quality: Quality, format_has_alpha: bool) -> DynamicImage {
    let keep_alpha = format_has_alpha && img.color().has_alpha();
    match quality {
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
    }
}

/// Output size of a rotation by `degrees` (2.1 appendix A): the bounding box of the rotated image.
pub(crate) fn rotated_size(w: u32, h: u32, degrees: f64) -> (u32, u32) {
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

/// Full-range YCbCr (ITU-R BT.601, TIFF's default coefficients and reference levels) to RGB.
pub(crate) fn ycbcr_to_rgb([y, cb, cr]: [u8; 3]) -> [u8; 3] {
    let (y, cb, cr) = (f32::from(y), f32::from(cb) - 128.0, f32::from(cr) - 128.0);
    let c = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    [
        c(y + 1.402 * cr),
        c(y - 0.344_136 * cb - 0.714_136 * cr),
        c(y + 1.772 * cb),
    ]
}

/// Composite any alpha onto white (for formats and qualities without transparency).
pub(crate) fn flatten(img: DynamicImage) -> DynamicImage {
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

/// `rect` of `img`, scaled to `w` x `h` with a bilinear filter widened when shrinking (every source
/// pixel contributes, so downscaled tiles do not alias). Alpha is premultiplied for the filter, so
/// transparent pixels do not darken edges. `None` only if the library refuses the buffers, in which
/// case the caller falls back to the `image` crate.
pub(crate) fn crop_resize(img: &DynamicImage, rect: Rect, w: u32, h: u32) -> Option<DynamicImage> {
    let (pt, ch) = match img {
        DynamicImage::ImageLuma8(_) => (PixelType::U8, 1),
        DynamicImage::ImageLumaA8(_) => (PixelType::U8x2, 2),
        DynamicImage::ImageRgb8(_) => (PixelType::U8x3, 3),
        DynamicImage::ImageRgba8(_) => (PixelType::U8x4, 4),
        _ => return None,
    };
    let src = ImageRef::new(img.width(), img.height(), img.as_bytes(), pt).ok()?;
    let mut dst = Image::new(w, h, pt);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(
            f64::from(rect.x),
            f64::from(rect.y),
            f64::from(rect.w),
            f64::from(rect.h),
        );
    Resizer::new().resize(&src, &mut dst, &options).ok()?;
    let buf = dst.into_vec();
    debug_assert_eq!(buf.len(), w as usize * h as usize * ch);
    super::decode::from_samples(w, h, ch, buf)
}

/// Half the size (rounded up) by averaging 2x2 blocks (an odd last row or column is paired with
/// itself). Written out rather than using the image crate's resize, whose f32 intermediate for a
/// 12000 px source costs over a gigabyte; this one allocates only the output and one row of sums.
/// Works on the 8-bit layouts the decoder produces.
pub(crate) fn halve(img: &DynamicImage) -> DynamicImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let fallback = || {
        img.resize_exact(
            img.width().div_ceil(2),
            img.height().div_ceil(2),
            image::imageops::FilterType::Triangle,
        )
    };
    if w == 0 || h == 0 {
        return fallback();
    }
    let src = img.as_bytes();
    let (channels, d) = match img {
        DynamicImage::ImageLuma8(_) => (1, halve_samples::<1>(src, w, h)),
        DynamicImage::ImageLumaA8(_) => (2, halve_samples::<2>(src, w, h)),
        DynamicImage::ImageRgb8(_) => (3, halve_samples::<3>(src, w, h)),
        DynamicImage::ImageRgba8(_) => (4, halve_samples::<4>(src, w, h)),
        _ => return fallback(),
    };
    let (ow, oh) = (img.width().div_ceil(2), img.height().div_ceil(2));
    super::decode::from_samples(ow, oh, channels, d).unwrap_or_else(fallback)
}

/// [`halve`] on `C`-channel samples: each pair of rows summed first (a loop over contiguous bytes,
/// which the compiler vectorises), then each pair of pixels of the sums. This runs over the whole
/// decoded image of every zoomed JPEG (144 MB for a 48 MP scan), where a per-pixel loop with
/// edge checks was a tenth of a viewer's first second.
fn halve_samples<const C: usize>(src: &[u8], w: usize, h: usize) -> Vec<u8> {
    let (ow, oh) = (w.div_ceil(2), h.div_ceil(2));
    let stride = w * C;
    let mut out = vec![0u8; ow * oh * C];
    let mut sums = vec![0u16; stride];
    for (oy, orow) in out.chunks_exact_mut(ow * C).enumerate() {
        let (y0, y1) = (2 * oy, (2 * oy + 1).min(h - 1));
        let (Some(r0), Some(r1)) = (
            src.get(y0 * stride..(y0 + 1) * stride),
            src.get(y1 * stride..(y1 + 1) * stride),
        ) else {
            break;
        };
        for ((s, a), b) in sums.iter_mut().zip(r0).zip(r1) {
            *s = u16::from(*a) + u16::from(*b);
        }
        for (o, p) in orow.chunks_exact_mut(C).zip(sums.chunks_exact(2 * C)) {
            for ch in 0..C {
                o[ch] = ((p[ch] + p[C + ch] + 2) / 4) as u8;
            }
        }
        if w % 2 == 1 {
            let p = &sums[(w - 1) * C..];
            for (o, s) in orow[(ow - 1) * C..].iter_mut().zip(p) {
                *o = ((2 * s + 2) / 4) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The halving is the 2x2 average, rounded, with an odd edge paired with itself, for every
        /// layout and size.
        #[test]
        fn halving_averages_two_by_two(w in 1usize..40, h in 1usize..40, c in 1usize..=4, seed: u64) {
            let mut x = seed | 1;
            let src: Vec<u8> = (0..w * h * c).map(|_| {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                (x >> 24) as u8
            }).collect();
            let img = super::super::decode::from_samples(w as u32, h as u32, c, src.clone())
                .expect("layout");
            let out = halve(&img);
            let (ow, oh) = (w.div_ceil(2), h.div_ceil(2));
            proptest::prop_assert_eq!((out.width() as usize, out.height() as usize), (ow, oh));
            let got = out.as_bytes();
            for oy in 0..oh {
                for ox in 0..ow {
                    let (y0, y1) = (2 * oy, (2 * oy + 1).min(h - 1));
                    let (x0, x1) = (2 * ox, (2 * ox + 1).min(w - 1));
                    for ch in 0..c {
                        let px = |x: usize, y: usize| u32::from(src[(y * w + x) * c + ch]);
                        let sum = px(x0, y0) + px(x1, y0) + px(x0, y1) + px(x1, y1);
                        proptest::prop_assert_eq!(u32::from(got[(oy * ow + ox) * c + ch]), (sum + 2) / 4);
                    }
                }
            }
        }
    }

    #[test]
    fn ycbcr_gray_stays_gray() {
        for v in [0u8, 77, 200, 255] {
            assert_eq!(ycbcr_to_rgb([v, 128, 128]), [v, v, v]);
        }
    }

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

    #[test]
    fn crops_and_scales_every_layout() {
        let rgb = DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 20, |x, _| {
            image::Rgb(if x < 20 { [255, 0, 0] } else { [0, 0, 255] })
        }));
        let right = Rect {
            x: 20,
            y: 0,
            w: 20,
            h: 20,
        };
        let out = crop_resize(&rgb, right, 5, 5).map(|i| i.to_rgb8());
        assert_eq!(
            out.map(|o| *o.get_pixel(2, 2)),
            Some(image::Rgb([0, 0, 255]))
        );
        for img in [
            DynamicImage::ImageLuma8(image::GrayImage::new(9, 9)),
            DynamicImage::ImageLumaA8(image::GrayAlphaImage::new(9, 9)),
            DynamicImage::ImageRgba8(image::RgbaImage::new(9, 9)),
        ] {
            let whole = Rect {
                x: 0,
                y: 0,
                w: 9,
                h: 9,
            };
            let out = crop_resize(&img, whole, 4, 13).map(|o| (o.width(), o.height(), o.color()));
            assert_eq!(out, Some((4, 13, img.color())));
        }
    }

    #[test]
    fn transparent_neighbours_do_not_darken() {
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(2, 1, |x, _| {
            image::Rgba(if x == 0 {
                [255, 255, 255, 255]
            } else {
                [0, 0, 0, 0]
            })
        }));
        let whole = Rect {
            x: 0,
            y: 0,
            w: 2,
            h: 1,
        };
        let p = crop_resize(&img, whole, 1, 1).map(|o| *o.to_rgba8().get_pixel(0, 0));
        assert!(p.is_some_and(|p| p.0[0] >= 250), "{p:?}");
    }

    #[test]
    fn halving_rounds_up_and_averages() {
        let src = DynamicImage::ImageLuma8(image::GrayImage::from_fn(5, 3, |x, _| {
            image::Luma([if x % 2 == 0 { 0 } else { 200 }])
        }));
        let h = halve(&src);
        assert_eq!((h.width(), h.height()), (3, 2));
        assert_eq!(h.to_luma8().get_pixel(0, 0).0[0], 100);
    }

    #[test]
    fn qualities() {
        let img = DynamicImage::ImageRgba8(RgbaImage::from_pixel(2, 1, Rgba([200, 10, 10, 255])));
        let gray = quality(img.clone(), Quality::Gray, false);
        assert!(matches!(gray, DynamicImage::ImageLuma8(_)));
        let bitonal = quality(img.clone(), Quality::Bitonal, false).to_luma8();
        assert!(bitonal.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
        assert!(matches!(
            quality(img.clone(), Quality::Gray, true),
            DynamicImage::ImageLumaA8(_)
        ));
        assert_eq!(quality(img.clone(), Quality::Default, false), img);
    }
}
