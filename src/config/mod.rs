//! Configuration: one serde tree, layered by figment as defaults -> TOML file -> `IIIFD_*` environment
//! variables (`__` separates nesting levels, e.g. `IIIFD_LIMITS__MAX_AREA`) -> command-line flags.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default), and every value is
//! validated once here, so the rest of iiifd can trust it. `examples/config.toml` documents every key.

mod admission;

pub(crate) use admission::mask;
pub use admission::{AdmissionConfig, ClientClass, Network};

use crate::iiif::Limits;
use figment::providers::{Format as _, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the public IIIF listener. Env: `IIIFD_LISTEN`.
    pub listen: SocketAddr,
    /// Directory of source images. Env: `IIIFD_IMAGES`.
    pub images: PathBuf,
    /// URL path prefix of the IIIF routes, e.g. `/iiif`. Env: `IIIFD_PREFIX`.
    pub prefix: String,
    /// Public URL of the prefix (e.g. `https://images.example.org/iiif`), used for info.json `id` and
    /// Link headers; when empty, derived from `X-Forwarded-*` or `Host`. Env: `IIIFD_PUBLIC_BASE_URL`.
    pub public_base_url: String,
    /// Tile edge advertised in info.json. Env: `IIIFD_TILE_SIZE`.
    pub tile_size: u32,
    /// Output and source limits.
    pub limits: LimitsConfig,
    /// The render pool and encoders.
    pub render: RenderConfig,
    /// HTTP behaviour.
    pub http: HttpConfig,
    /// Where the source images live (`images` is the `fs` backend's directory).
    pub source: SourceConfig,
    /// The derivative store.
    pub store: StoreConfig,
    /// The admin listener (metrics, store maintenance, crawl).
    pub admin: AdminConfig,
    /// Compatibility routes.
    pub compat: CompatConfig,
    /// Pre-warming.
    pub crawl: CrawlConfig,
    /// The built-in viewer page.
    pub viewer: ViewerConfig,
    /// `[info]`: properties the institution adds to info.json.
    pub info: InfoConfig,
    /// `[access]`: who may see what (IIIF Authorization Flow 2.0).
    pub access: AccessConfig,
    /// `[admission]`: who renders first when renders must wait (fairness under harvesters).
    pub admission: AdmissionConfig,
    /// Logging.
    pub log: LogConfig,
}

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
    /// once and stored.
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
    /// re-encode of the same region: `auto` re-encodes those, once (the result is stored). Env:
    /// `IIIFD_RENDER__TILE_PASSTHROUGH`.
    pub tile_passthrough: TilePassthrough,
    /// Sources with an embedded ICC profile: `srgb` converts their pixels to sRGB (what browsers
    /// assume), `preserve` keeps them and embeds the profile in jpg, png, webp and tif outputs. Part
    /// of every derivative key. Env: `IIIFD_RENDER__COLOR`.
    pub color: ColorMode,
    /// Most bytes one decode may allocate. Env: `IIIFD_RENDER__MAX_DECODE_BYTES`.
    pub max_decode_bytes: u64,
    /// The peak resident memory to stay under (0: no target). When set, each decode's budget is
    /// lowered, if need be, so that [`MemoryBound`] fits in it; a target too small for that is a
    /// configuration error. Env: `IIIFD_RENDER__MAX_MEMORY_BYTES`.
    pub max_memory_bytes: u64,
    /// Decoded source pixels kept in memory between renders (0 disables).
    /// Env: `IIIFD_RENDER__DECODED_CACHE_BYTES`.
    pub decoded_cache_bytes: u64,
    /// Flat sources (JPEG, PNG, ...) with at least this many pixels get a tiled copy in the store the
    /// first time a viewer zooms into them (0 disables). Env: `IIIFD_RENDER__TILED_COPY_MIN_PIXELS`.
    pub tiled_copy_min_pixels: u64,
}

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

/// A configured secret: never shown in debug output (or in a log that prints the configuration).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

/// What a rule gives the identifiers it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessPolicy {
    /// Everyone sees everything.
    Open,
    /// Only visitors signed in through the access service.
    Restricted,
    /// Visitors not signed in see the image at most `max_width` wide and `max_area` pixels.
    Degraded,
}

/// `[[access.rules]]`: one rule; the first whose `identifiers` glob matches decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// A glob over the whole identifier: `*` any run (also `/`), `?` one character, `\` escapes.
    pub identifiers: String,
    /// `open`, `restricted` or `degraded`.
    pub policy: AccessPolicy,
    /// `degraded`: the widest view of the whole image (0: no bound by width).
    #[serde(default)]
    pub max_width: u32,
    /// `degraded`: the largest area of the whole image in pixels (0: no bound by area).
    #[serde(default)]
    pub max_area: u64,
}

/// `[access]`: IIIF Authorization Flow 2.0. Decisions are made before the store is asked; the
/// sign-in itself happens at the fronting proxy (nginx `auth_request`, an SSO location), which
/// names the visitor in `user_header` on the access service's location; iiifd keeps no passwords.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Rules, first match wins; an identifier no rule matches is open.
    pub rules: Vec<AccessRule>,
    /// The key that signs cookies and tokens, at least 32 characters; required when a rule is not
    /// `open`. Env: `IIIFD_ACCESS__SECRET`.
    pub secret: Secret,
    /// The access service's profile: `active` (a sign-in page), `kiosk` (no interaction) or
    /// `external` (the visitor already holds the cookie). Env: `IIIFD_ACCESS__PROFILE`.
    pub profile: String,
    /// The header in which the fronting proxy names the signed-in visitor on the access service's
    /// location (`active`). The proxy must set or clear it on every request there.
    /// Env: `IIIFD_ACCESS__USER_HEADER`.
    pub user_header: String,
    /// The access service URL advertised to viewers when it is not iiifd's own
    /// `{public base}/auth/access` (an SSO location that ends there). Env: `IIIFD_ACCESS__ACCESS_URL`.
    pub access_url: String,
    /// The texts a viewer shows (English). Env: `IIIFD_ACCESS__LABEL`, `__HEADING`, `__NOTE`,
    /// `__CONFIRM_LABEL`, `__DENIED_HEADING`, `__DENIED_NOTE`.
    pub label: String,
    /// See `label`.
    pub heading: String,
    /// See `label`.
    pub note: String,
    /// See `label`.
    pub confirm_label: String,
    /// See `label`: what the probe says to a visitor who may not see the image.
    pub denied_heading: String,
    /// See `label`.
    pub denied_note: String,
    /// Lifetime of the access cookie in seconds. Env: `IIIFD_ACCESS__SESSION_SECS`.
    pub session_secs: u64,
    /// Lifetime of an access token in seconds. Env: `IIIFD_ACCESS__TOKEN_SECS`.
    pub token_secs: u64,
    /// Viewer origins that may get tokens (`https://viewer.example.org`); empty: any. A token is
    /// always bound to the origin its cookie was issued for. Env: `IIIFD_ACCESS__ALLOWED_ORIGINS`.
    pub allowed_origins: Vec<String>,
    /// Mark the cookie `Secure` (Auth 2.0 requires HTTPS; off only for local trials over plain HTTP).
    /// Env: `IIIFD_ACCESS__COOKIE_SECURE`.
    pub cookie_secure: bool,
    /// The institution's decision service (`GET {url}?identifier=..&user=..`, see the README),
    /// asked about identifiers whose rule is not `open`; empty: the rules decide.
    /// Env: `IIIFD_ACCESS__DECISION_URL`.
    pub decision_url: String,
    /// Longest wait for a decision; past it the request is answered 503.
    /// Env: `IIIFD_ACCESS__DECISION_TIMEOUT_MS`.
    pub decision_timeout_ms: u64,
    /// How long a decision is kept per identifier and visitor. Env: `IIIFD_ACCESS__DECISION_CACHE_SECS`.
    pub decision_cache_secs: u64,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            rules: Vec::new(),
            secret: Secret::default(),
            profile: "active".into(),
            user_header: "x-remote-user".into(),
            access_url: String::new(),
            label: "Sign in to see this image".into(),
            heading: "This image is restricted".into(),
            note: "Sign in with your institution's account to see it.".into(),
            confirm_label: "Sign in".into(),
            denied_heading: "Restricted image".into(),
            denied_note: "You are not allowed to see this image at full resolution.".into(),
            session_secs: 8 * 3600,
            token_secs: 300,
            allowed_origins: Vec::new(),
            cookie_secure: true,
            decision_url: String::new(),
            decision_timeout_ms: 2_000,
            decision_cache_secs: 60,
        }
    }
}

impl AccessConfig {
    /// Whether any identifier can be other than open.
    pub(crate) fn enabled(&self) -> bool {
        self.rules.iter().any(|r| r.policy != AccessPolicy::Open)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("key `{key}`: {why}")));
        for (i, r) in self.rules.iter().enumerate() {
            if r.identifiers.is_empty() {
                return bad(
                    &format!("access.rules[{i}].identifiers"),
                    "must not be empty".into(),
                );
            }
            if r.policy == AccessPolicy::Degraded && r.max_width == 0 && r.max_area == 0 {
                return bad(
                    &format!("access.rules[{i}]"),
                    "a degraded rule needs max_width or max_area".into(),
                );
            }
        }
        if self.enabled() && self.secret.0.len() < 32 {
            return bad(
                "access.secret",
                "at least 32 characters are needed to sign cookies and tokens when a rule is not open \
                 (e.g. the output of `openssl rand -hex 32`)"
                    .into(),
            );
        }
        if !["active", "kiosk", "external"].contains(&self.profile.as_str()) {
            return bad("access.profile", "must be active, kiosk or external".into());
        }
        if http::HeaderName::from_bytes(self.user_header.as_bytes()).is_err() {
            return bad("access.user_header", "must be a header name".into());
        }
        let url_ok = |u: &str| {
            (u.starts_with("http://") || u.starts_with("https://"))
                && !u
                    .bytes()
                    .any(|b| b.is_ascii_control() || b" \"<>'".contains(&b))
        };
        if !self.access_url.is_empty() && !url_ok(&self.access_url) {
            return bad("access.access_url", "must be an http(s) URL".into());
        }
        if !self.decision_url.is_empty() && !url_ok(&self.decision_url) {
            return bad("access.decision_url", "must be an http(s) URL".into());
        }
        for o in &self.allowed_origins {
            if !url_ok(o) || o.ends_with('/') {
                return bad(
                    "access.allowed_origins",
                    format!("'{o}' is not an origin (scheme://host[:port], no path)"),
                );
            }
        }
        if self.session_secs == 0 || self.token_secs == 0 || self.decision_timeout_ms == 0 {
            return bad(
                "access",
                "session_secs, token_secs and decision_timeout_ms must be positive".into(),
            );
        }
        Ok(())
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

/// `[crawl]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrawlConfig {
    /// Crawl renders at once; 0 = render workers - 1 (at least 1), so live requests keep a worker.
    /// Env: `IIIFD_CRAWL__MAX_WORKERS`.
    pub max_workers: usize,
    /// Warm each source image as it appears or changes: its `sizes` and `watch_thumbnails`, in the
    /// crawl's low-priority lane (file notifications for the image directory, a listing every
    /// `watch_interval_secs` for remote sources). Env: `IIIFD_CRAWL__WATCH`.
    pub watch: bool,
    /// Thumbnail sizes the watch renders, in 3.0 syntax. Env: `IIIFD_CRAWL__WATCH_THUMBNAILS`.
    pub watch_thumbnails: Vec<String>,
    /// API versions whose `sizes` URL shapes the watch renders. Env: `IIIFD_CRAWL__WATCH_VERSIONS`.
    pub watch_versions: Vec<u8>,
    /// Seconds between listings of a remote source. Env: `IIIFD_CRAWL__WATCH_INTERVAL_SECS`.
    pub watch_interval_secs: u64,
}

impl Default for CrawlConfig {
    fn default() -> Self {
        CrawlConfig {
            max_workers: 0,
            watch: false,
            watch_thumbnails: vec!["!256,256".into()],
            watch_versions: vec![3],
            watch_interval_secs: 30,
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

/// `[store]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory of the derivative store. Env: `IIIFD_STORE__PATH`; flag `--store`.
    pub path: PathBuf,
    /// Size budget; least-recently-used objects are evicted beyond it. Env: `IIIFD_STORE__MAX_BYTES`.
    pub max_bytes: u64,
    /// Writes stop while less than this is free on the store's disk. Env: `IIIFD_STORE__MIN_FREE_BYTES`.
    pub min_free_bytes: u64,
    /// Check the blake3 of every object read. Env: `IIIFD_STORE__VERIFY_READS`.
    pub verify_reads: bool,
    /// Where objects keep their blake3: a user extended attribute on each file. `auto` stores
    /// without hashes, with one warning, on a file system that keeps none (reads then check
    /// lengths only); `required` refuses to start there. Env: `IIIFD_STORE__VERIFY`.
    pub verify: StoreVerify,
    /// fsync each derivative (and its directory) before it counts as stored. Off by default: a
    /// derivative is a cache entry that can be rendered again, the rename already makes it atomic
    /// against crashes of the process, and after a power loss a torn file fails the blake3 check on
    /// read (`verify_reads`) and is re-rendered; nginx's proxy_cache makes the same trade. On, a cold
    /// render waits ~1-3 ms more. Env: `IIIFD_STORE__FSYNC`.
    pub fsync: bool,
    /// When set (e.g. `/_iiifd/`), hits answer with `X-Accel-Redirect: {this}ab/<key>.<ext>` and no
    /// body, for nginx to send the file. Env: `IIIFD_STORE__ACCEL_REDIRECT`.
    pub accel_redirect: String,
    /// Bound of the index's own page cache (sled's `cache_capacity`). The index holds a summary per
    /// object directory, probes and crawl jobs, never a record per object. Env:
    /// `IIIFD_STORE__INDEX_CACHE_BYTES`.
    pub index_cache_bytes: u64,
    /// The cluster's shared tier (`[store.shared]`; off while `bucket` is empty).
    pub shared: SharedStoreConfig,
    /// Object files the background recount counts per second, after a crash, a lost index or an
    /// upgrade (nginx's cache loader makes the same bounded walk). 0: no bound. Env:
    /// `IIIFD_STORE__RECONCILE_RATE`.
    pub reconcile_rate: u64,
    /// The memory tier: stored objects read at least twice are kept in memory up to this many
    /// bytes, and hits on them are answered without a disk read or a trip to a blocking thread.
    /// 0 turns it off. Counted in the memory bound. Env: `IIIFD_STORE__MEMORY_BYTES`.
    pub memory_bytes: u64,
    /// Larger objects never enter the memory tier (a tile is 5-60 KB; a full-size image is not
    /// worth holding). Env: `IIIFD_STORE__MEMORY_OBJECT_MAX_BYTES`.
    pub memory_object_max_bytes: u64,
}

/// `store.verify`: whether the store may run without the objects' hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreVerify {
    /// Hashes where the file system keeps user extended attributes, lengths elsewhere.
    #[default]
    Auto,
    /// Refuse to start where objects cannot keep their hash.
    Required,
}

/// `[source]`: the backend that holds the source images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// `fs` (the `images` directory, the default), `s3` (an S3-compatible bucket) or `http` (a URL
    /// template). Env: `IIIFD_SOURCE__KIND`.
    pub kind: String,
    /// Seconds a remote object's version is trusted before a HEAD checks it again: within them a
    /// request costs no backend call for it, and a replaced object is seen after at most this long.
    /// Env: `IIIFD_SOURCE__REVALIDATE_SECS`.
    pub revalidate_secs: u64,
    /// Deadline of one remote read (HEAD, ranged GET, whole download), retries included; past it
    /// the request gets 504. Env: `IIIFD_SOURCE__TIMEOUT_SECS`.
    pub timeout_secs: u64,
    /// Memory for blocks of remote objects read by range (pyramidal TIFF, JPEG 2000). Env:
    /// `IIIFD_SOURCE__BLOCK_CACHE_BYTES`.
    pub block_cache_bytes: u64,
    /// Size of the blocks remote objects are read by (a power of two, 16 KiB to 16 MiB). Larger
    /// blocks mean fewer requests for neighbouring tiles, smaller ones less read for one tile; a
    /// miss also reads the next block ahead. 1 MiB: on the peer benchmark's cold tiles from
    /// SeaweedFS, 64 KiB and 256 KiB blocks took 3-5 times the requests and were slower.
    /// Env: `IIIFD_SOURCE__BLOCK_BYTES`.
    pub block_bytes: u64,
    /// Disk for remote objects that are read whole (JPEG, PNG, GIF, WebP), kept under
    /// `<store>/sources/` and evicted least recently used first. Env: `IIIFD_SOURCE__CACHE_BYTES`.
    pub cache_bytes: u64,
    /// `[source.s3]`.
    pub s3: S3SourceConfig,
    /// `[source.http]`.
    pub http: HttpSourceConfig,
}

/// `[source.s3]`: any S3-compatible endpoint (AWS, Ceph RGW, SeaweedFS, Garage, MinIO).
#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct S3SourceConfig {
    /// Bucket name. Env: `IIIFD_SOURCE__S3__BUCKET`.
    pub bucket: String,
    /// Key prefix of the images (`masters/` or empty); identifiers are keys below it. Env:
    /// `IIIFD_SOURCE__S3__PREFIX`.
    pub prefix: String,
    /// Endpoint URL for a non-AWS store (`http://127.0.0.1:8333`), addressed path-style; empty for
    /// AWS. Env: `IIIFD_SOURCE__S3__ENDPOINT`.
    pub endpoint: String,
    /// Region (signing needs one; most non-AWS stores accept any). Env: `IIIFD_SOURCE__S3__REGION`.
    pub region: String,
    /// Access key; empty: `AWS_ACCESS_KEY_ID`. Env: `IIIFD_SOURCE__S3__ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// Secret key; empty: `AWS_SECRET_ACCESS_KEY`. Never logged. Env:
    /// `IIIFD_SOURCE__S3__SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
}

// By hand, so that a debug print of the configuration cannot show the secret.
impl std::fmt::Debug for S3SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3SourceConfig")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// `[source.http]`: masters served over HTTP by a repository.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSourceConfig {
    /// The URL of an identifier: `{identifier}` is replaced by the identifier, percent-encoded
    /// except for `/` (e.g. `https://repo.example.org/masters/{identifier}`). Env:
    /// `IIIFD_SOURCE__HTTP__URL_TEMPLATE`.
    pub url_template: String,
    /// The only hosts (`host` or `host:port`) iiifd will fetch from; a URL elsewhere is refused.
    /// Env: `IIIFD_SOURCE__HTTP__ALLOWED_HOSTS` (a TOML array, e.g. `["repo.example.org"]`).
    pub allowed_hosts: Vec<String>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: "fs".into(),
            revalidate_secs: 30,
            timeout_secs: 20,
            block_cache_bytes: 64 << 20,
            block_bytes: 1 << 20,
            cache_bytes: 4 << 30,
            s3: S3SourceConfig::default(),
            http: HttpSourceConfig::default(),
        }
    }
}

/// `[store.shared]`: derivatives in an S3-compatible bucket shared by the nodes of a cluster.
/// Credentials as for the S3 source (`source.s3.access_key_id`/`secret_access_key`, else the
/// `AWS_*` environment variables); calls bounded by `source.timeout_secs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SharedStoreConfig {
    /// Bucket; empty: no shared tier. Env: `IIIFD_STORE__SHARED__BUCKET`.
    pub bucket: String,
    /// Key prefix. Env: `IIIFD_STORE__SHARED__PREFIX`.
    pub prefix: String,
    /// Endpoint of a non-AWS store, addressed path-style. Env: `IIIFD_STORE__SHARED__ENDPOINT`.
    pub endpoint: String,
    /// Signing region; empty: `AWS_REGION`, else us-east-1. Env: `IIIFD_STORE__SHARED__REGION`.
    pub region: String,
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

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("data"),
            max_bytes: 10 << 30,
            min_free_bytes: 512 << 20,
            verify_reads: true,
            verify: StoreVerify::Auto,
            fsync: false,
            accel_redirect: String::new(),
            index_cache_bytes: 8 << 20,
            shared: SharedStoreConfig::default(),
            reconcile_rate: 20_000,
            memory_bytes: 64 << 20,
            memory_object_max_bytes: 1 << 20,
        }
    }
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

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            images: PathBuf::from("examples/images"),
            prefix: "/iiif".into(),
            public_base_url: String::new(),
            tile_size: 512,
            limits: LimitsConfig::default(),
            render: RenderConfig::default(),
            http: HttpConfig::default(),
            source: SourceConfig::default(),
            store: StoreConfig::default(),
            admin: AdminConfig::default(),
            compat: CompatConfig::default(),
            crawl: CrawlConfig::default(),
            viewer: ViewerConfig::default(),
            info: InfoConfig::default(),
            access: AccessConfig::default(),
            admission: AdmissionConfig::default(),
            log: LogConfig::default(),
        }
    }
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

/// Command-line values that override every other layer when given.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--images`.
    pub images: Option<PathBuf>,
    /// `--store`.
    pub store: Option<PathBuf>,
}

/// A configuration that could not be loaded; the message names the offending key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Load defaults, then `file` (if given; it must exist), then `IIIFD_*` variables from `env`, then
    /// `overrides`. `env` is passed in (rather than read from the process) so tests can supply it.
    pub fn load(
        file: Option<&Path>,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        let env_map: std::collections::HashMap<String, String> = env.iter().cloned().collect();
        fig = fig.merge(EnvSnapshot(env_map));
        if let Some(v) = overrides.listen {
            fig = fig.merge(("listen", v));
        }
        if let Some(v) = &overrides.images {
            fig = fig.merge(("images", v));
        }
        if let Some(v) = &overrides.store {
            fig = fig.merge(Serialized::default("store.path", v));
        }
        let config: Config = fig
            .extract()
            .map_err(|e| ConfigError(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Load with the process environment.
    pub fn load_from_process(
        file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Config::load(file, &env, overrides)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.access.validate()?;
        self.admission.validate()?;
        let bad = |key: &str, why: &str| Err(ConfigError(format!("key `{key}`: {why}")));
        for t in &self.crawl.watch_thumbnails {
            let parsed = crate::iiif::parse::parse_image_params(
                crate::iiif::ApiVersion::V3,
                "full",
                t,
                "0",
                "default.jpg",
                crate::iiif::Format::Jpg,
            );
            if let Err(e) = parsed {
                return bad("crawl.watch_thumbnails", &format!("{t:?}: {e}"));
            }
        }
        if let Some(v) = self
            .crawl
            .watch_versions
            .iter()
            .find(|v| crate::iiif::ApiVersion::from_path_segment(&v.to_string()).is_none())
        {
            return bad(
                "crawl.watch_versions",
                &format!("{v} is not an API version: use 1, 2 or 3"),
            );
        }
        if self.crawl.watch_interval_secs == 0 {
            return bad("crawl.watch_interval_secs", "must be at least 1");
        }
        if !self.prefix.is_empty() && (!self.prefix.starts_with('/') || self.prefix.ends_with('/'))
        {
            return bad(
                "prefix",
                "must be empty or start with '/' and not end with '/' (e.g. \"/iiif\")",
            );
        }
        if !self
            .prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b))
        {
            return bad(
                "prefix",
                "may contain only letters, digits, '/', '-', '.', '_' and '~'",
            );
        }
        let base = &self.public_base_url;
        if !base.is_empty()
            && (!(base.starts_with("http://") || base.starts_with("https://"))
                || base.ends_with('/')
                || base.bytes().any(|b| {
                    b.is_ascii_control() || b == b' ' || b == b'"' || b == b'<' || b == b'>'
                }))
        {
            return bad(
                "public_base_url",
                "must be an http(s) URL without a trailing '/' or spaces",
            );
        }
        if !(64..=4096).contains(&self.tile_size) {
            return bad("tile_size", "must be between 64 and 4096");
        }
        let l = &self.limits;
        if l.max_width == 0 || l.max_height == 0 || l.max_area == 0 {
            return bad(
                "limits",
                "max_width, max_height and max_area must be above 0",
            );
        }
        if l.max_source_pixels == 0 || l.max_source_bytes == 0 {
            return bad(
                "limits",
                "max_source_pixels and max_source_bytes must be above 0",
            );
        }
        if !(1..=100).contains(&self.render.jpeg_quality) {
            return bad("render.jpeg_quality", "must be between 1 and 100");
        }
        if !(1..=100).contains(&self.render.webp_quality) {
            return bad("render.webp_quality", "must be between 1 and 100");
        }
        if self.render.max_decode_bytes < 1 << 20 {
            return bad("render.max_decode_bytes", "must be at least 1 MiB");
        }
        let bound = self.memory_bound();
        if self.render.max_memory_bytes > 0 && bound.decode < MIN_DECODE_BUDGET {
            return bad(
                "render.max_memory_bytes",
                &format!(
                    "{} MiB leaves under {} MiB a decode once the fixed part ({} MiB), the decoded \
                     cache ({} MiB), the index cache ({} MiB) and the memory tier ({} MiB) are set \
                     aside for {} workers",
                    self.render.max_memory_bytes >> 20,
                    MIN_DECODE_BUDGET >> 20,
                    MemoryBound::BASE >> 20,
                    bound.decoded_cache >> 20,
                    bound.index_cache >> 20,
                    bound.memory_tier >> 20,
                    bound.workers
                ),
            );
        }
        let accel = &self.store.accel_redirect;
        let accel_ok = accel.is_empty()
            || (accel.starts_with('/') && accel.ends_with('/') && valid_path(accel));
        if !accel_ok {
            return bad(
                "store.accel_redirect",
                "must be empty or a path starting and ending with '/', e.g. \"/_iiifd/\"",
            );
        }
        let script = &self.viewer.script_url;
        if !(script.starts_with("http://")
            || script.starts_with("https://")
            || script.starts_with('/'))
            || script
                .bytes()
                .any(|b| b.is_ascii_control() || b" \"'<>`".contains(&b))
        {
            return bad(
                "viewer.script_url",
                "must be an http(s) URL or absolute path without quotes, spaces or <>",
            );
        }
        let flask = &self.compat.flask_iiif_prefix;
        if !flask.starts_with('/') || flask.ends_with('/') || !valid_path(flask) {
            return bad(
                "compat.flask_iiif_prefix",
                "must start with '/' and not end with '/'",
            );
        }
        if self.http.header_timeout_ms == 0 || self.http.max_connections == 0 {
            return bad(
                "http",
                "header_timeout_ms and max_connections must be above 0",
            );
        }
        if self.store.max_bytes == 0 {
            return bad("store.max_bytes", "must be above 0");
        }
        self.validate_source()?;
        if !self.admin.token.is_empty() && !self.admin.token.bytes().all(|b| b.is_ascii_graphic()) {
            return bad("admin.token", "must be printable ASCII without spaces");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad("log.format", "must be \"text\" or \"json\"");
        }
        self.info.extras()?;
        Ok(())
    }

    fn validate_source(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("key `{key}`: {why}")));
        let src = &self.source;
        if src.timeout_secs == 0 {
            return bad("source.timeout_secs", "must be above 0");
        }
        if !src.block_bytes.is_power_of_two() || !(16 << 10..=16 << 20).contains(&src.block_bytes) {
            return bad(
                "source.block_bytes",
                "must be a power of two from 16384 to 16777216",
            );
        }
        let e = &self.store.shared.endpoint;
        if !(e.is_empty() || e.starts_with("http://") || e.starts_with("https://")) {
            return bad(
                "store.shared.endpoint",
                "must be empty (AWS) or an http(s) URL",
            );
        }
        match src.kind.as_str() {
            "fs" => {}
            "s3" => {
                if src.s3.bucket.is_empty() {
                    return bad("source.s3.bucket", "must be set when source.kind is \"s3\"");
                }
                let e = &src.s3.endpoint;
                if !(e.is_empty() || e.starts_with("http://") || e.starts_with("https://")) {
                    return bad(
                        "source.s3.endpoint",
                        "must be empty (AWS) or an http(s) URL",
                    );
                }
            }
            "http" => {
                let t = &src.http.url_template;
                if !(t.starts_with("http://") || t.starts_with("https://"))
                    || !t.contains("{identifier}")
                {
                    return bad(
                        "source.http.url_template",
                        "must be an http(s) URL containing {identifier}",
                    );
                }
                if src.http.allowed_hosts.is_empty() {
                    return bad(
                        "source.http.allowed_hosts",
                        "must list the hosts the URL template may reach",
                    );
                }
            }
            _ => return bad("source.kind", "must be \"fs\", \"s3\" or \"http\""),
        }
        Ok(())
    }

    /// The output limits advertised in info.json.
    pub fn limits(&self) -> Limits {
        Limits {
            max_width: self.limits.max_width,
            max_height: self.limits.max_height,
            max_area: self.limits.max_area,
        }
    }

    /// Crawl renders allowed at once.
    pub fn crawl_workers(&self) -> usize {
        match self.crawl.max_workers {
            0 => self.render_workers().saturating_sub(1).max(1),
            n => n,
        }
    }

    /// The bound on peak resident memory that this configuration implies (see [`MemoryBound`]).
    pub fn memory_bound(&self) -> MemoryBound {
        let workers = self.render_workers().max(1) as u64;
        let reserved = self.reserved_workers() as u64;
        let cheap_decode = self
            .admission
            .cheap_decode_bytes()
            .min(self.render.max_decode_bytes);
        let decoded_cache = self.render.decoded_cache_bytes;
        let index_cache = self.store.index_cache_bytes;
        let memory_tier = self.store.memory_bytes;
        let fixed = MemoryBound::BASE
            + decoded_cache
            + index_cache
            + memory_tier
            + MemoryBound::COPIES * reserved * cheap_decode;
        let decode = match self.render.max_memory_bytes {
            0 => self.render.max_decode_bytes,
            target => self
                .render
                .max_decode_bytes
                .min(target.saturating_sub(fixed) / (MemoryBound::COPIES * workers)),
        };
        MemoryBound {
            decoded_cache,
            index_cache,
            memory_tier,
            workers,
            decode,
            reserved,
            cheap_decode,
            total: fixed + MemoryBound::COPIES * workers * decode,
        }
    }

    /// Render threads to start for every lane (`render.workers`, one per core when 0).
    pub fn render_workers(&self) -> usize {
        match self.render.workers {
            0 => cores(),
            n => n,
        }
    }

    /// Render threads kept for the cheap lane (`admission.reserved_workers`, one per core when 0).
    pub fn reserved_workers(&self) -> usize {
        match self.admission.reserved_workers {
            0 => cores(),
            n => n,
        }
    }
}

/// The CPU cores this process may use.
fn cores() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
}

/// The smallest decode budget `render.max_memory_bytes` may leave: below it ordinary thumbnails
/// of flat sources would be refused.
const MIN_DECODE_BUDGET: u64 = 16 << 20;

/// What bounds iiifd's peak resident memory, from its configuration. Every term is enforced where
/// it is spent: the decoded cache evicts to its size, sled's page cache keeps to its capacity, the
/// pool never runs more renders than workers, and every decoder checks its budget before it
/// allocates. A render holds its decode and at most one working copy of the same size (crop, turn,
/// resize, colour, encode all work on pixels no larger than the decoded ones), hence two copies a
/// worker. Not counted: encoded responses in flight on the network, bounded by `http`'s connection
/// limit times the largest output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBound {
    /// `render.decoded_cache_bytes`.
    pub decoded_cache: u64,
    /// `store.index_cache_bytes`.
    pub index_cache: u64,
    /// `store.memory_bytes`.
    pub memory_tier: u64,
    /// Render workers.
    pub workers: u64,
    /// The budget of one decode: `render.max_decode_bytes`, lowered to fit `max_memory_bytes`.
    pub decode: u64,
    /// Render threads kept for the cheap lane.
    pub reserved: u64,
    /// The budget of one decode on those threads (`admission.cheap_max_pixels` x 8 bytes).
    pub cheap_decode: u64,
    /// The bound: base + decoded cache + index cache + memory tier + workers x 2 x decode +
    /// reserved x 2 x cheap decode.
    pub total: u64,
}

impl MemoryBound {
    /// The fixed part: code, the async runtime, buffers, the located and probe caches (measured
    /// idle at 25-30 MiB), the hit memo (about 12 MiB, at most 32), the admission's table of recent
    /// clients (at most 50,000, a few MiB); the rest is headroom.
    pub const BASE: u64 = 64 << 20;
    /// Decode-sized buffers one render may hold at once.
    pub const COPIES: u64 = 2;
}

impl std::fmt::Display for MemoryBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b >> 20;
        write!(
            f,
            "peak memory bound {} MiB = {} fixed + {} decoded cache + {} index cache + {} memory tier + {} workers x {} x {} MiB decode budget + {} reserved workers x {} x {} MiB",
            mib(self.total),
            mib(Self::BASE),
            mib(self.decoded_cache),
            mib(self.index_cache),
            mib(self.memory_tier),
            self.workers,
            Self::COPIES,
            mib(self.decode),
            self.reserved,
            Self::COPIES,
            mib(self.cheap_decode)
        )
    }
}

fn valid_path(p: &str) -> bool {
    p.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b))
}

/// figment's `Env` provider reads the live process environment; this provider applies the same rules
/// (`IIIFD_` prefix, lower-cased keys, `__` for nesting, values parsed as TOML-like scalars) to an
/// explicit snapshot, so loading is a pure function of its inputs.
struct EnvSnapshot(std::collections::HashMap<String, String>);

impl figment::Provider for EnvSnapshot {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("IIIFD_ environment variable(s)")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        use figment::value::{Dict, Value};
        let mut root = Dict::new();
        for (k, v) in &self.0 {
            let Some(rest) = k.strip_prefix("IIIFD_") else {
                continue;
            };
            if rest.is_empty() {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let value: Value = v.parse().unwrap_or_else(|_| Value::from(v.clone()));
            insert_path(&mut root, &path, value);
        }
        Ok(figment::Profile::Default.collect(root))
    }
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    use figment::value::{Dict, Value};
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}

fn describe_figment_error(e: figment::Error) -> String {
    let mut parts = Vec::new();
    for err in e {
        let key = if err.path.is_empty() {
            String::new()
        } else {
            format!("key `{}`: ", err.path.join("."))
        };
        let source = err
            .metadata
            .as_ref()
            .map(|m| format!(" (from {})", m.name))
            .unwrap_or_default();
        parts.push(format!("{key}{}{source}", err.kind));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() -> Result<(), ConfigError> {
        let c = Config::load(None, &[], &Overrides::default())?;
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.prefix, "/iiif");
        Ok(())
    }

    #[test]
    fn the_memory_bound_adds_up_and_a_target_lowers_the_decode_budget() -> Result<(), ConfigError> {
        let mib = 1u64 << 20;
        let two = env(&[
            ("IIIFD_RENDER__WORKERS", "2"),
            ("IIIFD_ADMISSION__RESERVED_WORKERS", "2"),
        ]);
        let c = Config::load(None, &two, &Overrides::default())?;
        let b = c.memory_bound();
        assert_eq!(b.decode, 1024 * mib);
        // Reserved threads decode at most 4 Mi pixels of 8 bytes each.
        assert_eq!(b.cheap_decode, 32 * mib);
        assert_eq!(
            b.total,
            (64 + 256 + 8 + 64 + 2 * 2 * 1024 + 2 * 2 * 32) * mib
        );
        assert!(
            b.to_string().starts_with("peak memory bound 4616 MiB"),
            "{b}"
        );

        let tight = env(&[
            ("IIIFD_RENDER__WORKERS", "2"),
            ("IIIFD_ADMISSION__RESERVED_WORKERS", "2"),
            ("IIIFD_RENDER__MAX_MEMORY_BYTES", "536870912"),
            ("IIIFD_RENDER__DECODED_CACHE_BYTES", "67108864"),
        ]);
        let b = Config::load(None, &tight, &Overrides::default())?.memory_bound();
        // (512 - 64 - 64 - 8 - 64 - 2 x 2 x 32) / (2 x 2) = 46 MiB a decode, and the whole within
        // the target.
        assert_eq!(b.decode, 46 * mib);
        assert!(b.total <= 512 * mib, "{b}");

        let too_small = env(&[
            ("IIIFD_RENDER__WORKERS", "2"),
            ("IIIFD_RENDER__MAX_MEMORY_BYTES", "377487360"),
        ]);
        let err = Config::load(None, &too_small, &Overrides::default())
            .expect_err("360 MiB leaves 8 MiB a decode beside a 256 MiB cache");
        assert!(err.to_string().contains("render.max_memory_bytes"), "{err}");
        Ok(())
    }

    #[test]
    fn layering_file_env_flags() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "prefix = \"/img\"\ntile_size = 256\n[limits]\nmax_area = 1000000\n",
        )?;
        let e = env(&[
            ("IIIFD_LIMITS__MAX_AREA", "2000000"),
            ("IIIFD_PUBLIC_BASE_URL", "https://x.org/iiif"),
            ("OTHER", "1"),
        ]);
        let o = Overrides {
            listen: Some("127.0.0.1:9999".parse()?),
            store: Some("/tmp/s".into()),
            ..Overrides::default()
        };
        let c = Config::load(Some(&file), &e, &o)?;
        assert_eq!(c.prefix, "/img");
        assert_eq!(c.tile_size, 256);
        assert_eq!(c.limits.max_area, 2_000_000, "env beats file");
        assert_eq!(c.public_base_url, "https://x.org/iiif");
        assert_eq!(c.listen.port(), 9999, "flags beat env");
        assert_eq!(c.store.path, PathBuf::from("/tmp/s"));
        assert!(c.store.verify_reads);
        Ok(())
    }

    #[test]
    fn tile_passthrough_takes_its_names_and_the_old_booleans() -> Result<(), ConfigError> {
        let load = |v: &str| {
            Config::load(
                None,
                &env(&[("IIIFD_RENDER__TILE_PASSTHROUGH", v)]),
                &Overrides::default(),
            )
            .map(|c| c.render.tile_passthrough)
        };
        assert_eq!(
            Config::default().render.tile_passthrough,
            TilePassthrough::Auto
        );
        assert_eq!(load("auto")?, TilePassthrough::Auto);
        assert_eq!(load("always")?, TilePassthrough::Always);
        assert_eq!(load("true")?, TilePassthrough::Always);
        assert_eq!(load("never")?, TilePassthrough::Never);
        assert_eq!(load("false")?, TilePassthrough::Never);
        let err = load("sometimes")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("tile_passthrough"), "{err}");
        Ok(())
    }

    #[test]
    fn errors_name_the_key() {
        let msg = |e: &[(&str, &str)]| match Config::load(None, &env(e), &Overrides::default()) {
            Err(err) => err.to_string(),
            Ok(_) => String::from("accepted"),
        };
        assert!(
            msg(&[("IIIFD_LIMITS__MAX_AREA", "lots")]).contains("limits.max_area"),
            "{}",
            msg(&[("IIIFD_LIMITS__MAX_AREA", "lots")])
        );
        assert!(msg(&[("IIIFD_LIMTS__MAX_AREA", "5")]).contains("limts"));
        assert!(msg(&[("IIIFD_TILE_SIZE", "1")]).contains("tile_size"));
        assert!(msg(&[("IIIFD_PREFIX", "iiif")]).contains("prefix"));
    }

    #[test]
    fn remote_sources_need_their_settings() {
        let msg = |e: &[(&str, &str)]| match Config::load(None, &env(e), &Overrides::default()) {
            Err(err) => err.to_string(),
            Ok(_) => String::new(),
        };
        assert!(msg(&[("IIIFD_SOURCE__KIND", "ftp")]).contains("source.kind"));
        assert!(msg(&[("IIIFD_SOURCE__KIND", "s3")]).contains("source.s3.bucket"));
        assert!(msg(&[
            ("IIIFD_SOURCE__KIND", "s3"),
            ("IIIFD_SOURCE__S3__BUCKET", "b"),
            ("IIIFD_SOURCE__S3__ENDPOINT", "127.0.0.1:9000"),
        ])
        .contains("source.s3.endpoint"));
        let http = |t: &str, hosts: &str| {
            msg(&[
                ("IIIFD_SOURCE__KIND", "http"),
                ("IIIFD_SOURCE__HTTP__URL_TEMPLATE", t),
                ("IIIFD_SOURCE__HTTP__ALLOWED_HOSTS", hosts),
            ])
        };
        assert!(http("https://r.org/m/", "[\"r.org\"]").contains("url_template"));
        assert!(http("https://r.org/{identifier}", "[]").contains("allowed_hosts"));
        assert_eq!(http("https://r.org/{identifier}", "[\"r.org\"]"), "");
        // The secret never shows in a debug print.
        let mut c = Config::default();
        c.source.s3.secret_access_key = "hunter2".into();
        c.access.secret = Secret("hunter3".into());
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter3"));
    }

    #[test]
    fn example_config_parses_and_documents_every_key() -> Result<(), Box<dyn std::error::Error>> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.toml");
        let c = Config::load(Some(&path), &[], &Overrides::default())?;
        assert_eq!(
            c,
            Config::default(),
            "examples/config.toml shows the defaults"
        );
        let text = std::fs::read_to_string(&path)?;
        let defaults = serde_json::to_value(Config::default())?;
        let mut keys = Vec::new();
        collect_keys(&defaults, "", &mut keys);
        for key in keys {
            let env_name = format!("IIIFD_{}", key.replace('.', "__").to_ascii_uppercase());
            assert!(
                text.contains(&env_name),
                "examples/config.toml must document {key} ({env_name})"
            );
        }
        Ok(())
    }

    fn collect_keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        if let serde_json::Value::Object(map) = v {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_object() {
                    collect_keys(v, &key, out);
                } else {
                    out.push(key);
                }
            }
        }
    }
}
