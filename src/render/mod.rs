//! Rendering: from a source's bytes to the derivative a canonical request describes, on the bounded
//! worker pool, never on the async threads. The steps, each in its own module:
//!
//! 1. [`probe`]: the image's size and tiles from its header alone (for info.json and
//!    canonicalisation), by the same parsers that decode it;
//! 2. [`plan`] (pure): the route to the region's pixels (tiles of a pyramid level, a DCT-scaled
//!    decode, a level of the decoded cache, a JPEG 2000 resolution) and whether a stored tile can
//!    be sent as it is;
//! 3. [`decode`]: one file per source kind (`jpeg`, `tiff` tiles, `jp2`, `whole` images);
//! 4. [`ops`] (pure pixel operations, 3.0 §4 order): crop and scale, mirror, rotate, quality;
//! 5. [`encode`]: one file per output format.
//!
//! [`cache`] keeps decoded levels between renders, [`tiled_copy`] writes pyramidal copies of large
//! flat sources and reads them back, [`pool`] runs renders on a fixed set of threads. Sources come
//! in as a [`SourceRef`]: a reader and a fingerprint from a `source::Backend`, never a path.

pub(crate) mod animated;
pub(crate) mod cache;
pub(crate) mod color;
pub(crate) mod decode;
pub(crate) mod encode;
pub(crate) mod ops;
pub(crate) mod passthrough;
pub(crate) mod plan;
pub(crate) mod pool;
pub(crate) mod probe;
pub(crate) mod tiled_copy;

use crate::formats::tiff;
use crate::iiif::canonical::CanonicalRequest;
use crate::source::{Fingerprint, ObjectReader, SourceError, SourceKind};
use cache::DecodedCache;
use color::ColorPlan;
pub(crate) use encode::EncodeSettings;
use std::sync::Arc;

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Reading the source failed (it vanished, an I/O error), or its structure is broken.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The source is corrupt, truncated, or not an image.
    #[error("the source image could not be decoded: {0}")]
    Undecodable(String),
    /// A valid source in a variant this server does not render.
    #[error("this server cannot render this source image: {0}")]
    Unsupported(String),
    /// The source was decoded whole and its data is corrupt (a truncated or damaged file whose header
    /// is sound): every request of this version fails alike, so the pipeline remembers it and
    /// info.json answers the same error from then on.
    #[error("the source image could not be decoded: {0}")]
    Corrupt(String),
    /// Decoding it would exceed `render.max_decode_bytes`.
    #[error("the source image is too large for this server: {0}")]
    TooLarge(String),
    /// The encoder refused the pixels.
    #[error("encoding {format} failed: {reason}")]
    Encode {
        /// The output format.
        format: &'static str,
        /// The encoder's message.
        reason: String,
    },
    /// A bug: a state the renderer should never reach.
    #[error("internal error while rendering: {0}")]
    Internal(String),
    /// The failure of a decode another render shared (the decoded cache builds each level once).
    #[error("{0}")]
    Shared(Arc<RenderError>),
}

impl RenderError {
    /// A bug of ours: a state the renderer should never reach. Logged as an error where it is
    /// found (the request only sees a 500), with what was found.
    pub(crate) fn bug(what: impl Into<String>) -> RenderError {
        let what = what.into();
        tracing::error!(%what, "render reached a state it should never reach");
        RenderError::Internal(what)
    }

    /// Whether the render needed more memory than its decode budget (also when shared).
    pub(crate) fn is_too_large(&self) -> bool {
        match self {
            RenderError::TooLarge(_) => true,
            RenderError::Shared(inner) => inner.is_too_large(),
            _ => false,
        }
    }
}

/// Results of the renderer.
pub(crate) type Result<T, E = RenderError> = std::result::Result<T, E>;

/// A source to render from: how to read it, and the name of its version (the key of its decoded
/// levels and its tiled copy).
#[derive(Clone, Copy)]
pub(crate) struct SourceRef<'a> {
    pub(crate) reader: &'a dyn ObjectReader,
    pub(crate) fingerprint: &'a Fingerprint,
    /// What the header says the source is: read once, when the source is opened for a render.
    pub(crate) kind: SourceKind,
}

impl<'a> SourceRef<'a> {
    /// The source behind `reader`, its kind read from its first bytes.
    pub(crate) fn new(
        reader: &'a dyn ObjectReader,
        fingerprint: &'a Fingerprint,
    ) -> std::result::Result<SourceRef<'a>, SourceError> {
        Ok(SourceRef {
            reader,
            fingerprint,
            kind: SourceKind::of(reader)?,
        })
    }
}

/// Produce the encoded image that `req` describes. Each source kind takes its cheapest route to the
/// pixels of the region at (at least) the output's resolution.
pub(crate) fn render(
    src: SourceRef<'_>,
    cache: &DecodedCache,
    req: &CanonicalRequest,
    settings: &EncodeSettings,
    max_decode_bytes: u64,
) -> Result<Vec<u8>> {
    encoder_fits(req, max_decode_bytes)?;
    let kind = src.kind;
    if matches!(kind, SourceKind::Gif | SourceKind::Webp) {
        let animation = animated::render(
            src.reader,
            kind,
            req,
            settings.webp_quality,
            max_decode_bytes,
        )?;
        if let Some(animation) = animation {
            return Ok(animation);
        }
    }
    let (img, region) = match kind {
        SourceKind::Jpeg => match decode::jpeg::region(src, cache, req, max_decode_bytes)? {
            Some(found) => found,
            None => whole_region(src, cache, req, max_decode_bytes)?,
        },
        SourceKind::Tiff => {
            let dir = cache.directory(src.fingerprint, || Ok(tiff::read_pyramid(src.reader)?))?;
            match &dir.pyramid {
                Some(pyramid) => {
                    let passes = |level: usize, tile: &[u8]| {
                        dir.passes.get(level).is_some_and(|p| {
                            *p.get_or_init(|| {
                                passthrough::passes(
                                    settings.tile_passthrough,
                                    passthrough::coding_of(tile),
                                    settings.jpeg_quality,
                                )
                            })
                        })
                    };
                    return decode::tiff::render(
                        src.reader,
                        pyramid,
                        req,
                        settings,
                        max_decode_bytes,
                        &passes,
                    );
                }
                None => whole_region(src, cache, req, max_decode_bytes)?,
            }
        }
        SourceKind::Jp2 => decode::jp2::region(src, cache, req, max_decode_bytes)?,
        SourceKind::Png | SourceKind::Gif | SourceKind::Webp | SourceKind::Other => {
            whole_region(src, cache, req, max_decode_bytes)?
        }
    };
    let color = ColorPlan::new(decode::profile(src.reader, kind), settings.color);
    finish(img, region, req, settings, &color)
}

/// A region through the whole-image route. The whole file was decoded, so a file it finds corrupt
/// is corrupt for every request: [`RenderError::Corrupt`] says so to the pipeline.
fn whole_region(
    src: SourceRef<'_>,
    cache: &DecodedCache,
    req: &CanonicalRequest,
    max: u64,
) -> Result<(Arc<image::DynamicImage>, crate::iiif::canonical::Rect)> {
    fn corrupt(e: &RenderError) -> Option<String> {
        match e {
            RenderError::Undecodable(m) | RenderError::Source(SourceError::Undecodable(m)) => {
                Some(m.clone())
            }
            RenderError::Shared(inner) => corrupt(inner),
            _ => None,
        }
    }
    decode::whole::cached_region(src, cache, req, max)
        .map_err(|e| corrupt(&e).map_or(e, RenderError::Corrupt))
}

/// Steps 4 and 5: the operations after the region's pixels are in hand (colour conversion after the
/// geometry, on the output's pixels, before the quality), and the encoder.
pub(crate) fn finish(
    img: Arc<image::DynamicImage>,
    region: crate::iiif::canonical::Rect,
    req: &CanonicalRequest,
    settings: &EncodeSettings,
    color: &ColorPlan,
) -> Result<Vec<u8>> {
    let img = ops::apply(img, region, req);
    let img = color.apply(img);
    let img = ops::quality(img, req.quality(), req.format().has_alpha());
    encode::encode(img, req.format(), settings, color.embedded())
}

/// Render `req` from a source's tiled copy (see [`tiled_copy`]). `None` when the copy cannot be
/// read (evicted meanwhile, or damaged): the caller renders from the source instead.
pub(crate) fn render_tiled_copy(
    copy: &dyn ObjectReader,
    req: &CanonicalRequest,
    settings: &EncodeSettings,
    max_decode_bytes: u64,
) -> Option<Result<Vec<u8>>> {
    if let Err(e) = encoder_fits(req, max_decode_bytes) {
        return Some(Err(e));
    }
    let pyramid = tiff::read_pyramid(copy).ok()??;
    // The copy's tiles are an intermediate (quality 92, 4:4:4), never sent as they are; the copy
    // carries the source's profile, so colour is handled as from the source.
    let settings = EncodeSettings {
        tile_passthrough: crate::config::TilePassthrough::Never,
        ..*settings
    };
    Some(decode::tiff::render(
        copy,
        &pyramid,
        req,
        &settings,
        max_decode_bytes,
        &|_, _| false,
    ))
}

/// The ICC profile embedded in a source, if any (kept in its tiled copy).
pub(crate) fn source_profile(src: SourceRef<'_>) -> Option<Vec<u8>> {
    decode::profile(src.reader, src.kind)
}

/// Whether the decoded level `req` would be cut from is in the decoded cache already.
pub(crate) fn level_in_memory(
    cache: &DecodedCache,
    fingerprint: &Fingerprint,
    req: &CanonicalRequest,
) -> bool {
    cache.peek(fingerprint, plan::pick_level(req).0).is_some()
}

/// The way a render went, chosen by [`render_by_route`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Cut from the source's tiled copy.
    TiledCopy,
    /// Decoded from the source itself; `wants_copy`: the source has no tiled copy yet and would
    /// gain from one (the caller has it written in the background).
    Source { wants_copy: bool },
}

/// What the encoders of `format` hold beyond the output's pixels, per output pixel, as measured
/// on a 40-megapixel `full/max` (VmHWM above the same request as jpg): OpenJPEG keeps every sample
/// as an i32 twice over (19 bytes), rav1e its 10-bit planes and analysis (29 bytes at 12 MP, and
/// 7.5 s), zune-jpegxl its rows and histograms (6 bytes). The others stream or are negligible.
fn encoder_bytes_per_pixel(format: crate::iiif::Format) -> u64 {
    use crate::iiif::Format;
    match format {
        Format::Jp2 => 20,
        Format::Avif => 30,
        Format::Jxl => 7,
        _ => 0,
    }
}

/// An output whose encoder would need more than `render.max_decode_bytes` is refused (501) before
/// anything is decoded, as a decode that large is: the memory bound counts one such budget per
/// render. (Arbitrary rotation enlarges the canvas by at most 2x.)
fn encoder_fits(req: &CanonicalRequest, max_decode_bytes: u64) -> Result<()> {
    let per_pixel = encoder_bytes_per_pixel(req.format());
    let mut pixels = u64::from(req.width()) * u64::from(req.height());
    if req.degrees() % 90.0 != 0.0 {
        pixels = pixels.saturating_mul(2);
    }
    let need = pixels.saturating_mul(per_pixel);
    if need > max_decode_bytes {
        return Err(RenderError::TooLarge(format!(
            "encoding {}x{} as {} would take about {need} bytes, above render.max_decode_bytes \
             ({max_decode_bytes}); ask for a smaller size",
            req.width(),
            req.height(),
            req.format()
        )));
    }
    Ok(())
}

/// Render `req`, choosing the route: from the tiled `copy` when there is one, the output is lossy
/// (a lossless output never depends on whether the copy exists yet, since the copy's tiles are
/// JPEG) and the pixels are not already decoded in memory (then they beat reading tiles from
/// disk: the copy is for the sessions after the decoded cache has moved on); else from the source,
/// opened only then. `copyable`: the source is large enough to be worth a copy.
#[allow(clippy::too_many_arguments)]
pub(crate) fn render_by_route(
    open_source: &dyn Fn() -> std::result::Result<Arc<dyn ObjectReader>, SourceError>,
    copy: Option<&dyn ObjectReader>,
    copyable: bool,
    fingerprint: &Fingerprint,
    cache: &DecodedCache,
    req: &CanonicalRequest,
    settings: &EncodeSettings,
    max_decode_bytes: u64,
) -> Result<(Vec<u8>, Route)> {
    let from_copy = copy
        .filter(|_| req.format().is_lossy())
        .filter(|_| !level_in_memory(cache, fingerprint, req))
        .and_then(|c| render_tiled_copy(c, req, settings, max_decode_bytes));
    if let Some(result) = from_copy {
        return Ok((result?, Route::TiledCopy));
    }
    let reader = open_source()?;
    let src = SourceRef::new(&*reader, fingerprint)?;
    let bytes = render(src, cache, req, settings, max_decode_bytes)?;
    let wants_copy = copyable && copy.is_none() && copy_helps(src);
    Ok((bytes, Route::Source { wants_copy }))
}

/// True for the sources a [`tiled_copy`] helps: those without resolution levels or tiles of their
/// own (everything but pyramidal TIFF and JPEG 2000), and JPEG 2000, whose decoder's cost per call
/// a pyramid of JPEG tiles does not have.
pub(crate) fn copy_helps(src: SourceRef<'_>) -> bool {
    match src.kind {
        SourceKind::Tiff => matches!(tiff::read_pyramid(src.reader), Ok(None)),
        _ => true,
    }
}

/// Decode an image held in memory, with the same limits and normalisation as a source (for the
/// fuzzers and the hostile-input tests).
pub(crate) fn decode_bytes(bytes: &[u8], max_decode_bytes: u64) -> Result<image::DynamicImage> {
    let reader = crate::source::memory::bytes_reader(bytes.to_vec());
    let kind = SourceKind::of(&*reader).map_err(SourceError::from)?;
    if kind == SourceKind::Jp2 {
        return decode::jp2::whole(&*reader, max_decode_bytes);
    }
    if kind == SourceKind::Jpeg {
        let info = decode::jpeg::read_info(bytes)?;
        if !info.cmyk {
            return decode::jpeg::decode(bytes, 0, None, max_decode_bytes);
        }
    }
    decode::whole::decode(&*reader, kind, max_decode_bytes)
}
