//! Colour management. Browsers show an image without a profile as sRGB, and a IIIF derivative is
//! usually served without one, so a source scanned in Adobe RGB (1998), eciRGB or ProPhoto would be
//! shown with shifted colours if its pixels were passed on as they are. `render.color`:
//!
//! - `srgb` (the default): output pixels are converted from the source's embedded ICC profile to
//!   sRGB (moxcms, the CMS the `image` crate uses); the output carries no profile, as sRGB needs none;
//! - `preserve`: the source's pixels are kept and its profile is embedded in the output (jpg, png,
//!   webp, tif; gif has no place for one).
//!
//! The conversion is pointwise and runs on the output pixels (after crop, scale and rotation: fewer
//! pixels than the decoded region), so every tile of an image is converted exactly as its full-size
//! render is. A profile that cannot be parsed or used (a broken tag, a CMYK or Lab profile on RGB
//! pixels) leaves the pixels as they are, as browsers do. Transforms are built once per distinct
//! profile and kept in a small process-wide table: a tile costs a table look-up, not a transform build.
//!
//! Pure apart from that table: no I/O. The profile bytes come from the decoders (`decode::profile`).

pub(crate) use crate::config::ColorMode;
use image::DynamicImage;
use moxcms::{ColorProfile, DataColorSpace, Layout, Transform8BitExecutor, TransformOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What one render does about colour.
#[derive(Clone, Default)]
pub(crate) enum ColorPlan {
    /// Nothing: an untagged source, or a profile that cannot be used.
    #[default]
    Keep,
    /// Convert the output pixels to sRGB.
    Convert(Arc<Converter>),
    /// Keep the pixels; embed this profile in the output.
    Embed(Arc<Vec<u8>>),
}

impl ColorPlan {
    /// The plan for a source with embedded profile `icc` (if any) under `mode`.
    pub(crate) fn new(icc: Option<Vec<u8>>, mode: ColorMode) -> ColorPlan {
        let Some(icc) = icc.filter(|p| p.len() >= 128) else {
            return ColorPlan::Keep;
        };
        match mode {
            ColorMode::Preserve => ColorPlan::Embed(Arc::new(icc)),
            ColorMode::Srgb => converter(icc).map_or(ColorPlan::Keep, ColorPlan::Convert),
        }
    }

    /// Whether pixels may leave as the source stored them (a stored JPEG tile passed through): only
    /// when nothing is converted and nothing embedded.
    pub(crate) fn is_keep(&self) -> bool {
        matches!(self, ColorPlan::Keep)
    }

    /// The profile to embed in the output, in `preserve` mode.
    pub(crate) fn embedded(&self) -> Option<&[u8]> {
        match self {
            ColorPlan::Embed(icc) => Some(icc.as_slice()),
            _ => None,
        }
    }

    /// Apply the plan to output pixels.
    pub(crate) fn apply(&self, img: DynamicImage) -> DynamicImage {
        match self {
            ColorPlan::Convert(c) => c.apply(img),
            ColorPlan::Keep | ColorPlan::Embed(_) => img,
        }
    }
}

/// Transforms from one source profile to sRGB, one per pixel layout, built on first use.
pub(crate) struct Converter {
    profile: ColorProfile,
    gray: bool,
    rgb: OnceLock<Option<Arc<Transform8BitExecutor>>>,
    rgba: OnceLock<Option<Arc<Transform8BitExecutor>>>,
}

impl Converter {
    fn transform(&self, layout: Layout) -> Option<Arc<Transform8BitExecutor>> {
        let (cell, src, dst) = match (self.gray, layout) {
            // Gray sources are converted through RGB (moxcms maps gray to RGB); the result is
            // neutral, and one channel of it is the gray value.
            (true, Layout::Gray) => (&self.rgb, Layout::Gray, Layout::Rgb),
            (true, _) => (&self.rgba, Layout::GrayAlpha, Layout::Rgba),
            (false, Layout::Rgba) => (&self.rgba, Layout::Rgba, Layout::Rgba),
            (false, _) => (&self.rgb, Layout::Rgb, Layout::Rgb),
        };
        cell.get_or_init(|| {
            let srgb = ColorProfile::new_srgb();
            self.profile
                .create_transform_8bit(src, &srgb, dst, TransformOptions::default())
                .map_err(|e| tracing::debug!("colour transform unavailable: {e}"))
                .ok()
        })
        .clone()
    }

    fn apply(&self, img: DynamicImage) -> DynamicImage {
        let run = |t: &Arc<Transform8BitExecutor>, src: &[u8], dst: &mut [u8]| {
            t.transform(src, dst).is_ok()
        };
        match (self.gray, img) {
            (false, DynamicImage::ImageRgb8(buf)) => {
                let (w, h) = buf.dimensions();
                let mut out = vec![0u8; buf.as_raw().len()];
                match self.transform(Layout::Rgb) {
                    Some(t) if run(&t, buf.as_raw(), &mut out) => {
                        image::RgbImage::from_raw(w, h, out)
                            .map_or(DynamicImage::ImageRgb8(buf), DynamicImage::ImageRgb8)
                    }
                    _ => DynamicImage::ImageRgb8(buf),
                }
            }
            (false, DynamicImage::ImageRgba8(buf)) => {
                let (w, h) = buf.dimensions();
                let mut out = vec![0u8; buf.as_raw().len()];
                match self.transform(Layout::Rgba) {
                    Some(t) if run(&t, buf.as_raw(), &mut out) => {
                        image::RgbaImage::from_raw(w, h, out)
                            .map_or(DynamicImage::ImageRgba8(buf), DynamicImage::ImageRgba8)
                    }
                    _ => DynamicImage::ImageRgba8(buf),
                }
            }
            (true, DynamicImage::ImageLuma8(buf)) => match self.transform(Layout::Gray) {
                Some(t) => {
                    let mut rgb = vec![0u8; buf.as_raw().len() * 3];
                    if !run(&t, buf.as_raw(), &mut rgb) {
                        return DynamicImage::ImageLuma8(buf);
                    }
                    let gray: Vec<u8> = rgb.chunks_exact(3).map(|p| p[1]).collect();
                    image::GrayImage::from_raw(buf.width(), buf.height(), gray)
                        .map_or(DynamicImage::ImageLuma8(buf), DynamicImage::ImageLuma8)
                }
                None => DynamicImage::ImageLuma8(buf),
            },
            (true, DynamicImage::ImageLumaA8(buf)) => match self.transform(Layout::GrayAlpha) {
                Some(t) => {
                    let mut rgba = vec![0u8; buf.as_raw().len() * 2];
                    if !run(&t, buf.as_raw(), &mut rgba) {
                        return DynamicImage::ImageLumaA8(buf);
                    }
                    let ga: Vec<u8> = rgba.chunks_exact(4).flat_map(|p| [p[1], p[3]]).collect();
                    image::GrayAlphaImage::from_raw(buf.width(), buf.height(), ga)
                        .map_or(DynamicImage::ImageLumaA8(buf), DynamicImage::ImageLumaA8)
                }
                None => DynamicImage::ImageLumaA8(buf),
            },
            // Pixels in a layout the profile does not describe (RGB pixels with a gray profile, or
            // the other way round): as they are.
            (_, other) => other,
        }
    }
}

/// Distinct profiles seen, with their converters. Profiles are a few kilobytes and a collection uses
/// a handful of them; the table is cleared when it reaches this many.
const TABLE_MAX: usize = 64;

/// Profile bytes to their converter (`None`: nothing to convert, or not usable).
type Table = Mutex<HashMap<Vec<u8>, Option<Arc<Converter>>>>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The converter for `icc`, or `None` when the profile is sRGB already or cannot be used.
fn converter(icc: Vec<u8>) -> Option<Arc<Converter>> {
    if let Ok(t) = table().lock() {
        if let Some(found) = t.get(&icc) {
            return found.clone();
        }
    }
    let built = build(&icc);
    if let Ok(mut t) = table().lock() {
        if t.len() >= TABLE_MAX {
            t.clear();
        }
        t.insert(icc, built.clone());
    }
    built
}

fn build(icc: &[u8]) -> Option<Arc<Converter>> {
    let profile = match ColorProfile::new_from_slice(icc) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!("ignoring an embedded ICC profile that does not parse: {e}");
            return None;
        }
    };
    let gray = match profile.color_space {
        DataColorSpace::Rgb => false,
        DataColorSpace::Gray => true,
        // CMYK, Lab and others describe pixels the decoders have already turned into RGB.
        _ => return None,
    };
    // A profile that is sRGB under another name (cameras and many scanners embed one) changes
    // nothing: skip the work.
    if !gray && is_srgb(&profile) {
        return None;
    }
    let converter = Converter {
        profile,
        gray,
        rgb: OnceLock::new(),
        rgba: OnceLock::new(),
    };
    // Build the common transform now, so an unusable profile is found here, once.
    converter.transform(if gray { Layout::Gray } else { Layout::Rgb })?;
    Some(Arc::new(converter))
}

/// A transform from CMYK samples (four a pixel, 0 = no ink, as TIFF stores them) to sRGB through
/// the source's CMYK profile; `None` when the profile is not a CMYK one or cannot be used. Built
/// per decode: a CMYK source is decoded once into the decoded cache, not per tile.
fn cmyk_to_srgb(icc: &[u8]) -> Option<Arc<Transform8BitExecutor>> {
    let profile = ColorProfile::new_from_slice(icc).ok()?;
    if profile.color_space != DataColorSpace::Cmyk {
        return None;
    }
    // moxcms takes 8-bit CMYK in the four-channel layout.
    profile
        .create_transform_8bit(
            Layout::Rgba,
            &ColorProfile::new_srgb(),
            Layout::Rgb,
            TransformOptions::default(),
        )
        .ok()
}

/// CMYK inks (four a pixel, 0 = no ink) as sRGB (three a pixel): through `icc` when it is a usable
/// CMYK profile, otherwise naively (each ink darkens multiplicatively, as Pillow and browsers do
/// without a profile).
pub(crate) fn cmyk_to_rgb(inks: &[u8], icc: Option<&[u8]>) -> Vec<u8> {
    let mut rgb = vec![0u8; inks.len() / 4 * 3];
    if let Some(t) = icc.and_then(cmyk_to_srgb) {
        if t.transform(&inks[..inks.len() / 4 * 4], &mut rgb).is_ok() {
            return rgb;
        }
    }
    for (o, px) in rgb.chunks_exact_mut(3).zip(inks.chunks_exact(4)) {
        o.copy_from_slice(&naive_cmyk([px[0], px[1], px[2], px[3]]));
    }
    rgb
}

fn naive_cmyk([c, m, y, k]: [u8; 4]) -> [u8; 3] {
    let nk = 255 - u32::from(k);
    let ch = |v: u8| ((255 - u32::from(v)) * nk / 255) as u8;
    [ch(c), ch(m), ch(y)]
}

/// Whether an ICC profile describes RGB or gray pixels (its header's data colour space, bytes
/// 16..20): the only profiles that describe what the decoders hand on. A CMYK or Lab source's
/// pixels are turned into RGB by its decoder, so its profile is neither converted from again nor
/// embedded in an RGB output.
pub(crate) fn describes_rgb_or_gray(icc: &[u8]) -> bool {
    matches!(icc.get(16..20), Some(b"RGB " | b"GRAY"))
}

/// Whether an RGB profile maps every 8-bit value within one level of sRGB (checked on a coarse grid
/// of colours: primaries, greys and mixtures).
fn is_srgb(profile: &ColorProfile) -> bool {
    let srgb = ColorProfile::new_srgb();
    let Ok(t) =
        profile.create_transform_8bit(Layout::Rgb, &srgb, Layout::Rgb, TransformOptions::default())
    else {
        return false;
    };
    let steps = [0u8, 37, 96, 160, 215, 255];
    let mut src = Vec::with_capacity(steps.len().pow(3) * 3);
    for r in steps {
        for g in steps {
            for b in steps {
                src.extend([r, g, b]);
            }
        }
    }
    let mut dst = vec![0u8; src.len()];
    t.transform(&src, &mut dst).is_ok() && src.iter().zip(&dst).all(|(a, b)| a.abs_diff(*b) <= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_without_a_profile_darkens_multiplicatively() {
        assert_eq!(naive_cmyk([0, 0, 0, 0]), [255, 255, 255]);
        assert_eq!(naive_cmyk([255, 0, 0, 0]), [0, 255, 255]);
        assert_eq!(naive_cmyk([0, 0, 0, 255]), [0, 0, 0]);
        assert_eq!(naive_cmyk([0, 128, 0, 128]), [127, 63, 127]);
    }

    fn adobe() -> Vec<u8> {
        ColorProfile::new_adobe_rgb().encode().expect("encodes")
    }

    #[test]
    fn adobe_rgb_is_converted_and_srgb_is_left_alone() {
        let ColorPlan::Convert(c) = ColorPlan::new(Some(adobe()), ColorMode::Srgb) else {
            panic!("an Adobe RGB profile must convert");
        };
        // Adobe RGB's pure green is outside sRGB: it clips to sRGB's green, and mid grey stays grey.
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                image::Rgb([0, 255, 0])
            } else {
                image::Rgb([128, 128, 128])
            }
        }));
        let out = c.apply(img).to_rgb8();
        let g = out.get_pixel(0, 0).0;
        assert!(g[0] < 10 && g[1] > 240 && g[2] < 60, "{g:?}");
        let grey = out.get_pixel(1, 0).0;
        assert!(
            grey[0].abs_diff(grey[1]) <= 1 && grey[1].abs_diff(grey[2]) <= 1,
            "{grey:?}"
        );
        let srgb = ColorProfile::new_srgb().encode().expect("encodes");
        assert!(ColorPlan::new(Some(srgb), ColorMode::Srgb).is_keep());
        assert!(ColorPlan::new(None, ColorMode::Srgb).is_keep());
        assert!(ColorPlan::new(Some(b"not a profile".repeat(20)), ColorMode::Srgb).is_keep());
    }

    #[test]
    fn preserve_embeds_and_keeps_pixels() {
        let plan = ColorPlan::new(Some(adobe()), ColorMode::Preserve);
        assert_eq!(plan.embedded(), Some(adobe().as_slice()));
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(3, 3, image::Rgb([0, 255, 0])));
        assert_eq!(plan.apply(img.clone()), img);
    }

    #[test]
    fn alpha_survives_and_gray_profiles_keep_gray() {
        let ColorPlan::Convert(c) = ColorPlan::new(Some(adobe()), ColorMode::Srgb) else {
            panic!("converts");
        };
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            2,
            2,
            image::Rgba([0, 255, 0, 77]),
        ));
        let out = c.apply(rgba).to_rgba8();
        assert_eq!(out.get_pixel(1, 1).0[3], 77);
        let gray = ColorProfile::new_gray_with_gamma(1.0)
            .encode()
            .expect("encodes");
        let ColorPlan::Convert(g) = ColorPlan::new(Some(gray), ColorMode::Srgb) else {
            panic!("a linear gray profile converts");
        };
        let out = g.apply(DynamicImage::ImageLuma8(image::GrayImage::from_pixel(
            1,
            1,
            image::Luma([64]),
        )));
        let DynamicImage::ImageLuma8(out) = out else {
            panic!("stays gray");
        };
        // Linear 64/255 is about 137 in sRGB's curve.
        assert!(
            (130..=142).contains(&out.get_pixel(0, 0).0[0]),
            "{:?}",
            out.get_pixel(0, 0)
        );
    }
}
