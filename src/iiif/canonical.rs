//! Canonical form (3.0 §4.8, 2.1 §4.7; 1.1 is served with 2.1's rules and 1.1's quality names): a parsed
//! request resolved against the image's real size and the server limits, so every spelling of the same
//! pixels becomes one [`CanonicalRequest`]. `pct:` regions become pixels, `0,0,W,H` becomes `full`,
//! `w,` / `,h` / `!w,h` / `pct:n` become explicit dimensions, and the request's key material
//! ([`CanonicalRequest::key_material`]) is independent of the API version, so a 2.1 `w,` tile and a 3.0
//! `w,h` tile of the same pixels share one stored derivative.
//!
//! Pure: needs only the image's width and height.

use super::number::format_decimal;
use super::parse::{ImageRequest, RegionSpec, SizeKind};
use super::{ApiVersion, Format, Limits, Quality};
use std::fmt;

/// Full-image dimensions, as reported in info.json.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageSize {
    /// Width in pixels (> 0).
    pub width: u32,
    /// Height in pixels (> 0).
    pub height: u32,
}

/// A rectangle of source pixels, always non-empty and inside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width (> 0).
    pub w: u32,
    /// Height (> 0).
    pub h: u32,
}

/// Why a syntactically valid request cannot be served for this image.
///
/// All of these answer 400. For sizes above the server limits 3.0 is self-contradictory (§4.2 says 400,
/// the §7.3 table 404) and 2.1's table says 404; iiifd answers 400 in every version, because the request
/// is what is wrong, not the identifier, and caches treat 404s as "no such image".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CanonicalError {
    /// The region starts outside the image (3.0 §4.1).
    RegionOutside,
    /// The resulting image would be narrower or shorter than one pixel (3.0 §4.2).
    ZeroSize,
    /// A 3.0 size larger than the region without `^` (3.0 §4.2).
    UpscaleWithoutCaret,
    /// The result would exceed `maxWidth`, `maxHeight` or `maxArea`.
    OverLimits {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
}

impl fmt::Display for CanonicalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CanonicalError::RegionOutside => {
                f.write_str("the region lies entirely outside the image")
            }
            CanonicalError::ZeroSize => f.write_str("the requested size is smaller than one pixel"),
            CanonicalError::UpscaleWithoutCaret => f.write_str(
                "the requested size is larger than the region; prefix the size with ^ to upscale",
            ),
            CanonicalError::OverLimits { width, height } => {
                write!(f, "the requested size {width}x{height} exceeds the server's maxWidth, maxHeight or maxArea")
            }
        }
    }
}

impl std::error::Error for CanonicalError {}

/// A request resolved against one image: exactly which pixels to produce.
#[derive(Clone, Debug, PartialEq)]
pub struct CanonicalRequest {
    version: ApiVersion,
    region: Rect,
    full_region: bool,
    width: u32,
    height: u32,
    max_size: (u32, u32),
    /// The tile size info.json advertises for the image, when known: it settles which scale a 2.1
    /// `w,` of width 1 was laid out at ([`level_height`]).
    tile: Option<u32>,
    mirror: bool,
    degrees: f64,
    quality: Quality,
    format: Format,
}

/// The one rounding rule of iiifd for converting a real-valued pixel position or length to pixels:
/// nearest integer, halves rounded up, clamped to `0..=u32::MAX`. Every conversion in this module goes
/// through it (or through [`scale_dim`], its exact integer form), so that equivalent spellings always
/// round the same way. `round` rather than `floor`/`ceil` because it is what other servers use for the
/// derived dimension of `w,` and `,h`, so the sizes clients compute from info.json agree with ours.
fn round_px(v: f64) -> u32 {
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        (v + 0.5).floor() as u32
    }
}

/// `round_px(value * num / den)` in exact integer arithmetic (no float error for pixel ratios).
pub fn scale_dim(value: u32, num: u32, den: u32) -> u32 {
    if den == 0 {
        return 0;
    }
    let (v, n, d) = (u128::from(value), u128::from(num), u128::from(den));
    let r = (2 * v * n + d) / (2 * d);
    u32::try_from(r).unwrap_or(u32::MAX)
}

/// The size of `max` for a `w` x `h` region under `limits` (never enlarging), as the 3.0
/// implementation notes (§4, "Maximum size calculation") compute it: scaled into `maxArea` by the
/// square root of the area ratio with both sides rounded down, then clamped to `maxWidth` and then
/// `maxHeight`, the other side following from the region's own aspect ratio, rounded. So an image
/// of 4007x2997 under a 1,000,000-pixel area is 1156x864, as every server following the note
/// answers, and info.json lists that size. Where rounding a side up to one pixel would break a
/// limit (a region thousands of times longer than wide), [`fit_by_width`] finds a size that holds.
pub fn fit(w: u32, h: u32, limits: &Limits) -> (u32, u32) {
    if limits.allows(w, h) {
        return (w, h);
    }
    let (width, height) = (u64::from(w), u64::from(h));
    let (mut cw, mut ch) = (width, height);
    if limits.max_area < cw * ch {
        let scale = (limits.max_area as f64 / (cw * ch) as f64).sqrt();
        cw = (cw as f64 * scale) as u64;
        ch = (ch as f64 * scale) as u64;
    }
    let (mw, mh) = (u64::from(limits.max_width), u64::from(limits.max_height));
    if mw < cw {
        cw = mw;
        ch = (height * mw * 2 + width) / (2 * width);
    }
    if mh < ch {
        ch = mh;
        cw = (width * mh * 2 + height) / (2 * height);
    }
    let size = (
        u32::try_from(cw.max(1)).unwrap_or(u32::MAX),
        u32::try_from(ch.max(1)).unwrap_or(u32::MAX),
    );
    if limits.allows(size.0, size.1) {
        size
    } else {
        fit_by_width(w, h, limits)
    }
}

/// The height a 2.1 or 1.1 client lays out for a `w,` request of a region `rw` x `rh` (and, with
/// the sides swapped, the width for `,h`). Tiling clients (OpenSeadragon up to 5, Leaflet-IIIF)
/// compute a tile's output size per side at a power-of-two scale, `ceil(side / 2^k)`, and send only
/// the width; the height they lay out is the same ceiling of the region's height, which rounding
/// the aspect ratio can miss by a pixel (`0,0,4096,4003/512,` is laid out 512x501, not 512x500). So
/// when `w` is the region's width at some scale `2^-k` the height is taken at that scale; any other
/// width keeps the aspect ratio, rounded.
///
/// A width of 1 fits every scale past the region's width: then the scale at which the region is
/// one `tile` (the size info.json advertises) is taken, as a client laid it out, else the least
/// scaling. (One URL can still be two layouts: the last row of a 1-pixel-wide image is the same
/// request at two levels. No server can answer both; see tests/clients.rs.)
pub fn level_height(rw: u32, rh: u32, w: u32, tile: Option<u32>) -> u32 {
    let mut first = None;
    for k in 0..32u32 {
        let level = rw.div_ceil(1 << k);
        if level < w {
            break;
        }
        if level > w {
            continue;
        }
        first.get_or_insert(k);
        let one_tile = tile.is_some_and(|t| {
            let span = u64::from(t) << k;
            u64::from(rw) <= span && u64::from(rh) <= span
        });
        if one_tile || w > 1 {
            return rh.div_ceil(1 << k).max(1);
        }
    }
    match first {
        Some(k) => rh.div_ceil(1 << k).max(1),
        None => scale_dim(rh, w, rw).max(1),
    }
}

/// The widest size with the aspect ratio of `w` x `h` whose `w,` height is within every limit: the
/// fallback of [`fit`] for regions so thin that the note's rounding breaks a limit.
fn fit_by_width(w: u32, h: u32, limits: &Limits) -> (u32, u32) {
    let at = |cw: u32| (cw, scale_dim(h, cw, w).max(1));
    // An upper bound from each limit, then step down past the rounding of the derived height. The
    // bounds are within a pixel or two of the answer, so the loop runs a handful of times.
    let by_height = u64::from(limits.max_height) * u64::from(w) / u64::from(h).max(1);
    let by_area = ((limits.max_area as f64) * f64::from(w) / f64::from(h)).sqrt() as u64;
    let mut cw = u64::from(w)
        .min(u64::from(limits.max_width))
        .min(by_height + 1)
        .min(by_area + 1)
        .max(1) as u32;
    while cw > 1 && !limits.allows(at(cw).0, at(cw).1) {
        cw -= 1;
    }
    if limits.allows(at(cw).0, at(cw).1) {
        return at(cw);
    }
    // So thin an image that one pixel of width is already over a limit: fit the height instead (the
    // width rounds up to one pixel, the only distortion left).
    let at_h = |ch: u32| (scale_dim(w, ch, h).max(1), ch);
    let mut ch = h
        .min(limits.max_height)
        .min(u32::try_from(limits.max_area).unwrap_or(u32::MAX))
        .max(1);
    while ch > 1 && !limits.allows(at_h(ch).0, at_h(ch).1) {
        ch -= 1;
    }
    at_h(ch)
}

/// Resolve the region (3.0 §4.1) to pixels clipped at the image's edges.
fn resolve_region(spec: RegionSpec, img: ImageSize) -> Result<Rect, CanonicalError> {
    let (iw, ih) = (img.width, img.height);
    let (x, y, w, h) = match spec {
        RegionSpec::Full => (0, 0, iw, ih),
        RegionSpec::Square => {
            let side = iw.min(ih);
            ((iw - side) / 2, (ih - side) / 2, side, side)
        }
        RegionSpec::Pixels { x, y, w, h } => (x, y, w, h),
        RegionSpec::Percent { x, y, w, h } => {
            // Convert edges, not lengths, so adjacent pct: regions tile without gaps or overlaps.
            let px = |p: f64, dim: u32| round_px(f64::from(dim) * p / 100.0);
            let (x0, y0) = (px(x, iw), px(y, ih));
            let (x1, y1) = (px(x + w, iw), px(y + h, ih));
            // A positive percentage never collapses to nothing: at least one pixel.
            (
                x0,
                y0,
                x1.saturating_sub(x0).max(1),
                y1.saturating_sub(y0).max(1),
            )
        }
    };
    if x >= iw || y >= ih {
        return Err(CanonicalError::RegionOutside);
    }
    Ok(Rect {
        x,
        y,
        w: w.min(iw - x),
        h: h.min(ih - y),
    })
}

impl CanonicalRequest {
    /// Resolve `req` against an image of size `img` under `limits`.
    pub fn resolve(
        req: &ImageRequest,
        img: ImageSize,
        limits: &Limits,
    ) -> Result<CanonicalRequest, CanonicalError> {
        CanonicalRequest::resolve_tiled(req, img, limits, None)
    }

    /// [`CanonicalRequest::resolve`] for an image whose info.json advertises `tile` (see
    /// [`level_height`]).
    pub fn resolve_tiled(
        req: &ImageRequest,
        img: ImageSize,
        limits: &Limits,
        tile: Option<u32>,
    ) -> Result<CanonicalRequest, CanonicalError> {
        if img.width == 0 || img.height == 0 {
            return Err(CanonicalError::ZeroSize);
        }
        let region = resolve_region(req.region, img)?;
        let (rw, rh) = (region.w, region.h);
        let max_size = fit(rw, rh, limits);
        // 3.0 forbids growing past the region without `^`; 2.1 and 1.1 allow it (sizeAboveFull).
        let may_upscale = req.size.upscale || req.version != ApiVersion::V3;
        let (width, height) = match req.size.kind {
            // `^max` is served like `max`: the region's own size, scaled down to the limits but never
            // up. 3.0 §4.2 would let `^max` grow to the limits, but the official validator (size_up)
            // requires `^max` of a 1000 px image to be 1000 px, and no viewer asks for an image
            // enlarged to the server's ceiling, which is only a way to make the server work hard.
            SizeKind::Max => max_size,
            // 2.1 and 1.1 `full` is the region's own size: over the limits it is refused like any
            // other over-limit size (only `max` is scaled down to fit).
            SizeKind::Full => (rw, rh),
            SizeKind::Width(w) if req.version != ApiVersion::V3 => {
                (w, level_height(rw, rh, w, tile))
            }
            SizeKind::Height(h) if req.version != ApiVersion::V3 => {
                (level_height(rh, rw, h, tile), h)
            }
            SizeKind::Width(w) => (w, scale_dim(rh, w, rw).max(1)),
            SizeKind::Height(h) => (scale_dim(rw, h, rh).max(1), h),
            SizeKind::Percent(p) => {
                if !may_upscale && p > 100.0 {
                    return Err(CanonicalError::UpscaleWithoutCaret);
                }
                let s = |d: u32| round_px(f64::from(d) * p / 100.0);
                (s(rw), s(rh))
            }
            SizeKind::Exact(w, h) => (w, h),
            SizeKind::Confined(cw, ch) => {
                // Best fit: the constraining side gets exactly its box dimension, the other follows the
                // aspect ratio (cw/rw <= ch/rh  <=>  cw*rh <= ch*rw, exact in u64).
                let (w, h) = if u64::from(cw) * u64::from(rh) <= u64::from(ch) * u64::from(rw) {
                    (cw, scale_dim(rh, cw, rw).clamp(1, ch))
                } else {
                    (scale_dim(rw, ch, rh).clamp(1, cw), ch)
                };
                // 3.0 `!w,h` without `^` must not be larger than the region. The spec text would clamp to
                // the region, but the official validator (size_noup) requires `!2000,3000` on a 1000 px
                // image to fail, so such a request is answered 400 by the check below, like every other
                // 3.0 size that would upscale without `^`. 2.1 and 1.1 may upscale.
                (w, h)
            }
        };
        if width == 0 || height == 0 {
            return Err(CanonicalError::ZeroSize);
        }
        if !may_upscale && (width > rw || height > rh) {
            return Err(CanonicalError::UpscaleWithoutCaret);
        }
        if !limits.allows(width, height) {
            return Err(CanonicalError::OverLimits { width, height });
        }
        let full_region = region
            == Rect {
                x: 0,
                y: 0,
                w: img.width,
                h: img.height,
            };
        Ok(CanonicalRequest {
            version: req.version,
            region,
            full_region,
            width,
            height,
            max_size,
            tile,
            mirror: req.rotation.mirror,
            degrees: req.rotation.degrees,
            quality: req.quality,
            format: req.format,
        })
    }

    /// This request as a visitor gets it who may see the image (`img`) at most `ceiling` large as
    /// a whole: the same region at no more than that resolution. An output finer than
    /// `region * ceiling / img` is scaled down to it, keeping its aspect ratio; the canonical form
    /// then names the smaller size explicitly, so its key is that of the smaller image. Unchanged
    /// when already within.
    pub fn degraded(&self, img: ImageSize, ceiling: (u32, u32)) -> CanonicalRequest {
        let r = self.region;
        let cap_w = scale_dim(r.w, ceiling.0, img.width.max(1)).max(1);
        let cap_h = scale_dim(r.h, ceiling.1, img.height.max(1)).max(1);
        let (w, h) = (self.width, self.height);
        if w <= cap_w && h <= cap_h {
            return self.clone();
        }
        // Best fit of the requested output into the cap, as `!w,h` computes it.
        let (nw, nh) = if u64::from(cap_w) * u64::from(h) <= u64::from(cap_h) * u64::from(w) {
            (cap_w, scale_dim(h, cap_w, w).clamp(1, cap_h))
        } else {
            (scale_dim(w, cap_h, h).clamp(1, cap_w), cap_h)
        };
        CanonicalRequest {
            width: nw,
            height: nh,
            ..self.clone()
        }
    }

    /// API version of the request.
    pub fn version(&self) -> ApiVersion {
        self.version
    }
    /// Source pixels to extract.
    pub fn region(&self) -> Rect {
        self.region
    }
    /// Whether the region is the whole image.
    pub fn is_full_region(&self) -> bool {
        self.full_region
    }
    /// Output width before rotation.
    pub fn width(&self) -> u32 {
        self.width
    }
    /// Output height before rotation.
    pub fn height(&self) -> u32 {
        self.height
    }
    /// Mirror before rotating.
    pub fn mirror(&self) -> bool {
        self.mirror
    }
    /// Clockwise rotation in degrees.
    pub fn degrees(&self) -> f64 {
        self.degrees
    }
    /// Requested quality.
    pub fn quality(&self) -> Quality {
        self.quality
    }
    /// Output format.
    pub fn format(&self) -> Format {
        self.format
    }

    fn region_str(&self) -> String {
        if self.full_region {
            "full".to_owned()
        } else {
            let r = self.region;
            format!("{},{},{},{}", r.x, r.y, r.w, r.h)
        }
    }

    fn size_str(&self) -> String {
        let (w, h) = (self.width, self.height);
        let (rw, rh) = (self.region.w, self.region.h);
        match self.version {
            ApiVersion::V3 => {
                let upscaled = w > rw || h > rh;
                if !upscaled && (w, h) == self.max_size {
                    "max".into()
                } else if upscaled {
                    format!("^{w},{h}")
                } else {
                    format!("{w},{h}")
                }
            }
            ApiVersion::V2 | ApiVersion::V1 => {
                if (w, h) == (rw, rh) {
                    "full".into()
                } else if level_height(rw, rh, w, self.tile) == h {
                    format!("{w},")
                } else {
                    format!("{w},{h}")
                }
            }
        }
    }

    fn rotation_str(&self) -> String {
        format!(
            "{}{}",
            if self.mirror { "!" } else { "" },
            format_decimal(self.degrees)
        )
    }

    /// The canonical parameter path of this request in its own API version:
    /// `{region}/{size}/{rotation}/{quality}.{format}`.
    pub fn to_path(&self) -> String {
        format!(
            "{}/{}/{}/{}.{}",
            self.region_str(),
            self.size_str(),
            self.rotation_str(),
            self.quality.name(self.version),
            self.format
        )
    }

    /// What identifies the output pixels, independent of API version and spelling: the input to the
    /// derivative key. Changing this text changes every key, so it is versioned.
    pub fn key_material(&self) -> String {
        let r = self.region;
        format!(
            "geometry-v1 region={},{},{},{} size={},{} mirror={} rotation={} quality={} format={}",
            r.x,
            r.y,
            r.w,
            r.h,
            self.width,
            self.height,
            u8::from(self.mirror),
            format_decimal(self.degrees),
            self.quality.name(ApiVersion::V3),
            self.format
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iiif::parse::{parse_image_params, ParseError};
    use proptest::prelude::*;

    fn canon(v: ApiVersion, w: u32, h: u32, path: &str) -> Result<CanonicalRequest, String> {
        let p: Vec<&str> = path.split('/').collect();
        let req = parse_image_params(v, p[0], p[1], p[2], p[3], Format::Jpg)
            .map_err(|e: ParseError| e.to_string())?;
        CanonicalRequest::resolve(
            &req,
            ImageSize {
                width: w,
                height: h,
            },
            &Limits::default(),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn spec_region_example_crops_at_the_edge() {
        let c = canon(ApiVersion::V3, 300, 200, "125,15,200,200/max/0/default.jpg").expect("valid");
        assert_eq!((c.width(), c.height()), (175, 185));
        assert_eq!(c.to_path(), "125,15,175,185/max/0/default.jpg");
    }

    #[test]
    fn equivalent_spellings_share_key_material() {
        let a = canon(ApiVersion::V3, 1000, 800, "full/pct:50/0/default.jpg").expect("valid");
        let b = canon(
            ApiVersion::V3,
            1000,
            800,
            "0,0,1000,800/500,400/0/default.jpg",
        )
        .expect("valid");
        let c = canon(
            ApiVersion::V2,
            1000,
            800,
            "pct:0,0,100,100/500,/0/default.jpg",
        )
        .expect("valid");
        assert_eq!(a.key_material(), b.key_material());
        assert_eq!(a.key_material(), c.key_material());
        assert_eq!(a.to_path(), "full/500,400/0/default.jpg");
        assert_eq!(c.to_path(), "full/500,/0/default.jpg");
    }

    #[test]
    fn errors() {
        assert!(canon(ApiVersion::V3, 100, 100, "100,0,10,10/max/0/default.jpg").is_err());
        assert!(canon(ApiVersion::V3, 100, 100, "full/200,/0/default.jpg").is_err());
        assert!(canon(ApiVersion::V3, 100, 100, "full/^200,/0/default.jpg").is_ok());
        assert!(canon(ApiVersion::V2, 100, 100, "full/200,/0/default.jpg").is_ok());
        assert!(canon(ApiVersion::V3, 100, 100, "full/pct:0.1/0/default.jpg").is_err());
        assert!(canon(ApiVersion::V3, 100, 100, "full/^20000,/0/default.jpg").is_err());
    }

    #[test]
    fn max_respects_limits() {
        let c = canon(ApiVersion::V3, 20000, 15000, "full/max/0/default.jpg").expect("valid");
        assert!(Limits::default().allows(c.width(), c.height()));
        assert_eq!(c.to_path(), "full/max/0/default.jpg");
        let up = canon(ApiVersion::V3, 100, 50, "full/^max/0/default.jpg").expect("valid");
        assert_eq!(
            (up.width(), up.height()),
            (100, 50),
            "^max never enlarges (see resolve)"
        );
        assert_eq!(up.to_path(), "full/max/0/default.jpg");
    }

    fn canon_limited(
        v: ApiVersion,
        (w, h): (u32, u32),
        limits: Limits,
        path: &str,
    ) -> Result<CanonicalRequest, CanonicalError> {
        let p: Vec<&str> = path.split('/').collect();
        let req = parse_image_params(v, p[0], p[1], p[2], p[3], Format::Jpg).expect("parses");
        CanonicalRequest::resolve(
            &req,
            ImageSize {
                width: w,
                height: h,
            },
            &limits,
        )
    }

    /// Spec point: `max` under `maxArea` is the 3.0 implementation note's size (1156x864 for
    /// 4007x2997 under a million pixels; widest-width-first gave 1156x865), in every version; under
    /// `maxWidth` the height follows rounded (1000x748). 2.1's canonical form says `w,` when that
    /// request gives the same size, else `w,h`.
    #[test]
    fn max_under_a_limit_is_the_implementation_notes_size() {
        let area = Limits {
            max_width: 10_000,
            max_height: 10_000,
            max_area: 1_000_000,
        };
        for v in [ApiVersion::V3, ApiVersion::V2] {
            let max = canon_limited(v, (4007, 2997), area, "full/max/0/default.jpg");
            let max = max.expect("max fits");
            assert_eq!((max.width(), max.height()), (1156, 864), "{v:?}");
        }
        let max = canon_limited(ApiVersion::V2, (4007, 2997), area, "full/max/0/default.jpg")
            .expect("fits");
        assert_eq!(max.to_path(), "full/1156,864/0/default.jpg");
        let width = Limits {
            max_width: 1000,
            ..Limits::default()
        };
        let max = canon_limited(
            ApiVersion::V2,
            (4007, 2997),
            width,
            "full/max/0/default.jpg",
        )
        .expect("max fits");
        let w = canon_limited(
            ApiVersion::V2,
            (4007, 2997),
            width,
            "full/1000,/0/default.jpg",
        )
        .expect("w, fits");
        assert_eq!((max.width(), max.height()), (1000, 748));
        assert_eq!((w.width(), w.height()), (1000, 748));
        assert_eq!(max.to_path(), "full/1000,/0/default.jpg");
        assert_eq!(max.key_material(), w.key_material());
    }

    /// Spec point: a 2.1 `w,` tile is as tall as tiling clients lay it out, the region's height at
    /// the same power-of-two scale rounded up (`0,0,4096,4003/512,` is 512x501); other widths keep
    /// the aspect ratio; 3.0's `w,` rounds, and its canonical form names the height.
    #[test]
    fn w_comma_heights_are_the_clients_level_heights() {
        let at = |v, path: &str| {
            let c = canon(v, 10_000, 8_003, path).expect("valid");
            (c.width(), c.height(), c.to_path())
        };
        let (w, h, path) = at(ApiVersion::V2, "0,0,4096,4003/512,/0/default.jpg");
        assert_eq!((w, h), (512, 501));
        assert_eq!(path, "0,0,4096,4003/512,/0/default.jpg");
        assert_eq!(at(ApiVersion::V1, "0,0,4096,4003/,501/0/native.jpg").0, 512);
        // Edge tile at 1/8: 10000 - 8192 = 1808 wide is 226; 3907 tall is 489 (488.4 rounded up).
        assert_eq!(
            at(ApiVersion::V2, "8192,4096,1808,3907/226,/0/default.jpg").1,
            489
        );
        assert_eq!(at(ApiVersion::V2, "full/300,/0/default.jpg").1, 240);
        let (_, h, path) = at(ApiVersion::V3, "0,0,4096,4003/512,/0/default.jpg");
        assert_eq!(
            (h, path.as_str()),
            (500, "0,0,4096,4003/512,500/0/default.jpg")
        );
        assert_eq!(
            level_height(1, 5000, 1, None),
            5000,
            "a 1-pixel width: the least scaling"
        );
        assert_eq!(level_height(3, 5000, 1, None), 1250);
    }

    /// Spec point: 2.1 and 1.1 `full` above the limits is refused like any other over-limit size, not
    /// silently scaled; `max` is what scales down.
    #[test]
    fn full_above_the_limits_is_refused_in_2_and_1() {
        let limits = Limits {
            max_width: 500,
            max_height: 500,
            max_area: 250_000,
        };
        for v in [ApiVersion::V2, ApiVersion::V1] {
            let path = format!("full/full/0/{}.jpg", Quality::Default.name(v));
            let full = canon_limited(v, (800, 600), limits, &path);
            assert!(
                matches!(
                    full,
                    Err(CanonicalError::OverLimits {
                        width: 800,
                        height: 600
                    })
                ),
                "{v:?}: {full:?}"
            );
        }
        let max = canon_limited(ApiVersion::V2, (800, 600), limits, "full/max/0/default.jpg")
            .expect("max scales");
        assert_eq!((max.width(), max.height()), (500, 375));
        let small = canon_limited(
            ApiVersion::V2,
            (400, 300),
            limits,
            "full/full/0/default.jpg",
        )
        .expect("within the limits");
        assert_eq!(small.to_path(), "full/full/0/default.jpg");
    }

    fn arb_request() -> impl Strategy<Value = (u32, u32, String, ApiVersion)> {
        let region = prop_oneof![
            Just("full".to_string()),
            Just("square".to_string()),
            (0u32..3000, 0u32..3000, 1u32..3000, 1u32..3000)
                .prop_map(|(x, y, w, h)| format!("{x},{y},{w},{h}")),
            (0u32..100, 0u32..100, 1u32..100, 1u32..100)
                .prop_map(|(x, y, w, h)| format!("pct:{x},{y},{w},{h}")),
        ];
        let size = prop_oneof![
            Just("max".to_string()),
            Just("^max".to_string()),
            (1u32..4000).prop_map(|w| format!("{w},")),
            (1u32..4000).prop_map(|h| format!(",{h}")),
            (1u32..200).prop_map(|p| format!("pct:{p}")),
            (1u32..4000, 1u32..4000).prop_map(|(w, h)| format!("{w},{h}")),
            (1u32..4000, 1u32..4000).prop_map(|(w, h)| format!("!{w},{h}")),
            (1u32..4000, 1u32..4000).prop_map(|(w, h)| format!("^!{w},{h}")),
        ];
        let version = prop_oneof![Just(ApiVersion::V3), Just(ApiVersion::V2)];
        (1u32..5000, 1u32..5000, region, size, 0u32..720, version).prop_map(
            |(w, h, r, s, rot, v)| {
                let s = if v == ApiVersion::V2 {
                    s.trim_start_matches('^').replace("max", "full")
                } else {
                    s
                };
                (
                    w,
                    h,
                    format!("{r}/{s}/{}/default.jpg", f64::from(rot) / 2.0),
                    v,
                )
            },
        )
    }

    proptest! {
        /// `max` under any limits is within them, never enlarges, and is what the 3.0
        /// implementation note's code computes (written again here from the note, in floating
        /// point as its Python is) unless the note's size breaks a limit (a region so thin that a
        /// side rounds up to one pixel); its 2.1 canonical form resolves to the same size.
        #[test]
        fn max_follows_the_implementation_note(
            w in 1u32..40_000, h in 1u32..40_000,
            mw in 1u32..12_000, mh in 1u32..12_000, ma in 1u64..50_000_000,
        ) {
            let limits = Limits { max_width: mw, max_height: mh, max_area: ma };
            let max = canon_limited(ApiVersion::V2, (w, h), limits, "full/max/0/default.jpg");
            let max = max.expect("max always has a size within the limits");
            prop_assert!(limits.allows(max.width(), max.height()));
            prop_assert!(max.width() <= w && max.height() <= h);
            let (width, height) = (f64::from(w), f64::from(h));
            let (mut nw, mut nh) = (width, height);
            if (ma as f64) < nw * nh {
                let scale = (ma as f64 / (nw * nh)).sqrt();
                nw = (nw * scale).floor();
                nh = (nh * scale).floor();
            }
            if f64::from(mw) < nw {
                nw = f64::from(mw);
                nh = (height * f64::from(mw) / width + 0.5).floor();
            }
            if f64::from(mh) < nh {
                nh = f64::from(mh);
                nw = (width * f64::from(mh) / height + 0.5).floor();
            }
            let note = (nw.max(1.0) as u32, nh.max(1.0) as u32);
            if limits.allows(note.0, note.1) {
                prop_assert_eq!((max.width(), max.height()), note);
            }
            let again = canon_limited(ApiVersion::V2, (w, h), limits, &max.to_path())
                .expect("the canonical form serves");
            prop_assert_eq!((again.width(), again.height()), (max.width(), max.height()));
        }

        /// A degraded request never exceeds the ceiling's resolution over its region, never grows,
        /// keeps its region, and its canonical form resolves to itself (so its key is stable).
        #[test]
        fn degraded_requests_stay_under_their_ceiling((w, h, path, v) in arb_request(), cw in 1u32..2000) {
            if let Ok(c) = canon(v, w, h, &path) {
                let img = ImageSize { width: w, height: h };
                let ceiling = (cw.min(w), scale_dim(h, cw.min(w), w).max(1));
                let d = c.degraded(img, ceiling);
                let r = c.region();
                prop_assert_eq!(d.region(), r);
                prop_assert!(d.width() <= c.width() && d.height() <= c.height());
                prop_assert!(d.width() >= 1 && d.height() >= 1);
                let cap_w = scale_dim(r.w, ceiling.0, w).max(1);
                let cap_h = scale_dim(r.h, ceiling.1, h).max(1);
                prop_assert!(d.width() <= cap_w && d.height() <= cap_h);
                if (c.width(), c.height()) != (d.width(), d.height()) {
                    prop_assert_ne!(d.key_material(), c.key_material());
                }
                if let Ok(again) = canon(v, w, h, &d.to_path()) {
                    prop_assert_eq!(again.key_material(), d.key_material());
                }
            }
        }

        #[test]
        fn canonical_form_is_idempotent((w, h, path, v) in arb_request()) {
            if let Ok(c) = canon(v, w, h, &path) {
                prop_assert!(c.width() >= 1 && c.height() >= 1);
                prop_assert!(Limits::default().allows(c.width(), c.height()));
                let r = c.region();
                prop_assert!(r.w >= 1 && r.h >= 1 && r.x + r.w <= w && r.y + r.h <= h);
                let again = canon(v, w, h, &c.to_path()).expect("canonical form must parse and resolve");
                prop_assert_eq!(again.to_path(), c.to_path());
                prop_assert_eq!(again.key_material(), c.key_material());
            }
        }
    }
}
