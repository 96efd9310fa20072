//! `[cdn]`: what a CDN in front needs: a tag per image on every response (so one purge by tag
//! clears every derivative of one image), the purge call, and the stale-serving directives.

use super::ConfigError;
use serde::{Deserialize, Serialize};

/// `[cdn]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdnConfig {
    /// The response header that carries each image's cache tag, e.g. `Surrogate-Key` (Fastly),
    /// `Cache-Tag` (Cloudflare), `Edge-Cache-Tag` (Akamai); empty (the default): no tag. Every
    /// image, info.json and redirect answer for an identifier carries `iiif-<hash>` (16 hex digits
    /// of the identifier's blake3, always a valid tag) and, where it is a valid tag as it stands
    /// (visible ASCII without spaces or commas, at most 128 bytes), the identifier itself.
    /// Env: `IIIFD_CDN__TAG_HEADER`.
    pub tag_header: String,
    /// Seconds a CDN may keep serving a stored answer after it expired while it fetches a fresh
    /// one (`stale-while-revalidate`, RFC 5861), on public image and info.json answers; 0: not
    /// sent. Env: `IIIFD_CDN__STALE_WHILE_REVALIDATE_SECS`.
    pub stale_while_revalidate_secs: u64,
    /// Seconds a CDN may keep serving a stored answer when iiifd errs or cannot be reached
    /// (`stale-if-error`, RFC 5861); 0: not sent. Env: `IIIFD_CDN__STALE_IF_ERROR_SECS`.
    pub stale_if_error_secs: u64,
    /// Called when an image's derivatives are purged (the admin purge) or its source is seen to
    /// have changed; empty (the default): never. `{tag}` is the image's tag, `{identifier}` the
    /// identifier URL-encoded. Env: `IIIFD_CDN__PURGE_URL`.
    pub purge_url: String,
    /// The purge call's method. Env: `IIIFD_CDN__PURGE_METHOD`.
    pub purge_method: String,
    /// Its headers, `Name: value`; `${NAME}` in a value is the environment variable's value, read
    /// at start (keep API tokens out of the file). Env: `IIIFD_CDN__PURGE_HEADERS` (a TOML array).
    pub purge_headers: Vec<String>,
    /// Its body (`{tag}` and `{identifier}` filled in); empty: none. Env: `IIIFD_CDN__PURGE_BODY`.
    pub purge_body: String,
}

impl Default for CdnConfig {
    fn default() -> Self {
        CdnConfig {
            tag_header: String::new(),
            stale_while_revalidate_secs: 0,
            stale_if_error_secs: 0,
            purge_url: String::new(),
            purge_method: "POST".into(),
            purge_headers: Vec::new(),
            purge_body: String::new(),
        }
    }
}

impl CdnConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let name = self.tag_header.as_str();
        if !name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError(format!(
                "key `cdn.tag_header`: {name:?} is not a header name"
            )));
        }
        Ok(())
    }
}
