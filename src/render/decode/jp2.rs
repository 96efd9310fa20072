//! JPEG 2000 (`.jp2` files and raw `.j2k` codestreams) through openjpeg, read through the source
//! backend with a stream of our own (openjpeg asks for bytes at offsets; a file path would tie it to
//! the local disk): decoded at the largest resolution reduction that still covers the output, and
//! only over the region (openjpeg's decode area), so a tile of a 30,000 px scan reads and decodes
//! only the code blocks under it.
//!
//! Components are brought to 8 bits, subsampled components (4:2:2, 4:2:0 chroma) are upsampled by
//! replication, and sYCC is converted to RGB.

use crate::iiif::canonical::{CanonicalRequest, Rect};
use crate::render::{plan, RenderError, Result};
use crate::source::{jp2, ObjectReader, SourceError};
use image::DynamicImage;
use openjpeg_sys as opj;
use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;

/// The region of a JPEG 2000 source, in its own pixels at the chosen reduction.
pub(crate) fn region(
    reader: &dyn ObjectReader,
    req: &CanonicalRequest,
    max: u64,
) -> Result<(Arc<DynamicImage>, Rect)> {
    let head = reader.read_range(0, 1 << 20).map_err(SourceError::from)?;
    let header = jp2::read_header(&head)
        .ok_or_else(|| RenderError::Undecodable("unreadable JPEG 2000 header".into()))?;
    let reduce = plan::jp2_reduce(req, header.levels);
    let r = req.region();
    // openjpeg holds every sample as an i32 while decoding, up to four components.
    let (rw, rh) = (
        u64::from(super::jpeg::scaled(r.w, reduce)),
        u64::from(super::jpeg::scaled(r.h, reduce)),
    );
    if rw * rh * 4 * 4 > max {
        return Err(RenderError::TooLarge(format!(
            "decoding {rw}x{rh} pixels would exceed render.max_decode_bytes ({max})"
        )));
    }
    let area = (
        header.x0 + r.x,
        header.y0 + r.y,
        header.x0 + r.x + r.w,
        header.y0 + r.y + r.h,
    );
    let codestream = head.starts_with(&[0xFF, 0x4F]);
    let img = decode(reader, codestream, reduce, area)?;
    let whole = Rect {
        x: 0,
        y: 0,
        w: img.width(),
        h: img.height(),
    };
    Ok((Arc::new(img), whole))
}

/// Where openjpeg's stream callbacks read: the object and the position in it.
struct Cursor {
    reader: *const (dyn ObjectReader + 'static),
    at: u64,
    len: u64,
}

unsafe extern "C" fn read_fn(buf: *mut c_void, n: usize, data: *mut c_void) -> usize {
    // SAFETY: `data` is the Cursor installed by `decode`, alive until the stream is destroyed,
    // and its reader outlives the stream; `buf` has room for `n` bytes (openjpeg's contract).
    let c = unsafe { &mut *data.cast::<Cursor>() };
    if c.at >= c.len {
        return usize::MAX; // openjpeg's end of stream: (OPJ_SIZE_T)-1
    }
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), n) };
    match unsafe { &*c.reader }.read_at(out, c.at) {
        Ok(0) | Err(_) => usize::MAX,
        Ok(got) => {
            c.at += got as u64;
            got
        }
    }
}

unsafe extern "C" fn skip_fn(n: i64, data: *mut c_void) -> i64 {
    // SAFETY: as in read_fn.
    let c = unsafe { &mut *data.cast::<Cursor>() };
    let to = (c.at as i64).saturating_add(n).clamp(0, c.len as i64);
    let skipped = to - c.at as i64;
    c.at = to as u64;
    skipped
}

unsafe extern "C" fn seek_fn(to: i64, data: *mut c_void) -> opj::OPJ_BOOL {
    // SAFETY: as in read_fn.
    let c = unsafe { &mut *data.cast::<Cursor>() };
    if to < 0 || to as u64 > c.len {
        return 0;
    }
    c.at = to as u64;
    1
}

unsafe extern "C" fn free_fn(data: *mut c_void) {
    // SAFETY: `data` is the Box<Cursor> leaked by `decode`; openjpeg calls this once, at destroy.
    drop(unsafe { Box::from_raw(data.cast::<Cursor>()) });
}

unsafe extern "C" fn error_fn(msg: *const c_char, data: *mut c_void) {
    if msg.is_null() || data.is_null() {
        return;
    }
    // SAFETY: `data` is the String owned by `decode` for the codec's lifetime; `msg` is a
    // NUL-terminated string from openjpeg.
    let out = unsafe { &mut *data.cast::<String>() };
    if out.len() < 1000 {
        out.push_str(unsafe { CStr::from_ptr(msg) }.to_string_lossy().trim_end());
        out.push_str("; ");
    }
}

unsafe extern "C" fn quiet_fn(_msg: *const c_char, _data: *mut c_void) {}

/// Everything openjpeg allocated for one decode, released on drop in the right order.
struct Session {
    stream: *mut opj::opj_stream_t,
    codec: *mut opj::opj_codec_t,
    image: *mut opj::opj_image_t,
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or came from the matching openjpeg constructor, and is
        // released exactly once here.
        unsafe {
            if !self.image.is_null() {
                opj::opj_image_destroy(self.image);
            }
            if !self.codec.is_null() {
                opj::opj_destroy_codec(self.codec);
            }
            if !self.stream.is_null() {
                opj::opj_stream_destroy(self.stream);
            }
        }
    }
}

/// Decode `area` (reference-grid coordinates) at `reduce` through a stream over `reader`.
fn decode(
    reader: &dyn ObjectReader,
    codestream: bool,
    reduce: u32,
    area: (u32, u32, u32, u32),
) -> Result<DynamicImage> {
    let mut errors = String::new();
    let failed = |what: &str, errors: &str| {
        RenderError::Undecodable(format!(
            "JPEG 2000: {what}: {}",
            errors.trim_end_matches("; ")
        ))
    };
    // SAFETY: openjpeg's C API used as documented: the stream's user data is a Box<Cursor> that
    // openjpeg frees through free_fn; the reader it points to outlives the Session (dropped at the
    // end of this function); the error string outlives the codec for the same reason.
    unsafe {
        let mut s = Session {
            stream: opj::opj_stream_create(1 << 16, 1),
            codec: std::ptr::null_mut(),
            image: std::ptr::null_mut(),
        };
        if s.stream.is_null() {
            return Err(RenderError::Internal("openjpeg: no stream".into()));
        }
        // The cursor's reader pointer is only used while `reader` is borrowed (the Session ends
        // before this function returns); 'static is the type's bound, not the value's life.
        let reader_ptr: *const (dyn ObjectReader + '_) = reader;
        let cursor = Box::new(Cursor {
            reader: std::mem::transmute::<
                *const (dyn ObjectReader + '_),
                *const (dyn ObjectReader + 'static),
            >(reader_ptr),
            at: 0,
            len: reader.size(),
        });
        opj::opj_stream_set_read_function(s.stream, Some(read_fn));
        opj::opj_stream_set_skip_function(s.stream, Some(skip_fn));
        opj::opj_stream_set_seek_function(s.stream, Some(seek_fn));
        opj::opj_stream_set_user_data(s.stream, Box::into_raw(cursor).cast(), Some(free_fn));
        opj::opj_stream_set_user_data_length(s.stream, reader.size());
        let format = if codestream {
            opj::CODEC_FORMAT::OPJ_CODEC_J2K
        } else {
            opj::CODEC_FORMAT::OPJ_CODEC_JP2
        };
        s.codec = opj::opj_create_decompress(format);
        if s.codec.is_null() {
            return Err(RenderError::Internal("openjpeg: no codec".into()));
        }
        let errors_ptr: *mut String = &mut errors;
        opj::opj_set_error_handler(s.codec, Some(error_fn), errors_ptr.cast());
        opj::opj_set_warning_handler(s.codec, Some(quiet_fn), std::ptr::null_mut());
        opj::opj_set_info_handler(s.codec, Some(quiet_fn), std::ptr::null_mut());
        let mut params: opj::opj_dparameters_t = std::mem::zeroed();
        opj::opj_set_default_decoder_parameters(&mut params);
        params.cp_reduce = reduce;
        if opj::opj_setup_decoder(s.codec, &mut params) == 0 {
            return Err(failed("setup", &errors));
        }
        if opj::opj_read_header(s.stream, s.codec, &mut s.image) == 0 || s.image.is_null() {
            return Err(failed("header", &errors));
        }
        let (x0, y0, x1, y1) = area;
        if opj::opj_set_decode_area(s.codec, s.image, x0 as i32, y0 as i32, x1 as i32, y1 as i32)
            == 0
        {
            return Err(failed("decode area", &errors));
        }
        if opj::opj_decode(s.codec, s.stream, s.image) == 0 {
            return Err(failed("decode", &errors));
        }
        let _ = opj::opj_end_decompress(s.codec, s.stream);
        pixels(&*s.image)
    }
}

/// One decoded component, borrowed from openjpeg's image.
struct Plane<'a> {
    w: usize,
    h: usize,
    dx: u32,
    dy: u32,
    prec: u32,
    signed: bool,
    data: &'a [i32],
}

impl Plane<'_> {
    /// The sample under output pixel (x, y) of the reference plane (`ref_dx`, `ref_dy`), at 8 bits.
    fn at(&self, x: usize, y: usize, ref_dx: u32, ref_dy: u32) -> i32 {
        let sx = (x * ref_dx as usize / self.dx.max(1) as usize).min(self.w - 1);
        let sy = (y * ref_dy as usize / self.dy.max(1) as usize).min(self.h - 1);
        let mut v = self.data[sy * self.w + sx];
        if self.signed {
            v += 1 << (self.prec - 1);
        }
        match self.prec.cmp(&8) {
            std::cmp::Ordering::Greater => v >> (self.prec - 8),
            std::cmp::Ordering::Less => v * 255 / ((1 << self.prec) - 1),
            std::cmp::Ordering::Equal => v,
        }
    }
}

/// openjpeg's components as 8-bit gray or colour, with or without alpha.
fn pixels(img: &opj::opj_image_t) -> Result<DynamicImage> {
    if img.comps.is_null() || img.numcomps == 0 {
        return Err(RenderError::Undecodable(
            "JPEG 2000 without components".into(),
        ));
    }
    // SAFETY: openjpeg's image holds `numcomps` components, each with w*h decoded samples.
    let comps = unsafe { std::slice::from_raw_parts(img.comps, img.numcomps as usize) };
    let mut planes = Vec::new();
    for c in comps.iter().take(4) {
        let (w, h) = (c.w as usize, c.h as usize);
        if w == 0 || h == 0 || c.data.is_null() || !(1..=16).contains(&c.prec) {
            return Err(RenderError::Unsupported(
                "JPEG 2000 with empty or deeper than 16-bit components".into(),
            ));
        }
        planes.push(Plane {
            w,
            h,
            dx: c.dx,
            dy: c.dy,
            prec: c.prec,
            signed: c.sgnd != 0,
            // SAFETY: as above.
            data: unsafe { std::slice::from_raw_parts(c.data, w * h) },
        });
    }
    // The output grid is the finest component's.
    let Some(reference) = planes.iter().min_by_key(|p| (p.dx, p.dy)) else {
        return Err(RenderError::Undecodable(
            "JPEG 2000 without components".into(),
        ));
    };
    let (w, h, rdx, rdy) = (reference.w, reference.h, reference.dx, reference.dy);
    let sycc = matches!(
        img.color_space,
        opj::COLOR_SPACE::OPJ_CLRSPC_SYCC | opj::COLOR_SPACE::OPJ_CLRSPC_EYCC
    ) && planes.len() >= 3;
    if !matches!(
        img.color_space,
        opj::COLOR_SPACE::OPJ_CLRSPC_SRGB
            | opj::COLOR_SPACE::OPJ_CLRSPC_GRAY
            | opj::COLOR_SPACE::OPJ_CLRSPC_UNKNOWN
            | opj::COLOR_SPACE::OPJ_CLRSPC_UNSPECIFIED
    ) && !sycc
    {
        return Err(RenderError::Unsupported(format!(
            "JPEG 2000 colour space {:?}",
            img.color_space
        )));
    }
    let n = planes.len();
    let mut out = Vec::with_capacity(w * h * n);
    for y in 0..h {
        for x in 0..w {
            let mut px = [0i32; 4];
            for (i, p) in planes.iter().enumerate() {
                px[i] = p.at(x, y, rdx, rdy);
            }
            if sycc {
                // sYCC (IEC 61966-2-1 Annex F), as openjpeg's own conversion does it.
                let (yy, cb, cr) = (
                    f64::from(px[0]),
                    f64::from(px[1] - 128),
                    f64::from(px[2] - 128),
                );
                px[0] = (yy + 1.402 * cr).round() as i32;
                px[1] = (yy - 0.344 * cb - 0.714 * cr).round() as i32;
                px[2] = (yy + 1.772 * cb).round() as i32;
            }
            out.extend(px[..n].iter().map(|&v| v.clamp(0, 255) as u8));
        }
    }
    super::from_samples(w as u32, h as u32, n, out)
        .ok_or_else(|| RenderError::Internal("JPEG 2000 buffer size mismatch".into()))
}
