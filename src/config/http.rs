//! `[http]`, `[info]`, `[viewer]`, `[compat]`, `[admin]` and `[log]`: what the HTTP edge answers,
//! advertises and logs.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `Cache-Control: max-age` of images and info.json, in seconds. Env: `IIIFD_HTTP__MAX_AGE`.
    pub max_age: u64,
    /// Clients must send their request headers within this many milliseconds (slowloris).
    /// Env: `IIIFD_HTTP__HEADER_TIMEOUT_MS`.
    pub header_timeout_ms: u64,
    /// Connections served at once; further ones wait in the kernel's accept queue.
    /// Env: `IIIFD_HTTP__MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// On SIGTERM or SIGINT, in-flight requests get this many seconds to finish; requests still
    /// waiting then are answered 503 with `Retry-After`. Keep it below systemd's `TimeoutStopSec`.
    /// Env: `IIIFD_HTTP__SHUTDOWN_GRACE_SECS`.
    pub shutdown_grace_secs: u64,
}

/// `[info]`: what info.json says beyond what the server computes (3.0 §5.6-5.7, 2.1 §5.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InfoConfig {
    /// A license or rights statement URI for every image (3.0 `rights`, 2.1 `license`); empty: none.
    /// Env: `IIIFD_INFO__RIGHTS`.
    pub rights: String,
    /// 3.0 `preferredFormats`, formats this server renders, most preferred first.
    /// Env: `IIIFD_INFO__PREFERRED_FORMATS` (e.g. `["webp","jpg"]`).
    pub preferred_formats: Vec<String>,
    /// Read `{identifier}.json` beside each source (directory source only): a JSON object of extra
    /// properties for that image (`rights`, `preferredFormats`, `partOf`, `seeAlso`, `service`,
    /// and 2.1's `attribution` and `logo`), merged over the ones above. Env: `IIIFD_INFO__SIDECARS`.
    pub sidecars: bool,
}

impl Default for InfoConfig {
    fn default() -> Self {
        InfoConfig {
            rights: String::new(),
            preferred_formats: vec!["jpg".into()],
            sidecars: false,
        }
    }
}

impl InfoConfig {
    /// The configured extras, validated as the spec wants them.
    pub(crate) fn extras(&self) -> Result<crate::iiif::info::Extras, ConfigError> {
        let mut map = serde_json::Map::new();
        if !self.rights.is_empty() {
            map.insert("rights".into(), self.rights.clone().into());
        }
        if !self.preferred_formats.is_empty() {
            map.insert(
                "preferredFormats".into(),
                self.preferred_formats.clone().into(),
            );
        }
        crate::iiif::info::extra_properties(&map).map_err(|e| {
            let key = if e.0.contains("preferredFormats") {
                "info.preferred_formats"
            } else {
                "info.rights"
            };
            ConfigError(format!(
                "key `{key}`: {e} (rights: an http(s) URI; preferred_formats: formats this server renders)"
            ))
        })
    }
}

/// `[viewer]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewerConfig {
    /// Serve `/viewer/{identifier}`. Env: `IIIFD_VIEWER__ENABLED`.
    pub enabled: bool,
    /// URL of the OpenSeadragon script the page loads. Env: `IIIFD_VIEWER__SCRIPT_URL`.
    pub script_url: String,
}

impl Default for ViewerConfig {
    fn default() -> Self {
        ViewerConfig {
            enabled: true,
            script_url: "https://cdn.jsdelivr.net/npm/openseadragon@6.1.1/build/openseadragon/openseadragon.min.js".into(),
        }
    }
}

/// `[compat]`: routes of the servers iiifd replaces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompatConfig {
    /// Serve Flask-IIIF's routes (`{flask_iiif_prefix}/v1/...`, `/v2/...`). Env: `IIIFD_COMPAT__FLASK_IIIF`.
    pub flask_iiif: bool,
    /// Flask-IIIF's URL prefix. Env: `IIIFD_COMPAT__FLASK_IIIF_PREFIX`.
    pub flask_iiif_prefix: String,
}

impl Default for CompatConfig {
    fn default() -> Self {
        CompatConfig {
            flask_iiif: false,
            flask_iiif_prefix: "/api/multimedia/image".into(),
        }
    }
}

/// `[admin]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener; keep it on loopback. Env: `IIIFD_ADMIN__LISTEN`.
    pub listen: SocketAddr,
    /// When set, admin requests need `Authorization: Bearer <token>`. Env: `IIIFD_ADMIN__TOKEN`.
    pub token: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            token: String::new(),
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`. Env: `IIIFD_LOG__FORMAT`.
    pub format: String,
    /// A tracing filter such as `info` or `iiifd=debug`. Env: `IIIFD_LOG__LEVEL`.
    pub level: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_age: 2_592_000,
            header_timeout_ms: 10_000,
            max_connections: 10_000,
            shutdown_grace_secs: 30,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
        }
    }
}
