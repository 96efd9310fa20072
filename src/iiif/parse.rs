//! Syntax of IIIF request paths (3.0 §2 and §4, 2.1 §2 and §4, 1.1 §2 and §4), with no I/O.
//!
//! Input is the raw, still percent-encoded path below the server prefix, e.g.
//! `3/books%2Fpage1/full/max/0/default.jpg`. Every segment is percent-decoded exactly once, so an
//! identifier may hold an encoded `/` (`%2F`) and still be one identifier. Image requests are read from
//! the right (2.1 implementation notes): the last four segments are the parameters and whatever precedes
//! them is the identifier, so a proxy that decodes `%2F` on the way still reaches the right image.
//!
//! The grammar is strict: anything the spec does not define is a [`ParseError`] naming the bad segment.
//! Nothing here can panic, whatever the input (property-tested below and fuzzed in `fuzz/`).

use super::number::{parse_decimal, parse_u32, NumberError};
use super::{ApiVersion, Format, Quality};
use std::fmt;

/// Longest identifier accepted, in bytes after decoding. Real identifiers are far shorter; a bound keeps
/// hostile 10 kB identifiers out of file-system calls and logs.
pub const MAX_IDENTIFIER_BYTES: usize = 1024;

/// What a path below the prefix asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    /// `/{v}/{id}`: the base URI, answered with a 303 to info.json.
    Base {
        /// API version.
        version: ApiVersion,
        /// Decoded identifier.
        identifier: String,
    },
    /// `/{v}/{id}/info.json`.
    Info {
        /// API version.
        version: ApiVersion,
        /// Decoded identifier.
        identifier: String,
    },
    /// `/{v}/{id}/{region}/{size}/{rotation}/{quality}.{format}`.
    Image {
        /// Decoded identifier.
        identifier: String,
        /// The parsed parameters.
        request: ImageRequest,
    },
}

/// The region parameter as written (3.0 §4.1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RegionSpec {
    /// `full`.
    Full,
    /// `square`: the largest centred square.
    Square,
    /// `x,y,w,h` in pixels.
    Pixels {
        /// Left edge.
        x: u32,
        /// Top edge.
        y: u32,
        /// Width (> 0).
        w: u32,
        /// Height (> 0).
        h: u32,
    },
    /// `pct:x,y,w,h` in percent of the full image.
    Percent {
        /// Left edge.
        x: f64,
        /// Top edge.
        y: f64,
        /// Width (> 0).
        w: f64,
        /// Height (> 0).
        h: f64,
    },
}

/// The size parameter as written (3.0 §4.2, 2.1 §4.2, 1.1 §4.2), without the `^` prefix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizeKind {
    /// `max` (3.0, 2.1).
    Max,
    /// `full` (2.1, 1.1; removed in 3.0).
    Full,
    /// `w,`.
    Width(u32),
    /// `,h`.
    Height(u32),
    /// `pct:n`.
    Percent(f64),
    /// `w,h`, possibly distorting.
    Exact(u32, u32),
    /// `!w,h`: fit inside, keeping the aspect ratio.
    Confined(u32, u32),
}

/// A size with its 3.0 upscaling marker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeSpec {
    /// The size form.
    pub kind: SizeKind,
    /// `^` was given (3.0 only): the result may be larger than the region.
    pub upscale: bool,
}

/// Rotation (3.0 §4.3): optional mirroring, then clockwise degrees in `[0, 360]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rotation {
    /// `!` prefix: mirror about the vertical axis before rotating.
    pub mirror: bool,
    /// Degrees clockwise, `0.0..=360.0`.
    pub degrees: f64,
}

/// A syntactically valid image request, not yet checked against any image.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRequest {
    /// API version of the URL.
    pub version: ApiVersion,
    /// Region.
    pub region: RegionSpec,
    /// Size.
    pub size: SizeSpec,
    /// Rotation and mirroring.
    pub rotation: Rotation,
    /// Quality.
    pub quality: Quality,
    /// Output format.
    pub format: Format,
}

/// The part of the path a [`ParseError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The whole path.
    Path,
    /// The version segment.
    Version,
    /// The identifier.
    Identifier,
    /// The region segment.
    Region,
    /// The size segment.
    Size,
    /// The rotation segment.
    Rotation,
    /// The quality.
    Quality,
    /// The format extension.
    Format,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Path => "path",
            Part::Version => "version",
            Part::Identifier => "identifier",
            Part::Region => "region",
            Part::Size => "size",
            Part::Rotation => "rotation",
            Part::Quality => "quality",
            Part::Format => "format",
        })
    }
}

/// A request path that does not follow the grammar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// A segment is malformed (400).
    Invalid {
        /// Which segment.
        part: Part,
        /// The offending text, shortened and made printable for the message.
        value: String,
        /// What was expected instead.
        expected: &'static str,
    },
    /// A valid format that iiifd does not produce (501).
    UnsupportedFormat(Format),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Invalid {
                part,
                value,
                expected,
            } => {
                write!(f, "invalid {part} '{value}': expected {expected}")
            }
            ParseError::UnsupportedFormat(fmt_) => {
                write!(
                    f,
                    "format '{fmt_}' is valid IIIF but not produced by this server"
                )
            }
        }
    }
}

impl std::error::Error for ParseError {}

fn invalid(part: Part, value: &str, expected: &'static str) -> ParseError {
    ParseError::Invalid {
        part,
        value: printable(value),
        expected,
    }
}

/// Shorten and escape a user-supplied string so that it can be echoed in an error body or log line
/// without control characters and without flooding either.
pub fn printable(s: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

const VERSION_EXPECTED: &str = "1, 2 or 3 (Image API 1.1, 2.1 or 3.0)";
const REGION_EXPECTED: &str = "full, square, x,y,w,h or pct:x,y,w,h with w and h above 0";
const REGION_EXPECTED_V1: &str = "full, x,y,w,h or pct:x,y,w,h with w and h above 0";
const SIZE_EXPECTED_V3: &str = "max, w,, ,h, pct:n, w,h or !w,h, each optionally prefixed with ^";
const SIZE_EXPECTED_V2: &str = "full, max, w,, ,h, pct:n, w,h or !w,h";
const SIZE_EXPECTED_V1: &str = "full, w,, ,h, pct:n, w,h or !w,h";
const ROTATION_EXPECTED: &str = "degrees from 0 to 360, optionally prefixed with ! to mirror";
const ROTATION_EXPECTED_V1: &str = "degrees from 0 to 360";
const QUALITY_EXPECTED_V23: &str = "default, color, gray or bitonal";
const QUALITY_EXPECTED_V1: &str = "native, color, grey or bitonal";
const FORMAT_EXPECTED: &str = "jpg, png, webp, gif or tif";

/// Percent-decode one path segment (RFC 3986 §2.1), exactly once. Rejects malformed escapes, decoded
/// bytes that are not UTF-8, and control characters (NUL included), none of which can name an image.
pub fn decode_segment(raw: &str, part: Part) -> Result<String, ParseError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    bytes.get(i + 1).and_then(|&b| hex(b)),
                    bytes.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => return Err(invalid(part, raw, "valid percent-escapes (%XX)")),
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let s =
        String::from_utf8(out).map_err(|_| invalid(part, raw, "UTF-8 after percent-decoding"))?;
    if s.chars().any(char::is_control) {
        return Err(invalid(part, raw, "no control characters"));
    }
    Ok(s)
}

/// Percent-encode an identifier for use as one URL path segment: everything but RFC 3986 unreserved
/// characters is escaped, `/` included, so the result is exactly one segment that
/// [`decode_segment`] turns back into `identifier`.
pub fn encode_identifier(identifier: &str) -> String {
    let mut out = String::with_capacity(identifier.len());
    for b in identifier.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parse the path below the prefix (no leading `/`), e.g. `3/abc/info.json`.
///
/// `negotiated` is the format to use when a 1.1 request omits the extension (1.1 §4.5 lets the client
/// choose it with `Accept` instead); the HTTP layer derives it from the request headers.
pub fn parse_route(path: &str, negotiated: Format) -> Result<Route, ParseError> {
    let (version_raw, rest) = path.split_once('/').unwrap_or((path, ""));
    let version = ApiVersion::from_path_segment(version_raw)
        .ok_or_else(|| invalid(Part::Version, version_raw, VERSION_EXPECTED))?;
    if rest.is_empty() {
        return Err(invalid(
            Part::Identifier,
            "",
            "an identifier after the version",
        ));
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    if segments[n - 1] == "info.json" {
        let identifier = parse_identifier(&segments[..n - 1])?;
        return Ok(Route::Info {
            version,
            identifier,
        });
    }
    if n == 1 {
        let identifier = parse_identifier(&segments)?;
        return Ok(Route::Base {
            version,
            identifier,
        });
    }
    if n < 5 {
        return Err(invalid(
            Part::Path,
            rest,
            "{identifier}/info.json or {identifier}/{region}/{size}/{rotation}/{quality}.{format}",
        ));
    }
    let identifier = parse_identifier(&segments[..n - 4])?;
    let (region, size, rotation, qf) = (
        segments[n - 4],
        segments[n - 3],
        segments[n - 2],
        segments[n - 1],
    );
    let request = parse_image_params(version, region, size, rotation, qf, negotiated)?;
    Ok(Route::Image {
        identifier,
        request,
    })
}

/// Decode an identifier, joining segments that arrived with unencoded slashes.
fn parse_identifier(segments: &[&str]) -> Result<String, ParseError> {
    let mut id = String::new();
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            id.push('/');
        }
        id.push_str(&decode_segment(seg, Part::Identifier)?);
    }
    if id.is_empty() {
        return Err(invalid(Part::Identifier, "", "a non-empty identifier"));
    }
    if id.len() > MAX_IDENTIFIER_BYTES {
        return Err(invalid(Part::Identifier, &id, "at most 1024 bytes"));
    }
    Ok(id)
}

/// Parse the four parameter segments of an image request (still percent-encoded).
pub fn parse_image_params(
    version: ApiVersion,
    region: &str,
    size: &str,
    rotation: &str,
    quality_format: &str,
    negotiated: Format,
) -> Result<ImageRequest, ParseError> {
    let region = parse_region(version, &decode_segment(region, Part::Region)?)?;
    let size = parse_size(version, &decode_segment(size, Part::Size)?)?;
    let rotation = parse_rotation(version, &decode_segment(rotation, Part::Rotation)?)?;
    let (quality, format) = parse_quality_format(
        version,
        &decode_segment(quality_format, Part::Quality)?,
        negotiated,
    )?;
    Ok(ImageRequest {
        version,
        region,
        size,
        rotation,
        quality,
        format,
    })
}

fn split4(s: &str) -> Option<[&str; 4]> {
    let mut it = s.split(',');
    let out = [it.next()?, it.next()?, it.next()?, it.next()?];
    it.next().is_none().then_some(out)
}

fn parse_region(version: ApiVersion, s: &str) -> Result<RegionSpec, ParseError> {
    let expected = if version == ApiVersion::V1 {
        REGION_EXPECTED_V1
    } else {
        REGION_EXPECTED
    };
    let bad = || invalid(Part::Region, s, expected);
    match s {
        "full" => return Ok(RegionSpec::Full),
        // `square` arrived in 2.1 (regionSquare); 1.1 never had it.
        "square" if version != ApiVersion::V1 => return Ok(RegionSpec::Square),
        _ => {}
    }
    if let Some(p) = s.strip_prefix("pct:") {
        let [x, y, w, h] = split4(p).ok_or_else(bad)?;
        let n = |v: &str| parse_decimal(v, 1e9).map_err(|_| bad());
        let (x, y, w, h) = (n(x)?, n(y)?, n(w)?, n(h)?);
        if w <= 0.0 || h <= 0.0 {
            return Err(bad());
        }
        return Ok(RegionSpec::Percent { x, y, w, h });
    }
    let [x, y, w, h] = split4(s).ok_or_else(bad)?;
    let n = |v: &str| parse_u32(v).map_err(|_| bad());
    let (x, y, w, h) = (n(x)?, n(y)?, n(w)?, n(h)?);
    if w == 0 || h == 0 {
        return Err(bad());
    }
    Ok(RegionSpec::Pixels { x, y, w, h })
}

fn parse_size(version: ApiVersion, s: &str) -> Result<SizeSpec, ParseError> {
    let expected = match version {
        ApiVersion::V3 => SIZE_EXPECTED_V3,
        ApiVersion::V2 => SIZE_EXPECTED_V2,
        ApiVersion::V1 => SIZE_EXPECTED_V1,
    };
    let bad = || invalid(Part::Size, s, expected);
    // `^` is 3.0 syntax; 2.1 and 1.1 allow sizes above the region without it (sizeAboveFull).
    let (upscale, body) = match s.strip_prefix('^') {
        Some(rest) if version == ApiVersion::V3 => (true, rest),
        Some(_) => return Err(bad()),
        None => (false, s),
    };
    let kind = match body {
        "max" if version != ApiVersion::V1 => SizeKind::Max,
        "full" if version != ApiVersion::V3 => SizeKind::Full,
        _ => {
            let (confined, body) = match body.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, body),
            };
            if let Some(p) = body.strip_prefix("pct:") {
                if confined {
                    return Err(bad());
                }
                let pct = parse_decimal(p, 1e9).map_err(|_| bad())?;
                if pct <= 0.0 {
                    return Err(bad());
                }
                SizeKind::Percent(pct)
            } else {
                let (w, h) = body.split_once(',').ok_or_else(bad)?;
                let dim = |v: &str| -> Result<Option<u32>, ParseError> {
                    match v {
                        "" => Ok(None),
                        v => match parse_u32(v) {
                            Ok(0) | Err(NumberError::Syntax) | Err(NumberError::TooLarge) => {
                                Err(bad())
                            }
                            Ok(n) => Ok(Some(n)),
                        },
                    }
                };
                match (dim(w)?, dim(h)?, confined) {
                    (Some(w), Some(h), true) => SizeKind::Confined(w, h),
                    (Some(w), Some(h), false) => SizeKind::Exact(w, h),
                    (Some(w), None, false) => SizeKind::Width(w),
                    (None, Some(h), false) => SizeKind::Height(h),
                    _ => return Err(bad()),
                }
            }
        }
    };
    Ok(SizeSpec { kind, upscale })
}

fn parse_rotation(version: ApiVersion, s: &str) -> Result<Rotation, ParseError> {
    let expected = if version == ApiVersion::V1 {
        ROTATION_EXPECTED_V1
    } else {
        ROTATION_EXPECTED
    };
    let bad = || invalid(Part::Rotation, s, expected);
    let (mirror, body) = match s.strip_prefix('!') {
        // Mirroring arrived in 2.0.
        Some(rest) if version != ApiVersion::V1 => (true, rest),
        Some(_) => return Err(bad()),
        None => (false, s),
    };
    let degrees = parse_decimal(body, 360.0).map_err(|_| bad())?;
    Ok(Rotation { mirror, degrees })
}

fn parse_quality_format(
    version: ApiVersion,
    s: &str,
    negotiated: Format,
) -> Result<(Quality, Format), ParseError> {
    let quality_expected = if version == ApiVersion::V1 {
        QUALITY_EXPECTED_V1
    } else {
        QUALITY_EXPECTED_V23
    };
    let (q, f) = match s.rsplit_once('.') {
        Some(pair) => pair,
        // 1.1 §4.5: the format extension is optional; the client then chooses it with `Accept`.
        None if version == ApiVersion::V1 => (s, negotiated.extension()),
        None => {
            return Err(invalid(
                Part::Format,
                s,
                "{quality}.{format}, e.g. default.jpg",
            ))
        }
    };
    let quality =
        Quality::parse(q, version).ok_or_else(|| invalid(Part::Quality, q, quality_expected))?;
    let format =
        Format::from_extension(f).ok_or_else(|| invalid(Part::Format, f, FORMAT_EXPECTED))?;
    if !format.is_rendered() {
        return Err(ParseError::UnsupportedFormat(format));
    }
    Ok((quality, format))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image(path: &str) -> Result<ImageRequest, ParseError> {
        match parse_route(path, Format::Jpg)? {
            Route::Image { request, .. } => Ok(request),
            other => panic!("not an image route: {other:?}"),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            parse_route("3/abc/info.json", Format::Jpg),
            Ok(Route::Info {
                version: ApiVersion::V3,
                identifier: "abc".into()
            })
        );
        assert_eq!(
            parse_route("2/a%2Fb", Format::Jpg),
            Ok(Route::Base {
                version: ApiVersion::V2,
                identifier: "a/b".into()
            })
        );
        assert_eq!(
            parse_route("3/a%2Fb/info.json", Format::Jpg),
            Ok(Route::Info {
                version: ApiVersion::V3,
                identifier: "a/b".into()
            })
        );
        // A proxy that decoded %2F: parsed from the right, still one identifier.
        match parse_route("3/a/b/full/max/0/default.jpg", Format::Jpg) {
            Ok(Route::Image { identifier, .. }) => assert_eq!(identifier, "a/b"),
            other => panic!("{other:?}"),
        }
        // Decoded exactly once: %252F stays %2F in the identifier.
        match parse_route("3/a%252Fb/full/max/0/default.jpg", Format::Jpg) {
            Ok(Route::Image { identifier, .. }) => assert_eq!(identifier, "a%2Fb"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn full_grammar_v3() {
        let r = image("3/i/pct:10,20.5,30,40/^!100,200/!22.5/gray.png").expect("valid");
        assert_eq!(
            r.region,
            RegionSpec::Percent {
                x: 10.0,
                y: 20.5,
                w: 30.0,
                h: 40.0
            }
        );
        assert_eq!(
            r.size,
            SizeSpec {
                kind: SizeKind::Confined(100, 200),
                upscale: true
            }
        );
        assert_eq!(
            r.rotation,
            Rotation {
                mirror: true,
                degrees: 22.5
            }
        );
        assert_eq!((r.quality, r.format), (Quality::Gray, Format::Png));
        assert_eq!(
            image("3/i/square/%5Emax/0/default.jpg")
                .expect("valid")
                .size
                .kind,
            SizeKind::Max
        );
        assert_eq!(
            image("3/i/full/,120/0/default.jpg")
                .expect("valid")
                .size
                .kind,
            SizeKind::Height(120)
        );
        assert_eq!(
            image("3/i/full/^pct:120/0/default.jpg")
                .expect("valid")
                .size
                .kind,
            SizeKind::Percent(120.0)
        );
    }

    #[test]
    fn version_specific_spellings() {
        assert!(
            image("3/i/full/full/0/default.jpg").is_err(),
            "full size was removed in 3.0"
        );
        assert!(image("2/i/full/full/0/default.jpg").is_ok());
        assert!(
            image("2/i/full/^max/0/default.jpg").is_err(),
            "^ is 3.0 only"
        );
        assert!(image("1/i/full/full/0/native.jpg").is_ok());
        assert!(image("1/i/full/full/0/grey.png").is_ok());
        assert!(image("1/i/full/full/0/default.jpg").is_err());
        assert!(image("2/i/full/full/0/native.jpg").is_err());
        assert!(image("1/i/square/full/0/native.jpg").is_err());
        assert!(image("1/i/full/full/!0/native.jpg").is_err());
        assert_eq!(
            image("1/i/full/full/0/native")
                .expect("1.1 format is optional")
                .format,
            Format::Jpg
        );
    }

    #[test]
    fn rejections_name_the_segment() {
        let cases = [
            ("3/i/full/max/0/default.jpeg", Part::Format),
            ("3/i/full/max/0/grey.jpg", Part::Quality),
            ("3/i/full/,^240/0/default.jpg", Part::Size),
            ("3/i/0,0,0,10/max/0/default.jpg", Part::Region),
            ("3/i/pct:1e308,0,10,10/max/0/default.jpg", Part::Region),
            ("3/i/full/max/361/default.jpg", Part::Rotation),
            ("3/i/full/max/-90/default.jpg", Part::Rotation),
            ("3/i/full/0,/0/default.jpg", Part::Size),
            ("3/i/full/!100,/0/default.jpg", Part::Size),
            ("3/i/full/max/0/default", Part::Format),
            ("4/i/info.json", Part::Version),
            ("3/i%zz/info.json", Part::Identifier),
            ("3/%00/info.json", Part::Identifier),
        ];
        for (path, part) in cases {
            match parse_route(path, Format::Jpg) {
                Err(ParseError::Invalid { part: p, .. }) => assert_eq!(p, part, "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
        assert_eq!(
            parse_route("3/i/full/max/0/default.pdf", Format::Jpg),
            Err(ParseError::UnsupportedFormat(Format::Pdf))
        );
    }

    proptest! {
        #[test]
        fn identifier_encoding_round_trips(id in "\\PC{1,40}") {
            let enc = encode_identifier(&id);
            prop_assert!(!enc.contains('/'));
            prop_assert_eq!(decode_segment(&enc, Part::Identifier).ok(), Some(id));
        }

        #[test]
        fn never_panics_on_any_string(s in ".{0,200}") {
            let _ = parse_route(&s, Format::Jpg);
        }

        #[test]
        fn never_panics_on_plausible_paths(
            v in "[0-4]",
            region in "(full|square|pct:)?[0-9.,]{0,20}",
            size in "\\^?!?(max|full|pct:)?[0-9.,]{0,12}",
            rot in "!?[0-9.]{0,8}",
            q in "(default|color|gray|grey|native|bitonal|x)",
            f in "(jpg|png|gif|tif|webp|jp2|pdf|jpeg)"
        ) {
            let _ = parse_route(&format!("{v}/id/{region}/{size}/{rot}/{q}.{f}"), Format::Jpg);
        }
    }
}
