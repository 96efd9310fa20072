//! The raw-data decode: libjpeg entropy-decodes (and, with our kernels, runs the IDCT); the
//! chroma upsampling and colour conversion happen here, band by band.
// FFI: libjpeg's raw-data API; every block says why it holds.
#![allow(unsafe_code)]

use super::{iiifd_jpeg_install, run, simd, too_large, Decompress};
use crate::iiif::canonical::Rect;
use crate::render::decode::jpeg_simd::Kernels;
use crate::render::Result;
use image::DynamicImage;
use mozjpeg_sys as sys;
use std::ffi::c_long;

/// One component's geometry: sampling factors and rows of samples per band.
#[derive(Clone, Copy)]
struct Plane {
    h: usize,
    v: usize,
    /// Width of libjpeg's raw buffers (whole blocks).
    stride: usize,
    /// Samples that are image (libjpeg's downsampled_width and downsampled_height).
    width: usize,
    height: usize,
}

/// `want` (already clamped to the image) at full size through libjpeg's raw-data output:
/// libjpeg decodes the entropy coding and (with `kernels`) runs our IDCT; the chroma upsampling
/// (libjpeg's triangle filter, exactly) and colour conversion happen here, one band of rows at a
/// time, and decoding stops after the last band the region needs. This skips libjpeg's C
/// upsampler and the row-by-row calls of its output path, the slowest remaining part of a
/// full-size decode without its own SIMD code. Used for whole images and for regions of small
/// ones (tiles). `Ok(None)` for layouts this path does not take (4:4:0, odd sampling factors,
/// CMYK); libjpeg's output path decodes those.
pub(in crate::render::decode) fn decode_raw(
    data: &[u8],
    want: Rect,
    max_bytes: u64,
    kernels: Option<&'static Kernels>,
    rgb_coded: bool,
) -> Result<Option<DynamicImage>> {
    run(|| {
        let mut d = Decompress::new(data);
        let c = &mut *d.cinfo;
        let n = usize::try_from(c.num_components).unwrap_or(0);
        if rgb_coded && n == 3 {
            c.jpeg_color_space = sys::J_COLOR_SPACE::JCS_RGB;
        }
        if c.comp_info.is_null() || !(n == 1 || n == 3) {
            return Ok(None);
        }
        // SAFETY: after the header, comp_info points at num_components entries.
        let comps = unsafe { std::slice::from_raw_parts(c.comp_info, n) };
        let (mh, mv) = (c.max_h_samp_factor as usize, c.max_v_samp_factor as usize);
        let (w, h) = (c.image_width as usize, c.image_height as usize);
        let planes: Vec<Plane> = comps
            .iter()
            .map(|ci| {
                let (ph, pv) = (ci.h_samp_factor as usize, ci.v_samp_factor as usize);
                Plane {
                    h: ph,
                    v: pv,
                    stride: ci.width_in_blocks as usize * 8,
                    width: (w * ph).div_ceil(mh),
                    height: (h * pv).div_ceil(mv),
                }
            })
            .collect();
        use sys::J_COLOR_SPACE as Cs;
        let ycc = c.jpeg_color_space == Cs::JCS_YCbCr;
        let supported = match n {
            1 => c.jpeg_color_space == Cs::JCS_GRAYSCALE,
            _ => {
                (ycc || c.jpeg_color_space == Cs::JCS_RGB)
                    && (planes[0].h, planes[0].v) == (mh, mv)
                    && planes[1..].iter().all(|p| (p.h, p.v) == (1, 1))
                    && matches!((mh, mv), (1, 1) | (2, 1) | (2, 2))
                    && (ycc || (mh, mv) == (1, 1))
            }
        };
        let (x0, y0, ww, wh) = (
            want.x as usize,
            want.y as usize,
            want.w as usize,
            want.h as usize,
        );
        if !supported || x0 + ww > w || y0 + wh > h || ww == 0 || wh == 0 {
            return Ok(None);
        }
        let ch = if n == 1 { 1 } else { 3 };
        let out_bytes = (ww * wh * ch) as u64;
        if out_bytes > max_bytes {
            return Err(too_large(want.w, want.h, max_bytes));
        }
        c.raw_data_out = 1;
        // SAFETY: the memory manager exists once create has run; starting is allowed after
        // the header; the kernels table is static.
        unsafe {
            if let Some(mem) = c.common.mem.as_mut() {
                let left = max_bytes.saturating_sub(out_bytes).max(1 << 20);
                mem.max_memory_to_use = c_long::try_from(left).unwrap_or(c_long::MAX);
            }
            sys::jpeg_start_decompress(c);
            if let (Some(k), false) = (kernels, simd()) {
                iiifd_jpeg_install(c, k);
            }
        }
        let band = mv * 8;
        let geometry = Geometry {
            mh,
            mv,
            ycc,
            window: (x0, y0, ww, wh),
        };
        // Two bands per component: the one being emitted and the next (the row below a
        // band's last chroma row is the next band's first).
        let mut bufs: [Vec<Vec<u8>>; 2] = std::array::from_fn(|_| {
            planes
                .iter()
                .map(|p| vec![0u8; p.stride * p.v * 8])
                .collect()
        });
        let mut out = vec![0u8; ww * wh * ch];
        // The last chroma row of the band before the current one (the row above its first).
        let mut above: Vec<Vec<u8>> = planes.iter().map(|p| vec![0u8; p.stride]).collect();
        let mut up: Vec<Vec<u8>> = vec![vec![0u8; w + 1]; 2];
        // The band holding the region's last row, and the one after it for the chroma row
        // below (entropy decoding stops there: a tile's unused lower part costs nothing).
        let last_band = (y0 + wh - 1) / band;
        let bands = (last_band + 2).min(h.div_ceil(band));
        let mut pending: Option<usize> = None;
        for b in 0..=bands {
            let mut read = false;
            if b < bands {
                let mut rows: Vec<Vec<*mut u8>> = bufs[b % 2]
                    .iter_mut()
                    .zip(&planes)
                    .map(|(buf, p)| {
                        buf.chunks_exact_mut(p.stride)
                            .map(<[u8]>::as_mut_ptr)
                            .collect()
                    })
                    .collect();
                let mut image: Vec<*mut *mut u8> =
                    rows.iter_mut().map(|r| r.as_mut_ptr()).collect();
                // SAFETY: one row pointer per raw row of each component, each `stride` bytes:
                // the buffer libjpeg's raw output needs for max_v_samp_factor * 8 lines.
                read = unsafe { sys::jpeg_read_raw_data(c, image.as_mut_ptr(), band as _) } > 0;
            }
            if let Some(pb) = pending.take() {
                let (first, second) = bufs.split_at(1);
                let (this, next) = if pb % 2 == 0 {
                    (&first[0], &second[0])
                } else {
                    (&second[0], &first[0])
                };
                let next = read.then_some(next);
                if pb * band + band > y0 {
                    emit_band(
                        pb, this, next, &above, &planes, &geometry, kernels, &mut up, &mut out,
                    );
                }
                for (ci, p) in planes.iter().enumerate() {
                    let last = p.v * 8 - 1;
                    above[ci].copy_from_slice(&this[ci][last * p.stride..(last + 1) * p.stride]);
                }
            }
            if !read {
                break;
            }
            pending = Some(b);
        }
        // SAFETY: abort, not finish: the rows below the region are not needed.
        unsafe { sys::jpeg_abort_decompress(c) };
        Ok(crate::render::decode::from_samples(want.w, want.h, ch, out))
    })
}

/// What [`emit_band`] needs to know of the image and the region.
struct Geometry {
    mh: usize,
    mv: usize,
    ycc: bool,
    /// The region: x, y, width, height.
    window: (usize, usize, usize, usize),
}

/// Write the rows of band `b` (luma rows `b * 8 * mv ..`) that fall inside the region.
#[allow(clippy::too_many_arguments)]
fn emit_band(
    b: usize,
    this: &[Vec<u8>],
    next: Option<&Vec<Vec<u8>>>,
    above: &[Vec<u8>],
    planes: &[Plane],
    g: &Geometry,
    kernels: Option<&Kernels>,
    up: &mut [Vec<u8>],
    out: &mut [u8],
) {
    use crate::render::decode::jpeg_simd::{to_rgb, upsample_h2};
    let (x0, y0, ww, wh) = g.window;
    let (mh, mv) = (g.mh, g.mv);
    let first = b * mv * 8;
    let row = |ci: usize, r: usize| -> &[u8] {
        let s = planes[ci].stride;
        &this[ci][r * s..(r + 1) * s]
    };
    for r in 0..mv * 8 {
        let gy = first + r;
        if gy < y0 {
            continue;
        }
        if gy >= y0 + wh {
            break;
        }
        let at = (gy - y0) * ww;
        if planes.len() == 1 {
            out[at..at + ww].copy_from_slice(&row(0, r)[x0..x0 + ww]);
            continue;
        }
        let y = row(0, r);
        let (cb, cr): (&[u8], &[u8]) = if (mh, mv) == (1, 1) {
            (row(1, r), row(2, r))
        } else {
            // The chroma row this output row is nearest to, and (4:2:0) the next nearest.
            let cr_row = r / mv;
            let global = b * 8 + cr_row;
            for (k, ci) in [1usize, 2].into_iter().enumerate() {
                let p = planes[ci];
                let near = row(ci, cr_row);
                let far = (mv == 2).then(|| {
                    if r % 2 == 0 {
                        // Above: the previous row, the previous band's last, or itself at
                        // the top of the image.
                        if cr_row > 0 {
                            row(ci, cr_row - 1)
                        } else if global > 0 {
                            &above[ci][..]
                        } else {
                            near
                        }
                    } else if global + 1 >= p.height {
                        // Below the image's last row: itself.
                        near
                    } else if cr_row + 1 < 8 {
                        row(ci, cr_row + 1)
                    } else {
                        next.map_or(near, |n| &n[ci][..p.stride])
                    }
                });
                upsample_h2(near, far, p.width, &mut up[k]);
            }
            (&up[0][..], &up[1][..])
        };
        let dst = &mut out[at * 3..(at + ww) * 3];
        to_rgb(kernels, g.ycc, &y[x0..], &cb[x0..], &cr[x0..], dst);
    }
}
