//! Scaling with `fast_image_resize` (SIMD convolution), behind one non-generic function so the
//! crate's heavy generics are instantiated once, here, and release rebuilds stay quick.
//!
//! Cropping is part of the resize (the crop box is the convolution's source window), so a region is
//! never copied out before it is scaled.

use crate::iiif::canonical::Rect;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;

/// `rect` of `img`, scaled to `w` x `h` with a bilinear filter widened when shrinking (every source
/// pixel contributes, so downscaled tiles do not alias). Alpha is premultiplied for the filter, so
/// transparent pixels do not darken edges. `None` only if the library refuses the buffers, in which
/// case the caller falls back to the `image` crate.
pub fn crop_resize(img: &DynamicImage, rect: Rect, w: u32, h: u32) -> Option<DynamicImage> {
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
    super::from_samples(w, h, ch, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
