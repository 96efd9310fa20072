//! Entry points for the criterion benches (`benches/`) and the fuzz targets (`fuzz/`), which link
//! the library from outside: thin, stable wrappers over crate-internal steps. Not an API for
//! anything else; hidden from the documentation.

use crate::formats::{jp2, orientation, tiff};
use crate::iiif::canonical::{CanonicalRequest, Rect};
use crate::iiif::Format;
use crate::render::{self, RenderError};
use crate::source::memory::bytes_reader;
use image::DynamicImage;

/// Decode an image held in memory, with a source's limits and normalisation.
pub fn decode_bytes(bytes: &[u8], max_decode_bytes: u64) -> Result<DynamicImage, RenderError> {
    render::decode_bytes(bytes, max_decode_bytes)
}

/// Decode a JPEG at 1/2^`scale_log2`, optionally only `crop` (in scaled pixels).
pub fn jpeg_decode(
    data: &[u8],
    scale_log2: u32,
    crop: Option<Rect>,
    max_decode_bytes: u64,
) -> Result<DynamicImage, RenderError> {
    render::decode::jpeg::decode(data, scale_log2, crop, max_decode_bytes)
}

/// Scale `rect` of `img` to `w` x `h` (the renderer's resampler).
pub fn resize(img: &DynamicImage, rect: Rect, w: u32, h: u32) -> Option<DynamicImage> {
    render::ops::crop_resize(img, rect, w, h)
}

/// Encode as `format` with the default settings.
pub fn encode(img: DynamicImage, format: Format) -> Result<Vec<u8>, RenderError> {
    render::encode::encode(img, format, &render::EncodeSettings::default(), None)
}

/// Encode as `format` at `quality` (jpg, webp, jp2, avif) and `effort` (avif's speed, jxl's
/// effort), the other settings the defaults.
pub fn encode_tuned(
    img: DynamicImage,
    format: Format,
    quality: u8,
    effort: Option<u8>,
) -> Result<Vec<u8>, RenderError> {
    render::encode::encode_tuned(img, format, quality, effort)
}

/// Render `req` from a source held in memory, cold (no decoded cache), default settings.
pub fn render(source: &[u8], req: &CanonicalRequest) -> Result<Vec<u8>, RenderError> {
    let reader = bytes_reader(source.to_vec());
    let fingerprint = crate::source::Fingerprint::new("bench");
    let src = render::SourceRef::new(&*reader, &fingerprint)?;
    let cache = render::cache::DecodedCache::new(0);
    render::render(
        src,
        &cache,
        req,
        &render::EncodeSettings::default(),
        1 << 30,
    )
}

/// The header and directory readers that run before any pixel is decoded, on arbitrary bytes:
/// the JPEG 2000 codestream header, EXIF orientation, the tiled-TIFF directory, and the first tile
/// of every level (decoded when it is JPEG). Returns how many pyramid levels it read.
pub fn source_headers(data: &[u8]) -> usize {
    let _ = jp2::read_header(data);
    let _ = orientation::jpeg_orientation(data);
    let reader = bytes_reader(data.to_vec());
    let Ok(Some(pyramid)) = tiff::read_pyramid(&*reader) else {
        return 0;
    };
    for level in &pyramid.levels {
        if let Ok(tile) = level.read_tile(&*reader, 0, 0, 1 << 20) {
            if level.codec == tiff::TileCodec::Jpeg {
                let _ = render::decode::jpeg::decode(&tile, 0, None, 64 << 20);
            }
        }
    }
    pyramid.levels.len()
}

/// What [`fill_store`] wrote.
#[derive(Debug, Clone, Copy)]
pub struct Filled {
    /// Objects written.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Fill the store of `config` with `n` objects of `object_bytes` each, under the keys the server
/// gives the requests `{prefix}/3/{identifier}/{x},{y},64,64/max/0/default.jpg` (written to `urls`,
/// one path a line), so that the server answers them as hits. Straight into the store, not through
/// HTTP or the renderer: for `benches/store_scale.sh`. The bytes are not an image.
pub fn fill_store(
    config: crate::config::Config,
    identifier: &str,
    n: u64,
    object_bytes: usize,
    urls: &mut dyn std::io::Write,
) -> Result<Filled, Box<dyn std::error::Error>> {
    use crate::iiif::parse::parse_image_params;
    use crate::iiif::ApiVersion;
    let prefix = config.prefix.clone();
    let app = crate::app::App::new(config)?;
    let pipeline = app.pipeline();
    let full = parse_image_params(
        ApiVersion::V3,
        "full",
        "max",
        "0",
        "default.jpg",
        Format::Jpg,
    )?;
    let size = pipeline.key_blocking(identifier, &full)?.0.size();
    let (cols, rows) = (
        u64::from(size.width.saturating_sub(64).max(1)),
        u64::from(size.height.saturating_sub(64).max(1)),
    );
    if n > cols * rows {
        return Err(format!("{identifier} has room for {} distinct regions", cols * rows).into());
    }
    let mut data = vec![0u8; object_bytes];
    let mut filled = Filled {
        objects: 0,
        bytes: 0,
    };
    for i in 0..n {
        let (x, y) = (i % cols, i / cols);
        let region = format!("{x},{y},64,64");
        let req = parse_image_params(
            ApiVersion::V3,
            &region,
            "max",
            "0",
            "default.jpg",
            Format::Jpg,
        )?;
        let (_, _, key) = pipeline.key_blocking(identifier, &req)?;
        // Distinct bytes per object, so that no two share a content hash.
        for (j, b) in data.iter_mut().enumerate() {
            *b = (i.wrapping_mul(31).wrapping_add(j as u64 * 7) >> (j % 5)) as u8;
        }
        app.store().put(&key, "jpg", &data, identifier)?;
        writeln!(urls, "{prefix}/3/{identifier}/{region}/max/0/default.jpg")?;
        filled.objects += 1;
        filled.bytes += object_bytes as u64;
    }
    app.shutdown();
    Ok(filled)
}
