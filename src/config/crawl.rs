//! `[crawl]`: the background lane that pre-warms the store.

use serde::{Deserialize, Serialize};

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
