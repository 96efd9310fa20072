//! The IIIF Image API itself, as pure data and functions: no I/O, no tokio, hyper, sled or filesystem.
//!
//! - [`parse`] turns the path segments of a request into an [`parse::ImageRequest`] (syntax only,
//!   Image API 3.0 §4, 2.1 §4, 1.1 §4).
//! - [`canonical`] resolves a request against the image's size and the server limits into a
//!   [`canonical::CanonicalRequest`] (3.0 §4.8, 2.1 §4.7): the exact pixels to produce.
//! - [`info`] builds the image information document (3.0 §5, 2.1 §5, 1.1 §5).
//!
//! Everything here is deterministic and tested alone, with property tests where the input space is large.

pub mod canonical;
pub mod info;
pub mod number;
pub mod parse;

use std::fmt;

/// The Image API versions iiifd serves, each under its own path (`/iiif/3/...`, `/iiif/2/...`, `/iiif/1/...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiVersion {
    /// Image API 1.1 (the seed: Flask-IIIF served it as `v1`).
    V1,
    /// Image API 2.1.
    V2,
    /// Image API 3.0.
    V3,
}

impl ApiVersion {
    /// Every served version, newest first.
    pub const ALL: [ApiVersion; 3] = [ApiVersion::V3, ApiVersion::V2, ApiVersion::V1];

    /// The path segment that selects this version (`"3"`, `"2"`, `"1"`).
    pub fn path_segment(self) -> &'static str {
        match self {
            ApiVersion::V1 => "1",
            ApiVersion::V2 => "2",
            ApiVersion::V3 => "3",
        }
    }

    /// The version named by a path segment, if any.
    pub fn from_path_segment(s: &str) -> Option<ApiVersion> {
        match s {
            "1" => Some(ApiVersion::V1),
            "2" => Some(ApiVersion::V2),
            "3" => Some(ApiVersion::V3),
            _ => None,
        }
    }

    /// The compliance-level URI sent in the `Link: <...>;rel="profile"` header.
    pub fn profile_uri(self) -> &'static str {
        match self {
            ApiVersion::V1 => {
                "http://library.stanford.edu/iiif/image-api/1.1/compliance.html#level2"
            }
            ApiVersion::V2 => "http://iiif.io/api/image/2/level2.json",
            ApiVersion::V3 => "http://iiif.io/api/image/3/level2.json",
        }
    }

    /// The JSON-LD context of this version's info.json.
    pub fn context_uri(self) -> &'static str {
        match self {
            ApiVersion::V1 => "http://library.stanford.edu/iiif/image-api/1.1/context.json",
            ApiVersion::V2 => "http://iiif.io/api/image/2/context.json",
            ApiVersion::V3 => "http://iiif.io/api/image/3/context.json",
        }
    }
}

/// The quality parameter, with the version-specific spellings folded together:
/// 1.1's `native` is [`Quality::Default`] and its `grey` is [`Quality::Gray`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quality {
    /// The server's default: the source's own colours.
    Default,
    /// Full colour.
    Color,
    /// Grayscale.
    Gray,
    /// Black and white, each pixel 0 or 255.
    Bitonal,
}

impl Quality {
    /// How this quality is spelled in URLs of `version`.
    pub fn name(self, version: ApiVersion) -> &'static str {
        match (self, version) {
            (Quality::Default, ApiVersion::V1) => "native",
            (Quality::Default, _) => "default",
            (Quality::Color, _) => "color",
            (Quality::Gray, ApiVersion::V1) => "grey",
            (Quality::Gray, _) => "gray",
            (Quality::Bitonal, _) => "bitonal",
        }
    }

    /// Parse a quality as spelled in `version`; other versions' spellings are rejected.
    pub fn parse(s: &str, version: ApiVersion) -> Option<Quality> {
        [
            Quality::Default,
            Quality::Color,
            Quality::Gray,
            Quality::Bitonal,
        ]
        .into_iter()
        .find(|q| q.name(version) == s)
    }
}

/// Output formats named by the URL's extension (3.0 §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `jpg`, image/jpeg.
    Jpg,
    /// `png`, image/png.
    Png,
    /// `webp`, image/webp.
    Webp,
    /// `gif`, image/gif.
    Gif,
    /// `tif`, image/tiff.
    Tif,
    /// `jp2`, image/jp2 (OpenJPEG, lossy 9/7).
    Jp2,
    /// `pdf`: a valid format iiifd does not produce (501).
    Pdf,
    /// `avif`, image/avif: not a spec name, listed in `extraFormats` when built in (as iipsrv does).
    Avif,
    /// `jxl`, image/jxl (lossless): as `avif`.
    Jxl,
}

impl Format {
    /// Every format the spec names, in declaration order (`ALL[f as usize] == f`).
    pub const ALL: [Format; 9] = [
        Format::Jpg,
        Format::Png,
        Format::Webp,
        Format::Gif,
        Format::Tif,
        Format::Jp2,
        Format::Pdf,
        Format::Avif,
        Format::Jxl,
    ];

    /// Formats iiifd can encode in this build, in the order info.json lists them. avif and jxl are
    /// cargo features (on by default), so a build without them does not claim them.
    pub const RENDERED: &'static [Format] = &[
        Format::Jpg,
        Format::Png,
        Format::Gif,
        Format::Tif,
        Format::Webp,
        Format::Jp2,
        #[cfg(feature = "avif")]
        Format::Avif,
        #[cfg(feature = "jxl")]
        Format::Jxl,
    ];

    /// Formats a 1.1 request without an extension may be given by `Accept`: the cheap ones.
    /// Browsers put `image/avif` first in `Accept`, and an AV1 encode of every tile a viewer asks
    /// for would cost it seconds; avif, jxl and jp2 are only sent when a URL names them.
    pub const NEGOTIABLE: [Format; 5] = [
        Format::Jpg,
        Format::Png,
        Format::Gif,
        Format::Tif,
        Format::Webp,
    ];

    /// The URL extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpg => "jpg",
            Format::Png => "png",
            Format::Webp => "webp",
            Format::Gif => "gif",
            Format::Tif => "tif",
            Format::Jp2 => "jp2",
            Format::Pdf => "pdf",
            Format::Avif => "avif",
            Format::Jxl => "jxl",
        }
    }

    /// The media type sent as `Content-Type`.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Jpg => "image/jpeg",
            Format::Png => "image/png",
            Format::Webp => "image/webp",
            Format::Gif => "image/gif",
            Format::Tif => "image/tiff",
            Format::Jp2 => "image/jp2",
            Format::Pdf => "application/pdf",
            Format::Avif => "image/avif",
            Format::Jxl => "image/jxl",
        }
    }

    /// The format named by a spec extension. `jpeg` and `tiff` are not spec names and are rejected.
    pub fn from_extension(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.extension() == s)
    }

    /// Whether iiifd can produce this format.
    pub fn is_rendered(self) -> bool {
        Format::RENDERED.contains(&self)
    }

    /// Whether the encoding loses information (jpg, webp as iiifd writes them). A lossless format's
    /// pixels must not depend on the internal route that produced them (a tiled copy is lossy).
    pub fn is_lossy(self) -> bool {
        matches!(
            self,
            Format::Jpg | Format::Webp | Format::Jp2 | Format::Avif
        )
    }

    /// Whether the format keeps an alpha channel (so rotated corners can be transparent).
    pub fn has_alpha(self) -> bool {
        matches!(
            self,
            Format::Png | Format::Webp | Format::Gif | Format::Tif | Format::Avif | Format::Jxl
        )
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// The server's size limits, advertised in info.json as `maxWidth`, `maxHeight`, `maxArea`.
///
/// Because iiifd supports upscaling (`sizeUpscaling` / `sizeAboveFull`), the spec requires
/// `maxWidth` or `maxArea` to be declared, so all three always have a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest output width in pixels.
    pub max_width: u32,
    /// Largest output height in pixels.
    pub max_height: u32,
    /// Largest output area (width x height) in pixels.
    pub max_area: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_width: 10_000,
            max_height: 10_000,
            max_area: 40_000_000,
        }
    }
}

impl Limits {
    /// Whether an output of `w` x `h` pixels is within every limit.
    pub fn allows(&self, w: u32, h: u32) -> bool {
        w <= self.max_width && h <= self.max_height && u64::from(w) * u64::from(h) <= self.max_area
    }
}

#[cfg(test)]
mod tests {
    use super::Format;

    /// Tables made per format are indexed by `Format as usize`.
    #[test]
    fn all_formats_are_listed_in_declaration_order() {
        for (i, f) in Format::ALL.into_iter().enumerate() {
            assert_eq!(f as usize, i);
            assert_eq!(Format::from_extension(f.extension()), Some(f));
        }
    }
}
