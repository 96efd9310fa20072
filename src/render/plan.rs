//! The plan of a render, pure arithmetic on sizes: which resolution level to read and which of its
//! pixels, and whether a stored tile can be sent as it is. No I/O, no pixels; tested alone.

use crate::iiif::canonical::{CanonicalRequest, ImageSize, Rect};
use crate::iiif::{Format, Quality};

/// How a source's pixels are reached, as far as the cost of a render goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Reading {
    /// Resolution levels with tiles or precincts (pyramidal TIFF, JPEG 2000, a tiled copy): a
    /// render reads about its region at the level it needs.
    Levels,
    /// One JPEG, decoded whole at up to 1/8 of its size by DCT scaling.
    Scaled,
    /// Decoded whole at full size (PNG, GIF, WebP, flat TIFF).
    #[default]
    Whole,
}

/// The largest DCT scaling shift (libjpeg decodes at 1/8 at most).
const MAX_DCT_SHIFT: usize = 3;

/// About how many pixels a render of `req` from a source of `size` decodes: its region at the
/// level [`pick_level`] reads when the source has levels or that level is `in_memory` (the decoded
/// cache), else the whole image at the scale its decoder can reach.
pub(crate) fn decode_pixels(
    req: &CanonicalRequest,
    size: ImageSize,
    reading: Reading,
    in_memory: bool,
) -> u64 {
    let (k, rect) = pick_level(req);
    let area = |w: u64, h: u64| w.saturating_mul(h);
    let (w, h) = (u64::from(size.width), u64::from(size.height));
    match (reading, in_memory) {
        (Reading::Levels, _) | (_, true) => area(u64::from(rect.w), u64::from(rect.h)),
        (Reading::Scaled, false) => {
            let shift = k.min(MAX_DCT_SHIFT);
            area(w.div_ceil(1 << shift), h.div_ceil(1 << shift))
        }
        (Reading::Whole, false) => area(w, h),
    }
}

/// The coarsest level of a halving pyramid (level k is 1/2^k of the full size, rounded up) that
/// still has at least the output's resolution, and the request's region in that level's pixels.
/// Tiles of scale factor s start at multiples of 512*s, so at level log2(s) their edges stay on
/// whole pixels.
pub(crate) fn pick_level(req: &CanonicalRequest) -> (usize, Rect) {
    let r = req.region();
    let (ow, oh) = (req.width(), req.height());
    let mut k = 0usize;
    while k < 16 && (r.w >> (k + 1)) >= ow && (r.h >> (k + 1)) >= oh {
        k += 1;
    }
    (k, level_rect(r, k))
}

/// Region `r` (full-size pixels) in the pixels of halving level `k`, widened to whole pixels.
pub(crate) fn level_rect(r: Rect, k: usize) -> Rect {
    if k == 0 {
        return r;
    }
    let (x0, y0) = (r.x >> k, r.y >> k);
    let x1 = (u64::from(r.x) + u64::from(r.w)).div_ceil(1 << k) as u32;
    let y1 = (u64::from(r.y) + u64::from(r.h)).div_ceil(1 << k) as u32;
    Rect {
        x: x0,
        y: y0,
        w: (x1 - x0).max(1),
        h: (y1 - y0).max(1),
    }
}

/// Of a pyramid's levels (`sizes`, full size first, each smaller), the smallest that still covers
/// the output at the region's scale: its index, and the region in its pixels (widened to whole
/// pixels, at least one).
pub(crate) fn pyramid_level(sizes: &[(u32, u32)], req: &CanonicalRequest) -> (usize, Rect) {
    pyramid_level_for(sizes, req.region(), (req.width(), req.height()))
}

/// [`pyramid_level`] for `region` of the full-size level and an output of `out` pixels (both in the
/// stored orientation, which differs from the request's when the file says to turn the image).
pub(crate) fn pyramid_level_for(sizes: &[(u32, u32)], r: Rect, out: (u32, u32)) -> (usize, Rect) {
    let Some(&(full_w, full_h)) = sizes.first() else {
        return (0, r);
    };
    let (fw, fh) = (u64::from(full_w), u64::from(full_h));
    let (ow, oh) = (u64::from(out.0), u64::from(out.1));
    let index = sizes
        .iter()
        .rposition(|&(w, h)| {
            u64::from(r.w) * u64::from(w) >= ow * fw && u64::from(r.h) * u64::from(h) >= oh * fh
        })
        .unwrap_or(0);
    let (lw, lh) = (u64::from(sizes[index].0), u64::from(sizes[index].1));
    let x0 = (u64::from(r.x) * lw / fw).min(lw - 1);
    let y0 = (u64::from(r.y) * lh / fh).min(lh - 1);
    let x1 = ((u64::from(r.x) + u64::from(r.w)) * lw)
        .div_ceil(fw)
        .clamp(x0 + 1, lw);
    let y1 = ((u64::from(r.y) + u64::from(r.h)) * lh)
        .div_ceil(fh)
        .clamp(y0 + 1, lh);
    (
        index,
        Rect {
            x: x0 as u32,
            y: y0 as u32,
            w: (x1 - x0) as u32,
            h: (y1 - y0) as u32,
        },
    )
}

/// Whether a request is exactly one stored JPEG tile, unchanged: region `rect` of a level whose
/// tiles are `tile`, output at the tile's own size, default quality, no mirror or rotation, jpg.
/// Then the tile's bytes are the answer (IIPImage's codec passthrough): no decode, no encode.
pub(crate) fn is_stored_tile(req: &CanonicalRequest, rect: Rect, tile: (u32, u32)) -> bool {
    is_tile_part(req, rect, tile) && (rect.w, rect.h) == tile
}

/// Whether `req` asks for the pixels of one stored tile at its own resolution, in its own JPEG
/// coding: the tile at `rect`'s origin, unscaled, all of it or (at the level's right or bottom
/// edge) its top-left part: the one tile read is all the render needs.
pub(crate) fn is_tile_part(req: &CanonicalRequest, rect: Rect, tile: (u32, u32)) -> bool {
    let (tw, th) = tile;
    req.format() == Format::Jpg
        && matches!(req.quality(), Quality::Default | Quality::Color)
        && !req.mirror()
        && req.degrees() == 0.0
        && tw > 0
        && th > 0
        && rect.x % tw == 0
        && rect.y % th == 0
        && (1..=tw).contains(&rect.w)
        && (1..=th).contains(&rect.h)
        && (req.width(), req.height()) == (rect.w, rect.h)
}

/// The JPEG 2000 resolution reduction for `req`: the coarsest of the file's `levels` that still
/// covers the output.
pub(crate) fn jp2_reduce(req: &CanonicalRequest, levels: u8) -> u32 {
    (pick_level(req).0 as u32).min(u32::from(levels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iiif::parse::parse_image_params;
    use crate::iiif::{ApiVersion, Limits};
    use proptest::prelude::*;

    fn req(region: &str, size: &str, w: u32, h: u32) -> CanonicalRequest {
        let r = parse_image_params(
            ApiVersion::V3,
            region,
            size,
            "0",
            "default.jpg",
            Format::Jpg,
        )
        .expect("valid");
        CanonicalRequest::resolve(
            &r,
            ImageSize {
                width: w,
                height: h,
            },
            &Limits::default(),
        )
        .expect("valid")
    }

    #[test]
    fn levels_cover_the_output() {
        // A 256 px tile at scale factor 4 of a 4000 px image: level 2, the tile's own pixels.
        let (k, r) = pick_level(&req("1024,0,1024,1024", "256,256", 4000, 3000));
        assert_eq!((k, r.x, r.w), (2, 256, 256));
        // A thumbnail of 4000x3000 at 256: level 3 (500x375), not 4 (250x188, too small).
        let sizes = [
            (4000, 3000),
            (2000, 1500),
            (1000, 750),
            (500, 375),
            (250, 188),
        ];
        let (i, r) = pyramid_level(&sizes, &req("full", "!256,256", 4000, 3000));
        assert_eq!((i, r.w, r.h), (3, 500, 375));
    }

    #[test]
    fn decode_estimates_follow_the_reading() {
        let size = ImageSize {
            width: 8000,
            height: 6000,
        };
        let tile = req("2048,2048,2048,2048", "256,256", 8000, 6000);
        // Levels: the tile's own pixels at scale 8.
        assert_eq!(
            decode_pixels(&tile, size, Reading::Levels, false),
            256 * 256
        );
        // A JPEG: the whole image at 1/8.
        assert_eq!(
            decode_pixels(&tile, size, Reading::Scaled, false),
            1000 * 750
        );
        // Anything else: all of it, unless the level is in memory.
        assert_eq!(
            decode_pixels(&tile, size, Reading::Whole, false),
            48_000_000
        );
        assert_eq!(decode_pixels(&tile, size, Reading::Whole, true), 256 * 256);
        // A full-resolution tile of a JPEG is the whole JPEG at full size.
        let zoomed = req("2048,2048,256,256", "256,256", 8000, 6000);
        assert_eq!(
            decode_pixels(&zoomed, size, Reading::Scaled, false),
            48_000_000
        );
    }

    #[test]
    fn only_exact_tiles_pass_through() {
        let tile = req("1024,0,1024,1024", "256,256", 4000, 3000);
        let rect = Rect {
            x: 256,
            y: 0,
            w: 256,
            h: 256,
        };
        assert!(is_stored_tile(&tile, rect, (256, 256)));
        assert!(!is_stored_tile(&tile, rect, (512, 512)));
        let png = parse_image_params(
            ApiVersion::V3,
            "1024,0,1024,1024",
            "256,256",
            "0",
            "default.png",
            Format::Jpg,
        )
        .expect("valid");
        let png = CanonicalRequest::resolve(
            &png,
            ImageSize {
                width: 4000,
                height: 3000,
            },
            &Limits::default(),
        )
        .expect("valid");
        assert!(!is_stored_tile(&png, rect, (256, 256)));
    }

    #[test]
    fn edge_tiles_are_read_from_their_one_tile() {
        // The last column of a 4000x3000 image's level 2 (1000x750): 232 pixels of a 256 tile.
        let edge = req("3072,0,928,1024", "232,256", 4000, 3000);
        let rect = Rect {
            x: 768,
            y: 0,
            w: 232,
            h: 256,
        };
        assert!(is_tile_part(&edge, rect, (256, 256)));
        // Part of a tile, but not its stored tile: never passed through as it is.
        assert!(!is_stored_tile(&edge, rect, (256, 256)));
        // Not at a tile's origin, or scaled, or past one tile: read through the level instead.
        assert!(!is_tile_part(&edge, Rect { x: 770, ..rect }, (256, 256)));
        let scaled = req("3072,0,928,1024", "116,128", 4000, 3000);
        assert!(!is_tile_part(&scaled, rect, (256, 256)));
        assert!(!is_tile_part(&edge, rect, (128, 128)));
        assert!(!is_tile_part(&edge, rect, (0, 0)));
    }

    proptest! {
        /// A level's region always lies inside the level and has at least the output's size.
        #[test]
        fn pyramid_regions_stay_inside(w in 64u32..9000, h in 64u32..9000, a in 0u32..1000,
                                       b in 0u32..1000, c in 1u32..1000, d in 1u32..1000, s in 1u32..600) {
            let (x, y) = (a * w / 1000, b * h / 1000);
            let (rw, rh) = ((c * w / 1000).clamp(1, w - x), (d * h / 1000).clamp(1, h - y));
            let region = format!("{x},{y},{rw},{rh}");
            let size = format!("!{s},{s}");
            let r = parse_image_params(ApiVersion::V3, &region, &size, "0", "default.jpg", Format::Jpg);
            let Ok(r) = r else { return Ok(()) };
            let Ok(q) = CanonicalRequest::resolve(&r, ImageSize { width: w, height: h }, &Limits::default()) else {
                return Ok(());
            };
            let mut sizes = vec![(w, h)];
            while sizes.len() < 8 {
                let (lw, lh) = sizes[sizes.len() - 1];
                if lw < 2 || lh < 2 { break; }
                sizes.push((lw.div_ceil(2), lh.div_ceil(2)));
            }
            let (i, lr) = pyramid_level(&sizes, &q);
            let (lw, lh) = sizes[i];
            prop_assert!(lr.x + lr.w <= lw && lr.y + lr.h <= lh);
            prop_assert!(lr.w >= 1 && lr.h >= 1);
            let (k, kr) = pick_level(&q);
            prop_assert!(kr.w >= q.width().min(kr.w) && k < 16);
        }
    }
}
