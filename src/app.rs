//! The composition root: [`App`] wires the source backend, the store, the render pool and the
//! pipeline, the crawler and the metrics from a configuration. Nothing here decides anything about a
//! request, and nothing here knows HTTP (`crate::daemon` puts an [`App`] behind the listeners).

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
            crate::memo::ENTRIES
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

    /// The Prometheus exposition of every metric.
    pub(crate) fn metrics_text(&self) -> String {
        let mut out = String::new();
        self.metrics.render_into(&mut out);
        let c = &self.store.counters;
        let (hot, (hot_bytes, hot_objects)) = self.store.hot_figures();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let counters = [
            (
                "iiifd_store_hits_total",
                "Derivatives served from the store.",
                &c.hits,
            ),
            (
                "iiifd_store_misses_total",
                "Store lookups that found nothing usable.",
                &c.misses,
            ),
            (
                "iiifd_store_evictions_total",
                "Derivatives evicted for the budget.",
                &c.evictions,
            ),
            (
                "iiifd_store_write_errors_total",
                "Derivatives that could not be stored.",
                &c.write_errors,
            ),
            (
                "iiifd_store_repairs_total",
                "Stored derivatives found missing, short or corrupt.",
                &c.repairs,
            ),
            (
                "iiifd_store_adopted_total",
                "Stored files without a hash attribute given one by a recount (bytes hashed as found).",
                &c.adopted,
            ),
            (
                "iiifd_store_reconcile_passes_total",
                "Recounts of the store's directory summaries completed.",
                &c.reconcile_passes,
            ),
            (
                "iiifd_store_reconcile_checked_total",
                "Object files counted by recounts.",
                &c.reconcile_checked,
            ),
            (
                "iiifd_store_reconcile_dropped_total",
                "Object files removed by recounts (another length than their format 2 record said).",
                &c.reconcile_dropped,
            ),
            (
                "iiifd_store_memory_hits_total",
                "Store hits answered from the memory tier (counted in iiifd_store_hits_total too).",
                &hot.hits,
            ),
            (
                "iiifd_store_memory_inserts_total",
                "Stored objects taken into the memory tier.",
                &hot.inserts,
            ),
            (
                "iiifd_memo_answers_total",
                "Repeat requests answered from the hit memo (counted in iiifd_store_memory_hits_total too).",
                &self.memo.recalled,
            ),
        ];
        for (name, help, value) in counters {
            metrics::counter(&mut out, name, help, load(value));
        }
        let stats = self.store.stats();
        let pool = self.pipeline.pool();
        let gauges = [
            ("iiifd_store_bytes", "Bytes in the store.", stats.bytes),
            (
                "iiifd_store_objects",
                "Derivatives in the store.",
                stats.objects,
            ),
            (
                "iiifd_store_max_bytes",
                "The store's budget.",
                stats.max_bytes,
            ),
            (
                "iiifd_store_memory_bytes",
                "Bytes held by the memory tier (objects and their bookkeeping).",
                hot_bytes,
            ),
            (
                "iiifd_store_memory_objects",
                "Objects held by the memory tier.",
                hot_objects,
            ),
            (
                "iiifd_pool_pending",
                "Renders queued or running.",
                pool.pending() as u64,
            ),
            (
                "iiifd_pool_workers",
                "Render threads (general and reserved for the cheap lane).",
                pool.size() as u64,
            ),
            (
                "iiifd_memory_bound_bytes",
                "The peak resident memory this configuration is bounded by.",
                self.config.memory_bound().total,
            ),
            (
                "iiifd_store_reconcile_running",
                "Whether a recount of the store's directory summaries is running.",
                load(&c.reconcile_running),
            ),
            (
                "iiifd_store_totals_approximate",
                "1 while iiifd_store_bytes and iiifd_store_objects are approximate (after a crash, a lost index or an upgrade, until the recount is done).",
                u64::from(stats.approximate),
            ),
        ];
        for (name, help, value) in gauges {
            metrics::gauge(&mut out, name, help, value);
        }
        pool.metrics_into(&mut out);
        if let Some((backend, c)) = &self.source {
            remote_metrics(&mut out, "iiifd_source", backend, c);
        }
        if let Some(w) = self.watch.lock().ok().as_ref().and_then(|w| w.as_ref()) {
            let m = &w.metrics;
            for (name, help, value) in [
                (
                    "iiifd_watch_arrivals_total",
                    "Source images seen arriving or changing (crawl.watch).",
                    &m.arrivals,
                ),
                (
                    "iiifd_watch_warmed_total",
                    "Arrivals whose sizes and thumbnails are stored.",
                    &m.warmed,
                ),
                (
                    "iiifd_watch_failed_total",
                    "Arrivals that could not be warmed (not an image, unreadable).",
                    &m.failed,
                ),
                (
                    "iiifd_watch_rendered_total",
                    "Derivatives rendered for arrivals.",
                    &m.rendered,
                ),
            ] {
                metrics::counter(&mut out, name, help, load(value));
            }
            m.latency.render_into(
                &mut out,
                "iiifd_watch_seconds",
                "From a source's arrival to its sizes and thumbnails being stored.",
                "",
            );
        }
        if let Some(tier) = self.store.shared() {
            remote_metrics(&mut out, "iiifd_shared", "s3", tier.requests());
            let t = tier.counters();
            let shared = [
                (
                    "iiifd_shared_hits_total",
                    "Derivatives found in the shared tier.",
                    &t.hits,
                ),
                (
                    "iiifd_shared_misses_total",
                    "Shared-tier lookups that found nothing.",
                    &t.misses,
                ),
                (
                    "iiifd_shared_corrupt_total",
                    "Shared-tier objects whose bytes did not match their hash.",
                    &t.corrupt,
                ),
                (
                    "iiifd_shared_stored_total",
                    "Renders stored in the shared tier.",
                    &t.stored,
                ),
                (
                    "iiifd_shared_already_there_total",
                    "Renders another node had stored first.",
                    &t.already_there,
                ),
                (
                    "iiifd_shared_skipped_total",
                    "Shared-tier calls skipped while it backed off after a failure.",
                    &t.skipped,
                ),
            ];
            for (name, help, value) in shared {
                metrics::counter(&mut out, name, help, load(value));
            }
            metrics::gauge(
                &mut out,
                "iiifd_shared_pending",
                "Renders queued for the shared tier.",
                load(&t.pending),
            );
        }
        out
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

/// A remote service's request counters (`iiifd_source_*` for the source, `iiifd_shared_*` for
/// the shared tier), labelled by backend.
fn remote_metrics(out: &mut String, prefix: &str, backend: &str, c: &SourceCounters) {
    use std::fmt::Write as _;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut labelled = vec![
        ("bytes_total", "Body bytes received.", &c.bytes),
        (
            "errors_total",
            "Requests that failed or timed out.",
            &c.errors,
        ),
        (
            "timeouts_total",
            "Requests past their deadline.",
            &c.timeouts,
        ),
    ];
    if prefix == "iiifd_source" {
        labelled.extend([
            (
                "block_hits_total",
                "Blocks of ranged reads found in memory.",
                &c.block_hits,
            ),
            (
                "block_misses_total",
                "Blocks of ranged reads fetched.",
                &c.block_misses,
            ),
            (
                "cache_hits_total",
                "Whole sources found in the disk cache.",
                &c.cache_hits,
            ),
            (
                "cache_misses_total",
                "Whole sources downloaded.",
                &c.cache_misses,
            ),
        ]);
    }
    let _ = writeln!(
        out,
        "# HELP {prefix}_requests_total Requests made, by kind.\n# TYPE {prefix}_requests_total counter"
    );
    let ops = [
        ("head", &c.heads),
        ("get", &c.gets),
        ("list", &c.lists),
        ("put", &c.puts),
        ("delete", &c.deletes),
    ];
    for (op, value) in ops {
        let _ = writeln!(
            out,
            "{prefix}_requests_total{{backend=\"{backend}\",op=\"{op}\"}} {}",
            load(value)
        );
    }
    for (name, help, value) in labelled {
        let _ = writeln!(
            out,
            "# HELP {prefix}_{name} {help}\n# TYPE {prefix}_{name} counter\n{prefix}_{name}{{backend=\"{backend}\"}} {}",
            load(value)
        );
    }
    c.latency.render_into(
        out,
        &format!("{prefix}_request_duration_seconds"),
        "Duration of requests.",
        &format!("backend=\"{backend}\""),
    );
}
