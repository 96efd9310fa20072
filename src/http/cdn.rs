//! What a CDN in front reads from iiifd's answers (`[cdn]`): a cache tag per image, so one purge
//! by tag clears every derivative of it, and how long it may serve an answer stale.

use crate::config::CdnConfig;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response};

/// Longest identifier sent as a tag of its own (Fastly and Cloudflare take 1,024 bytes a key,
/// Akamai 128).
const MAX_RAW_TAG: usize = 128;

/// The tag header's value for `identifier`: its hash tag and, when the identifier is a valid tag
/// as it stands, the identifier too, separated as `header` lists tags (Fastly's
/// `Surrogate-Key` by spaces, the others by commas).
pub(crate) fn tag_value(header: &str, identifier: &str) -> String {
    let hashed = crate::key::cdn_tag(identifier);
    let raw_ok = identifier.len() <= MAX_RAW_TAG
        && identifier
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b',' && b != b'"');
    if !raw_ok {
        return hashed;
    }
    let sep = if header.eq_ignore_ascii_case("surrogate-key") {
        " "
    } else {
        ","
    };
    format!("{hashed}{sep}{identifier}")
}

/// The `Cache-Control` directives that let a CDN serve a public answer stale, with a leading
/// comma; empty when both are off.
pub(crate) fn stale_directives(cfg: &CdnConfig) -> String {
    let mut out = String::new();
    if cfg.stale_while_revalidate_secs > 0 {
        out.push_str(&format!(
            ", stale-while-revalidate={}",
            cfg.stale_while_revalidate_secs
        ));
    }
    if cfg.stale_if_error_secs > 0 {
        out.push_str(&format!(", stale-if-error={}", cfg.stale_if_error_secs));
    }
    out
}

/// Tag `resp` as an answer for `identifier` (when `cdn.tag_header` is set).
pub(crate) fn tag(resp: &mut Response<Bytes>, cfg: &CdnConfig, identifier: &str) {
    if cfg.tag_header.is_empty() {
        return;
    }
    // Both were checked when the configuration was loaded, and the value is visible ASCII.
    let name = HeaderName::from_bytes(cfg.tag_header.as_bytes());
    let value = HeaderValue::from_str(&tag_value(&cfg.tag_header, identifier));
    if let (Ok(name), Ok(value)) = (name, value) {
        resp.headers_mut().insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_short_hashes_plus_the_identifier_where_the_header_allows() {
        let t = tag_value("Surrogate-Key", "ms-123.tif");
        let (hash, raw) = t.split_once(' ').expect("two keys");
        assert_eq!(raw, "ms-123.tif");
        assert!(hash.starts_with("iiif-") && hash.len() == 21, "{hash}");
        assert!(hash[5..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            tag_value("Cache-Tag", "ms-123.tif"),
            format!("{hash},ms-123.tif")
        );
        // The same identifier, the same tag; another, another.
        assert_eq!(
            tag_value("Cache-Tag", "ms-123.tif"),
            tag_value("cache-tag", "ms-123.tif")
        );
        assert_ne!(crate::key::cdn_tag("a"), crate::key::cdn_tag("b"));
        // Spaces, commas, quotes, non-ASCII and long identifiers travel as the hash alone.
        for id in [
            "with space",
            "a,b",
            "q\"uote",
            "caf\u{e9}",
            &"x".repeat(129),
        ] {
            assert_eq!(tag_value("Cache-Tag", id), crate::key::cdn_tag(id), "{id}");
        }
    }

    #[test]
    fn stale_directives_only_when_configured() {
        let mut cfg = CdnConfig::default();
        assert_eq!(stale_directives(&cfg), "");
        cfg.stale_while_revalidate_secs = 60;
        cfg.stale_if_error_secs = 86400;
        assert_eq!(
            stale_directives(&cfg),
            ", stale-while-revalidate=60, stale-if-error=86400"
        );
    }
}
