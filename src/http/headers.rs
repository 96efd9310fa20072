//! Pure header logic: conditional requests (RFC 9110 §13), content negotiation, and the public base URL
//! derived from configuration or `X-Forwarded-*` / `Host`. No hyper types, so all of it is unit-tested.

use crate::iiif::{ApiVersion, Format};
use crate::memo::ORIGIN;
use http::HeaderMap;
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
/// iiifd renders cheaply ([`Format::NEGOTIABLE`]), else jpg.
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
        let format = Format::NEGOTIABLE
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

/// The `q` an `Accept` header gives `media` (RFC 9110 §12.5.1): its own entry, else `type/*`, else
/// `*/*`, the most specific range deciding; `None` when nothing in the header matches it.
fn accept_q(accept: &str, media: &str) -> Option<f32> {
    let kind = media.split('/').next().unwrap_or("");
    let mut best: Option<(u8, f32)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let range = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .next()
            .and_then(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0)
            .clamp(0.0, 1.0);
        let specificity = if range == media {
            3
        } else if range.strip_suffix("/*") == Some(kind) {
            2
        } else if range == "*/*" {
            1
        } else {
            continue;
        };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, q));
        }
    }
    best.map(|(_, q)| q)
}

/// The `Content-Type` of info.json. 3.0 §6: `application/ld+json` with the 3.0 context as `profile`,
/// unless the client prefers `application/json` (a higher `q`, or JSON-LD refused with `q=0`). 2.1 §6:
/// `application/json` unless the client prefers `application/ld+json`. Always sent with `Vary: Accept`.
pub(crate) fn info_content_type(version: ApiVersion, accept: Option<&str>) -> String {
    let ld = format!("application/ld+json;profile=\"{}\"", version.context_uri());
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return match version {
            ApiVersion::V3 => ld,
            _ => "application/json".into(),
        };
    };
    let q_ld = accept_q(accept, "application/ld+json").unwrap_or(0.0);
    let q_json = accept_q(accept, "application/json").unwrap_or(0.0);
    let prefers_ld = match version {
        // Ties go to each version's default.
        ApiVersion::V3 => q_ld >= q_json && q_ld > 0.0,
        _ => q_ld > q_json,
    };
    match (version, prefers_ld) {
        (ApiVersion::V3, true) => ld,
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
    /// `X-Forwarded-Port`.
    pub port: Option<&'a str>,
    /// RFC 7239 `Forwarded`.
    pub forwarded: Option<&'a str>,
    /// `Host`.
    pub host_header: Option<&'a str>,
}

impl<'a> Forwarded<'a> {
    /// The forwarding headers of a request: those of [`ORIGIN`] (one list, so the hit memo
    /// compares exactly the headers the public URL is made of).
    pub(crate) fn of(headers: &'a HeaderMap) -> Forwarded<'a> {
        let [host_header, forwarded, proto, host, prefix, port] = ORIGIN
            .each_ref()
            .map(|name| headers.get(name).and_then(|v| v.to_str().ok()));
        Forwarded {
            proto,
            host,
            prefix,
            port,
            forwarded,
            host_header,
        }
    }
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

/// The `proto` and `host` of the first (client-side) element of an RFC 7239 `Forwarded` header, with
/// quotes removed.
fn rfc7239(forwarded: &str) -> (Option<&str>, Option<&str>) {
    let first = forwarded.split(',').next().unwrap_or("");
    let (mut proto, mut host) = (None, None);
    for pair in first.split(';') {
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match name.trim().to_ascii_lowercase().as_str() {
            "proto" => proto = Some(value),
            "host" => host = Some(value),
            _ => {}
        }
    }
    (proto, host)
}

/// Whether `host` already names a port (`example.org:8080`, `[::1]:8080`).
fn has_port(host: &str) -> bool {
    match host.rfind(']') {
        Some(end) => host[end..].contains(':'),
        None => host.contains(':'),
    }
}

/// The public URL of the IIIF prefix, e.g. `https://images.example.org/iiif`.
///
/// `public_base_url` from the config wins. Otherwise `{proto}://{host}[:{port}]{X-Forwarded-Prefix}{prefix}`:
/// proto and host from RFC 7239 `Forwarded` (its first element, the one the client-facing proxy wrote),
/// else `X-Forwarded-Proto` / `X-Forwarded-Host`, else `http` and `Host`; `X-Forwarded-Port` is added when
/// the host names no port and the port is not the scheme's default. The forwarded prefix is where the
/// proxy mounted iiifd's root, prepended to iiifd's own prefix. Header values that are not plain host
/// names, ports or paths are ignored, never echoed, so a hostile header cannot inject text into info.json
/// or Link headers.
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
    let (std_proto, std_host) = fwd.forwarded.map_or((None, None), rfc7239);
    let proto = match std_proto.or(first(fwd.proto)) {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let forwarded_host = [std_host, first(fwd.host)]
        .into_iter()
        .flatten()
        .find(|h| valid_host(h));
    let host = forwarded_host
        .or(fwd.host_header.map(str::trim).filter(|h| valid_host(h)))
        .unwrap_or(fallback_host);
    let default_port = if proto == "https" { 443 } else { 80 };
    let port = first(fwd.port)
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p != default_port && !has_port(host));
    let fwd_prefix = first(fwd.prefix)
        .filter(|p| valid_prefix(p))
        .map_or("", |p| p.trim_end_matches('/'));
    match port {
        Some(port) => format!("{proto}://{host}:{port}{fwd_prefix}{prefix}"),
        None => format!("{proto}://{host}{fwd_prefix}{prefix}"),
    }
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
        assert_eq!(
            negotiate_format(Some("image/png;q=0, image/gif;q=0.1")),
            Format::Gif
        );
    }

    #[test]
    fn forwarding_headers_are_read_by_name() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("host", "h.example"),
            ("forwarded", "proto=https"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "x.example"),
            ("x-forwarded-prefix", "/images"),
            ("x-forwarded-port", "8443"),
        ] {
            h.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        let f = Forwarded::of(&h);
        assert_eq!(f.host_header, Some("h.example"));
        assert_eq!(f.forwarded, Some("proto=https"));
        assert_eq!(f.proto, Some("https"));
        assert_eq!(f.host, Some("x.example"));
        assert_eq!(f.prefix, Some("/images"));
        assert_eq!(f.port, Some("8443"));
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
            ..Forwarded::default()
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
            port: Some("80\r\nX: y"),
            forwarded: Some("host=\"a b\";proto=https"),
        };
        assert_eq!(
            public_base("", "/iiif", evil, "127.0.0.1:1"),
            "https://127.0.0.1:1/iiif"
        );
    }

    /// Spec point: `X-Forwarded-Port` and RFC 7239 `Forwarded` reach `id`, `Location` and `Link`.
    #[test]
    fn forwarded_port_and_rfc7239() {
        let f = Forwarded {
            proto: Some("https"),
            host: Some("images.example.org"),
            port: Some("8443"),
            host_header: Some("127.0.0.1:8080"),
            ..Forwarded::default()
        };
        assert_eq!(
            public_base("", "/iiif", f, "x"),
            "https://images.example.org:8443/iiif"
        );
        let default_port = Forwarded {
            port: Some("443"),
            ..f
        };
        assert_eq!(
            public_base("", "/iiif", default_port, "x"),
            "https://images.example.org/iiif"
        );
        let host_has_port = Forwarded {
            host: Some("images.example.org:9000"),
            ..f
        };
        assert_eq!(
            public_base("", "/iiif", host_has_port, "x"),
            "https://images.example.org:9000/iiif"
        );
        let std = Forwarded {
            forwarded: Some("for=192.0.2.60;proto=https;host=\"iiif.example.org\", for=10.0.0.1"),
            host_header: Some("127.0.0.1:8080"),
            ..Forwarded::default()
        };
        assert_eq!(
            public_base("", "/iiif", std, "x"),
            "https://iiif.example.org/iiif"
        );
        let ipv6 = Forwarded {
            forwarded: Some("host=\"[2001:db8::1]\""),
            port: Some("8080"),
            ..Forwarded::default()
        };
        assert_eq!(
            public_base("", "/iiif", ipv6, "x"),
            "http://[2001:db8::1]:8080/iiif"
        );
    }

    /// Spec point: 3.0 info.json is JSON-LD with its profile unless the client prefers plain JSON, and
    /// `q` values count.
    #[test]
    fn info_media_type_follows_accept_q() {
        let ld3 = format!(
            "application/ld+json;profile=\"{}\"",
            ApiVersion::V3.context_uri()
        );
        assert_eq!(info_content_type(ApiVersion::V3, None), ld3);
        assert_eq!(info_content_type(ApiVersion::V3, Some("*/*")), ld3);
        assert_eq!(
            info_content_type(ApiVersion::V3, Some("application/json")),
            "application/json"
        );
        assert_eq!(
            info_content_type(
                ApiVersion::V3,
                Some("application/ld+json;q=0, application/json")
            ),
            "application/json"
        );
        assert_eq!(
            info_content_type(
                ApiVersion::V3,
                Some("application/json;q=0.5, application/ld+json")
            ),
            ld3
        );
        assert_eq!(
            info_content_type(ApiVersion::V2, Some("application/ld+json")),
            "application/ld+json"
        );
        assert_eq!(
            info_content_type(
                ApiVersion::V2,
                Some("application/ld+json;q=0.2, application/json;q=0.9")
            ),
            "application/json"
        );
        assert_eq!(
            info_content_type(ApiVersion::V2, Some("*/*")),
            "application/json"
        );
    }
}
