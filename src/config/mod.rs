//! Configuration: one serde tree, layered by figment as defaults -> TOML file -> `IIIFD_*` environment
//! variables (`__` separates nesting levels, e.g. `IIIFD_LIMITS__MAX_AREA`) -> command-line flags.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default), and every value is
//! validated once here, so the rest of iiifd can trust it. `examples/config.toml` documents every key.

mod access;
mod admission;
mod cdn;
mod crawl;
mod http;
mod render;
mod source;
mod store;

pub use access::{AccessConfig, AccessPolicy, AccessRule, Secret};
pub(crate) use admission::mask;
pub use admission::{AdmissionConfig, ClientClass, Network};
pub use cdn::CdnConfig;
pub use crawl::CrawlConfig;
pub use http::{AdminConfig, CompatConfig, HttpConfig, InfoConfig, LogConfig, ViewerConfig};
pub use render::{ColorMode, LimitsConfig, RenderConfig, TilePassthrough};
pub use source::{HttpSourceConfig, S3SourceConfig, SourceConfig};
pub use store::{SharedStoreConfig, StoreConfig, StoreVerify};

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
    /// `[cdn]`: cache tags, purge calls and stale-serving directives for a CDN in front.
    pub cdn: CdnConfig,
    /// Logging.
    pub log: LogConfig,
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
            cdn: CdnConfig::default(),
            log: LogConfig::default(),
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
        self.cdn.validate()?;
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
        // Only a remote source reads by blocks.
        let source_blocks = match self.source.kind.as_str() {
            "fs" => 0,
            _ => self.source.block_cache_bytes,
        };
        let fixed = MemoryBound::BASE
            + decoded_cache
            + index_cache
            + memory_tier
            + source_blocks
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
            source_blocks,
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
    /// `source.block_cache_bytes` for a remote source, else 0.
    pub source_blocks: u64,
    /// Render workers.
    pub workers: u64,
    /// The budget of one decode: `render.max_decode_bytes`, lowered to fit `max_memory_bytes`.
    pub decode: u64,
    /// Render threads kept for the cheap lane.
    pub reserved: u64,
    /// The budget of one decode on those threads (`admission.cheap_max_pixels` x 8 bytes).
    pub cheap_decode: u64,
    /// The bound: base + decoded cache + index cache + memory tier + source blocks + workers x 2
    /// x decode + reserved x 2 x cheap decode.
    pub total: u64,
}

impl MemoryBound {
    /// The fixed part: code, the async runtime and buffers (measured idle at 25-30 MiB with the
    /// caches empty), the small caches' budgets (located sources, corrupt and tiled-copy marks,
    /// TIFF directories, the hit memo, access decisions: 40 MiB together, each exported as
    /// `iiifd_cache_budget_bytes{part="base"}`), the admission's table of recent clients (at most
    /// 50,000, a few MiB).
    pub const BASE: u64 = 64 << 20;

    /// The bound's parts by name, as `/metrics` exports them; they add up to `total`.
    pub fn parts(&self) -> [(&'static str, u64); 7] {
        [
            ("base", Self::BASE),
            ("decoded_cache", self.decoded_cache),
            ("index_cache", self.index_cache),
            ("memory_tier", self.memory_tier),
            ("source_blocks", self.source_blocks),
            ("decodes", Self::COPIES * self.workers * self.decode),
            (
                "cheap_decodes",
                Self::COPIES * self.reserved * self.cheap_decode,
            ),
        ]
    }
    /// Decode-sized buffers one render may hold at once.
    pub const COPIES: u64 = 2;
}

impl std::fmt::Display for MemoryBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b >> 20;
        write!(
            f,
            "peak memory bound {} MiB = {} fixed + {} decoded cache + {} index cache + {} memory tier + {} source blocks + {} workers x {} x {} MiB decode budget + {} reserved workers x {} x {} MiB",
            mib(self.total),
            mib(Self::BASE),
            mib(self.decoded_cache),
            mib(self.index_cache),
            mib(self.memory_tier),
            mib(self.source_blocks),
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
        assert_eq!(b.parts().iter().map(|(_, v)| v).sum::<u64>(), b.total);
        assert_eq!(b.source_blocks, 0, "a directory source reads no blocks");
        let s3 = env(&[
            ("IIIFD_RENDER__WORKERS", "2"),
            ("IIIFD_ADMISSION__RESERVED_WORKERS", "2"),
            ("IIIFD_SOURCE__KIND", "s3"),
            ("IIIFD_SOURCE__S3__BUCKET", "b"),
            ("IIIFD_SOURCE__S3__ENDPOINT", "http://127.0.0.1:9000"),
        ]);
        let remote = Config::load(None, &s3, &Overrides::default())?.memory_bound();
        assert_eq!(remote.source_blocks, 64 * mib);
        assert_eq!(remote.total, b.total + 64 * mib);

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
        for bad in ["/", ";;", "x"] {
            let m = msg(&[("IIIFD_SOURCE__PAGE_DELIMITER", bad)]);
            assert!(m.contains("source.page_delimiter"), "{bad}: {m}");
        }
        for good in ["", ";", ":", "-", "@"] {
            let c = Config::load(
                None,
                &env(&[("IIIFD_SOURCE__PAGE_DELIMITER", good)]),
                &Overrides::default(),
            );
            assert_eq!(
                c.map(|c| c.source.page_delimiter()).ok(),
                Some(good.chars().next()),
                "{good:?}"
            );
        }
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
