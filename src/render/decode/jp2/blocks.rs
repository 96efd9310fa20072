//! Where a JPEG 2000 request's pixels come from: one cached block of a resolution, or a decode of
//! just the request's area. Pure geometry, no I/O.
//!
//! openjpeg's cost per call is mostly fixed: it reads the tile's packet headers (for an untiled
//! archive, those of the whole codestream) and sets up the wavelet for the area, so on the shared
//! benchmark's 8000x6000 archive a 256 px tile costs about 20 ms and a 1024 px block about 60 ms
//! (4 ms per tile). Viewers ask for neighbouring tiles, so a resolution is decoded in blocks of
//! [`BLOCK`] px, kept in the decoded cache; a resolution of at most [`WHOLE`] pixels (the levels a
//! viewer opens on, thumbnails) is one block.
//!
//! Coordinates: the reference grid is the codestream's (the image spans `[x0, x1)`), and a pixel
//! of resolution reduction `r` at absolute position `i` covers reference `[i * 2^r, (i + 1) * 2^r)`,
//! so the resolution spans `[ceil(x0 / 2^r), ceil(x1 / 2^r))` (ISO/IEC 15444-1 B.5).

use crate::iiif::canonical::Rect;

/// Side of a block, in pixels of its resolution.
pub(crate) const BLOCK: u32 = 1024;
/// A resolution of at most this many pixels is decoded whole.
pub(crate) const WHOLE: u64 = 2 << 20;

/// The image on the reference grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grid {
    /// Top-left corner (XOsiz, YOsiz).
    pub(crate) x0: u32,
    pub(crate) y0: u32,
    /// Size of the image (Xsiz - XOsiz, Ysiz - YOsiz).
    pub(crate) width: u32,
    pub(crate) height: u32,
}

/// A reference-grid area `[x0, x1) x [y0, y1)` for openjpeg's decode area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Area {
    pub(crate) x0: u32,
    pub(crate) y0: u32,
    pub(crate) x1: u32,
    pub(crate) y1: u32,
}

/// A request across several blocks of a resolution decoded in blocks: the blocks' columns and rows,
/// and the request in the resolution's absolute pixel coordinates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cover {
    pub(crate) cols: std::ops::Range<u32>,
    pub(crate) rows: std::ops::Range<u32>,
    pub(crate) x: u32,
    pub(crate) y: u32,
    pub(crate) w: u32,
    pub(crate) h: u32,
}

/// How to get a request's pixels at reduction `reduce`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Decode (or find in the cache) block `(col, row)` of the resolution, which covers `area`;
    /// the request is `rect` of the block's pixels. The whole resolution is block (0, 0).
    Block {
        col: u32,
        row: u32,
        area: Area,
        rect: Rect,
    },
    /// Decode only the request's `area` (it straddles blocks); the decoded image is the request.
    /// Where that decode would not fit the budget, the request can be put together from the
    /// blocks of `cover` instead (none for a resolution decoded whole).
    Direct { area: Area, cover: Option<Cover> },
}

/// The reference-grid area of resolution `r`'s pixels `[bx0, bx1) x [by0, by1)` (absolute): their
/// cells, clipped to the image.
fn block_area(grid: Grid, r: u32, bx0: u64, by0: u64, bx1: u64, by1: u64) -> Area {
    let (gx0, gy0) = (u64::from(grid.x0), u64::from(grid.y0));
    let (gx1, gy1) = (gx0 + u64::from(grid.width), gy0 + u64::from(grid.height));
    Area {
        x0: (bx0 << r).clamp(gx0, gx1) as u32,
        y0: (by0 << r).clamp(gy0, gy1) as u32,
        x1: (bx1 << r).clamp(gx0, gx1) as u32,
        y1: (by1 << r).clamp(gy0, gy1) as u32,
    }
}

/// Block `(col, row)` of resolution `r` decoded in blocks: its reference-grid area, and its first
/// pixel in the resolution's absolute coordinates.
pub(crate) fn block(grid: Grid, r: u32, col: u32, row: u32) -> (Area, u32, u32) {
    let r = r.min(31);
    let (gx0, gy0) = (u64::from(grid.x0), u64::from(grid.y0));
    let (lx0, lx1) = span(gx0, gx0 + u64::from(grid.width), r);
    let (ly0, ly1) = span(gy0, gy0 + u64::from(grid.height), r);
    let b = u64::from(BLOCK);
    let (bx0, by0) = ((u64::from(col) * b).max(lx0), (u64::from(row) * b).max(ly0));
    let (bx1, by1) = (
        (u64::from(col + 1) * b).min(lx1),
        (u64::from(row + 1) * b).min(ly1),
    );
    (
        block_area(grid, r, bx0, by0, bx1, by1),
        bx0 as u32,
        by0 as u32,
    )
}

fn ceil_shift(v: u64, r: u32) -> u64 {
    v.div_ceil(1u64 << r)
}

/// The span of resolution `r` along one axis: `[ceil(a0 / 2^r), ceil(a1 / 2^r))`.
fn span(a0: u64, a1: u64, r: u32) -> (u64, u64) {
    (ceil_shift(a0, r), ceil_shift(a1, r))
}

/// The route for `region` (image pixels, relative to the image's corner) at reduction `reduce`.
/// `fits(w, h)` says whether a block of w x h pixels may be decoded (the render's memory budget).
pub(crate) fn route(
    grid: Grid,
    reduce: u32,
    region: Rect,
    fits: impl Fn(u64, u64) -> bool,
) -> Route {
    let r = reduce.min(31);
    let (gx0, gy0) = (u64::from(grid.x0), u64::from(grid.y0));
    let (gx1, gy1) = (gx0 + u64::from(grid.width), gy0 + u64::from(grid.height));
    // The request on the reference grid, clipped to the image.
    let ax0 = (gx0 + u64::from(region.x)).min(gx1);
    let ay0 = (gy0 + u64::from(region.y)).min(gy1);
    let ax1 = (ax0 + u64::from(region.w)).min(gx1);
    let ay1 = (ay0 + u64::from(region.h)).min(gy1);
    let area = Area {
        x0: ax0 as u32,
        y0: ay0 as u32,
        x1: ax1 as u32,
        y1: ay1 as u32,
    };
    let (lx0, lx1) = span(gx0, gx1, r);
    let (ly0, ly1) = span(gy0, gy1, r);
    if lx1 <= lx0 || ly1 <= ly0 {
        // No pixel at this resolution (a one-pixel edge at an odd origin): nothing to share.
        return Route::Direct { area, cover: None };
    }
    // The request at the resolution, widened to whole pixels and kept inside it.
    let rx0 = (ax0 >> r).clamp(lx0, lx1.saturating_sub(1));
    let ry0 = (ay0 >> r).clamp(ly0, ly1.saturating_sub(1));
    let rx1 = ceil_shift(ax1, r).clamp(rx0 + 1, lx1.max(rx0 + 1));
    let ry1 = ceil_shift(ay1, r).clamp(ry0 + 1, ly1.max(ry0 + 1));
    let whole = is_whole(grid, r);
    let b = u64::from(BLOCK);
    let direct = Route::Direct {
        area,
        cover: (!whole).then(|| Cover {
            cols: (rx0 / b) as u32..(rx1.div_ceil(b)) as u32,
            rows: (ry0 / b) as u32..(ry1.div_ceil(b)) as u32,
            x: rx0 as u32,
            y: ry0 as u32,
            w: (rx1 - rx0) as u32,
            h: (ry1 - ry0) as u32,
        }),
    };
    let (col, row, bx0, by0, bx1, by1) = if whole {
        (0, 0, lx0, ly0, lx1, ly1)
    } else {
        let (col, row) = (rx0 / b, ry0 / b);
        let (bx0, by0) = ((col * b).max(lx0), (row * b).max(ly0));
        let (bx1, by1) = (((col + 1) * b).min(lx1), ((row + 1) * b).min(ly1));
        (col, row, bx0, by0, bx1, by1)
    };
    if rx1 > bx1 || ry1 > by1 || !fits(bx1 - bx0, by1 - by0) {
        return direct;
    }
    Route::Block {
        col: col as u32,
        row: row as u32,
        area: block_area(grid, r, bx0, by0, bx1, by1),
        rect: Rect {
            x: (rx0 - bx0) as u32,
            y: (ry0 - by0) as u32,
            w: (rx1 - rx0) as u32,
            h: (ry1 - ry0) as u32,
        },
    }
}

/// The reference-grid area of rows `[row0, row0 + rows)` of resolution `r` (rows counted from the
/// resolution's top), across its whole width: one strip of a tiled copy.
pub(crate) fn strip_area(grid: Grid, r: u32, row0: u32, rows: u32) -> Area {
    let r = r.min(31);
    let (gx0, gy0) = (u64::from(grid.x0), u64::from(grid.y0));
    let (gx1, gy1) = (gx0 + u64::from(grid.width), gy0 + u64::from(grid.height));
    let (ly0, _) = span(gy0, gy1, r);
    let (a, b) = (
        ly0 + u64::from(row0),
        ly0 + u64::from(row0) + u64::from(rows),
    );
    Area {
        x0: gx0 as u32,
        // The first strip from the image's edge (the rows above its first sample hold none).
        y0: if row0 == 0 {
            gy0
        } else {
            (a << r).clamp(gy0, gy1)
        } as u32,
        x1: gx1 as u32,
        y1: (b << r).clamp(gy0, gy1) as u32,
    }
}

/// The size of resolution `r`.
pub(crate) fn resolution_size(grid: Grid, r: u32) -> (u64, u64) {
    decoded_size(
        Area {
            x0: grid.x0,
            y0: grid.y0,
            x1: (u64::from(grid.x0) + u64::from(grid.width)).min(u64::from(u32::MAX)) as u32,
            y1: (u64::from(grid.y0) + u64::from(grid.height)).min(u64::from(u32::MAX)) as u32,
        },
        r,
    )
}

/// Whether resolution `r` is decoded whole (one block).
pub(crate) fn is_whole(grid: Grid, r: u32) -> bool {
    let (w, h) = resolution_size(grid, r.min(31));
    w.saturating_mul(h) <= WHOLE
}

/// The size openjpeg gives `area` at reduction `r`.
pub(crate) fn decoded_size(area: Area, r: u32) -> (u64, u64) {
    let (x0, x1) = span(u64::from(area.x0), u64::from(area.x1), r);
    let (y0, y1) = span(u64::from(area.y0), u64::from(area.y1), r);
    (x1 - x0, y1 - y0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BENCH: Grid = Grid {
        x0: 0,
        y0: 0,
        width: 8000,
        height: 6000,
    };

    fn rect(x: u32, y: u32, w: u32, h: u32) -> Rect {
        Rect { x, y, w, h }
    }

    #[test]
    fn small_resolutions_are_one_block_and_tiles_share_blocks() {
        // Scale factor 8 of the benchmark image: 1000x750, decoded whole.
        let a = route(BENCH, 3, rect(2048, 2048, 2048, 2048), |_, _| true);
        let b = route(BENCH, 3, rect(0, 0, 2048, 2048), |_, _| true);
        match (a, b) {
            (
                Route::Block {
                    col: 0,
                    row: 0,
                    area,
                    rect: ra,
                },
                Route::Block { rect: rb, .. },
            ) => {
                assert_eq!(
                    area,
                    Area {
                        x0: 0,
                        y0: 0,
                        x1: 8000,
                        y1: 6000
                    }
                );
                assert_eq!(ra, rect(256, 256, 256, 256));
                assert_eq!(rb, rect(0, 0, 256, 256));
            }
            other => panic!("{other:?}"),
        }
        // Full resolution: a 256 px tile lies in one 1024 px block.
        match route(BENCH, 0, rect(3328, 2304, 256, 256), |_, _| true) {
            Route::Block {
                col,
                row,
                area,
                rect: r,
            } => {
                assert_eq!((col, row), (3, 2));
                assert_eq!(
                    area,
                    Area {
                        x0: 3072,
                        y0: 2048,
                        x1: 4096,
                        y1: 3072
                    }
                );
                assert_eq!(r, rect(256, 256, 256, 256));
            }
            other => panic!("{other:?}"),
        }
        // Straddling two blocks, or a block over the budget: only the request is decoded.
        assert_eq!(
            route(BENCH, 0, rect(1000, 0, 100, 100), |_, _| true),
            Route::Direct {
                area: Area {
                    x0: 1000,
                    y0: 0,
                    x1: 1100,
                    y1: 100
                },
                cover: Some(Cover {
                    cols: 0..2,
                    rows: 0..1,
                    x: 1000,
                    y: 0,
                    w: 100,
                    h: 100
                }),
            }
        );
        // Block (1, 0) as the cover finds it: the same cells as the route's.
        let (area, bx, by) = block(BENCH, 0, 1, 0);
        let want = Area {
            x0: 1024,
            y0: 0,
            x1: 2048,
            y1: 1024,
        };
        assert_eq!((area, bx, by), (want, 1024, 0));
        assert!(matches!(
            route(BENCH, 0, rect(0, 0, 256, 256), |_, _| false),
            Route::Direct { .. }
        ));
    }

    #[test]
    fn an_origin_off_zero_shifts_the_blocks_cells() {
        let grid = Grid {
            x0: 5,
            y0: 3,
            width: 9000,
            height: 9000,
        };
        // Resolution 1 spans [3, 4503) x [2, 4502); block (1, 1) starts at 1024.
        match route(grid, 1, rect(2100, 2100, 200, 200), |_, _| true) {
            Route::Block {
                col,
                row,
                area,
                rect: r,
            } => {
                assert_eq!((col, row), (1, 1));
                assert_eq!(
                    area,
                    Area {
                        x0: 2048,
                        y0: 2048,
                        x1: 4096,
                        y1: 4096
                    }
                );
                assert_eq!(decoded_size(area, 1), (1024, 1024));
                // Reference 2105..2305 is resolution 1052..1153.
                assert_eq!(r, rect(1052 - 1024, 1051 - 1024, 101, 101));
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        /// Strips of a resolution tile it: consecutive, each as many rows as asked (the last one
        /// short), as wide as the resolution.
        #[test]
        fn strips_tile_a_resolution(
            x0 in 0u32..3000, y0 in 0u32..3000,
            width in 1u32..20_000, height in 1u32..20_000,
            reduce in 0u32..8, rows in 1u32..1024,
        ) {
            let grid = Grid { x0, y0, width, height };
            let (w, h) = resolution_size(grid, reduce);
            let mut row = 0u32;
            let mut last_y1 = y0;
            while u64::from(row) < h {
                let n = rows.min((h - u64::from(row)) as u32);
                let area = strip_area(grid, reduce, row, n);
                prop_assert_eq!(area.y0, last_y1, "strips follow each other");
                prop_assert_eq!(decoded_size(area, reduce), (w, u64::from(n)));
                last_y1 = area.y1;
                row += n;
            }
            if h > 0 {
                prop_assert_eq!(last_y1, y0 + height);
            }
        }

        /// Every route's pixels cover the request, inside the image and the decoded block.
        #[test]
        fn routes_cover_the_request(
            x0 in 0u32..3000, y0 in 0u32..3000,
            width in 1u32..20_000, height in 1u32..20_000,
            fx in 0.0f64..1.0, fy in 0.0f64..1.0, fw in 0.0f64..1.0, fh in 0.0f64..1.0,
            reduce in 0u32..8,
        ) {
            let grid = Grid { x0, y0, width, height };
            let x = ((f64::from(width) * fx) as u32).min(width - 1);
            let y = ((f64::from(height) * fy) as u32).min(height - 1);
            let w = (((f64::from(width - x)) * fw) as u32).max(1);
            let h = (((f64::from(height - y)) * fh) as u32).max(1);
            let region = rect(x, y, w, h);
            match route(grid, reduce, region, |_, _| true) {
                Route::Block { area, rect: r, .. } => {
                    prop_assert!(area.x0 >= x0 && area.y0 >= y0);
                    prop_assert!(area.x1 <= x0 + width && area.y1 <= y0 + height);
                    prop_assert!(area.x0 < area.x1 && area.y0 < area.y1);
                    let (bw, bh) = decoded_size(area, reduce);
                    prop_assert!(bw <= u64::from(BLOCK) || bw * bh <= WHOLE);
                    prop_assert!(r.w >= 1 && r.h >= 1);
                    prop_assert!(u64::from(r.x + r.w) <= bw && u64::from(r.y + r.h) <= bh);
                    // The rect's cells on the reference grid cover the request.
                    let s = 1u64 << reduce;
                    // Pixel i of the resolution sits at reference i * 2^r; the first one at or
                    // after the image's corner.
                    let cell0 = |a0: u32, o: u32| u64::from(a0).div_ceil(s) + u64::from(o);
                    let left = cell0(area.x0, r.x) * s;
                    let top = cell0(area.y0, r.y) * s;
                    prop_assert!(left <= u64::from(x0 + x).max(u64::from(x0).div_ceil(s) * s));
                    prop_assert!(top <= u64::from(y0 + y).max(u64::from(y0).div_ceil(s) * s));
                    prop_assert!(left + u64::from(r.w) * s >= u64::from(x0 + x + w));
                    prop_assert!(top + u64::from(r.h) * s >= u64::from(y0 + y + h));
                }
                Route::Direct { area, cover } => {
                    prop_assert_eq!(area, Area { x0: x0 + x, y0: y0 + y, x1: x0 + x + w, y1: y0 + y + h });
                    if let Some(c) = cover {
                        // The cover's blocks hold every pixel of the request.
                        let (first, fx, fy) = block(grid, reduce, c.cols.start, c.rows.start);
                        let (last, _, _) = block(grid, reduce, c.cols.end - 1, c.rows.end - 1);
                        prop_assert!(fx <= c.x && fy <= c.y);
                        let (lw, lh) = decoded_size(
                            Area { x0: first.x0, y0: first.y0, x1: last.x1, y1: last.y1 },
                            reduce,
                        );
                        prop_assert!(u64::from(c.x - fx + c.w) <= lw);
                        prop_assert!(u64::from(c.y - fy + c.h) <= lh);
                    }
                }
            }
        }
    }
}
