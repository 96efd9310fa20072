//! openjpeg through its C API: a stream of our own over the source backend (openjpeg asks for
//! bytes at offsets; a file path would tie it to the local disk), one decode of an area at a
//! resolution reduction per call.

use super::blocks::Area;
use super::pixels::pixels;
use crate::render::{RenderError, Result};
use crate::source::ObjectReader;
use image::DynamicImage;
use openjpeg_sys as opj;
use std::ffi::{c_char, c_void, CStr};

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

/// Decode `area` (reference-grid coordinates) at `reduce` through a stream over `reader`, on
/// `threads` threads of openjpeg's own (1: on the caller's).
pub(super) fn decode(
    reader: &dyn ObjectReader,
    codestream: bool,
    reduce: u32,
    area: Area,
    threads: u32,
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
        // Before the header: openjpeg sizes its thread pool at setup. A failure (a build without
        // threads) leaves the decode on this thread.
        if threads > 1 {
            let _ = opj::opj_codec_set_threads(s.codec, threads as i32);
        }
        if opj::opj_read_header(s.stream, s.codec, &mut s.image) == 0 || s.image.is_null() {
            return Err(failed("header", &errors));
        }
        let Area { x0, y0, x1, y1 } = area;
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
