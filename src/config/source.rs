//! `[source]`: where images come from (a directory, S3, or HTTP), and its checks.

use super::ConfigError;
use serde::{Deserialize, Serialize};

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
    /// Seconds an identifier that named no image is answered 404 from memory, without asking the
    /// backend again (a missing identifier costs an S3 backend a HEAD per known extension; a
    /// harvester guessing identifiers would make every guess that many billable requests). An
    /// image that appears meanwhile is served at once when `crawl.watch` or a crawl sees it,
    /// otherwise after at most this long. 0 turns it off. Env: `IIIFD_SOURCE__NEGATIVE_SECS`.
    pub negative_secs: u64,
    /// The delimiter of page identifiers: `book;3` is page 3 of the multi-page TIFF `book` (as
    /// iipsrv's `IIIF_DELIMITER`). One of `;` `:` `-` `@`, or empty for no page identifiers. An
    /// identifier that names a file as it is always wins. Env: `IIIFD_SOURCE__PAGE_DELIMITER`.
    pub page_delimiter: String,
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
            negative_secs: 30,
            page_delimiter: ";".into(),
            timeout_secs: 20,
            block_cache_bytes: 64 << 20,
            block_bytes: 1 << 20,
            cache_bytes: 4 << 30,
            s3: S3SourceConfig::default(),
            http: HttpSourceConfig::default(),
        }
    }
}

/// The delimiters a page suffix may use (`crate::pages`): characters that IIIF viewers pass
/// through unencoded and that are rare in file names.
const PAGE_DELIMITERS: [char; 4] = [';', ':', '-', '@'];

impl SourceConfig {
    /// The page delimiter, when page identifiers are on and the setting is a valid one.
    pub(crate) fn page_delimiter(&self) -> Option<char> {
        let mut chars = self.page_delimiter.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if PAGE_DELIMITERS.contains(&c) => Some(c),
            _ => None,
        }
    }
}

impl super::Config {
    pub(super) fn validate_source(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("key `{key}`: {why}")));
        let src = &self.source;
        if src.timeout_secs == 0 {
            return bad("source.timeout_secs", "must be above 0");
        }
        if !(src.page_delimiter.is_empty() || src.page_delimiter().is_some()) {
            return bad("source.page_delimiter", "must be one of ; : - @, or empty");
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
}
