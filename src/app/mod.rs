//! The composition root: [`App`] wires the source backend, the store, the render pool and the
//! pipeline, the crawler and the metrics from a configuration. Nothing here decides anything about a
//! request, and nothing here knows HTTP (`crate::daemon` puts an [`App`] behind the listeners).

mod exposition;

use crate::access::Access;
use crate::admission::fair::ClassRule;
use crate::admission::Admission;
use crate::config::Config;
use crate::config::S3SourceConfig;
use crate::crawl::{CrawlSettings, Crawler};
use crate::iiif::ApiVersion;
use crate::memo::Memo;
use crate::metrics::{self, Metrics};
use crate::pipeline::{Pipeline, Settings};
use crate::render::cache::DecodedCache;
use crate::render::pool::{PoolSettings, RenderPool};
use crate::render::probe::SourceLimits;
use crate::render::EncodeSettings;
use crate::source::http::HttpFetch;
use crate::source::remote::{RemoteBackend, RemoteSettings};
use crate::source::s3::{S3Fetch, SharedBucket};
use crate::source::{fs::FsBackend, Backend, SourceCounters};
use crate::store::shared::SharedTier;
use crate::store::{Recovery, Store, StoreSettings};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The backend `source.kind` names: the image directory, a bucket, or a URL template.
fn source_backend(config: &Config) -> io::Result<Arc<dyn Backend>> {
    let src = &config.source;
    let timeout = Duration::from_secs(src.timeout_secs);
    let remote = || RemoteSettings {
        revalidate: Duration::from_secs(src.revalidate_secs),
        timeout,
        block_cache_bytes: src.block_cache_bytes,
        block_bytes: src.block_bytes,
        cache_dir: config.store.path.join("sources"),
        cache_bytes: src.cache_bytes,
        max_whole_bytes: config.limits.max_source_bytes,
        copy_name: crate::key::source_copy_name,
    };
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    Ok(match src.kind.as_str() {
        "s3" => {
            let fetch = S3Fetch::new(&src.s3, timeout).map_err(invalid)?;
            Arc::new(RemoteBackend::new(fetch, &remote())?)
        }
        "http" => {
            let fetch = HttpFetch::new(&src.http, timeout).map_err(invalid)?;
            Arc::new(RemoteBackend::new(fetch, &remote())?)
        }
        _ => Arc::new(FsBackend::new(&config.images).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("image directory {}: {e}", config.images.display()),
            )
        })?),
    })
}

/// The cluster's shared tier, when `store.shared.bucket` is set: same client and credentials as
/// the S3 source.
fn shared_tier(config: &Config) -> io::Result<Option<SharedTier>> {
    let shared = &config.store.shared;
    if shared.bucket.is_empty() {
        return Ok(None);
    }
    let creds = &config.source.s3;
    let cfg = S3SourceConfig {
        bucket: shared.bucket.clone(),
        prefix: shared.prefix.clone(),
        endpoint: shared.endpoint.clone(),
        region: shared.region.clone(),
        access_key_id: creds.access_key_id.clone(),
        secret_access_key: creds.secret_access_key.clone(),
    };
    let timeout = Duration::from_secs(config.source.timeout_secs);
    let bucket = SharedBucket::new(&cfg, timeout)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(Some(SharedTier::new(bucket, timeout)?))
}

/// Everything a request needs, shared by all connections.
pub struct App {
    config: Config,
    pipeline: Arc<Pipeline>,
    store: Arc<Store>,
    crawler: Arc<Crawler>,
    metrics: Arc<Metrics>,
    /// Who may see what (`[access]`).
    access: Access,
    /// A remote source's kind and counters (`iiifd_source_*`).
    source: Option<(&'static str, Arc<SourceCounters>)>,
    recovery: Recovery,
    /// `crawl.watch`, once started.
    watch: std::sync::Mutex<Option<crate::crawl::watch::Watch>>,
    /// When this process started: no generated document (info.json) is older, since its configuration
    /// was read then.
    started: std::time::SystemTime,
    /// Answers to repeat hits (see [`crate::memo`]).
    memo: Memo,
    /// The CDN purger (`cdn.purge_url`).
    purger: Option<Arc<crate::cdn::Purger>>,
}

impl App {
    /// The server a configuration describes: its image directory as the source, its store
    /// (recovering from whatever a crash left), a render pool. Blocks (opening the store).
    pub fn new(config: Config) -> io::Result<App> {
        let source = source_backend(&config)?;
        App::with_source(config, source)
    }

    /// [`App::new`] with another source backend (the image directory in `config` is not used).
    pub fn with_source(config: Config, source: Arc<dyn Backend>) -> io::Result<App> {
        // Page identifiers work the same over every backend.
        let source = crate::pages::Paged::wrap(source, config.source.page_delimiter());
        let access = Access::new(&config.access)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (mut store, recovery) = Store::open(store_settings(&config)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("store {}: {e}", config.store.path.display()),
            )
        })?;
        if let Some(tier) = shared_tier(&config)? {
            store.attach_shared(tier);
        }
        let store = Arc::new(store);
        if recovery.reconcile_needed {
            // The last process did not close the store: neither did it finish its copies.
            source.forget_copies()?;
        }
        let metrics = Arc::new(Metrics::default());
        let admission = Admission::new(&config.admission);
        let bound = config.memory_bound();
        let pool = RenderPool::new(&PoolSettings {
            general: config.render_workers(),
            reserved: config.reserved_workers(),
            queue: config.render.queue,
            background: config.crawl_workers(),
            classes: admission
                .classes()
                .iter()
                .map(|c| {
                    let rule = ClassRule {
                        share: c.share,
                        cap: c.cap,
                    };
                    (c.name.clone(), rule)
                })
                .collect(),
            decode_budget: bound.decode,
            cheap_decode_budget: bound.cheap_decode,
        });
        let decoded = Arc::new(DecodedCache::new(config.render.decoded_cache_bytes));
        let settings = Settings {
            limits: config.limits(),
            source_limits: SourceLimits {
                max_source_pixels: config.limits.max_source_pixels,
                max_source_bytes: config.limits.max_source_bytes,
            },
            encode: EncodeSettings {
                jpeg_quality: config.render.jpeg_quality,
                webp_quality: config.render.webp_quality,
                tile_passthrough: config.render.tile_passthrough,
                color: config.render.color,
            },
            tiled_copy_min_pixels: config.render.tiled_copy_min_pixels,
            accel: !config.store.accel_redirect.is_empty(),
            tile_size: config.tile_size,
            // Validated when the configuration was loaded.
            info_extras: config.info.extras().unwrap_or_default(),
            sidecars: config.info.sidecars,
            negative: Duration::from_secs(config.source.negative_secs),
        };
        let source_counters = source.counters().map(|c| (source.kind(), c));
        let pipeline = Arc::new(Pipeline::new(
            source,
            Arc::clone(&store),
            pool,
            decoded,
            Arc::clone(&metrics),
            settings,
            admission,
        ));
        let purger = crate::cdn::Purger::start(&config.cdn, &|name| std::env::var(name).ok())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .map(Arc::new);
        if let Some(purger) = &purger {
            let purger = Arc::clone(purger);
            pipeline.on_source_change(Box::new(move |identifier| purger.purge(identifier)));
        }
        let crawler = Arc::new(Crawler::new(
            Arc::clone(&pipeline),
            Arc::clone(&store),
            CrawlSettings {
                prefix: config.prefix.clone(),
                public_base_url: config.public_base_url.clone(),
                tile_size: config.tile_size,
                workers: config.crawl_workers(),
            },
        ));
        // Every answer from the memo comes from the memory tier: without one, no memo.
        let memo = Memo::new(if config.store.memory_bytes > 0 {
            crate::memo::BYTES
        } else {
            0
        });
        Ok(App {
            config,
            pipeline,
            store,
            crawler,
            metrics,
            access,
            source: source_counters,
            recovery,
            watch: std::sync::Mutex::new(None),
            started: std::time::SystemTime::now(),
            memo,
            purger,
        })
    }

    /// Start the background work: the store's evictor and the crawl jobs a previous process left.
    /// Needs a tokio runtime.
    pub fn start(&self) -> io::Result<()> {
        self.store.start_background()?;
        self.crawler.resume();
        if self.config.crawl.watch {
            let crawl = &self.config.crawl;
            let settings = crate::crawl::watch::WatchSettings {
                thumbnails: crawl.watch_thumbnails.clone(),
                // Validated with the configuration.
                versions: crawl
                    .watch_versions
                    .iter()
                    .filter_map(|v| ApiVersion::from_path_segment(&v.to_string()))
                    .collect(),
                interval: Duration::from_secs(crawl.watch_interval_secs),
                tile_size: self.config.tile_size,
            };
            let root = (self.pipeline.source().kind() == "fs").then_some(&self.config.images);
            let watch = crate::crawl::watch::start(
                Arc::clone(&self.pipeline),
                root.map(|p| p.as_path()),
                settings,
            )
            .map_err(|e| io::Error::new(e.kind(), format!("crawl.watch: {e}")))?;
            if let Ok(mut w) = self.watch.lock() {
                *w = Some(watch);
            }
        }
        Ok(())
    }

    /// Stop background work and flush the index (at shutdown, after the last request).
    pub fn shutdown(&self) {
        self.pipeline.shutdown();
        if let Err(e) = self.store.close() {
            tracing::warn!("closing the store failed: {e}");
        }
    }

    /// What opening the store found and repaired.
    pub(crate) fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// When this process started (see the field).
    pub(crate) fn started(&self) -> std::time::SystemTime {
        self.started
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The pipeline.
    pub(crate) fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// The hit memo.
    /// Ask the CDN in front to drop every answer for `identifier` (when `cdn.purge_url` is set).
    pub(crate) fn purge_cdn(&self, identifier: &str) {
        if let Some(purger) = &self.purger {
            purger.purge(identifier);
        }
    }

    pub(crate) fn memo(&self) -> &Memo {
        &self.memo
    }

    /// The store.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The crawl jobs.
    pub(crate) fn crawler(&self) -> &Arc<Crawler> {
        &self.crawler
    }

    /// Access control.
    pub(crate) fn access(&self) -> &Access {
        &self.access
    }

    /// The request metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The store settings of a configuration.
pub(crate) fn store_settings(config: &Config) -> StoreSettings {
    StoreSettings {
        path: config.store.path.clone(),
        max_bytes: config.store.max_bytes,
        min_free_bytes: config.store.min_free_bytes,
        verify_reads: config.store.verify_reads,
        require_hashes: config.store.verify == crate::config::StoreVerify::Required,
        fsync: config.store.fsync,
        index_cache_bytes: config.store.index_cache_bytes,
        reconcile_rate: config.store.reconcile_rate,
        memory_bytes: config.store.memory_bytes,
        memory_object_max_bytes: config.store.memory_object_max_bytes,
    }
}
