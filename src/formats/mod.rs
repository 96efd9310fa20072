//! The readers of image file formats that the renderer needs beyond what a decoder gives: TIFF
//! directories and tiles ([`tiff`]), the JPEG 2000 codestream header ([`jp2`]), embedded ICC profiles
//! ([`icc`]) and EXIF/TIFF orientation ([`orientation`]). They read through a source's
//! [`crate::source::ObjectReader`] and know nothing of where the bytes come from; `source` keeps the
//! backends only and never reads a format beyond the first bytes that tell the kinds apart.

pub(crate) mod icc;
pub(crate) mod jp2;
pub(crate) mod orientation;
pub(crate) mod tiff;
