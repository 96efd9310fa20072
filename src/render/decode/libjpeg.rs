//! libjpeg through `mozjpeg-sys`: every libjpeg call of the renderer (`decode::jpeg` decides
//! what to decode; this module only speaks to libjpeg).
//!
//! Errors: libjpeg reports a fatal error by calling `error_exit`, which must not return. Ours
//! unwinds (`resume_unwind`, so no panic message is printed) through libjpeg's C frames, which
//! `mozjpeg-sys` compiles with `-fexceptions` for exactly this, to the `catch_unwind` in [`run`];
//! the decompressor is then destroyed, which frees everything libjpeg allocated. Warnings (corrupt
//! but decodable data, a truncated file) are counted and otherwise ignored, as browsers do: the
//! missing rows of a truncated file come out grey.
// FFI: one of the few modules allowed `unsafe` (libjpeg's C API); every block says why it holds.
#![allow(unsafe_code)]

use super::jpeg_simd::Kernels;
use crate::iiif::canonical::Rect;
use crate::render::{RenderError, Result};
use image::DynamicImage;
use mozjpeg_sys as sys;
use std::ffi::{c_int, c_long, CStr};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// The libjpeg-turbo release mozjpeg 4.1 is based on.
pub(super) const VERSION: &str = "2.1 (mozjpeg 4.1)";

extern "C" {
    // libjpeg-turbo's own SIMD probe (jsimd.c, or jsimd_none.c when built without SIMD): 1 when
    // the accelerated IDCT is compiled in and the CPU runs it.
    fn jsimd_can_idct_islow() -> c_int;
    // jpeg_hooks.c: our AVX2 IDCT and colour conversion in place of libjpeg's C.
    fn iiifd_jpeg_install(
        cinfo: *mut sys::jpeg_decompress_struct,
        kernels: *const super::jpeg_simd::Kernels,
    ) -> c_int;
}

pub(super) fn simd() -> bool {
    // SAFETY: a pure query with no arguments; it only reads CPU feature flags.
    unsafe { jsimd_can_idct_islow() != 0 }
}

/// What `error_exit` unwinds with.
struct Fatal(String);

/// libjpeg's message for its current error: the format string from its message table with the
/// parameters filled in (a tiny printf: %d, %u, %x, %02x and %s are all the table uses).
fn message(err: &sys::jpeg_error_mgr) -> String {
    let code = err.msg_code;
    let table = err.jpeg_message_table;
    if table.is_null() || code < 0 || code > err.last_jpeg_message {
        return format!("libjpeg error {code}");
    }
    // SAFETY: the table has `last_jpeg_message + 1` entries, each NULL or a NUL-terminated
    // static string; `code` is within that range.
    let fmt = unsafe {
        let entry = *table.add(code as usize);
        if entry.is_null() {
            return format!("libjpeg error {code}");
        }
        CStr::from_ptr(entry).to_string_lossy().into_owned()
    };
    // SAFETY: the union holds either eight ints or a string; messages that print "%s" set the
    // string (NUL-terminated within its 80 bytes), all others set the ints.
    let (ints, text) = unsafe {
        let mut parm = std::ptr::read(&err.msg_parm);
        let ints = *parm.i();
        let s = &*parm.s();
        let bytes: Vec<u8> = s
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        (ints, String::from_utf8_lossy(&bytes).into_owned())
    };
    let mut out = String::new();
    let mut next_int = ints.iter();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&d) = chars.peek() {
            chars.next();
            if d.is_ascii_alphabetic() || d == '%' {
                spec.push(d);
                break;
            }
            spec.push(d);
        }
        match spec.chars().last() {
            Some('s') => out.push_str(&text),
            Some('x') | Some('X') => {
                let v = next_int.next().copied().unwrap_or(0);
                out.push_str(&format!("{:02x}", v));
            }
            Some('%') => out.push('%'),
            _ => {
                let v = next_int.next().copied().unwrap_or(0);
                out.push_str(&v.to_string());
            }
        }
    }
    out
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut sys::jpeg_common_struct) {
    // SAFETY: libjpeg calls this with its live common struct, whose `err` we set.
    let msg = unsafe { cinfo.err.as_ref() }.map_or_else(|| "libjpeg error".into(), message);
    resume_unwind(Box::new(Fatal(msg)));
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut sys::jpeg_common_struct, level: c_int) {
    // Level -1 is a warning (corrupt data libjpeg works around); higher levels are traces.
    if level < 0 {
        // SAFETY: as in error_exit.
        if let Some(err) = unsafe { cinfo.err.as_mut() } {
            err.num_warnings += 1;
        }
    }
}

unsafe extern "C-unwind" fn output_message(_cinfo: &mut sys::jpeg_common_struct) {}

/// A decompressor over `data`, destroyed on drop. Boxed: libjpeg keeps the error manager's
/// address, so neither may move.
struct Decompress<'a> {
    cinfo: Box<sys::jpeg_decompress_struct>,
    _err: Box<sys::jpeg_error_mgr>,
    _data: &'a [u8],
}

impl<'a> Decompress<'a> {
    /// Create it and read the header. Must run inside [`run`].
    fn new(data: &'a [u8]) -> Decompress<'a> {
        // SAFETY: both structs are plain C data for which all-zero is the documented initial
        // state before jpeg_std_error / jpeg_create_decompress fill them in.
        let mut err: Box<sys::jpeg_error_mgr> = Box::new(unsafe { std::mem::zeroed() });
        let mut cinfo: Box<sys::jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: jpeg_std_error initialises the error manager in place and returns it.
        unsafe { sys::jpeg_std_error(&mut err) };
        err.error_exit = Some(error_exit);
        err.emit_message = Some(emit_message);
        err.output_message = Some(output_message);
        cinfo.common.err = &mut *err;
        let mut d = Decompress {
            cinfo,
            _err: err,
            _data: data,
        };
        // SAFETY: the struct has its error manager; create may call error_exit, which unwinds
        // to run(). The source reads `data`, which outlives `d`.
        unsafe {
            sys::jpeg_create_decompress(&mut *d.cinfo);
            sys::jpeg_mem_src(&mut d.cinfo, data.as_ptr(), data.len() as _);
            sys::jpeg_read_header(&mut d.cinfo, 1);
        }
        d
    }

    fn info(&self) -> Result<JpegInfo> {
        let c = &*self.cinfo;
        let (width, height) = (c.image_width, c.image_height);
        if width == 0 || height == 0 {
            return Err(RenderError::Undecodable("the image has no pixels".into()));
        }
        use sys::J_COLOR_SPACE as Cs;
        let cs = c.jpeg_color_space;
        let cmyk = matches!(cs, Cs::JCS_CMYK | Cs::JCS_YCCK);
        let channels = if cs == Cs::JCS_GRAYSCALE { 1 } else { 3 };
        Ok(JpegInfo {
            width,
            height,
            channels,
            cmyk,
            marked_rgb: cs == Cs::JCS_RGB,
        })
    }
}

impl Drop for Decompress<'_> {
    fn drop(&mut self) {
        // SAFETY: created by jpeg_create_decompress; destroy frees its pools, whatever state a
        // fatal error left it in, and is called exactly once.
        unsafe { sys::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

/// Run libjpeg calls, turning a fatal libjpeg error into `Error::Undecodable`.
fn run<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => match payload.downcast::<Fatal>() {
            Ok(fatal) => Err(RenderError::Undecodable(format!("JPEG: {}", fatal.0))),
            // Not libjpeg's: a bug of ours; let the pool's catch_unwind report it.
            Err(other) => resume_unwind(other),
        },
    }
}

pub(super) fn header(data: &[u8]) -> Result<JpegInfo> {
    let sof = frame_marker(data);
    if let Some(m @ (0xC3 | 0xC5..=0xC7 | 0xCB | 0xCD..=0xCF)) = sof {
        // Lossless and hierarchical JPEG: valid files that neither libjpeg 2.1 nor browsers
        // decode.
        return Err(RenderError::Unsupported(format!(
            "lossless or hierarchical JPEG (SOF{})",
            m - 0xC0
        )));
    }
    run(|| Decompress::new(data).info())
}

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
pub(super) fn decode_raw(
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
        Ok(super::from_samples(want.w, want.h, ch, out))
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
    use super::jpeg_simd::{to_rgb, upsample_h2};
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

/// Decode `want` (in pixels of the image scaled by 1/2^k; already clamped) at scale `k`.
pub(super) fn decode(
    data: &[u8],
    info: &JpegInfo,
    k: u32,
    want: Rect,
    max_bytes: u64,
    kernels: Option<&'static super::jpeg_simd::Kernels>,
    rgb_coded: bool,
) -> Result<DynamicImage> {
    run(|| {
        let mut d = Decompress::new(data);
        let c = &mut *d.cinfo;
        if rgb_coded && c.num_components == 3 {
            c.jpeg_color_space = sys::J_COLOR_SPACE::JCS_RGB;
        }
        c.scale_num = 1;
        c.scale_denom = 1 << k;
        let ch: usize = if info.channels == 1 { 1 } else { 3 };
        c.out_color_space = if ch == 1 {
            sys::J_COLOR_SPACE::JCS_GRAYSCALE
        } else {
            sys::J_COLOR_SPACE::JCS_RGB
        };
        // The decoded rows: from the left edge of the crop rounded down to libjpeg's iMCU grid
        // (jpeg_crop_scanline does the rounding), over the crop's rows.
        let (sw, sh) = (scaled(info.width, k), scaled(info.height, k));
        let mut xoff = want.x as sys::JDIMENSION;
        let mut width = want.w as sys::JDIMENSION;
        let out_bytes = |w: u32| u64::from(w) * u64::from(want.h) * ch as u64;
        // Before any pixel is decoded: at most the crop's rows at the full scaled width.
        if out_bytes(want.w) > max_bytes {
            return Err(too_large(want.w, want.h, max_bytes));
        }
        // libjpeg's own buffers (a progressive file's coefficients, row buffers) share the
        // budget: with no backing store, a request past it is a fatal error, not an allocation.
        let left = max_bytes.saturating_sub(out_bytes(sw.min(want.w * 2)));
        // SAFETY: the memory manager exists once create has run.
        unsafe {
            if let Some(mem) = c.common.mem.as_mut() {
                mem.max_memory_to_use = c_long::try_from(left.max(1 << 20)).unwrap_or(c_long::MAX);
            }
            sys::jpeg_start_decompress(c);
        }
        if (c.output_width, c.output_height) != (sw, sh) {
            return Err(RenderError::Undecodable(format!(
                "libjpeg scaled {}x{} by 1/{} to {}x{}",
                info.width,
                info.height,
                1u32 << k,
                c.output_width,
                c.output_height
            )));
        }
        if (want.x, want.w) != (0, sw) {
            // SAFETY: decompression has started and no row was read, as required.
            unsafe { sys::jpeg_crop_scanline(c, &mut xoff, &mut width) };
        }
        // Without libjpeg's own SIMD code, ours takes the IDCT and colour conversion.
        if let (Some(kernels), false) = (kernels, simd()) {
            // SAFETY: decompression has started (and the crop is set): the output pass's
            // methods exist; `kernels` is a static table.
            unsafe { iiifd_jpeg_install(c, kernels) };
        }
        let (xoff, width) = (xoff as u32, width as u32);
        if xoff > want.x || xoff + width < want.x + want.w {
            return Err(RenderError::Undecodable(
                "libjpeg crop misses the region".into(),
            ));
        }
        let stride = width as usize * ch;
        let mut buf = vec![0u8; stride * want.h as usize];
        if want.y > 0 {
            // SAFETY: started, at row 0; skipping fewer rows than the image has.
            unsafe { sys::jpeg_skip_scanlines(c, want.y as sys::JDIMENSION) };
        }
        let end = want.y + want.h;
        while c.output_scanline < end {
            let row = (c.output_scanline - want.y) as usize;
            let Some(line) = buf.get_mut(row * stride..(row + 1) * stride) else {
                break;
            };
            let mut ptr = line.as_mut_ptr();
            // SAFETY: `ptr` points at `stride` writable bytes, one output row at the cropped
            // width in this colour space.
            let n = unsafe { sys::jpeg_read_scanlines(c, &mut ptr, 1) };
            if n == 0 {
                break;
            }
        }
        // SAFETY: abort (not finish): the rows below the crop are not needed.
        unsafe { sys::jpeg_abort_decompress(c) };
        let img = super::decoded_image(width, want.h, ch, buf)?;
        if (xoff, width) == (want.x, want.w) {
            Ok(img)
        } else {
            Ok(img.crop_imm(want.x - xoff, 0, want.w, want.h))
        }
    })
}

/// What the header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JpegInfo {
    /// Stored width (before EXIF orientation).
    pub(crate) width: u32,
    /// Stored height.
    pub(crate) height: u32,
    /// Gray (1 channel) or colour (3).
    pub(crate) channels: u8,
    /// CMYK and YCCK: the caller decodes them elsewhere.
    pub(crate) cmyk: bool,
    /// The file's own markers say its three components are R, G, B (an Adobe marker with no
    /// transform, or the component ids 'R', 'G', 'B'), so decoders read it as RGB without being told.
    pub(crate) marked_rgb: bool,
}

/// `ceil(d / 2^k)`: a dimension after DCT scaling (and after `k` pyramid halvings).
pub(crate) fn scaled(d: u32, k: u32) -> u32 {
    d.div_ceil(1 << k).max(1)
}

pub(super) fn too_large(w: u32, h: u32, max: u64) -> RenderError {
    RenderError::TooLarge(format!(
        "decoding {w}x{h} pixels would exceed render.max_decode_bytes ({max})"
    ))
}

/// The frame marker (SOFn, 0xC0..=0xCF) of a JPEG stream, found by walking its segments; `None`
/// when there is none before the first scan. Pure: used to refuse lossless and hierarchical files
/// with a clear message before libjpeg sees them.
pub(super) fn frame_marker(data: &[u8]) -> Option<u8> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut at = 2usize;
    loop {
        // Fill bytes: any number of 0xFF before the marker code.
        while data.get(at) == Some(&0xFF) && data.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        if *data.get(at)? != 0xFF {
            return None;
        }
        let m = *data.get(at + 1)?;
        match m {
            0xC0..=0xCF if !matches!(m, 0xC4 | 0xC8 | 0xCC) => return Some(m),
            0xD9 | 0xDA => return None,
            0x01 | 0xD0..=0xD7 => at += 2,
            _ => {
                let len = u16::from_be_bytes([*data.get(at + 2)?, *data.get(at + 3)?]);
                at += 2 + usize::from(len);
            }
        }
    }
}
