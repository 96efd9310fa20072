//! openjpeg through its C API: a stream of our own over the source backend (openjpeg asks for
//! bytes at offsets; a file path would tie it to the local disk), one decode of an area at a
//! resolution reduction per call.
// FFI/SIMD: one of the few modules allowed `unsafe` (openjpeg's C API); every block says why it holds.
#![allow(unsafe_code)]

use super::blocks::Area;
use super::pixels::{pixels, Colour, Plane};
use crate::render::{RenderError, Result};
use crate::source::ObjectReader;
use image::DynamicImage;
use openjpeg_sys as opj;
use std::ffi::{c_char, c_void, CStr};

/// Where openjpeg's stream callbacks read: the object and the position in it.
struct Cursor {
    /// Set only while a call into openjpeg runs (see `Decoder::with_reader`).
    reader: Option<*const (dyn ObjectReader + 'static)>,
    at: u64,
    len: u64,
}

unsafe extern "C" fn read_fn(buf: *mut c_void, n: usize, data: *mut c_void) -> usize {
    // SAFETY: `data` is the Cursor installed by `Decoder::open`, alive until the stream is
    // destroyed; its reader, when set, is borrowed for the running call (`Decoder::with_reader`);
    // `buf` has room for `n` bytes (openjpeg's contract).
    let c = unsafe { &mut *data.cast::<Cursor>() };
    if c.at >= c.len {
        return usize::MAX; // openjpeg's end of stream: (OPJ_SIZE_T)-1
    }
    let Some(reader) = c.reader else {
        return usize::MAX;
    };
    // SAFETY: openjpeg hands `buf` with room for `n` bytes, ours for the call.
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), n) };
    // SAFETY: the reader is borrowed by `with_reader` for the whole call that runs this callback.
    match unsafe { &*reader }.read_at(out, c.at) {
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
    // SAFETY: `data` is the Box<Cursor> leaked by `Decoder::open`; openjpeg calls this once, at
    // destroy.
    drop(unsafe { Box::from_raw(data.cast::<Cursor>()) });
}

unsafe extern "C" fn error_fn(msg: *const c_char, data: *mut c_void) {
    if msg.is_null() || data.is_null() {
        return;
    }
    // SAFETY: `data` is the String its codec's owner keeps for the codec's lifetime (see
    // `handlers`); `msg` is a NUL-terminated string from openjpeg.
    let out = unsafe { &mut *data.cast::<String>() };
    if out.len() < 1000 {
        out.push_str(unsafe { CStr::from_ptr(msg) }.to_string_lossy().trim_end());
        out.push_str("; ");
    }
}

unsafe extern "C" fn quiet_fn(_msg: *const c_char, _data: *mut c_void) {}

/// Send `codec`'s errors to `errors` (kept to 1,000 characters) and drop its warnings and
/// information messages. Shared with the jp2 encoder (`render::encode::jp2`).
///
/// # Safety
/// `codec` is a live openjpeg codec, and `errors` stays valid (not moved or dropped) until the
/// codec is destroyed.
pub(crate) unsafe fn handlers(codec: *mut opj::opj_codec_t, errors: *mut String) {
    // SAFETY: as the caller promises; the callbacks match openjpeg's handler signature.
    unsafe {
        opj::opj_set_error_handler(codec, Some(error_fn), errors.cast());
        opj::opj_set_warning_handler(codec, Some(quiet_fn), std::ptr::null_mut());
        opj::opj_set_info_handler(codec, Some(quiet_fn), std::ptr::null_mut());
    }
}

/// Everything openjpeg allocated for one decode or encode, released on drop in the right order.
/// Shared with the jp2 encoder.
pub(crate) struct Session {
    pub(crate) stream: *mut opj::opj_stream_t,
    pub(crate) codec: *mut opj::opj_codec_t,
    pub(crate) image: *mut opj::opj_image_t,
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

/// An opened codestream: header read, resolution reduction set, and for an untiled codestream the
/// tile's data and packet index kept by openjpeg after the first decode, so later areas skip the
/// read and most of the setup ("in the particular case of an image made of a single tile, several
/// sequences of calls to opj_set_decode_area() and opj_decode() are allowed", openjpeg.h). On the
/// shared benchmark's archive that halves a tile's decode (about 40 of 80 ms for a 1024 px block).
///
/// Used by one render at a time; between renders it holds no reader (the cursor's is set for each
/// decode and cleared after it).
pub(super) struct Decoder {
    session: Session,
    /// Owned by the stream (freed by `free_fn` when it is destroyed); ours to point at a reader.
    cursor: *mut Cursor,
    /// Where the error handler writes. openjpeg holds a pointer to the String itself, so it is
    /// boxed: its address must survive moves of the Decoder (parking moves it).
    #[allow(clippy::box_collection)]
    errors: Box<String>,
    reduce: u32,
}

// SAFETY: openjpeg's codec, stream and image are plain heap state with no thread affinity (its
// thread pool, unused here, is its own); a Decoder is used by one thread at a time (`&mut self`).
unsafe impl Send for Decoder {}

impl Decoder {
    /// Open the codestream in `reader` for decodes at `reduce`.
    pub(super) fn open(
        reader: &dyn ObjectReader,
        codestream: bool,
        reduce: u32,
    ) -> Result<Decoder> {
        // SAFETY: openjpeg's C API used as documented: the stream's user data is a Box<Cursor>
        // that openjpeg frees through free_fn; the cursor's reader is set only for the calls below
        // and cleared before returning; the error string is boxed and lives as long as the codec
        // (both are in the Decoder, and Session drops the codec first).
        unsafe {
            let stream = opj::opj_stream_create(1 << 16, 1);
            if stream.is_null() {
                return Err(RenderError::bug("openjpeg: no stream"));
            }
            let mut d = Decoder {
                session: Session {
                    stream,
                    codec: std::ptr::null_mut(),
                    image: std::ptr::null_mut(),
                },
                cursor: std::ptr::null_mut(),
                errors: Box::default(),
                reduce,
            };
            let cursor = Box::into_raw(Box::new(Cursor {
                reader: None,
                at: 0,
                len: reader.size(),
            }));
            d.cursor = cursor;
            opj::opj_stream_set_read_function(stream, Some(read_fn));
            opj::opj_stream_set_skip_function(stream, Some(skip_fn));
            opj::opj_stream_set_seek_function(stream, Some(seek_fn));
            opj::opj_stream_set_user_data(stream, cursor.cast(), Some(free_fn));
            opj::opj_stream_set_user_data_length(stream, reader.size());
            let format = if codestream {
                opj::CODEC_FORMAT::OPJ_CODEC_J2K
            } else {
                opj::CODEC_FORMAT::OPJ_CODEC_JP2
            };
            d.session.codec = opj::opj_create_decompress(format);
            if d.session.codec.is_null() {
                return Err(RenderError::bug("openjpeg: no codec"));
            }
            handlers(d.session.codec, &mut *d.errors);
            let mut params: opj::opj_dparameters_t = std::mem::zeroed();
            opj::opj_set_default_decoder_parameters(&mut params);
            params.cp_reduce = reduce;
            if opj::opj_setup_decoder(d.session.codec, &mut params) == 0 {
                return Err(d.failed("setup"));
            }
            let read = d.with_reader(reader, |d| {
                opj::opj_read_header(d.session.stream, d.session.codec, &mut d.session.image)
            });
            if read == 0 || d.session.image.is_null() {
                return Err(d.failed("header"));
            }
            Ok(d)
        }
    }

    /// The resolution reduction this decoder was opened for.
    pub(super) fn reduce(&self) -> u32 {
        self.reduce
    }

    /// Decode `area` (reference-grid coordinates) through a stream over `reader`, which holds
    /// the same bytes as the one it was opened on. A failed decode leaves the decoder unusable:
    /// the caller drops it.
    pub(super) fn decode(&mut self, reader: &dyn ObjectReader, area: Area) -> Result<DynamicImage> {
        let Area { x0, y0, x1, y1 } = area;
        // SAFETY: as in `open`; the image is the one opj_read_header gave this codec.
        unsafe {
            let s = &self.session;
            if opj::opj_set_decode_area(
                s.codec, s.image, x0 as i32, y0 as i32, x1 as i32, y1 as i32,
            ) == 0
            {
                return Err(self.failed("decode area"));
            }
            let ok = self.with_reader(reader, |d| {
                opj::opj_decode(d.session.codec, d.session.stream, d.session.image)
            });
            if ok == 0 {
                return Err(self.failed("decode"));
            }
            let img = &*self.session.image;
            if img.comps.is_null() || img.numcomps == 0 {
                return Err(RenderError::Undecodable(
                    "JPEG 2000 without components".into(),
                ));
            }
            // SAFETY: after a successful decode openjpeg's image holds `numcomps` components,
            // each with w*h decoded samples (or a null `data`, refused here); they live as long
            // as the image, which this borrow of `self` keeps.
            let comps = std::slice::from_raw_parts(img.comps, img.numcomps as usize);
            let mut planes = Vec::with_capacity(comps.len());
            for c in comps.iter().take(4) {
                let (w, h) = (c.w as usize, c.h as usize);
                if c.data.is_null() {
                    return Err(RenderError::Undecodable(
                        "JPEG 2000 component without data".into(),
                    ));
                }
                planes.push(Plane {
                    w,
                    h,
                    dx: c.dx,
                    dy: c.dy,
                    prec: c.prec,
                    signed: c.sgnd != 0,
                    data: std::slice::from_raw_parts(c.data, w * h),
                });
            }
            use opj::COLOR_SPACE as C;
            let colour = match img.color_space {
                C::OPJ_CLRSPC_SRGB => Colour::Srgb,
                C::OPJ_CLRSPC_GRAY => Colour::Gray,
                C::OPJ_CLRSPC_SYCC | C::OPJ_CLRSPC_EYCC => Colour::Ycc,
                C::OPJ_CLRSPC_UNKNOWN | C::OPJ_CLRSPC_UNSPECIFIED => Colour::Unsaid,
                _ => Colour::Other,
            };
            pixels(&planes, colour)
        }
    }

    /// Run `f` with the cursor reading from `reader`, and no reader after it.
    fn with_reader<T>(&mut self, reader: &dyn ObjectReader, f: impl FnOnce(&mut Self) -> T) -> T {
        // The pointer is used only by openjpeg's callbacks during `f`, while `reader` is borrowed;
        // 'static is the pointer type's bound, not the value's life.
        let ptr: *const (dyn ObjectReader + '_) = reader;
        // SAFETY: `cursor` is the live Box<Cursor> owned by our stream (destroyed only when the
        // Session drops); the transmute only widens the trait object's lifetime bound.
        unsafe {
            (*self.cursor).reader = Some(std::mem::transmute::<
                *const (dyn ObjectReader + '_),
                *const (dyn ObjectReader + 'static),
            >(ptr));
        }
        let out = f(self);
        // SAFETY: as above.
        unsafe { (*self.cursor).reader = None };
        out
    }

    fn failed(&self, what: &str) -> RenderError {
        RenderError::Undecodable(format!(
            "JPEG 2000: {what}: {}",
            self.errors.trim_end_matches("; ")
        ))
    }
}
