//! The URL parser and the canonicaliser on arbitrary input: never panic; a canonical form parses,
//! resolves to itself (idempotent) and to the same key material; sizes stay >= 1 px and within limits.
#![no_main]

use iiifd::iiif::canonical::{CanonicalRequest, ImageSize};
use iiifd::iiif::parse::{parse_image_params, parse_route, Route};
use iiifd::iiif::{Format, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let size = ImageSize {
        width: u32::from(u16::from_le_bytes([data[0], data[1]])) + 1,
        height: u32::from(u16::from_le_bytes([data[2], data[3]])) + 1,
    };
    let Ok(path) = std::str::from_utf8(&data[4..]) else { return };
    let limits = Limits::default();
    let Ok(Route::Image { request, .. }) = parse_route(path, Format::Jpg) else { return };
    let Ok(c) = CanonicalRequest::resolve(&request, size, &limits) else { return };
    assert!(c.width() >= 1 && c.height() >= 1 && limits.allows(c.width(), c.height()));
    let r = c.region();
    assert!(r.w >= 1 && r.h >= 1 && r.x + r.w <= size.width && r.y + r.h <= size.height);
    let canonical = c.to_path();
    let p: Vec<&str> = canonical.split('/').collect();
    assert_eq!(p.len(), 4, "{canonical}");
    let again = parse_image_params(request.version, p[0], p[1], p[2], p[3], Format::Jpg)
        .unwrap_or_else(|e| panic!("canonical form {canonical} does not parse: {e}"));
    let c2 = CanonicalRequest::resolve(&again, size, &limits)
        .unwrap_or_else(|e| panic!("canonical form {canonical} does not resolve: {e}"));
    assert_eq!(c2.to_path(), canonical);
    assert_eq!(c2.key_material(), c.key_material());
});
