//! Re-encoding a stored JPEG tile without leaving the DCT domain: its quantised coefficients are
//! read (entropy decoding only, no IDCT), turned from RGB to YCbCr where the tile is RGB-coded,
//! requantised to the IJG tables of the output quality, and entropy-coded again with optimised
//! Huffman tables. No pixel is formed, so the IDCT, colour conversion, forward DCT and
//! quantisation of a pixel re-encode are all skipped: on the vips Q90 RGB 4:4:4 tiles of the peer
//! benchmark this is the difference between trailing and leading IIPImage on cold tiles.
//!
//! Why it is exact up to rounding: the DCT and the JPEG colour transform are both linear, and the
//! transform's luma weights sum to 1 and its chroma weights to 0, so the level shift of 128 carries
//! through and each YCbCr coefficient is the same weighted sum of the dequantised R, G and B
//! coefficients at the same frequency. What is lost against decoding is only the clamp to 0-255
//! of the intermediate pixels (saturated colours move by a level or two) and one extra rounding.
// FFI: libjpeg's transcoding API; every block says why it holds.
#![allow(unsafe_code)]

use super::{emit_message, error_exit, output_message, run, Decompress};
use crate::render::Result;
use mozjpeg_sys as sys;
use std::ffi::{c_int, c_long, c_ulong};

/// The colour transform of JFIF (ITU-R BT.601, full range), rows Y, Cb, Cr over R, G, B.
const RGB_TO_YCC: [[f32; 3]; 3] = [
    [0.299, 0.587, 0.114],
    [-0.168_736, -0.331_264, 0.5],
    [0.5, -0.418_688, -0.081_312],
];

/// libjpeg's buffers for one 256- or 512-pixel tile are a few hundred KiB; this leaves room for
/// tiles up to 2048 pixels a side and refuses (a fatal error, not an allocation) beyond.
const MEMORY: c_long = 64 << 20;

/// A compressor writing to memory, destroyed on drop (boxed for the same reason as
/// [`Decompress`]: libjpeg keeps the error manager's address).
struct Compress {
    cinfo: Box<sys::jpeg_compress_struct>,
    _err: Box<sys::jpeg_error_mgr>,
    out: *mut u8,
    out_len: c_ulong,
}

impl Compress {
    /// Must run inside [`run`]: create may report a fatal error.
    fn new() -> Box<Compress> {
        // SAFETY: plain C structs whose documented initial state is all-zero.
        let mut err: Box<sys::jpeg_error_mgr> = Box::new(unsafe { std::mem::zeroed() });
        let cinfo: Box<sys::jpeg_compress_struct> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: initialises the error manager in place.
        unsafe { sys::jpeg_std_error(&mut err) };
        err.error_exit = Some(error_exit);
        err.emit_message = Some(emit_message);
        err.output_message = Some(output_message);
        let mut c = Box::new(Compress {
            cinfo,
            _err: err,
            out: std::ptr::null_mut(),
            out_len: 0,
        });
        c.cinfo.common.err = &mut *c._err;
        // SAFETY: the struct has its error manager. The destination writes through `out` and
        // `out_len`, fields of the box, which does not move while the compressor lives.
        unsafe {
            sys::jpeg_create_compress(&mut *c.cinfo);
            let (out, len) = (&mut c.out as *mut *mut u8, &mut c.out_len as *mut c_ulong);
            sys::jpeg_mem_dest(&mut c.cinfo, out, len);
        }
        c
    }

    /// The bytes written so far (all of them after `jpeg_finish_compress`).
    fn bytes(&self) -> Vec<u8> {
        if self.out.is_null() {
            return Vec::new();
        }
        // SAFETY: libjpeg's memory destination keeps `out` pointing at `out_len` written bytes.
        unsafe { std::slice::from_raw_parts(self.out, self.out_len as usize) }.to_vec()
    }
}

impl Drop for Compress {
    fn drop(&mut self) {
        // SAFETY: created by jpeg_create_compress, destroyed once; the memory destination's
        // buffer is malloc'd by libjpeg and left to the caller to free.
        unsafe {
            sys::jpeg_destroy_compress(&mut self.cinfo);
            if !self.out.is_null() {
                libc::free(self.out.cast());
            }
        }
    }
}

/// `data` (one JPEG stream) re-encoded at IJG `quality`, cropped to its top-left `w` x `h` (whole
/// blocks are kept; the decoder crops), as YCbCr (or gray): full-resolution chroma halved both
/// ways (4:2:0, as iiifd's encoder writes), other samplings kept.
/// `rgb_coded`: the tile's three components are R, G, B whatever its markers say (a TIFF's
/// Photometric tag). `Ok(None)` for layouts this does not take (CMYK, RGB with subsampled
/// components, a crop larger than the image); the caller re-encodes those from pixels.
pub(in crate::render::decode) fn requantize(
    data: &[u8],
    w: u32,
    h: u32,
    quality: u8,
    rgb_coded: bool,
) -> Result<Option<Vec<u8>>> {
    run(|| {
        // Declared first so it is dropped last: the compressor reads the decompressor's arrays.
        let mut d = Decompress::new(data);
        let src = &mut *d.cinfo;
        let n = usize::try_from(src.num_components).unwrap_or(0);
        use sys::J_COLOR_SPACE as Cs;
        if rgb_coded && n == 3 {
            src.jpeg_color_space = Cs::JCS_RGB;
        }
        let rgb = src.jpeg_color_space == Cs::JCS_RGB;
        let layout_ok = match n {
            1 => src.jpeg_color_space == Cs::JCS_GRAYSCALE,
            3 => rgb || src.jpeg_color_space == Cs::JCS_YCbCr,
            _ => false,
        };
        if !layout_ok
            || src.comp_info.is_null()
            || w == 0
            || h == 0
            || w > src.image_width
            || h > src.image_height
        {
            return Ok(None);
        }
        // SAFETY: after the header, comp_info points at num_components entries.
        let sampling: Vec<(c_int, c_int)> = unsafe { std::slice::from_raw_parts(src.comp_info, n) }
            .iter()
            .map(|ci| (ci.h_samp_factor, ci.v_samp_factor))
            .collect();
        // Full-resolution chroma (vips's tiles, and every RGB-coded tile) is halved both ways in
        // the DCT domain, as iiifd's own encoder writes it; other layouts keep their sampling.
        let halve = n == 3 && sampling.iter().all(|&s| s == (1, 1));
        if rgb && !halve {
            return Ok(None);
        }
        // The luma of a halved tile goes to an array of its own: the compressor reads it two
        // block rows at a time (16-line MCUs), more than the source's 4:4:4 arrays allow.
        let mut own_luma: *mut sys::jvirt_barray_control = std::ptr::null_mut();
        // SAFETY: the memory manager exists once create has run; arrays requested before
        // jpeg_read_coefficients are realised by it; reading the coefficients is allowed right
        // after the header, and returns one virtual array per component.
        let arrays = unsafe {
            if let Some(mem) = src.common.mem.as_mut() {
                mem.max_memory_to_use = MEMORY;
                if let (true, Some(request)) = (halve, mem.request_virt_barray) {
                    let luma = &*src.comp_info;
                    let (bw, bh) = (luma.width_in_blocks, luma.height_in_blocks);
                    own_luma = request(
                        &mut src.common,
                        1,
                        1,
                        bw.next_multiple_of(2),
                        bh.next_multiple_of(2),
                        2,
                    );
                }
            }
            sys::jpeg_read_coefficients(src)
        };
        if arrays.is_null() || (halve && own_luma.is_null()) {
            return Ok(None);
        }
        // What the compressor reads: the source's arrays, rewritten in place, but for the luma of
        // a halved tile.
        // SAFETY: jpeg_read_coefficients returned n arrays.
        let sources: Vec<*mut sys::jvirt_barray_control> =
            (0..n).map(|i| unsafe { *arrays.add(i) }).collect();
        let mut targets = sources.clone();
        if halve {
            targets[0] = own_luma;
        }
        // The tables the coefficients were quantised with (natural order), per component.
        // SAFETY: after jpeg_read_coefficients each component's quant_table is latched (non-null
        // for every component that has data).
        let comps = unsafe { std::slice::from_raw_parts(src.comp_info, n) };
        let mut from = Vec::with_capacity(n);
        for ci in comps {
            // SAFETY: checked non-null; libjpeg owns the table for the decompressor's life.
            match unsafe { ci.quant_table.as_ref() } {
                Some(t) => from.push(t.quantval),
                None => return Ok(None),
            }
        }
        let (max_h, max_v) = (src.max_h_samp_factor as u32, src.max_v_samp_factor as u32);
        let blocks: Vec<(u32, u32)> = comps
            .iter()
            .map(|ci| (ci.width_in_blocks, ci.height_in_blocks))
            .collect();

        let mut c = Compress::new();
        let dst = &mut *c.cinfo;
        // SAFETY: the compressor is in its start state and the decompressor has read its
        // coefficients, the states both calls require. The profile comes first because
        // copy_critical_parameters applies the defaults, and mozjpeg's default profile is
        // progressive with trellis quantisation (slow, and pointless on given coefficients).
        unsafe {
            sys::jpeg_c_set_int_param(
                dst,
                sys::J_INT_PARAM::JINT_COMPRESS_PROFILE,
                sys::JCP_FASTEST as c_int,
            );
            sys::jpeg_copy_critical_parameters(src, dst);
            if let Some(mem) = dst.common.mem.as_mut() {
                mem.max_memory_to_use = MEMORY;
            }
            if rgb {
                sys::jpeg_set_colorspace(dst, Cs::JCS_YCbCr);
            }
            sys::jpeg_set_quality(dst, c_int::from(quality.clamp(1, 100)), 1);
        }
        dst.image_width = w;
        dst.image_height = h;
        // The standard Huffman tables: optimised ones save about 8 % of the bytes for a second
        // pass over every block, the largest single cost of this route.
        dst.optimize_coding = 0;
        // SAFETY: copy_critical_parameters / set_colorspace left num_components entries.
        let out_comps = unsafe { std::slice::from_raw_parts_mut(dst.comp_info, n) };
        for (i, ci) in out_comps.iter_mut().enumerate() {
            (ci.h_samp_factor, ci.v_samp_factor) = match (halve, i) {
                (true, 0) => (2, 2),
                (true, _) => (1, 1),
                (false, _) => sampling[i],
            };
            ci.quant_tbl_no = c_int::from(i > 0);
        }
        // What the compressor will read of each array (whole MCUs, dummy blocks past the image
        // but real rows): the source's arrays must hold them, as a TIFF tile's (sides multiples
        // of 16) do.
        let (mw, mh) = match halve {
            true => (16, 16),
            false => (8 * max_h, 8 * max_v),
        };
        let (mcu_w, mcu_h) = (w.div_ceil(mw), h.div_ceil(mh));
        let fits = out_comps.iter().zip(&blocks).all(|(ci, &(bw, bh))| {
            mcu_w * ci.h_samp_factor as u32 <= bw && mcu_h * ci.v_samp_factor as u32 <= bh
        });
        if !fits {
            return Ok(None);
        }
        let mut to = Vec::with_capacity(n);
        for ci in out_comps.iter() {
            let table = usize::try_from(ci.quant_tbl_no).unwrap_or(0);
            // SAFETY: jpeg_set_quality filled tables 0 and 1.
            match unsafe { dst.quant_tbl_ptrs[table].as_ref() } {
                Some(t) => to.push(t.quantval),
                None => return Ok(None),
            }
        }

        let Some(access) = (unsafe { src.common.mem.as_ref() }).and_then(|m| m.access_virt_barray)
        else {
            return Ok(None);
        };
        let common: *mut sys::jpeg_common_struct = &mut src.common;
        // Block row `y` of `array`, `width` blocks.
        // SAFETY (for every call below): each array is one of the decompressor's, realised in
        // memory (its budget has no backing store), at least `width` blocks wide and with row
        // `y`; a row stays valid until the same array is accessed again (no reference is kept
        // past that), and rows of different arrays are distinct memory.
        let block_row =
            |array: *mut sys::jvirt_barray_control, y: u32, width: u32| -> &mut [sys::JBLOCK] {
                unsafe {
                    let rows = access(&mut *common, array, y, 1, 1);
                    std::slice::from_raw_parts_mut(*rows, width as usize)
                }
            };
        let row = |ci: usize, y: u32| block_row(targets[ci], y, blocks[ci].0);
        let source_row = |ci: usize, y: u32| block_row(sources[ci], y, blocks[ci].0);
        // Chroma to be halved is first stored dequantised (unit steps): the halving mixes four
        // blocks, and quantises once, after.
        let unit = [1u16; 64];
        let step = |ci: usize| if halve && ci > 0 { &unit } else { &to[ci] };
        if rgb {
            // factor[c][j][k]: how much of input component j's quantised coefficient k goes
            // into output component c's, requantisation included.
            let mut factor = [[[0f32; 64]; 3]; 3];
            for (c, per_input) in factor.iter_mut().enumerate() {
                for (j, f) in per_input.iter_mut().enumerate() {
                    for (k, v) in f.iter_mut().enumerate() {
                        *v = RGB_TO_YCC[c][j] * f32::from(from[j][k]) / f32::from(step(c)[k]);
                    }
                }
            }
            // 4:4:4 (checked above): the three arrays have the same size.
            for y in 0..blocks[0].1 {
                let (r, g, b) = (source_row(0, y), row(1, y), row(2, y));
                let luma = row(0, y);
                let blocks = luma
                    .iter_mut()
                    .zip(r.iter())
                    .zip(g.iter_mut())
                    .zip(b.iter_mut());
                for (((luma, r), g), b) in blocks {
                    for k in 0..64 {
                        let v = [f32::from(r[k]), f32::from(g[k]), f32::from(b[k])];
                        let mix =
                            |f: &[[f32; 64]; 3]| f[0][k] * v[0] + f[1][k] * v[1] + f[2][k] * v[2];
                        let (y, cb, cr) = (mix(&factor[0]), mix(&factor[1]), mix(&factor[2]));
                        luma[k] = quantised(y, k);
                        g[k] = quantised(cb, k);
                        b[k] = quantised(cr, k);
                    }
                }
            }
        } else {
            for (ci, &(_, rows)) in blocks.iter().enumerate() {
                let mut factor = [0f32; 64];
                for (k, v) in factor.iter_mut().enumerate() {
                    *v = f32::from(from[ci][k]) / f32::from(step(ci)[k].max(1));
                }
                for y in 0..rows {
                    if targets[ci] != sources[ci] {
                        let from_row = source_row(ci, y).to_vec();
                        row(ci, y).copy_from_slice(&from_row);
                    }
                    for block in row(ci, y) {
                        for (k, v) in block.iter_mut().enumerate() {
                            *v = quantised(f32::from(*v) * factor[k], k);
                        }
                    }
                }
            }
        }
        if halve {
            let m = halving_matrix();
            for ci in 1..3 {
                let (bw, bh) = blocks[ci];
                let last = |i: u32, n: u32| (i as usize).min(n as usize - 1);
                for oy in 0..bh.div_ceil(2) {
                    // Copies: the output row is one of the input rows when oy is 0.
                    let upper = row(ci, 2 * oy).to_vec();
                    let lower = row(ci, (2 * oy + 1).min(bh - 1)).to_vec();
                    let out = row(ci, oy);
                    for ox in 0..bw.div_ceil(2) {
                        let quad = [
                            &upper[last(2 * ox, bw)],
                            &upper[last(2 * ox + 1, bw)],
                            &lower[last(2 * ox, bw)],
                            &lower[last(2 * ox + 1, bw)],
                        ];
                        if let Some(slot) = out.get_mut(ox as usize) {
                            *slot = halve_quad(m, quad, &to[ci]);
                        }
                    }
                }
            }
        }
        // SAFETY: the compressor's parameters are set; the arrays outlive it (the decompressor
        // is dropped after the compressor) and cover its smaller or equal size.
        unsafe {
            sys::jpeg_write_coefficients(dst, targets.as_mut_ptr());
            sys::jpeg_finish_compress(dst);
        }
        Ok(Some(c.bytes()))
    })
}

/// The 1-D map from two neighbouring blocks' lowest four DCT coefficients to the eight of the
/// block holding both at half resolution: `M = D A B^T` restricted to those inputs, with `D` the
/// orthonormal 8-point DCT (JPEG's), `A` the average of pixel pairs (libjpeg's box
/// downsampling) and `B` the two blocks' own DCTs. Dropping each block's upper four frequencies is
/// the low-pass a downsampler wants anyway (Dugad and Ahuja, 2001), and halves the work.
fn halving_matrix() -> &'static [[f32; 8]; 8] {
    static MATRIX: std::sync::OnceLock<[[f32; 8]; 8]> = std::sync::OnceLock::new();
    MATRIX.get_or_init(compute_halving_matrix)
}

fn compute_halving_matrix() -> [[f32; 8]; 8] {
    let dct = |u: usize, x: usize| {
        let c = if u == 0 {
            std::f64::consts::FRAC_1_SQRT_2
        } else {
            1.0
        };
        0.5 * c * (((2 * x + 1) * u) as f64 * std::f64::consts::PI / 16.0).cos()
    };
    let mut m = [[0f32; 8]; 8];
    for (i, out) in m.iter_mut().enumerate() {
        for (j, v) in out.iter_mut().enumerate() {
            let (block, f) = (j / 4, j % 4);
            let mut sum = 0.0;
            for x in 4 * block..4 * block + 4 {
                let t = 2 * x - 8 * block;
                sum += dct(i, x) * 0.5 * (dct(f, t) + dct(f, t + 1));
            }
            *v = sum as f32;
        }
    }
    m
}

/// Four dequantised blocks (upper left, upper right, lower left, lower right) as one block at
/// half resolution, quantised by `steps`: `M X M^T` over their low frequencies.
fn halve_quad(m: &[[f32; 8]; 8], quad: [&sys::JBLOCK; 4], steps: &[u16; 64]) -> sys::JBLOCK {
    // X: row r = (block row) * 4 + vertical frequency, column c likewise horizontal.
    let mut x = [[0f32; 8]; 8];
    for (b, block) in quad.iter().enumerate() {
        let (r0, c0) = ((b / 2) * 4, (b % 2) * 4);
        for v in 0..4 {
            for u in 0..4 {
                x[r0 + v][c0 + u] = f32::from(block[v * 8 + u]);
            }
        }
    }
    // T = X M^T (8x8), then out = M T.
    let mut t = [[0f32; 8]; 8];
    for (r, trow) in t.iter_mut().enumerate() {
        for (i, cell) in trow.iter_mut().enumerate() {
            *cell = (0..8).map(|j| x[r][j] * m[i][j]).sum();
        }
    }
    let mut out = [0 as sys::JCOEF; 64];
    for (k, coefficient) in out.iter_mut().enumerate() {
        let (v, u) = (k / 8, k % 8);
        let value: f32 = (0..8).map(|r| m[v][r] * t[r][u]).sum();
        *coefficient = quantised(value / f32::from(steps[k].max(1)), k);
    }
    out
}

/// The largest magnitude baseline JPEG codes at 8 bits, per coefficient: the DC (index 0) has one
/// more bit than the AC.
const LIMIT: [f32; 64] = {
    let mut l = [1023.0; 64];
    l[0] = 2047.0;
    l
};

/// A requantised coefficient rounded to the nearest integer within [`LIMIT`]`[k]`. Rounding by
/// adding 1.5 * 2^23 (the float's integer part then sits in its low mantissa bits) rather than a
/// saturating cast: this loop runs for every coefficient of a tile, and the cast's NaN and range
/// handling keeps the compiler from vectorising it.
fn quantised(value: f32, k: usize) -> sys::JCOEF {
    const MAGIC: f32 = 12_582_912.0;
    let clamped = value.clamp(-LIMIT[k], LIMIT[k]);
    ((clamped + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as sys::JCOEF
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::passthrough::coding_of;

    /// A textured test picture: gradients, a hard edge and saturated patches.
    fn picture(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                let edge = if (x / 37 + y / 23) % 2 == 0 { 60 } else { 0 };
                out.push(((x * 255 / w) as u8).saturating_add(edge));
                out.push((y * 255 / h) as u8);
                out.push((((x ^ y) & 0x3F) * 3) as u8);
            }
        }
        out
    }

    /// `rgb` written by libjpeg itself, as vips and libtiff write tiles: RGB-coded (component ids
    /// R, G, B and an Adobe marker) or YCbCr, with full or halved chroma.
    fn libjpeg_encode(
        rgb: &[u8],
        w: u32,
        h: u32,
        quality: u8,
        rgb_coded: bool,
        halved: bool,
    ) -> Vec<u8> {
        run(|| {
            let mut c = Compress::new();
            let cinfo = &mut *c.cinfo;
            cinfo.image_width = w;
            cinfo.image_height = h;
            cinfo.input_components = 3;
            cinfo.in_color_space = sys::J_COLOR_SPACE::JCS_RGB;
            // SAFETY: a fresh compressor; the rows handed over are `w * 3` bytes each.
            unsafe {
                sys::jpeg_c_set_int_param(
                    cinfo,
                    sys::J_INT_PARAM::JINT_COMPRESS_PROFILE,
                    sys::JCP_FASTEST as c_int,
                );
                sys::jpeg_set_defaults(cinfo);
                if rgb_coded {
                    sys::jpeg_set_colorspace(cinfo, sys::J_COLOR_SPACE::JCS_RGB);
                }
                sys::jpeg_set_quality(cinfo, c_int::from(quality), 1);
                let luma = &mut *cinfo.comp_info;
                (luma.h_samp_factor, luma.v_samp_factor) = if halved { (2, 2) } else { (1, 1) };
                sys::jpeg_start_compress(cinfo, 1);
                for line in rgb.chunks_exact(w as usize * 3) {
                    let row = line.as_ptr();
                    sys::jpeg_write_scanlines(cinfo, &row, 1);
                }
                sys::jpeg_finish_compress(cinfo);
            }
            Ok(c.bytes())
        })
        .expect("libjpeg encodes")
    }

    fn rgb_of(jpeg: &[u8]) -> image::RgbImage {
        image::load_from_memory(jpeg).expect("decodes").to_rgb8()
    }

    /// Mean absolute difference per sample over the top-left `w` x `h` of two images.
    fn mean_diff(a: &image::RgbImage, b: &image::RgbImage, w: u32, h: u32) -> f64 {
        let mut sum = 0u64;
        for y in 0..h {
            for x in 0..w {
                let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
                sum += p
                    .iter()
                    .zip(q)
                    .map(|(&s, t)| u64::from(s.abs_diff(t)))
                    .sum::<u64>();
            }
        }
        sum as f64 / f64::from(w * h * 3)
    }

    #[test]
    fn full_chroma_tiles_come_out_as_ycbcr_420_at_our_quality_with_their_pixels() {
        let (w, h) = (256, 256);
        let pic = picture(w, h);
        for rgb_coded in [true, false] {
            let tile = libjpeg_encode(&pic, w, h, 90, rgb_coded, false);
            let source = rgb_of(&tile);
            let out = requantize(&tile, w, h, 85, false)
                .expect("transcodes")
                .expect("a layout it takes");
            let coding = coding_of(&out).expect("readable markers");
            assert_eq!(
                (coding.components, coding.chroma_halved, coding.quality),
                (3, true, 85)
            );
            assert!(out.len() < tile.len(), "{} >= {}", out.len(), tile.len());
            let got = rgb_of(&out);
            assert_eq!(got.dimensions(), (w, h));
            // A pixel re-encode of the same tile, for scale: the DCT route must be as faithful.
            let mut pixel_route = Vec::new();
            jpeg_encoder::Encoder::new(&mut pixel_route, 85)
                .encode(
                    source.as_raw(),
                    w as u16,
                    h as u16,
                    jpeg_encoder::ColorType::Rgb,
                )
                .expect("encode");
            let reference = mean_diff(&rgb_of(&pixel_route), &source, w, h);
            let d = mean_diff(&got, &source, w, h);
            assert!(
                d <= reference * 1.25 + 0.25,
                "rgb_coded {rgb_coded}: {d:.2} vs pixel route {reference:.2}"
            );
        }
    }

    #[test]
    fn an_edge_tile_is_cropped_to_the_image() {
        let pic = picture(256, 256);
        let tile = libjpeg_encode(&pic, 256, 256, 90, true, false);
        let out = requantize(&tile, 200, 120, 85, true)
            .expect("ok")
            .expect("taken");
        let got = rgb_of(&out);
        assert_eq!(got.dimensions(), (200, 120));
        // The same blocks as the whole tile's transcode (its fidelity is checked above), cut.
        let whole = rgb_of(
            &requantize(&tile, 256, 256, 85, true)
                .expect("ok")
                .expect("taken"),
        );
        let d = mean_diff(&got, &whole, 200, 120);
        assert!(d < 0.5, "{d}");
    }

    #[test]
    fn subsampled_and_gray_tiles_keep_their_layout_and_are_requantised() {
        let pic = picture(256, 256);
        let fine = libjpeg_encode(&pic, 256, 256, 97, false, true);
        let out = requantize(&fine, 256, 256, 85, false)
            .expect("ok")
            .expect("taken");
        let coding = coding_of(&out).expect("markers");
        assert_eq!((coding.chroma_halved, coding.quality), (true, 85));
        assert!(out.len() < fine.len());
        assert!(mean_diff(&rgb_of(&out), &rgb_of(&fine), 256, 256) < 2.5);

        let gray = image::DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(256, 256, pic.clone()).expect("size"),
        )
        .to_luma8();
        let mut gray_jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut gray_jpeg, 97)
            .encode(gray.as_raw(), 256, 256, jpeg_encoder::ColorType::Luma)
            .expect("encode");
        let out = requantize(&gray_jpeg, 256, 256, 85, false)
            .expect("ok")
            .expect("taken");
        assert_eq!(
            coding_of(&out).map(|c| (c.components, c.quality)),
            Some((1, 85))
        );
    }

    #[test]
    fn bad_input_is_an_error_or_declined_never_a_panic() {
        let pic = picture(64, 64);
        let tile = libjpeg_encode(&pic, 64, 64, 90, true, false);
        // Cut inside the scan: libjpeg pads with grey and warns; the answer is still a JPEG.
        let cut = &tile[..tile.len() / 2];
        assert!(requantize(cut, 64, 64, 85, true).is_ok());
        // Cut inside the headers: an error.
        assert!(requantize(&tile[..40], 64, 64, 85, true).is_err());
        assert!(requantize(b"not a jpeg", 64, 64, 85, false).is_err());
        // A crop larger than the tile is declined (the caller decodes instead).
        assert_eq!(requantize(&tile, 65, 64, 85, true).expect("ok"), None);
    }
}
