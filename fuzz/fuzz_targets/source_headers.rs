//! The header and directory readers that run before any pixel is decoded, on arbitrary bytes: the
//! JPEG 2000 codestream header, EXIF orientation, and the tiled-TIFF directory (then the first tile of
//! every level, decoded when it is JPEG). An answer or an error, never a panic or a huge allocation.
#![no_main]

use iiifd::source::{jp2, orientation, tiff};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let _ = jp2::read_header(data);
    let _ = orientation::jpeg_orientation(data);
    // The TIFF reader works on a file (it seeks and reads tiles by offset).
    let path = std::env::temp_dir().join(format!("iiifd-fuzz-{}.tif", std::process::id()));
    let Ok(mut f) = std::fs::File::create(&path) else { return };
    if f.write_all(data).is_err() {
        return;
    }
    let Ok(f) = std::fs::File::open(&path) else { return };
    if let Ok(Some(pyramid)) = tiff::read_pyramid(&f) {
        assert!(!pyramid.levels.is_empty());
        for level in &pyramid.levels {
            if let Ok(tile) = level.read_tile(&f, 0, 0, 1 << 20) {
                if level.codec == tiff::TileCodec::Jpeg {
                    let _ = iiifd::render::jpeg::decode(&tile, 0, None, 64 << 20);
                }
            }
        }
    }
});
