//! `[store]` and `[store.shared]`: the derivative store on disk and the tier shared between nodes.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
