//! `[limits]` and `[render]`: what a request may ask for, and how renders decode and encode.

use crate::iiif::Limits;
use serde::{Deserialize, Serialize};

/// `[limits]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest output width (info.json `maxWidth`). Env: `IIIFD_LIMITS__MAX_WIDTH`.
    pub max_width: u32,
    /// Largest output height (`maxHeight`). Env: `IIIFD_LIMITS__MAX_HEIGHT`.
    pub max_height: u32,
    /// Largest output area in pixels (`maxArea`). Env: `IIIFD_LIMITS__MAX_AREA`.
    pub max_area: u64,
    /// Sources with more pixels are refused before decoding. Env: `IIIFD_LIMITS__MAX_SOURCE_PIXELS`.
    pub max_source_pixels: u64,
    /// Sources larger than this many bytes are refused. Env: `IIIFD_LIMITS__MAX_SOURCE_BYTES`.
    pub max_source_bytes: u64,
}

/// `render.color`: what happens to sources with an embedded ICC profile (see `render::color`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorMode {
    /// Convert their pixels to sRGB.
    #[default]
    Srgb,
    /// Keep their pixels and embed their profile in the output.
    Preserve,
}

impl ColorMode {
    /// The config spelling, also part of every derivative key.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ColorMode::Srgb => "srgb",
            ColorMode::Preserve => "preserve",
        }
    }
}

/// `render.tile_passthrough`: when a request that is exactly one stored JPEG tile of a pyramidal
/// TIFF is answered with the tile's own bytes (see `render::passthrough` for the rule).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TilePassthrough {
    /// When the stored tile is not much heavier than iiifd's own encode of it would be (judged
    /// from its quantisation tables and chroma subsampling, once per file); otherwise re-encoded
    /// once, in the DCT domain, and stored.
    #[default]
    Auto,
    /// Always (no decode, no encode, no generation loss, whatever the tile weighs).
    Always,
    /// Never: every tile is re-encoded at `jpeg_quality`.
    Never,
}

impl TilePassthrough {
    /// The config spelling, also part of the JPEG encoder's key description.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TilePassthrough::Auto => "auto",
            TilePassthrough::Always => "always",
            TilePassthrough::Never => "never",
        }
    }
}

// Earlier versions took a boolean: `true` still means always and `false` never.
impl<'de> Deserialize<'de> for TilePassthrough {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spelling {
            Flag(bool),
            Name(String),
        }
        match Spelling::deserialize(d)? {
            Spelling::Flag(true) => Ok(TilePassthrough::Always),
            Spelling::Flag(false) => Ok(TilePassthrough::Never),
            Spelling::Name(n) => match n.as_str() {
                "auto" => Ok(TilePassthrough::Auto),
                "always" | "true" => Ok(TilePassthrough::Always),
                "never" | "false" => Ok(TilePassthrough::Never),
                other => Err(serde::de::Error::custom(format!(
                    "tile_passthrough is \"auto\", \"always\" or \"never\", not {other:?}"
                ))),
            },
        }
    }
}

/// `[render]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenderConfig {
    /// Render threads; 0 means one per CPU core. Env: `IIIFD_RENDER__WORKERS`.
    pub workers: usize,
    /// Renders that may wait for a thread, all clients together. When the queue is full, the client
    /// with the longest queue loses its newest render (429), or, when every client has one, the
    /// newcomer gets 503. Queued renders wait in fair order, not first come first served, so a long
    /// queue costs other clients nothing (each client's own is bounded by
    /// `admission.per_client_queue`). Env: `IIIFD_RENDER__QUEUE`.
    pub queue: usize,
    /// JPEG quality 1-100. Env: `IIIFD_RENDER__JPEG_QUALITY`.
    pub jpeg_quality: u8,
    /// Lossy WebP quality 1-100. Env: `IIIFD_RENDER__WEBP_QUALITY`.
    pub webp_quality: u8,
    /// Whether a request that is exactly one stored JPEG tile of a pyramidal TIFF is answered with
    /// that tile's bytes (no decode, no re-encode, no generation loss): `auto` (the default) when
    /// the tile's quality is at most `jpeg_quality` + 5 and its chroma is subsampled as iiifd's
    /// encoder does (4:2:0) or it is gray, so that it is not much heavier than a re-encode;
    /// `always`; `never`. vips writes 4:4:4 tiles at Q >= 90, about 2.6x the bytes of a 4:2:0 Q85
    /// re-encode of the same region: `auto` re-encodes those, once (the result is stored), without
    /// decoding them to pixels (their coefficients are requantised and their chroma halved);
    /// `never` re-encodes every tile from its pixels. Env:
    /// `IIIFD_RENDER__TILE_PASSTHROUGH`.
    pub tile_passthrough: TilePassthrough,
    /// Sources with an embedded ICC profile: `srgb` converts their pixels to sRGB (what browsers
    /// assume), `preserve` keeps them and embeds the profile in jpg, png, webp and tif outputs. Part
    /// of every derivative key. Env: `IIIFD_RENDER__COLOR`.
    pub color: ColorMode,
    /// Most bytes one decode may allocate. Env: `IIIFD_RENDER__MAX_DECODE_BYTES`.
    pub max_decode_bytes: u64,
    /// The peak resident memory to stay under (0: no target). When set, each decode's budget is
    /// lowered, if need be, so that [`super::MemoryBound`] fits in it; a target too small for that is a
    /// configuration error. Env: `IIIFD_RENDER__MAX_MEMORY_BYTES`.
    pub max_memory_bytes: u64,
    /// Decoded source pixels kept in memory between renders (0 disables).
    /// Env: `IIIFD_RENDER__DECODED_CACHE_BYTES`.
    pub decoded_cache_bytes: u64,
    /// Flat sources (JPEG, PNG, ...) with at least this many pixels get a tiled copy in the store the
    /// first time a viewer zooms into them (0 disables). Env: `IIIFD_RENDER__TILED_COPY_MIN_PIXELS`.
    pub tiled_copy_min_pixels: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        LimitsConfig {
            max_width: l.max_width,
            max_height: l.max_height,
            max_area: l.max_area,
            max_source_pixels: 250_000_000,
            max_source_bytes: 2 << 30,
        }
    }
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            workers: 0,
            queue: 1024,
            jpeg_quality: 85,
            webp_quality: 80,
            tile_passthrough: TilePassthrough::Auto,
            color: ColorMode::Srgb,
            max_decode_bytes: 1 << 30,
            max_memory_bytes: 0,
            decoded_cache_bytes: 256 << 20,
            tiled_copy_min_pixels: 16_000_000,
        }
    }
}
