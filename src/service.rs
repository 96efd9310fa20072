//! The request pipeline without HTTP: locate -> probe (cached) -> canonicalise -> key -> store lookup ->
//! render (single flight, pool) -> persist.
//!
//! Returns domain types only; [`crate::http`] turns them into responses. Image requests come in two
//! steps so that conditional requests can be answered from the key alone: [`App::prepare`] does
//! everything up to the key (no pixels touched), [`App::deliver`] finds or produces the bytes.

use crate::config::Config;
use crate::crawl::Crawler;
use crate::error::{Error, Result};
use crate::flight::{Flights, Role};
use crate::iiif::canonical::{CanonicalRequest, ImageSize, Rect};
use crate::iiif::info::{info_json, InfoInput};
use crate::iiif::parse::ImageRequest;
use crate::iiif::{ApiVersion, Limits};
use crate::key::DerivativeKey;
use crate::metrics::{self, Metrics};
use crate::render::cache::DecodedCache;
use crate::render::pool::{PoolError, RenderPool};
use crate::render::{self, tiled_copy, EncodeSettings};
use crate::source::{self, Fingerprint, Probe, SourceFile, SourceLimits, Sources};
use crate::store::index::InfoRecord;
use crate::store::{Hit, Recovery, Store, StoreSettings};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Entries kept in the in-memory info cache before it is cleared; the sled info cache behind it keeps
/// everything.
const INFO_CACHE_ENTRIES: usize = 10_000;

/// Everything a request needs, shared by all connections.
pub struct App {
    config: Config,
    sources: Sources,
    pool: RenderPool,
    store: Arc<Store>,
    flights: Flights<Result<Rendered, Arc<Error>>>,
    metrics: Metrics,
    limits: Limits,
    source_limits: SourceLimits,
    encode: EncodeSettings,
    info_cache: RwLock<HashMap<PathBuf, (Fingerprint, Probe)>>,
    crawler: Crawler,
    decoded: Arc<DecodedCache>,
    crawl_slots: tokio::sync::Semaphore,
    /// identifier -> the file it resolved to, so the hot path costs one `stat` instead of a search
    /// through the candidate extensions.
    path_cache: RwLock<HashMap<String, PathBuf>>,
    /// Tiled copies being written, and sources that cannot have one.
    copies_building: Mutex<HashSet<DerivativeKey>>,
}

/// How long the render pool must have been idle before a tiled copy is written.
const COPY_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(500);

/// A located, probed source.
#[derive(Clone, Debug)]
pub struct Source {
    /// The file.
    pub file: SourceFile,
    /// Its size.
    pub size: ImageSize,
    /// Its own tile width, when it is a tiled pyramid.
    pub tile: Option<u32>,
}

/// An image request resolved up to its key.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The identifier.
    pub identifier: String,
    /// The source.
    pub source: Source,
    /// The canonical request.
    pub canonical: CanonicalRequest,
    /// The derivative key.
    pub key: DerivativeKey,
    /// The stored object, when [`App::prepare`] was asked to look it up and found it.
    pub hit: Option<Hit>,
    /// Whether [`App::prepare`] already looked the key up.
    pub looked_up: bool,
}

/// A freshly rendered derivative.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// Encoded bytes.
    pub bytes: Bytes,
    /// Whether it was persisted.
    pub stored: bool,
}

/// How the bytes of a response are delivered.
#[derive(Debug)]
pub enum Body {
    /// iiifd sends them.
    Bytes(Bytes),
    /// The proxy sends the stored file at this path below `objects/` (`X-Accel-Redirect`).
    Accel(String),
}

/// Where a response came from (RFC 9211 `Cache-Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the store.
    Hit,
    /// Rendered and stored.
    Stored,
    /// Rendered but not stored (the store could not write).
    NotStored,
    /// Waited on another request's render.
    Collapsed,
}

/// A derivative ready to send.
#[derive(Debug)]
pub struct Delivered {
    /// The body.
    pub body: Body,
    /// Its origin.
    pub cache: CacheStatus,
}

impl App {
    /// Build the application state from a validated configuration: open the image root and the store
    /// (running its recovery), start the render pool and the evictor.
    pub fn new(config: Config) -> std::io::Result<(App, Recovery)> {
        let sources = Sources::new(&config.images).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("image directory {}: {e}", config.images.display()),
            )
        })?;
        let (store, recovery) = Store::open(store_settings(&config)).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("store {}: {e}", config.store.path.display()),
            )
        })?;
        let store = Arc::new(store);
        store.start_evictor()?;
        let pool = RenderPool::new(config.render_workers(), config.render.queue);
        let crawl_slots = config.crawl_workers();
        let decoded_budget = config.render.decoded_cache_bytes;
        let app = App {
            limits: config.limits(),
            source_limits: SourceLimits {
                max_source_pixels: config.limits.max_source_pixels,
                max_source_bytes: config.limits.max_source_bytes,
            },
            encode: EncodeSettings {
                jpeg_quality: config.render.jpeg_quality,
                webp_quality: config.render.webp_quality,
                tile_passthrough: config.render.tile_passthrough,
            },
            sources,
            pool,
            store,
            flights: Flights::default(),
            metrics: Metrics::default(),
            config,
            info_cache: RwLock::new(HashMap::new()),
            path_cache: RwLock::new(HashMap::new()),
            copies_building: Mutex::new(HashSet::new()),
            crawler: Crawler::default(),
            decoded: Arc::new(DecodedCache::new(decoded_budget)),
            crawl_slots: tokio::sync::Semaphore::new(crawl_slots),
        };
        Ok((app, recovery))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The render pool.
    pub fn pool(&self) -> &RenderPool {
        &self.pool
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The service metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The image root.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// Stop background work and flush the index (at shutdown, after the last request).
    pub fn shutdown(&self) {
        self.pool.shutdown();
        self.store.stop_evictor();
        if let Err(e) = self.store.flush() {
            tracing::warn!("flushing the store index failed: {e}");
        }
    }

    /// Locate the source and read its size, from the info caches when the file has not changed.
    pub async fn source(self: &Arc<Self>, identifier: &str) -> Result<Source> {
        let app = Arc::clone(self);
        let identifier = identifier.to_owned();
        // File-system and sled calls block: run them on tokio's blocking threads, not the async ones.
        blocking(move || app.source_blocking(&identifier)).await?
    }

    fn locate_cached(&self, identifier: &str) -> Result<SourceFile> {
        let cached = self
            .path_cache
            .read()
            .ok()
            .and_then(|c| c.get(identifier).cloned());
        if let Some(path) = cached {
            if let Ok(meta) = std::fs::metadata(&path) {
                if meta.is_file() {
                    return Ok(SourceFile {
                        fingerprint: Fingerprint::of(&meta),
                        path,
                    });
                }
            }
        }
        let file = self.sources.locate(identifier)?;
        if let Ok(mut cache) = self.path_cache.write() {
            if cache.len() >= INFO_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(identifier.to_owned(), file.path.clone());
        }
        Ok(file)
    }

    fn source_blocking(&self, identifier: &str) -> Result<Source> {
        let file = self.locate_cached(identifier)?;
        if let Ok(cache) = self.info_cache.read() {
            if let Some((fp, probe)) = cache.get(&file.path) {
                if *fp == file.fingerprint {
                    return Ok(Source {
                        size: probe.size,
                        tile: probe.tile,
                        file,
                    });
                }
            }
        }
        let fp = file.fingerprint;
        let probe = match self.store.info_get(&file.path) {
            Some(r)
                if (r.len, r.mtime_ns, r.inode, r.probe)
                    == (fp.len, fp.mtime_ns, fp.inode, source::PROBE_VERSION) =>
            {
                Probe {
                    size: ImageSize {
                        width: r.width,
                        height: r.height,
                    },
                    tile: (r.tile > 0).then_some(r.tile),
                }
            }
            _ => {
                let probe = source::probe(&file, &self.source_limits)?;
                let record = InfoRecord {
                    len: fp.len,
                    mtime_ns: fp.mtime_ns,
                    inode: fp.inode,
                    width: probe.size.width,
                    height: probe.size.height,
                    tile: probe.tile.unwrap_or(0),
                    probe: source::PROBE_VERSION,
                };
                self.store.info_put(&file.path, &record);
                probe
            }
        };
        if let Ok(mut cache) = self.info_cache.write() {
            if cache.len() >= INFO_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(file.path.clone(), (fp, probe));
        }
        Ok(Source {
            file,
            size: probe.size,
            tile: probe.tile,
        })
    }

    /// The info.json document of `identifier` for `version`, with `id` = `base`.
    pub async fn info(
        self: &Arc<Self>,
        version: ApiVersion,
        identifier: &str,
        base: &str,
    ) -> Result<(String, Source)> {
        let source = self.source(identifier).await?;
        let input = InfoInput {
            id: base,
            size: source.size,
            limits: self.limits,
            tile: source.tile.unwrap_or(self.config.tile_size),
        };
        Ok((info_json(version, &input), source))
    }

    /// Resolve an image request up to its derivative key, without touching pixels. With `lookup`, the
    /// store is consulted in the same trip to the blocking threads (a hit then costs one hop).
    pub async fn prepare(
        self: &Arc<Self>,
        identifier: &str,
        request: &ImageRequest,
        lookup: bool,
    ) -> Result<Prepared> {
        let app = Arc::clone(self);
        let (identifier, request) = (identifier.to_owned(), request.clone());
        let accel = !self.config.store.accel_redirect.is_empty();
        blocking(move || {
            let source = app.source_blocking(&identifier)?;
            let canonical = CanonicalRequest::resolve(&request, source.size, &app.limits)?;
            let encoder = app.encode.describe(canonical.format());
            let key = DerivativeKey::derive(&source.file.fingerprint, &canonical, &encoder);
            let hit = if lookup {
                app.store.lookup(&key, !accel)
            } else {
                None
            };
            Ok(Prepared {
                identifier,
                source,
                canonical,
                key,
                hit,
                looked_up: lookup,
            })
        })
        .await?
    }

    async fn lookup(self: &Arc<Self>, key: DerivativeKey, read_body: bool) -> Result<Option<Hit>> {
        let store = Arc::clone(&self.store);
        blocking(move || store.lookup(&key, read_body)).await
    }

    /// The derivative for `prepared`: from the store when present, else rendered once (however many
    /// requests ask at the same moment), persisted, and returned.
    pub async fn deliver(self: &Arc<Self>, mut prepared: Prepared) -> Result<Delivered> {
        let accel = !self.config.store.accel_redirect.is_empty();
        let hit = match (prepared.hit.take(), prepared.looked_up) {
            (Some(hit), _) => Some(hit),
            (None, true) => None,
            (None, false) => self.lookup(prepared.key, !accel).await?,
        };
        if let Some(hit) = hit {
            let body = match hit.bytes {
                Some(b) => Body::Bytes(Bytes::from(b)),
                None => Body::Accel(hit.relative_path),
            };
            return Ok(Delivered {
                body,
                cache: CacheStatus::Hit,
            });
        }
        let app = Arc::clone(self);
        let work = prepared;
        let key = work.key;
        let (result, role) = self
            .flights
            .run(key, async move {
                app.render_and_store(&work).await.map_err(Arc::new)
            })
            .await;
        let rendered = match result {
            None => return Err(Error::RenderPanicked),
            Some(Err(e)) => return Err(Error::Shared(e)),
            Some(Ok(r)) => r,
        };
        let cache = match (role, rendered.stored) {
            (Role::Follower, _) => {
                self.metrics.collapsed.fetch_add(1, Ordering::Relaxed);
                CacheStatus::Collapsed
            }
            (Role::Leader, true) => CacheStatus::Stored,
            (Role::Leader, false) => CacheStatus::NotStored,
        };
        Ok(Delivered {
            body: Body::Bytes(rendered.bytes),
            cache,
        })
    }

    /// Render on the pool and persist. Checks the store once more first: a render that finished between
    /// this request's lookup and its flight has already stored the object.
    pub async fn render_and_store(self: &Arc<Self>, prepared: &Prepared) -> Result<Rendered> {
        let store = Arc::clone(&self.store);
        let key = prepared.key;
        if let Some(Some(bytes)) =
            blocking(move || store.lookup(&key, true).map(|h| h.bytes)).await?
        {
            return Ok(Rendered {
                bytes: Bytes::from(bytes),
                stored: true,
            });
        }
        let started = Instant::now();
        let bytes = Bytes::from(self.render(prepared).await?);
        self.metrics.observe_render(started.elapsed());
        let store = Arc::clone(&self.store);
        let (data, ext, id) = (
            bytes.clone(),
            prepared.canonical.format().extension(),
            prepared.identifier.clone(),
        );
        let stored = match blocking(move || store.put(&key, ext, &data, &id)).await? {
            Ok(()) => true,
            Err(e) => {
                // Flask-IIIF's IIIF_CACHE_IGNORE_ERRORS, as the default: the viewer still gets its image.
                tracing::warn!(key = %key.to_hex(), "could not store derivative: {e}");
                false
            }
        };
        Ok(Rendered { bytes, stored })
    }

    /// The crawl jobs.
    pub fn crawler(&self) -> &Crawler {
        &self.crawler
    }

    /// Render and store in the crawl's low-priority lane: at most `crawl.max_workers` at once, and
    /// only when a render worker is idle, so live requests never queue behind crawl work. Returns the
    /// bytes rendered (0 when another request rendered it meanwhile).
    pub async fn render_low_priority(self: &Arc<Self>, prepared: Prepared) -> Result<u64> {
        let _slot = self.crawl_slots.acquire().await.map_err(|_| Error::Busy)?;
        while self.pool.pending() >= self.pool.size() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let app = Arc::clone(self);
        let key = prepared.key;
        let (result, role) = self
            .flights
            .run(key, async move {
                app.render_and_store(&prepared).await.map_err(Arc::new)
            })
            .await;
        match result {
            None => Err(Error::RenderPanicked),
            Some(Err(e)) => Err(Error::Shared(e)),
            Some(Ok(r)) if role == Role::Leader => Ok(r.bytes.len() as u64),
            Some(Ok(_)) => Ok(0),
        }
    }

    /// Render a prepared request on the pool.
    pub async fn render(self: &Arc<Self>, prepared: &Prepared) -> Result<Vec<u8>> {
        let path = prepared.source.file.path.clone();
        let fp = prepared.source.file.fingerprint;
        let cache_key = format!(
            "{}\0{}:{}:{}",
            path.display(),
            fp.len,
            fp.mtime_ns,
            fp.inode
        );
        let canonical = prepared.canonical.clone();
        let encode = self.encode;
        let max_decode = self.config.render.max_decode_bytes;
        let cache = Arc::clone(&self.decoded);
        let size = prepared.source.size;
        let min = self.config.render.tiled_copy_min_pixels;
        let copy_key = (min > 0 && u64::from(size.width) * u64::from(size.height) >= min)
            .then(|| DerivativeKey::tiled_copy(&fp, &path, tiled_copy::DESCRIPTION));
        // A viewer zooming in asks for parts; a thumbnail of the whole image does not need a copy.
        let whole = prepared.canonical.region()
            == (Rect {
                x: 0,
                y: 0,
                w: size.width,
                h: size.height,
            });
        let store = Arc::clone(&self.store);
        let (copy_path, job_path) = (path.clone(), path);
        let copy_cache_key = cache_key.clone();
        let job = move || {
            let copy = copy_key.and_then(|k| {
                store
                    .lookup(&k, false)
                    .map(|_| store.object_path(&k, tiled_copy::EXTENSION))
            });
            // Pixels already in memory beat reading tiles from disk: the copy is for the sessions
            // that come after the decoded cache has moved on.
            let from_copy = copy
                .as_deref()
                .filter(|_| !render::level_in_memory(&cache, &cache_key, &canonical))
                .and_then(|c| render::render_tiled_copy(c, &canonical, &encode, max_decode));
            if let Some(result) = from_copy {
                return result.map(|bytes| (bytes, true, false));
            }
            let source = render::Source {
                path: &job_path,
                cache_key: &cache_key,
            };
            let bytes = render::render(&source, &cache, &canonical, &encode, max_decode)?;
            let wants_copy =
                copy_key.is_some() && copy.is_none() && !whole && render::flat_source(&job_path);
            Ok((bytes, false, wants_copy))
        };
        match self.pool.run(job).await {
            Ok(Ok((bytes, from_copy, wants_copy))) => {
                if from_copy {
                    self.metrics
                        .tiled_copy_renders
                        .fetch_add(1, Ordering::Relaxed);
                }
                if let (true, Some(key)) = (wants_copy, copy_key) {
                    let id = prepared.identifier.clone();
                    self.start_tiled_copy(key, copy_path, copy_cache_key, id);
                }
                Ok(bytes)
            }
            Ok(Err(e)) => Err(e),
            Err(PoolError::Busy) => Err(Error::Busy),
            Err(PoolError::Panicked) => Err(Error::RenderPanicked),
            Err(PoolError::Closed) => Err(Error::Busy),
        }
    }

    /// Write the tiled copy of a large flat source in the background, in the crawl's way: only when a
    /// render worker is idle, so no live request waits behind it. One build per source at a time; a
    /// source that cannot have a copy (alpha, 16-bit, too large to decode) stays marked and is not
    /// tried again until the process restarts.
    fn start_tiled_copy(
        self: &Arc<Self>,
        key: DerivativeKey,
        path: PathBuf,
        cache_key: String,
        identifier: String,
    ) {
        let first = self
            .copies_building
            .lock()
            .map(|mut set| set.insert(key))
            .unwrap_or(false);
        if !first {
            return;
        }
        let app = Arc::clone(self);
        tokio::spawn(async move {
            // Wait for the viewer's burst to pass: half a second with no render queued or running.
            // The copy serves later sessions; the one that triggered it has the decoded cache.
            let mut idle_since: Option<Instant> = None;
            loop {
                if app.pool.pending() > 0 {
                    idle_since = None;
                } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= COPY_AFTER_IDLE {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let store = Arc::clone(&app.store);
            let cache = Arc::clone(&app.decoded);
            let max = app.config.render.max_decode_bytes;
            let id = identifier.clone();
            let job = move || -> Result<bool> {
                let source = render::Source {
                    path: &path,
                    cache_key: &cache_key,
                };
                let Some(levels) = tiled_copy::levels(&source, &cache, max)? else {
                    return Ok(false);
                };
                store
                    .put_with(&key, tiled_copy::EXTENSION, &id, &mut |f| {
                        tiled_copy::write(&levels, f)
                    })
                    .map_err(|e| Error::Internal(format!("storing the tiled copy: {e}")))?;
                Ok(true)
            };
            let keep_marked = match app.pool.run(job).await {
                Ok(Ok(true)) => {
                    app.metrics.tiled_copies.fetch_add(1, Ordering::Relaxed);
                    false
                }
                Ok(Ok(false)) => true,
                Ok(Err(e)) => {
                    tracing::warn!(%identifier, "tiled copy not written: {e}");
                    false
                }
                Err(_) => false,
            };
            if !keep_marked {
                if let Ok(mut set) = app.copies_building.lock() {
                    set.remove(&key);
                }
            }
        });
    }

    /// The Prometheus exposition of every metric.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        self.metrics.render_into(&mut out);
        let c = &self.store.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        metrics::counter(
            &mut out,
            "iiifd_store_hits_total",
            "Derivatives served from the store.",
            load(&c.hits),
        );
        metrics::counter(
            &mut out,
            "iiifd_store_misses_total",
            "Store lookups that found nothing usable.",
            load(&c.misses),
        );
        metrics::counter(
            &mut out,
            "iiifd_store_evictions_total",
            "Derivatives evicted for the budget.",
            load(&c.evictions),
        );
        metrics::counter(
            &mut out,
            "iiifd_store_write_errors_total",
            "Derivatives that could not be stored.",
            load(&c.write_errors),
        );
        metrics::counter(
            &mut out,
            "iiifd_store_repairs_total",
            "Stored derivatives found missing, short or corrupt.",
            load(&c.repairs),
        );
        let stats = self.store.stats();
        metrics::gauge(
            &mut out,
            "iiifd_store_bytes",
            "Bytes in the store.",
            stats.bytes,
        );
        metrics::gauge(
            &mut out,
            "iiifd_store_objects",
            "Derivatives in the store.",
            stats.objects,
        );
        metrics::gauge(
            &mut out,
            "iiifd_store_max_bytes",
            "The store's budget.",
            stats.max_bytes,
        );
        metrics::gauge(
            &mut out,
            "iiifd_pool_pending",
            "Renders queued or running.",
            self.pool.pending() as u64,
        );
        metrics::gauge(
            &mut out,
            "iiifd_pool_workers",
            "Render threads.",
            self.pool.size() as u64,
        );
        out
    }
}

/// The store settings of a configuration.
pub fn store_settings(config: &Config) -> StoreSettings {
    StoreSettings {
        path: config.store.path.clone(),
        max_bytes: config.store.max_bytes,
        min_free_bytes: config.store.min_free_bytes,
        verify_reads: config.store.verify_reads,
        fsync: config.store.fsync,
    }
}

/// Run blocking work on tokio's blocking threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))
}
