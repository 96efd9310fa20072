//! The header and directory readers that run before any pixel is decoded, on arbitrary bytes: the
//! JPEG 2000 codestream header, EXIF orientation, and the tiled-TIFF directory (then the first tile of
//! every level, decoded when it is JPEG). An answer or an error, never a panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let levels = iiifd::internals::source_headers(data);
    assert!(levels <= 64);
});
