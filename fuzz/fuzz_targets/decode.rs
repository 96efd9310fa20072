//! Every decoder path (format guessed from the bytes: JPEG, PNG, GIF, TIFF, WebP) on arbitrary input,
//! under a 64 MiB decode budget: an error or an image, never a panic, a hang or an allocation past it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = iiifd::internals::decode_bytes(data, 64 << 20) {
        assert!(img.width() > 0 && img.height() > 0);
    }
});
