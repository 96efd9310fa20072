//! Pure header logic: conditional requests (RFC 9110 §13), content negotiation, and the public base URL
//! derived from configuration or `X-Forwarded-*` / `Host`. No hyper types, so all of it is unit-tested.

use crate::iiif::{ApiVersion, Format};
use std::time::SystemTime;

/// Whether a GET/HEAD with these validators should be answered 304 (RFC 9110 §13.2.2): `If-None-Match`
/// decides when present (weak comparison); otherwise `If-Modified-Since`, which is ignored when it does
/// not parse as an HTTP date.
pub(crate) fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    etag: Option<&str>,
    last_modified: SystemTime,
) -> bool {
    if let Some(inm) = if_none_match {
        let Some(etag) = etag else {
            return inm.trim() == "*";
        };
        let ours = etag.trim_start_matches("W/");
        return inm
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == ours);
    }
    match if_modified_since.map(httpdate::parse_http_date) {
        Some(Ok(since)) => {
            // HTTP dates have one-second resolution; compare at that resolution.
            let secs = |t: SystemTime| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            };
            secs(last_modified) <= secs(since)
        }
        _ => false,
    }
}

/// The format a 1.1 request without an extension gets: the highest-`q` image type in `Accept` that
/// iiifd renders, else jpg.
pub(crate) fn negotiate_format(accept: Option<&str>) -> Format {
    let mut best: Option<(f32, Format)> = None;
    for item in accept.unwrap_or("").split(',') {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .next()
            .and_then(|v| v.parse::<f32>().ok())
            .unwrap_or(1.0);
        let format = Format::RENDERED
            .into_iter()
            .find(|f| f.media_type() == media);
        if let Some(f) = format {
            if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, f));
            }
        }
    }
    best.map_or(Format::Jpg, |(_, f)| f)
}

/// The `Content-Type` of info.json (3.0 §6, 2.1 §6): JSON-LD only when the client asks for it.
pub(crate) fn info_content_type(version: ApiVersion, accept: Option<&str>) -> String {
    let wants_ld = accept.is_some_and(|a| a.to_ascii_lowercase().contains("application/ld+json"));
    match (version, wants_ld) {
        (ApiVersion::V3, true) => {
            format!("application/ld+json;profile=\"{}\"", version.context_uri())
        }
        (ApiVersion::V2, true) => "application/ld+json".into(),
        _ => "application/json".into(),
    }
}

/// Forwarding headers, as received.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Forwarded<'a> {
    /// `X-Forwarded-Proto`.
    pub proto: Option<&'a str>,
    /// `X-Forwarded-Host`.
    pub host: Option<&'a str>,
    /// `X-Forwarded-Prefix`.
    pub prefix: Option<&'a str>,
    /// `Host`.
    pub host_header: Option<&'a str>,
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

fn valid_prefix(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= 255
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~%".contains(&b))
}

/// The public URL of the IIIF prefix, e.g. `https://images.example.org/iiif`.
///
/// `public_base_url` from the config wins. Otherwise `{X-Forwarded-Proto or http}://{X-Forwarded-Host or
/// Host or fallback}{X-Forwarded-Prefix}{prefix}`: the forwarded prefix is where the proxy mounted
/// iiifd's root, prepended to iiifd's own prefix. Header values that are not plain host names or paths
/// are ignored, never echoed, so a hostile header cannot inject text into info.json or Link headers.
pub(crate) fn public_base(
    configured: &str,
    prefix: &str,
    fwd: Forwarded<'_>,
    fallback_host: &str,
) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    fn first(v: Option<&str>) -> Option<&str> {
        v.and_then(|s| s.split(',').next()).map(str::trim)
    }
    let proto = match first(fwd.proto) {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let host = [first(fwd.host), fwd.host_header.map(str::trim)]
        .into_iter()
        .flatten()
        .find(|h| valid_host(h))
        .unwrap_or(fallback_host);
    let fwd_prefix = first(fwd.prefix)
        .filter(|p| valid_prefix(p))
        .map_or("", |p| p.trim_end_matches('/'));
    format!("{proto}://{host}{fwd_prefix}{prefix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn conditional_requests() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(t);
        assert!(not_modified(Some("\"abc\""), None, Some("\"abc\""), t));
        assert!(not_modified(
            Some("\"x\", W/\"abc\""),
            None,
            Some("\"abc\""),
            t
        ));
        assert!(
            !not_modified(Some("\"x\""), Some(&date), Some("\"abc\""), t),
            "If-None-Match decides"
        );
        assert!(not_modified(None, Some(&date), Some("\"abc\""), t));
        assert!(!not_modified(
            None,
            Some(&date),
            None,
            t + Duration::from_secs(5)
        ));
        assert!(
            !not_modified(None, Some("yesterday-ish"), None, t),
            "bad dates are ignored"
        );
        assert!(not_modified(Some("*"), None, Some("\"abc\""), t));
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate_format(Some("image/png;q=1.0")), Format::Png);
        assert_eq!(
            negotiate_format(Some("image/webp;q=0.5, image/gif")),
            Format::Gif
        );
        assert_eq!(negotiate_format(Some("*/*")), Format::Jpg);
        assert_eq!(negotiate_format(None), Format::Jpg);
        assert!(
            info_content_type(ApiVersion::V3, Some("application/ld+json"))
                .starts_with("application/ld+json;profile=")
        );
        assert_eq!(info_content_type(ApiVersion::V2, None), "application/json");
    }

    #[test]
    fn public_base_urls() {
        let f = Forwarded {
            host_header: Some("example.org:8080"),
            ..Forwarded::default()
        };
        assert_eq!(
            public_base("", "/iiif", f, "fallback"),
            "http://example.org:8080/iiif"
        );
        let f = Forwarded {
            proto: Some("https"),
            host: Some("images.example.org, proxy"),
            prefix: Some("/museum/"),
            host_header: Some("internal"),
        };
        assert_eq!(
            public_base("", "/iiif", f, "x"),
            "https://images.example.org/museum/iiif"
        );
        assert_eq!(
            public_base("https://cdn.org/iiif", "/iiif", f, "x"),
            "https://cdn.org/iiif"
        );
        let evil = Forwarded {
            host: Some("a\"><script>"),
            prefix: Some("/x\r\nSet-Cookie: 1"),
            host_header: None,
            proto: None,
        };
        assert_eq!(
            public_base("", "/iiif", evil, "127.0.0.1:1"),
            "http://127.0.0.1:1/iiif"
        );
    }
}
