//! AVX2 kernels that stand in for two of libjpeg's C methods (see `jpeg_hooks.c`): the full-size
//! "islow" inverse DCT and YCbCr -> RGB conversion. Both compute exactly what libjpeg's C computes
//! (same integer arithmetic, same rounding), eight lanes at a time; the scalar references below
//! are line-by-line ports of `jidctint.c` and `jdcolor.c` that the tests hold them to.
//!
//! Used only when the CPU has AVX2 ([`kernels`]); otherwise libjpeg keeps its own C.
// FFI/SIMD: one of the few modules allowed `unsafe` (AVX2 intrinsics and libjpeg's hooks); every block says why it holds.
#![allow(unsafe_code)]

use std::ffi::{c_short, c_uchar, c_uint, c_void};

/// The table handed to `iiifd_jpeg_install` (layout shared with `struct iiifd_kernels` in C).
#[repr(C)]
pub(super) struct Kernels {
    /// The IDCT with 16-bit multipliers (libjpeg built with its SIMD code), then 32-bit (without).
    idct_q16: Option<IdctFn>,
    idct_q32: Option<IdctFn>,
    ycc_rgb: Option<
        unsafe extern "C" fn(*const c_uchar, *const c_uchar, *const c_uchar, *mut c_uchar, c_uint),
    >,
}

type IdctFn = unsafe extern "C" fn(*const c_void, *const c_short, *mut *mut c_uchar, c_uint);

#[cfg(target_arch = "x86_64")]
static AVX2_KERNELS: Kernels = Kernels {
    idct_q16: Some(avx2::idct_islow_q16),
    idct_q32: Some(avx2::idct_islow_q32),
    ycc_rgb: Some(avx2::ycc_rgb),
};

/// The kernels this CPU can run, if any.
pub(super) fn kernels() -> Option<&'static Kernels> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            return Some(&AVX2_KERNELS);
        }
    }
    None
}

// jidctint.c's constants: FIX(x) with CONST_BITS = 13.
const CONST_BITS: i32 = 13;
const PASS1_BITS: i32 = 2;
const FIX_0_298631336: i32 = 2446;
const FIX_0_390180644: i32 = 3196;
const FIX_0_541196100: i32 = 4433;
const FIX_0_765366865: i32 = 6270;
const FIX_0_899976223: i32 = 7373;
const FIX_1_175875602: i32 = 9633;
const FIX_1_501321110: i32 = 12299;
const FIX_1_847759065: i32 = 15137;
const FIX_1_961570560: i32 = 16069;
const FIX_2_053119869: i32 = 16819;
const FIX_2_562915447: i32 = 20995;
const FIX_3_072711026: i32 = 25172;

// jdcolor.c's constants: FIX(x) with SCALEBITS = 16.
const SCALEBITS: i32 = 16;
const ONE_HALF: i32 = 1 << (SCALEBITS - 1);
const FIX_1_40200: i32 = 91881;
const FIX_1_77200: i32 = 116130;
const FIX_0_71414: i32 = 46802;
const FIX_0_34414: i32 = 22554;

#[cfg(test)]
/// One 8-point islow IDCT (jidctint.c's butterfly) on `v`, returning the eight outputs in their
/// natural order, before the final descale.
#[inline(always)]
fn butterfly(v: [i32; 8]) -> [i32; 8] {
    let (z2, z3) = (v[2], v[6]);
    let z1 = (z2.wrapping_add(z3)).wrapping_mul(FIX_0_541196100);
    let tmp2 = z1.wrapping_add(z3.wrapping_mul(-FIX_1_847759065));
    let tmp3 = z1.wrapping_add(z2.wrapping_mul(FIX_0_765366865));
    let tmp0 = v[0].wrapping_add(v[4]).wrapping_shl(CONST_BITS as u32);
    let tmp1 = v[0].wrapping_sub(v[4]).wrapping_shl(CONST_BITS as u32);
    let (tmp10, tmp13) = (tmp0.wrapping_add(tmp3), tmp0.wrapping_sub(tmp3));
    let (tmp11, tmp12) = (tmp1.wrapping_add(tmp2), tmp1.wrapping_sub(tmp2));
    let (t0, t1, t2, t3) = (v[7], v[5], v[3], v[1]);
    let z1 = t0.wrapping_add(t3);
    let z2 = t1.wrapping_add(t2);
    let z3 = t0.wrapping_add(t2);
    let z4 = t1.wrapping_add(t3);
    let z5 = z3.wrapping_add(z4).wrapping_mul(FIX_1_175875602);
    let t0 = t0.wrapping_mul(FIX_0_298631336);
    let t1 = t1.wrapping_mul(FIX_2_053119869);
    let t2 = t2.wrapping_mul(FIX_3_072711026);
    let t3 = t3.wrapping_mul(FIX_1_501321110);
    let z1 = z1.wrapping_mul(-FIX_0_899976223);
    let z2 = z2.wrapping_mul(-FIX_2_562915447);
    let z3 = z3.wrapping_mul(-FIX_1_961570560).wrapping_add(z5);
    let z4 = z4.wrapping_mul(-FIX_0_390180644).wrapping_add(z5);
    let t0 = t0.wrapping_add(z1).wrapping_add(z3);
    let t1 = t1.wrapping_add(z2).wrapping_add(z4);
    let t2 = t2.wrapping_add(z2).wrapping_add(z3);
    let t3 = t3.wrapping_add(z1).wrapping_add(z4);
    [
        tmp10.wrapping_add(t3),
        tmp11.wrapping_add(t2),
        tmp12.wrapping_add(t1),
        tmp13.wrapping_add(t0),
        tmp13.wrapping_sub(t0),
        tmp12.wrapping_sub(t1),
        tmp11.wrapping_sub(t2),
        tmp10.wrapping_sub(t3),
    ]
}

#[cfg(test)]
fn descale(x: i32, n: i32) -> i32 {
    x.wrapping_add(1 << (n - 1)) >> n
}

#[cfg(test)]
/// The reference: jidctint.c's `jpeg_idct_islow` for 8-bit samples, on one block of coefficients
/// (natural order) with its quantisation table. Output values are clamped to 0..=255 (libjpeg
/// wraps values that far out of range, which no valid file produces).
pub(super) fn idct_islow_scalar(quant: &[i16; 64], coef: &[i16; 64]) -> [u8; 64] {
    let mut ws = [0i32; 64];
    for c in 0..8 {
        let col: [i32; 8] =
            std::array::from_fn(|r| i32::from(coef[r * 8 + c]) * i32::from(quant[r * 8 + c]));
        let out = butterfly(col);
        for (r, v) in out.into_iter().enumerate() {
            ws[r * 8 + c] = descale(v, CONST_BITS - PASS1_BITS);
        }
    }
    let mut out = [0u8; 64];
    for r in 0..8 {
        let row: [i32; 8] = std::array::from_fn(|c| ws[r * 8 + c]);
        for (c, v) in butterfly(row).into_iter().enumerate() {
            out[r * 8 + c] = (descale(v, CONST_BITS + PASS1_BITS + 3) + 128).clamp(0, 255) as u8;
        }
    }
    out
}

/// The reference: jdcolor.c's `ycc_rgb_convert` for one pixel.
pub(super) fn ycc_rgb_scalar(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
    let r = y + ((FIX_1_40200 * cr + ONE_HALF) >> SCALEBITS);
    let g = y + ((-FIX_0_34414 * cb + ONE_HALF + -FIX_0_71414 * cr) >> SCALEBITS);
    let b = y + ((FIX_1_77200 * cb + ONE_HALF) >> SCALEBITS);
    [r, g, b].map(|v| v.clamp(0, 255) as u8)
}

/// Chroma upsampling of one output row, exactly as libjpeg's jdsample.c does it: twice as wide, and
/// (for 4:2:0) blended with the nearest other input row `far` (the row above for an even output row,
/// below for an odd one; the row itself at the image's edges). `near` and `far` hold `dw` samples
/// (the component's downsampled width); `out` gets `2 * dw`. Triangle ("fancy") filtering, or
/// plain duplication when the component is at most two samples wide, as libjpeg chooses.
pub(super) fn upsample_h2(near: &[u8], far: Option<&[u8]>, dw: usize, out: &mut [u8]) {
    let (near, out) = (&near[..dw], &mut out[..2 * dw]);
    #[cfg(target_arch = "x86_64")]
    {
        if dw > 2 && std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present; the slices are bounds-checked above.
            unsafe { avx2::upsample_h2(near, far.map(|f| &f[..dw]), out) };
            return;
        }
    }
    upsample_h2_scalar(near, far, dw, out);
}

/// [`upsample_h2`] in plain code: the reference.
pub(super) fn upsample_h2_scalar(near: &[u8], far: Option<&[u8]>, dw: usize, out: &mut [u8]) {
    let (near, out) = (&near[..dw], &mut out[..2 * dw]);
    if dw <= 2 {
        for (i, &v) in near.iter().enumerate() {
            out[2 * i] = v;
            out[2 * i + 1] = v;
        }
        return;
    }
    match far {
        // h2v1_fancy_upsample
        None => {
            let v = |i: usize| i32::from(near[i]);
            out[0] = near[0];
            out[1] = ((v(0) * 3 + v(1) + 2) >> 2) as u8;
            for i in 1..dw - 1 {
                let x = v(i) * 3;
                out[2 * i] = ((x + v(i - 1) + 1) >> 2) as u8;
                out[2 * i + 1] = ((x + v(i + 1) + 2) >> 2) as u8;
            }
            let l = dw - 1;
            out[2 * l] = ((v(l) * 3 + v(l - 1) + 1) >> 2) as u8;
            out[2 * l + 1] = near[l];
        }
        // h2v2_fancy_upsample: first the vertical blend (3 near + 1 far), then the horizontal.
        Some(far) => {
            let far = &far[..dw];
            let sum = |i: usize| i32::from(near[i]) * 3 + i32::from(far[i]);
            out[0] = ((sum(0) * 4 + 8) >> 4) as u8;
            out[1] = ((sum(0) * 3 + sum(1) + 7) >> 4) as u8;
            for i in 1..dw - 1 {
                let x = sum(i) * 3;
                out[2 * i] = ((x + sum(i - 1) + 8) >> 4) as u8;
                out[2 * i + 1] = ((x + sum(i + 1) + 7) >> 4) as u8;
            }
            let l = dw - 1;
            out[2 * l] = ((sum(l) * 3 + sum(l - 1) + 8) >> 4) as u8;
            out[2 * l + 1] = ((sum(l) * 4 + 7) >> 4) as u8;
        }
    }
}

/// Three full-resolution planes' rows into one row of 3-byte pixels: YCbCr -> RGB with the kernel
/// when there is one (else the reference), or plain interleaving for RGB-coded files.
pub(super) fn to_rgb(
    kernels: Option<&Kernels>,
    ycc: bool,
    a: &[u8],
    b: &[u8],
    c: &[u8],
    out: &mut [u8],
) {
    let w = out.len() / 3;
    let (a, b, c) = (&a[..w], &b[..w], &c[..w]);
    if ycc {
        if let Some(f) = kernels.and_then(|k| k.ycc_rgb) {
            // SAFETY: three rows of `w` samples and `3 * w` output bytes, as the kernel requires.
            unsafe {
                f(
                    a.as_ptr(),
                    b.as_ptr(),
                    c.as_ptr(),
                    out.as_mut_ptr(),
                    w as c_uint,
                )
            };
            return;
        }
    } else if kernels.is_some() {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: kernels exist only on AVX2 CPUs; the slices hold `w` and `3 * w`.
            unsafe { avx2::interleave(a, b, c, out) };
            return;
        }
    }
    for (i, px) in out.chunks_exact_mut(3).enumerate() {
        let v = if ycc {
            ycc_rgb_scalar(a[i], b[i], c[i])
        } else {
            [a[i], b[i], c[i]]
        };
        px.copy_from_slice(&v);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// libjpeg's inverse_DCT method, through the C hook: `quant` is the component's 64 islow
    /// multipliers (16-bit), `coef` the block's 64 coefficients, `rows` eight output row pointers,
    /// `col` the block's first column in them.
    ///
    /// # Safety
    /// libjpeg's contract: `quant` and `coef` point at 64 values each; `rows[0..8]` are valid rows
    /// with at least `col + 8` bytes. Called only after `kernels` saw AVX2.
    pub(super) unsafe extern "C" fn idct_islow_q16(
        quant: *const c_void,
        coef: *const c_short,
        rows: *mut *mut c_uchar,
        col: c_uint,
    ) {
        // SAFETY: the caller's contract, and AVX2 checked by `kernels`.
        unsafe { idct_islow_avx2::<false>(quant, coef, rows, col as usize) }
    }

    /// [`idct_islow_q16`] with 32-bit multipliers.
    ///
    /// # Safety
    /// As [`idct_islow_q16`], with `quant` pointing at 64 32-bit values.
    pub(super) unsafe extern "C" fn idct_islow_q32(
        quant: *const c_void,
        coef: *const c_short,
        rows: *mut *mut c_uchar,
        col: c_uint,
    ) {
        // SAFETY: the caller's contract, and AVX2 checked by `kernels`.
        unsafe { idct_islow_avx2::<true>(quant, coef, rows, col as usize) }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn butterfly_v(v: [__m256i; 8]) -> [__m256i; 8] {
        let c = |k: i32| _mm256_set1_epi32(k);
        let add = |a, b| _mm256_add_epi32(a, b);
        let sub = |a, b| _mm256_sub_epi32(a, b);
        let mul = |a, b| _mm256_mullo_epi32(a, b);
        let z1 = mul(add(v[2], v[6]), c(FIX_0_541196100));
        let tmp2 = add(z1, mul(v[6], c(-FIX_1_847759065)));
        let tmp3 = add(z1, mul(v[2], c(FIX_0_765366865)));
        let tmp0 = _mm256_slli_epi32::<CONST_BITS>(add(v[0], v[4]));
        let tmp1 = _mm256_slli_epi32::<CONST_BITS>(sub(v[0], v[4]));
        let (tmp10, tmp13) = (add(tmp0, tmp3), sub(tmp0, tmp3));
        let (tmp11, tmp12) = (add(tmp1, tmp2), sub(tmp1, tmp2));
        let (t0, t1, t2, t3) = (v[7], v[5], v[3], v[1]);
        let z1 = add(t0, t3);
        let z2 = add(t1, t2);
        let z3 = add(t0, t2);
        let z4 = add(t1, t3);
        let z5 = mul(add(z3, z4), c(FIX_1_175875602));
        let t0 = mul(t0, c(FIX_0_298631336));
        let t1 = mul(t1, c(FIX_2_053119869));
        let t2 = mul(t2, c(FIX_3_072711026));
        let t3 = mul(t3, c(FIX_1_501321110));
        let z1 = mul(z1, c(-FIX_0_899976223));
        let z2 = mul(z2, c(-FIX_2_562915447));
        let z3 = add(mul(z3, c(-FIX_1_961570560)), z5);
        let z4 = add(mul(z4, c(-FIX_0_390180644)), z5);
        let t0 = add(add(t0, z1), z3);
        let t1 = add(add(t1, z2), z4);
        let t2 = add(add(t2, z2), z3);
        let t3 = add(add(t3, z1), z4);
        [
            add(tmp10, t3),
            add(tmp11, t2),
            add(tmp12, t1),
            add(tmp13, t0),
            sub(tmp13, t0),
            sub(tmp12, t1),
            sub(tmp11, t2),
            sub(tmp10, t3),
        ]
    }

    /// 8x8 transpose of 32-bit lanes.
    #[target_feature(enable = "avx2")]
    unsafe fn transpose(r: [__m256i; 8]) -> [__m256i; 8] {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256::<0x20>(u0, u4),
            _mm256_permute2x128_si256::<0x20>(u1, u5),
            _mm256_permute2x128_si256::<0x20>(u2, u6),
            _mm256_permute2x128_si256::<0x20>(u3, u7),
            _mm256_permute2x128_si256::<0x31>(u0, u4),
            _mm256_permute2x128_si256::<0x31>(u1, u5),
            _mm256_permute2x128_si256::<0x31>(u2, u6),
            _mm256_permute2x128_si256::<0x31>(u3, u7),
        ]
    }

    #[target_feature(enable = "avx2")]
    unsafe fn idct_islow_avx2<const Q32: bool>(
        quant: *const c_void,
        coef: *const c_short,
        rows: *mut *mut c_uchar,
        col: usize,
    ) {
        // Pass 1, down the columns: lanes are columns, vector r is coefficient row r, dequantised.
        let mut v = [_mm256_setzero_si256(); 8];
        for (r, slot) in v.iter_mut().enumerate() {
            // SAFETY: 64 coefficients and 64 multipliers of the stated width (caller's contract).
            let (c, q) = unsafe {
                let c = _mm_loadu_si128(coef.add(r * 8).cast());
                let q = if Q32 {
                    _mm256_loadu_si256(quant.cast::<i32>().add(r * 8).cast())
                } else {
                    _mm256_cvtepi16_epi32(_mm_loadu_si128(quant.cast::<i16>().add(r * 8).cast()))
                };
                (c, q)
            };
            *slot = _mm256_mullo_epi32(_mm256_cvtepi16_epi32(c), q);
        }
        let round1 = _mm256_set1_epi32(1 << (CONST_BITS - PASS1_BITS - 1));
        // SAFETY (this and the three below): AVX2 is present, as this function's own
        // target_feature requires of its caller; the helpers only compute on registers.
        let w = unsafe { butterfly_v(v) }
            .map(|x| _mm256_srai_epi32::<{ CONST_BITS - PASS1_BITS }>(_mm256_add_epi32(x, round1)));
        // Pass 2, along the rows: transpose so lanes are rows and vector c is workspace column c.
        let cols = unsafe { transpose(w) };
        let round2 = _mm256_set1_epi32(1 << (CONST_BITS + PASS1_BITS + 3 - 1));
        let center = _mm256_set1_epi32(128);
        let o = unsafe { butterfly_v(cols) }.map(|x| {
            _mm256_add_epi32(
                _mm256_srai_epi32::<{ CONST_BITS + PASS1_BITS + 3 }>(_mm256_add_epi32(x, round2)),
                center,
            )
        });
        // Back to rows, then saturate to 0..=255 (packs/packus) and store eight bytes a row.
        // SAFETY: as above.
        let r = unsafe { transpose(o) };
        let perm = |a, b| _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
        let p01 = perm(r[0], r[1]);
        let p23 = perm(r[2], r[3]);
        let p45 = perm(r[4], r[5]);
        let p67 = perm(r[6], r[7]);
        // 128-bit lane 0 holds rows 0 and 2, lane 1 rows 1 and 3 (then 4, 6 and 5, 7).
        let b0123 = _mm256_packus_epi16(p01, p23);
        let b4567 = _mm256_packus_epi16(p45, p67);
        let halves = [
            (_mm256_castsi256_si128(b0123), 0usize, 2usize),
            (_mm256_extracti128_si256::<1>(b0123), 1, 3),
            (_mm256_castsi256_si128(b4567), 4, 6),
            (_mm256_extracti128_si256::<1>(b4567), 5, 7),
        ];
        for (x, lo, hi) in halves {
            // SAFETY: eight row pointers with `col + 8` writable bytes each (caller's contract).
            unsafe {
                _mm_storel_epi64((*rows.add(lo)).add(col).cast(), x);
                _mm_storel_epi64((*rows.add(hi)).add(col).cast(), _mm_unpackhi_epi64(x, x));
            }
        }
    }

    /// [`super::upsample_h2`] for rows wider than two samples, 16 input samples at a time: the
    /// even and odd outputs of each are computed in 16-bit lanes and stored as one 16-bit value
    /// (even in the low byte), which is exactly their interleaving. Edge samples take the scalar
    /// formulas.
    ///
    /// # Safety
    /// AVX2 must be present. `near` (and `far`) hold `dw > 2` samples, `out` `2 * dw` bytes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn upsample_h2(near: &[u8], far: Option<&[u8]>, out: &mut [u8]) {
        let dw = near.len();
        // Column sums (3 near + far) for 4:2:0, weights (the samples) for 4:2:2.
        let sums: Vec<u16> = match far {
            Some(far) => near
                .iter()
                .zip(far)
                .map(|(&n, &f)| u16::from(n) * 3 + u16::from(f))
                .collect(),
            None => near.iter().map(|&n| u16::from(n)).collect(),
        };
        // 4:2:0 rounds sixteenths with biases 8 and 7, 4:2:2 quarters with 1 and 2.
        let (be, bo, shift) = if far.is_some() { (8, 7, 4) } else { (1, 2, 2) };
        let s = |i: usize| u32::from(sums[i]);
        let edge = |v: u32| v as u8;
        let last = dw - 1;
        if far.is_some() {
            out[0] = edge((s(0) * 4 + 8) >> 4);
        } else {
            out[0] = near[0];
        }
        out[1] = edge((s(0) * 3 + s(1) + bo) >> shift);
        let mut i = 1;
        let (vbe, vbo) = (_mm256_set1_epi16(be as i16), _mm256_set1_epi16(bo as i16));
        let sh = _mm_cvtsi32_si128(shift);
        while i + 16 < dw {
            // SAFETY: i - 1 >= 0 and i + 16 < dw: all three loads are inside `sums`; the store
            // writes out[2i .. 2i + 32] <= out[2 * dw].
            unsafe {
                let c = _mm256_loadu_si256(sums.as_ptr().add(i).cast());
                let l = _mm256_loadu_si256(sums.as_ptr().add(i - 1).cast());
                let r = _mm256_loadu_si256(sums.as_ptr().add(i + 1).cast());
                let c3 = _mm256_add_epi16(_mm256_add_epi16(c, c), c);
                let e = _mm256_srl_epi16(_mm256_add_epi16(_mm256_add_epi16(c3, l), vbe), sh);
                let o = _mm256_srl_epi16(_mm256_add_epi16(_mm256_add_epi16(c3, r), vbo), sh);
                let both = _mm256_or_si256(e, _mm256_slli_epi16::<8>(o));
                _mm256_storeu_si256(out.as_mut_ptr().add(2 * i).cast(), both);
            }
            i += 16;
        }
        while i < last {
            out[2 * i] = edge((s(i) * 3 + s(i - 1) + be) >> shift);
            out[2 * i + 1] = edge((s(i) * 3 + s(i + 1) + bo) >> shift);
            i += 1;
        }
        out[2 * last] = edge((s(last) * 3 + s(last - 1) + be) >> shift);
        out[2 * last + 1] = if far.is_some() {
            edge((s(last) * 4 + 7) >> 4)
        } else {
            near[last]
        };
    }

    /// Three planes' rows of `out.len() / 3` samples into 3-byte pixels.
    ///
    /// # Safety
    /// AVX2 must be present; `a`, `b`, `c` hold at least `out.len() / 3` samples.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn interleave(a: &[u8], b: &[u8], c: &[u8], out: &mut [u8]) {
        let w = out.len() / 3;
        let (a, b, c) = (&a[..w], &b[..w], &c[..w]);
        let mask = |k: usize, ch: usize| {
            // SAFETY: MASKS[k][ch] is 16 bytes.
            unsafe { _mm_loadu_si128(MASKS[k][ch].as_ptr().cast()) }
        };
        let mut i = 0;
        while i + 16 <= w {
            // SAFETY: 16 samples at `i` in each plane and 48 output bytes at 3i (bounds above).
            unsafe {
                let (r, g, bl) = (
                    _mm_loadu_si128(a.as_ptr().add(i).cast()),
                    _mm_loadu_si128(b.as_ptr().add(i).cast()),
                    _mm_loadu_si128(c.as_ptr().add(i).cast()),
                );
                for chunk in 0..3 {
                    let v = _mm_or_si128(
                        _mm_or_si128(
                            _mm_shuffle_epi8(r, mask(chunk, 0)),
                            _mm_shuffle_epi8(g, mask(chunk, 1)),
                        ),
                        _mm_shuffle_epi8(bl, mask(chunk, 2)),
                    );
                    _mm_storeu_si128(out.as_mut_ptr().add(3 * i + 16 * chunk).cast(), v);
                }
            }
            i += 16;
        }
        for j in i..w {
            out[3 * j..3 * j + 3].copy_from_slice(&[a[j], b[j], c[j]]);
        }
    }

    /// libjpeg's YCbCr -> RGB colour conversion of one row, through the C hook.
    ///
    /// # Safety
    /// `y`, `cb`, `cr` hold `width` samples; `rgb` has room for `3 * width` bytes. Called only
    /// after `kernels` saw AVX2.
    pub(super) unsafe extern "C" fn ycc_rgb(
        y: *const c_uchar,
        cb: *const c_uchar,
        cr: *const c_uchar,
        rgb: *mut c_uchar,
        width: c_uint,
    ) {
        // SAFETY: the caller's contract, and AVX2 checked by `kernels`.
        unsafe { ycc_rgb_avx2(y, cb, cr, rgb, width as usize) }
    }

    /// Shuffle masks interleaving 16 R, 16 G and 16 B bytes into 48 bytes of RGB: for output chunk
    /// `k` (16 bytes) and channel `ch`, the source byte of each position or 0x80 (zero).
    const fn masks() -> [[[u8; 16]; 3]; 3] {
        let mut m = [[[0x80u8; 16]; 3]; 3];
        let mut k = 0;
        while k < 3 {
            let mut i = 0;
            while i < 16 {
                let byte = k * 16 + i;
                m[k][byte % 3][i] = (byte / 3) as u8;
                i += 1;
            }
            k += 1;
        }
        m
    }
    const MASKS: [[[u8; 16]; 3]; 3] = masks();

    #[target_feature(enable = "avx2")]
    unsafe fn ycc_rgb_avx2(
        y: *const c_uchar,
        cb: *const c_uchar,
        cr: *const c_uchar,
        rgb: *mut c_uchar,
        width: usize,
    ) {
        let k = |v: i32| _mm256_set1_epi32(v);
        let half = k(ONE_HALF);
        // Eight pixels: R, G, B as 32-bit lanes, before clamping.
        let eight = |yv: __m128i, cbv: __m128i, crv: __m128i| {
            let y = _mm256_cvtepu8_epi32(yv);
            let cb = _mm256_sub_epi32(_mm256_cvtepu8_epi32(cbv), k(128));
            let cr = _mm256_sub_epi32(_mm256_cvtepu8_epi32(crv), k(128));
            let r = _mm256_add_epi32(
                y,
                _mm256_srai_epi32::<SCALEBITS>(_mm256_add_epi32(
                    _mm256_mullo_epi32(cr, k(FIX_1_40200)),
                    half,
                )),
            );
            let g = _mm256_add_epi32(
                y,
                _mm256_srai_epi32::<SCALEBITS>(_mm256_add_epi32(
                    _mm256_add_epi32(_mm256_mullo_epi32(cb, k(-FIX_0_34414)), half),
                    _mm256_mullo_epi32(cr, k(-FIX_0_71414)),
                )),
            );
            let b = _mm256_add_epi32(
                y,
                _mm256_srai_epi32::<SCALEBITS>(_mm256_add_epi32(
                    _mm256_mullo_epi32(cb, k(FIX_1_77200)),
                    half,
                )),
            );
            (r, g, b)
        };
        // Sixteen 32-bit lanes in two vectors -> sixteen clamped bytes.
        let bytes = |a: __m256i, b: __m256i| {
            let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
            let lo = _mm256_castsi256_si128(w);
            let hi = _mm256_extracti128_si256::<1>(w);
            _mm_packus_epi16(lo, hi)
        };
        let mask = |k: usize, ch: usize| {
            // SAFETY: MASKS[k][ch] is 16 bytes.
            unsafe { _mm_loadu_si128(MASKS[k][ch].as_ptr().cast()) }
        };
        let mut i = 0;
        while i + 16 <= width {
            // SAFETY: 16 samples at `i` in each plane and 48 output bytes (the caller's contract).
            unsafe {
                let (yv, cbv, crv) = (
                    _mm_loadu_si128(y.add(i).cast()),
                    _mm_loadu_si128(cb.add(i).cast()),
                    _mm_loadu_si128(cr.add(i).cast()),
                );
                let (r0, g0, b0) = eight(yv, cbv, crv);
                let (r1, g1, b1) = eight(
                    _mm_srli_si128::<8>(yv),
                    _mm_srli_si128::<8>(cbv),
                    _mm_srli_si128::<8>(crv),
                );
                let (r, g, b) = (bytes(r0, r1), bytes(g0, g1), bytes(b0, b1));
                for chunk in 0..3 {
                    let out = _mm_or_si128(
                        _mm_or_si128(
                            _mm_shuffle_epi8(r, mask(chunk, 0)),
                            _mm_shuffle_epi8(g, mask(chunk, 1)),
                        ),
                        _mm_shuffle_epi8(b, mask(chunk, 2)),
                    );
                    _mm_storeu_si128(rgb.add(3 * i + 16 * chunk).cast(), out);
                }
            }
            i += 16;
        }
        while i < width {
            // SAFETY: as above, one pixel.
            unsafe {
                let px = ycc_rgb_scalar(*y.add(i), *cb.add(i), *cr.add(i));
                std::ptr::copy_nonoverlapping(px.as_ptr(), rgb.add(3 * i), 3);
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run_idct(quant: &[i16; 64], coef: &[i16; 64]) -> Option<[u8; 64]> {
        let k = kernels()?;
        let flat16 = run_one(k.idct_q16?, quant.as_ptr().cast(), coef);
        let quant32: [i32; 64] = quant.map(i32::from);
        let flat32 = run_one(k.idct_q32?, quant32.as_ptr().cast(), coef);
        assert_eq!(flat16, flat32, "16- and 32-bit multipliers agree");
        Some(flat16)
    }

    fn run_one(f: IdctFn, quant: *const c_void, coef: &[i16; 64]) -> [u8; 64] {
        let mut out = [[0u8; 12]; 8];
        let mut rows: Vec<*mut u8> = out.iter_mut().map(|r| r.as_mut_ptr()).collect();
        // SAFETY: 64 + 64 values and eight rows of 12 bytes; writing at column 2 needs 10.
        unsafe { f(quant, coef.as_ptr(), rows.as_mut_ptr(), 2) };
        let mut flat = [0u8; 64];
        for r in 0..8 {
            flat[r * 8..r * 8 + 8].copy_from_slice(&out[r][2..10]);
            assert_eq!(out[r][..2], [0, 0], "wrote left of its column");
            assert_eq!(out[r][10..], [0, 0], "wrote right of its block");
        }
        flat
    }

    proptest! {
        // Coefficients as a quantised 8-bit block has them: DC up to +-1024/q, AC smaller; the
        // output stays within the range where libjpeg clamps (it wraps only far outside).
        #[test]
        fn idct_matches_the_reference(
            dc in -120i16..120,
            ac in proptest::collection::vec(-30i16..30, 63),
            sparse in proptest::collection::vec(any::<bool>(), 63),
            q in 1i16..12,
        ) {
            let mut coef = [0i16; 64];
            coef[0] = dc;
            for i in 0..63 {
                coef[i + 1] = if sparse[i] { 0 } else { ac[i] };
            }
            let quant: [i16; 64] = std::array::from_fn(|i| q + (i as i16 % 5));
            if let Some(fast) = run_idct(&quant, &coef) {
                prop_assert_eq!(fast, idct_islow_scalar(&quant, &coef));
            }
        }

        #[test]
        fn colour_conversion_matches_the_reference(
            px in proptest::collection::vec(any::<(u8, u8, u8)>(), 1..70),
        ) {
            let Some(f) = kernels().and_then(|k| k.ycc_rgb) else { return Ok(()) };
            let (y, cb, cr): (Vec<u8>, Vec<u8>, Vec<u8>) =
                (px.iter().map(|p| p.0).collect(), px.iter().map(|p| p.1).collect(), px.iter().map(|p| p.2).collect());
            let mut out = vec![0u8; 3 * px.len()];
            // SAFETY: len samples in each plane, 3 * len output bytes.
            unsafe { f(y.as_ptr(), cb.as_ptr(), cr.as_ptr(), out.as_mut_ptr(), px.len() as u32) };
            for (i, p) in px.iter().enumerate() {
                prop_assert_eq!(&out[3 * i..3 * i + 3], &ycc_rgb_scalar(p.0, p.1, p.2)[..]);
            }
        }
    }

    proptest! {
        #[test]
        fn upsampling_matches_the_reference(
            near in proptest::collection::vec(any::<u8>(), 1..80),
            far_seed in any::<u64>(),
            vertical in any::<bool>(),
        ) {
            let dw = near.len();
            let far: Vec<u8> = (0..dw).map(|i| (far_seed >> (i % 57)) as u8 ^ near[i]).collect();
            let far = vertical.then_some(&far[..]);
            let (mut a, mut b) = (vec![0u8; 2 * dw], vec![0u8; 2 * dw]);
            upsample_h2(&near, far, dw, &mut a);
            upsample_h2_scalar(&near, far, dw, &mut b);
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn upsampling_edges_and_narrow_rows() {
        let mut out = [0u8; 8];
        upsample_h2(&[10, 20, 30, 40], None, 4, &mut out);
        // First and last samples are kept; the rest are 3:1 blends, rounded as libjpeg does.
        assert_eq!(out, [10, 13, 17, 23, 27, 33, 37, 40]);
        upsample_h2(&[10, 20, 30, 40], Some(&[10, 20, 30, 40]), 4, &mut out);
        // 4:2:0 rounds in sixteenths (biased 8 and 7), so it differs slightly from 4:2:2.
        assert_eq!(out, [10, 12, 18, 22, 28, 32, 38, 40]);
        let mut two = [0u8; 4];
        upsample_h2(&[5, 9], Some(&[0, 0]), 2, &mut two);
        assert_eq!(two, [5, 5, 9, 9], "two samples wide: duplicated");
    }

    #[test]
    fn dc_only_block_is_flat() {
        let mut coef = [0i16; 64];
        coef[0] = 40;
        let quant = [2i16; 64];
        let out = idct_islow_scalar(&quant, &coef);
        // DC 80 after dequantisation: 80 / 8 = 10 above mid-grey.
        assert!(out.iter().all(|&v| v == 138), "{out:?}");
        if let Some(fast) = run_idct(&quant, &coef) {
            assert_eq!(fast, out);
        }
    }
}
