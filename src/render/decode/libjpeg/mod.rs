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

use crate::iiif::canonical::Rect;
use crate::render::{RenderError, Result};
use image::DynamicImage;
use mozjpeg_sys as sys;
use std::ffi::{c_int, c_long, CStr};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

mod raw;
mod transcode;

pub(super) use raw::decode_raw;
pub(super) use transcode::requantize;

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
