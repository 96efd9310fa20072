//! The request pipeline without HTTP, steps 3 to 8 of the crate's flow: locate and probe the
//! source, canonicalise, key, look the key up in the store, and otherwise render once (single
//! flight, [`flight`]) on the pool and persist.
//!
//! Image requests come in two steps so that conditional requests are answered from the key alone:
//! [`Pipeline::prepare`] does everything up to the key (no pixels; optionally the store lookup in
//! the same trip to the blocking threads), [`Pipeline::deliver`] finds or produces the bytes. A miss
//! costs one more trip: to a render worker, which checks the store once more (a render that finished
//! meanwhile stored it), renders, and persists. The crawl lane uses [`Pipeline::ensure`], which waits
//! for an idle worker. Returns domain types only; `http` turns them into responses.

pub(crate) mod flight;

use crate::access::{stricter, Degrade, Policy};
use crate::admission::{Admission, ClientKey, Lane};
use crate::bounded::BoundedCache;
use crate::error::{Error, Result};
use crate::iiif::canonical::{CanonicalRequest, ImageSize};
use crate::iiif::info::{extra_properties, tile_within, Extras};
use crate::iiif::parse::ImageRequest;
use crate::iiif::Format;
use crate::iiif::Limits;
use crate::key::DerivativeKey;
use crate::metrics::Metrics;
use crate::render::cache::DecodedCache;
use crate::render::plan::{self, Reading};
use crate::render::pool::{PoolError, RenderPool, Ticket, Worker};
use crate::render::probe::{self, Probe, SourceLimits, PROBE_VERSION};
use crate::render::{self, tiled_copy, EncodeSettings, RenderError, SourceRef};
use crate::source::{Backend, Object, SourceError};
use crate::store::{Hit, ProbeRecord, Store};
use bytes::Bytes;
use flight::{Flights, Role};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Located sources kept in memory (the sled probe cache behind it keeps everything).
const LOCATED_ENTRIES: usize = 20_000;

/// How long the render pool must have been idle before a tiled copy is written.
const COPY_AFTER_IDLE: Duration = Duration::from_millis(500);

/// What the pipeline is configured with.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) limits: Limits,
    pub(crate) source_limits: SourceLimits,
    pub(crate) encode: EncodeSettings,
    pub(crate) tiled_copy_min_pixels: u64,
    /// Hits are sent by the proxy (`X-Accel-Redirect`), so lookups need not read the file.
    pub(crate) accel: bool,
    /// The tile edge info.json advertises for sources without tiles of their own.
    pub(crate) tile_size: u32,
    /// info.json properties from the configuration (`[info]`).
    pub(crate) info_extras: Extras,
    /// Merge each image's sidecar over them (`info.sidecars`).
    pub(crate) sidecars: bool,
}

/// A located, probed source.
#[derive(Clone, Debug)]
pub(crate) struct Located {
    pub(crate) object: Object,
    pub(crate) probe: Probe,
}

impl Located {
    /// Its displayed size.
    pub(crate) fn size(&self) -> ImageSize {
        self.probe.size
    }
}

/// Whether the store was consulted for a prepared request, and what it said.
#[derive(Clone, Debug)]
pub(crate) enum Lookup {
    /// Not yet (a conditional request may not need it).
    Pending,
    /// The object is stored.
    Hit(Hit),
    /// It is not.
    Miss,
}

/// An image request resolved up to its key.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    pub(crate) identifier: String,
    pub(crate) source: Located,
    pub(crate) canonical: CanonicalRequest,
    pub(crate) key: DerivativeKey,
    pub(crate) lookup: Lookup,
}

/// How the bytes of a response are delivered.
#[derive(Debug)]
pub(crate) enum Body {
    /// iiifd sends them.
    Bytes(Bytes),
    /// The proxy sends the stored file at this path below `objects/` (`X-Accel-Redirect`).
    Accel(String),
}

/// Where a response came from (RFC 9211 `Cache-Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CacheStatus {
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
pub(crate) struct Delivered {
    pub(crate) body: Body,
    pub(crate) cache: CacheStatus,
}

/// What [`Pipeline::ensure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ensured {
    /// It was stored already (or another request stored it meanwhile).
    Stored,
    /// Rendered now: this many bytes.
    Rendered(u64),
}

/// One render's result, shared with the requests that waited for it.
#[derive(Clone, Debug)]
struct Produced {
    bytes: Bytes,
    stored: bool,
    /// Found in the store by the render worker's own check: nothing was rendered.
    found: bool,
}

/// The pipeline: a source backend, the store, the renderer and what they share.
pub(crate) struct Pipeline {
    source: Arc<dyn Backend>,
    store: Arc<Store>,
    pool: RenderPool,
    decoded: Arc<DecodedCache>,
    flights: Flights<Result<Produced, Arc<Error>>>,
    /// The background lane's own: a visitor never waits on a crawl's render, which starts only
    /// when no live render waits (a crawl's render that finds the visitor's stored is cheap).
    background_flights: Flights<Result<Produced, Arc<Error>>>,
    located: BoundedCache<String, Located>,
    /// Source versions found corrupt by a whole decode (fingerprint -> why): their info.json then
    /// answers the error their images do, instead of promising an image that never comes.
    corrupt: BoundedCache<String, String>,
    metrics: Arc<Metrics>,
    settings: Settings,
    /// Who renders first (lanes, classes).
    admission: Admission,
    /// Tiled copies being written, and sources that cannot have one.
    copies_building: Mutex<HashSet<DerivativeKey>>,
    /// Source versions known to have a tiled copy (their renders read levels, not the whole image).
    copies_known: BoundedCache<String, ()>,
    /// The encoder description of each format (part of every key), made once; indexed by
    /// `Format as usize` (the order of `Format::ALL`).
    encoders: [String; Format::ALL.len()],
}

impl Pipeline {
    /// Assemble the pipeline.
    pub(crate) fn new(
        source: Arc<dyn Backend>,
        store: Arc<Store>,
        pool: RenderPool,
        decoded: Arc<DecodedCache>,
        metrics: Arc<Metrics>,
        settings: Settings,
        admission: Admission,
    ) -> Pipeline {
        Pipeline {
            source,
            store,
            pool,
            decoded,
            flights: Flights::default(),
            background_flights: Flights::default(),
            located: BoundedCache::new(LOCATED_ENTRIES),
            corrupt: BoundedCache::new(LOCATED_ENTRIES),
            metrics,
            encoders: Format::ALL.map(|f| settings.encode.describe(f)),
            settings,
            admission,
            copies_building: Mutex::new(HashSet::new()),
            copies_known: BoundedCache::new(LOCATED_ENTRIES),
        }
    }

    /// The source backend.
    pub(crate) fn source(&self) -> &Arc<dyn Backend> {
        &self.source
    }

    /// The render pool.
    pub(crate) fn pool(&self) -> &RenderPool {
        &self.pool
    }

    /// The server limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.settings.limits
    }

    /// The admission rules.
    pub(crate) fn admission(&self) -> &Admission {
        &self.admission
    }

    /// What a client of `class` may see, given what the access rules allow (`gate`): the stricter
    /// of the two.
    pub(crate) fn degrade_for(&self, client: ClientKey, gate: Option<Degrade>) -> Option<Degrade> {
        match (self.admission.degrade(client.class), gate) {
            (None, g) => g,
            (a, None) => a,
            (Some(a), Some(g)) => match stricter(Policy::Degraded(a), Policy::Degraded(g)) {
                Policy::Degraded(d) => Some(d),
                Policy::Open | Policy::Restricted => Some(a),
            },
        }
    }

    /// Stop the render workers (after the last request).
    pub(crate) fn shutdown(&self) {
        self.pool.shutdown();
    }

    /// Locate `identifier` and read its size, from the caches when the object has not changed.
    /// The extra info.json properties of `identifier`: the configured ones, with its sidecar's over
    /// them when sidecars are on. A sidecar that cannot be read or is not valid is logged and left
    /// out: the image keeps its info.json.
    pub(crate) async fn info_extras(self: &Arc<Self>, identifier: &str) -> Extras {
        if !self.settings.sidecars {
            return self.settings.info_extras.clone();
        }
        let p = Arc::clone(self);
        let id = identifier.to_owned();
        let read = blocking(move || p.source.sidecar(&id)).await;
        let parsed = match read {
            Ok(Ok(Some(bytes))) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|v| match v {
                    serde_json::Value::Object(map) => {
                        extra_properties(&map).map_err(|e| e.to_string())
                    }
                    _ => Err("not a JSON object".into()),
                })
                .map(Some),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match parsed {
            Ok(Some(own)) => self.settings.info_extras.merged(&own),
            Ok(None) => self.settings.info_extras.clone(),
            Err(e) => {
                tracing::warn!(identifier, "sidecar ignored: {e}");
                self.settings.info_extras.clone()
            }
        }
    }

    pub(crate) async fn locate(self: &Arc<Self>, identifier: &str) -> Result<Located> {
        let p = Arc::clone(self);
        let identifier = identifier.to_owned();
        blocking(move || p.locate_blocking(&identifier)).await?
    }

    fn locate_blocking(&self, identifier: &str) -> Result<Located> {
        let located = self.locate_object(identifier)?;
        match self
            .corrupt
            .get(&located.object.fingerprint.as_str().to_owned())
        {
            Some(why) => Err(RenderError::Corrupt(why).into()),
            None => Ok(located),
        }
    }

    fn locate_object(&self, identifier: &str) -> Result<Located> {
        if let Some(cached) = self.located.get(identifier) {
            // One stat (or HEAD) tells whether the cached answer still holds.
            match self.source.refresh(&cached.object) {
                Ok(object) if object.fingerprint == cached.object.fingerprint => {
                    return Ok(Located {
                        object,
                        probe: cached.probe,
                    });
                }
                Ok(object) => {
                    let located = Located {
                        probe: self.probe(&object)?,
                        object,
                    };
                    self.located.insert(identifier.to_owned(), located.clone());
                    return Ok(located);
                }
                // Moved or removed: look for it afresh.
                Err(SourceError::NotFound(_)) => self.located.remove(&identifier.to_owned()),
                Err(e) => return Err(e.into()),
            }
        }
        let object = self.source.locate(identifier)?;
        let located = Located {
            probe: self.probe(&object)?,
            object,
        };
        self.located.insert(identifier.to_owned(), located.clone());
        Ok(located)
    }

    /// The probe of an object version: from the store's probe cache, or read from its header.
    fn probe(&self, object: &Object) -> Result<Probe> {
        let fp = object.fingerprint.as_str();
        if let Some(r) = self
            .store
            .probe_get(fp)
            .filter(|r| r.probe == PROBE_VERSION)
        {
            return Ok(Probe {
                size: ImageSize {
                    width: r.width,
                    height: r.height,
                },
                tile: (r.tile > 0).then_some(r.tile),
                reading: match r.reading {
                    1 => Reading::Scaled,
                    2 => Reading::Levels,
                    _ => Reading::Whole,
                },
            });
        }
        let reader = self.source.open(object)?;
        let probe = probe::probe(&*reader, &self.settings.source_limits)?;
        self.store.probe_put(
            fp,
            &ProbeRecord {
                width: probe.size.width,
                height: probe.size.height,
                tile: probe.tile.unwrap_or(0),
                reading: match probe.reading {
                    Reading::Whole => 0,
                    Reading::Scaled => 1,
                    Reading::Levels => 2,
                },
                probe: PROBE_VERSION,
            },
        );
        Ok(probe)
    }

    /// Resolve an image request up to its derivative key, without touching pixels. With `lookup`,
    /// the store is consulted in the same trip to the blocking threads (a hit then costs one hop).
    pub(crate) async fn prepare(
        self: &Arc<Self>,
        identifier: &str,
        request: &ImageRequest,
        degrade: Option<Degrade>,
        lookup: bool,
    ) -> Result<Prepared> {
        let p = Arc::clone(self);
        let (identifier, request) = (identifier.to_owned(), request.clone());
        blocking(move || {
            let (source, canonical, key) = p.key_within(&identifier, &request, degrade)?;
            let lookup = if lookup {
                p.lookup_blocking(&key, canonical.format().extension(), &identifier)
            } else {
                Lookup::Pending
            };
            Ok(Prepared {
                identifier,
                source,
                canonical,
                key,
                lookup,
            })
        })
        .await?
    }

    /// [`Pipeline::prepare`] without leaving the async thread, for a request whose answer is
    /// already in hand: the source located before and unchanged (by [`Backend::refresh_now`]),
    /// and, with `lookup`, the derivative in the store's memory tier. `None` whenever anything
    /// would need to wait (or fails: the blocking way then reports it), so the caller falls back
    /// to [`Pipeline::prepare`].
    pub(crate) fn prepare_now(
        &self,
        identifier: &str,
        request: &ImageRequest,
        degrade: Option<Degrade>,
        lookup: bool,
    ) -> Option<Prepared> {
        let cached = self.located.get(identifier)?;
        let source = Located {
            object: self.unchanged_now(&cached.object)?,
            probe: cached.probe,
        };
        let (canonical, key) = self.canonical_key(&source, request, degrade).ok()?;
        let lookup = if lookup {
            Lookup::Hit(self.store.lookup_hot(&key)?)
        } else {
            Lookup::Pending
        };
        Some(Prepared {
            identifier: identifier.to_owned(),
            source,
            canonical,
            key,
            lookup,
        })
    }

    /// A request resolved before to `object` and `key`, asked again (the hit memo): the hit when
    /// `object` is still the source's version (the same check [`Pipeline::prepare_now`] makes),
    /// was not found corrupt, and the derivative is in the store's memory tier. Never blocks;
    /// `None` sends the request the usual way.
    pub(crate) fn hit_again(&self, object: &Object, key: &DerivativeKey) -> Option<Hit> {
        self.unchanged_now(object)?;
        self.store.lookup_hot(key)
    }

    /// `object` as the backend has it now, when that is without waiting, still the same version,
    /// and not found corrupt; otherwise `None` (the blocking way then finds out what changed).
    fn unchanged_now(&self, object: &Object) -> Option<Object> {
        let now = match self.source.refresh_now(object)? {
            Ok(now) if now.fingerprint == object.fingerprint => now,
            _ => return None,
        };
        if self.corrupt.get(now.fingerprint.as_str()).is_some() {
            return None;
        }
        Some(now)
    }

    /// Steps 3 to 5: locate and probe the source, canonicalise, key. Blocks.
    pub(crate) fn key_blocking(
        &self,
        identifier: &str,
        request: &ImageRequest,
    ) -> Result<(Located, CanonicalRequest, DerivativeKey)> {
        self.key_within(identifier, request, None)
    }

    /// [`Pipeline::key_blocking`] for a visitor who may see the image at most as `degrade` allows:
    /// the request is answered at that resolution, under the key of the smaller image.
    fn key_within(
        &self,
        identifier: &str,
        request: &ImageRequest,
        degrade: Option<Degrade>,
    ) -> Result<(Located, CanonicalRequest, DerivativeKey)> {
        let source = self.locate_blocking(identifier)?;
        let (canonical, key) = self.canonical_key(&source, request, degrade)?;
        Ok((source, canonical, key))
    }

    /// Steps 4 and 5 for a located source: the canonical request (at most `degrade`'s resolution)
    /// and its key. Pure.
    fn canonical_key(
        &self,
        source: &Located,
        request: &ImageRequest,
        degrade: Option<Degrade>,
    ) -> Result<(CanonicalRequest, DerivativeKey)> {
        let size = source.size();
        let mut canonical = CanonicalRequest::resolve(request, size, &self.settings.limits)?;
        if let Some(d) = degrade {
            canonical = canonical.degraded(size, d.size(size));
        }
        let encoder = &self.encoders[canonical.format() as usize];
        let key = DerivativeKey::derive(&source.object.fingerprint, &canonical, encoder);
        Ok((canonical, key))
    }

    /// The local store, then the cluster's shared tier (before a render worker is taken).
    fn lookup_blocking(&self, key: &DerivativeKey, ext: &str, identifier: &str) -> Lookup {
        let read_body = !self.settings.accel;
        match self.store.lookup(key, ext, read_body) {
            Some(hit) => Lookup::Hit(hit),
            None => match self.store.lookup_shared(key, ext, identifier, read_body) {
                Some(hit) => Lookup::Hit(hit),
                None => Lookup::Miss,
            },
        }
    }

    /// The derivative for `prepared`: from the store when present, else rendered once (however many
    /// requests ask at the same moment) when `client`'s turn comes, persisted, and returned.
    pub(crate) async fn deliver(
        self: &Arc<Self>,
        prepared: Prepared,
        client: ClientKey,
    ) -> Result<Delivered> {
        let hot = match prepared.lookup {
            Lookup::Pending => self.store.lookup_hot(&prepared.key),
            _ => None,
        };
        let lookup = match (hot, &prepared.lookup) {
            (Some(hit), _) => Lookup::Hit(hit),
            (None, Lookup::Pending) => {
                let (p, key) = (Arc::clone(self), prepared.key);
                let ext = prepared.canonical.format().extension();
                let identifier = prepared.identifier.clone();
                blocking(move || p.lookup_blocking(&key, ext, &identifier)).await?
            }
            (None, done) => done.clone(),
        };
        if let Lookup::Hit(hit) = lookup {
            let body = match hit.bytes {
                Some(b) => Body::Bytes(b),
                None => Body::Accel(hit.relative_path),
            };
            return Ok(Delivered {
                body,
                cache: CacheStatus::Hit,
            });
        }
        let (produced, role) = match self.produce_once(prepared.clone(), Some(client)).await {
            // The render this request waited on was another client's, refused for that client's
            // excess: this request asks again in its own name.
            (Err(e), Role::Follower) if e.is_refusal() => {
                let (result, role) = self.produce_once(prepared, Some(client)).await;
                (result?, role)
            }
            (result, role) => (result?, role),
        };
        let cache = match (role, produced.stored || produced.found) {
            (Role::Follower, _) => {
                self.metrics.collapsed.fetch_add(1, Ordering::Relaxed);
                CacheStatus::Collapsed
            }
            (Role::Leader, _) if produced.found => CacheStatus::Hit,
            (Role::Leader, true) => CacheStatus::Stored,
            (Role::Leader, false) => CacheStatus::NotStored,
        };
        Ok(Delivered {
            body: Body::Bytes(produced.bytes),
            cache,
        })
    }

    /// Make sure `prepared` is stored, in the background lane: at most `crawl.max_workers` such
    /// renders at once, each started only when no live render waits for a thread, so live
    /// requests never queue behind crawl work.
    pub(crate) async fn ensure(self: &Arc<Self>, prepared: Prepared) -> Result<Ensured> {
        if matches!(prepared.lookup, Lookup::Hit(_)) {
            return Ok(Ensured::Stored);
        }
        let (produced, role) = self.produce_once(prepared, None).await;
        let produced = produced?;
        Ok(match role {
            Role::Leader if !produced.found => Ensured::Rendered(produced.bytes.len() as u64),
            Role::Leader | Role::Follower => Ensured::Stored,
        })
    }

    /// Single flight around [`Pipeline::produce`]: one render per key however many wait, in the
    /// name of `client` (`None`: the server's own, background work).
    async fn produce_once(
        self: &Arc<Self>,
        prepared: Prepared,
        client: Option<ClientKey>,
    ) -> (Result<Produced>, Role) {
        let p = Arc::clone(self);
        let key = prepared.key;
        let flights = match client {
            Some(_) => &self.flights,
            None => &self.background_flights,
        };
        let (result, role) = flights
            .run(key, async move {
                p.produce(prepared, client).await.map_err(Arc::new)
            })
            .await;
        let result = match result {
            None => Err(Error::RenderPanicked),
            Some(Err(e)) => Err(Error::Shared(e)),
            Some(Ok(p)) => Ok(p),
        };
        (result, role)
    }

    /// One trip to a render worker, when the scheduler gives `client` its turn: check the store
    /// once more, render (from the source's tiled copy when it has one and the pixels are not in
    /// memory), persist. A cheap render that needs more memory than a reserved thread may give
    /// goes again, as a heavy one.
    async fn produce(
        self: &Arc<Self>,
        prepared: Prepared,
        client: Option<ClientKey>,
    ) -> Result<Produced> {
        let size = prepared.source.size();
        let fingerprint = prepared.source.object.fingerprint.clone();
        let copy_key = tiled_copy::wanted(
            size,
            self.settings.tiled_copy_min_pixels,
            &prepared.canonical,
        )
        .then(|| tiled_copy::key(&fingerprint));
        let fp = fingerprint.as_str().to_owned();
        let job = RenderJob {
            source: Arc::clone(&self.source),
            store: Arc::clone(&self.store),
            cache: Arc::clone(&self.decoded),
            settings: self.settings.clone(),
            copy_key,
            prepared: prepared.clone(),
        };
        let ticket = self.ticket(&prepared, client);
        let mut outcome = self.pool.run(ticket, job.clone().into_fn()).await;
        let too_large_for_a_reserved_thread = matches!(
            &outcome,
            Ok((Err(Error::Render(e)), true)) if e.is_too_large()
        );
        if too_large_for_a_reserved_thread {
            let heavy = Ticket {
                lane: Lane::Heavy,
                ..ticket
            };
            outcome = self.pool.run(heavy, job.into_fn()).await;
        }
        let (produced, used_copy, wants_copy, elapsed) = match outcome.map(|(r, _)| r) {
            Ok(Err(Error::Render(RenderError::Corrupt(why)))) => {
                self.corrupt.insert(fp, why.clone());
                return Err(RenderError::Corrupt(why).into());
            }
            Ok(result) => result?,
            Err(PoolError::Busy) | Err(PoolError::Closed) => return Err(Error::Busy),
            Err(PoolError::TooMany) => return Err(Error::TooManyRequests),
            Err(PoolError::Panicked) => return Err(Error::RenderPanicked),
        };
        if !produced.found {
            self.metrics.observe_render(elapsed);
        }
        if used_copy {
            self.copies_known.insert(fp, ());
            self.metrics
                .tiled_copy_renders
                .fetch_add(1, Ordering::Relaxed);
        }
        if let (true, Some(key)) = (wants_copy, copy_key) {
            self.start_tiled_copy(key, prepared);
        }
        Ok(produced)
    }

    /// Where a render of `prepared` for `client` waits its turn: its lane (from what it asks and
    /// what it would decode) and its estimated time.
    fn ticket(&self, prepared: &Prepared, client: Option<ClientKey>) -> Ticket {
        /// Render throughput assumed until a render's own time is known (about 100 Mpx/s: decode,
        /// resize and encode of small outputs on one core).
        const SECS_PER_PIXEL: f64 = 1e-8;
        let req = &prepared.canonical;
        let (size, probe) = (prepared.source.size(), prepared.source.probe);
        let fp = prepared.source.object.fingerprint.as_str();
        let in_memory =
            render::level_in_memory(&self.decoded, &prepared.source.object.fingerprint, req);
        // A flat source with a tiled copy is read like a pyramid when its pixels are not in memory.
        let reading = if !in_memory && self.copies_known.get(fp).is_some() {
            Reading::Levels
        } else {
            probe.reading
        };
        let decode = plan::decode_pixels(req, size, reading, in_memory);
        let limits = &self.settings.limits;
        let tile = tile_within(probe.tile.unwrap_or(self.settings.tile_size), limits);
        let lane = match client {
            None => Lane::Background,
            Some(_) => self.admission.lane(req, size, tile, limits, decode),
        };
        let output = u64::from(req.width()) * u64::from(req.height());
        Ticket {
            client: client.unwrap_or(ClientKey::INTERNAL),
            lane,
            estimate: Duration::from_secs_f64((decode + output) as f64 * SECS_PER_PIXEL),
        }
    }

    /// Write the tiled copy of a large flat source in the background, in the crawl's way: only when
    /// a render worker is idle, so no live request waits behind it. One build per source at a time;
    /// a source that cannot have a copy (alpha, 16-bit, too large to decode) stays marked and is not
    /// tried again until the process restarts.
    fn start_tiled_copy(self: &Arc<Self>, key: DerivativeKey, prepared: Prepared) {
        let first = self
            .copies_building
            .lock()
            .map(|mut set| set.insert(key))
            .unwrap_or(false);
        if !first {
            return;
        }
        self.metrics
            .tiled_copies_wanted
            .fetch_add(1, Ordering::Relaxed);
        let p = Arc::clone(self);
        tokio::spawn(async move {
            // Wait for the viewer's burst to pass: half a second with no render queued or running.
            // The copy serves later sessions; the one that triggered it has the decoded cache.
            p.pool.idle_for(COPY_AFTER_IDLE).await;
            let (source, store, cache) = (
                Arc::clone(&p.source),
                Arc::clone(&p.store),
                Arc::clone(&p.decoded),
            );
            let identifier = prepared.identifier.clone();
            let fp = prepared.source.object.fingerprint.as_str().to_owned();
            let ticket = Ticket {
                client: ClientKey::INTERNAL,
                lane: Lane::Background,
                estimate: Duration::from_secs(1),
            };
            let job = move |worker: &Worker| -> Result<bool> {
                let max = worker.decode_budget;
                let reader = source.open(&prepared.source.object)?;
                let src = SourceRef {
                    reader: &*reader,
                    fingerprint: &prepared.source.object.fingerprint,
                };
                let Some(plan) = tiled_copy::plan(src, &cache, max)? else {
                    return Ok(false);
                };
                let icc = render::source_profile(&*reader);
                store.put_with(
                    &key,
                    tiled_copy::EXTENSION,
                    &prepared.identifier,
                    &mut |f| plan.write(src, &cache, icc.as_deref(), f),
                )?;
                Ok(true)
            };
            let keep_marked = match p.pool.run(ticket, job).await {
                Ok(Ok(true)) => {
                    p.metrics.tiled_copies.fetch_add(1, Ordering::Relaxed);
                    p.copies_known.insert(fp, ());
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
                if let Ok(mut set) = p.copies_building.lock() {
                    set.remove(&key);
                }
            }
        });
    }
}

/// What one render on a worker needs; cloned when a render goes round again (see
/// [`Pipeline::produce`]).
#[derive(Clone)]
struct RenderJob {
    source: Arc<dyn Backend>,
    store: Arc<Store>,
    cache: Arc<DecodedCache>,
    settings: Settings,
    copy_key: Option<DerivativeKey>,
    prepared: Prepared,
}

/// A render's result: what was produced, whether a tiled copy was read, whether the source wants
/// one, and how long the render took.
type Rendered = Result<(Produced, bool, bool, Duration)>;

impl RenderJob {
    /// The job for the pool: its result, and whether it ran on a reserved thread.
    fn into_fn(self) -> impl FnOnce(&Worker) -> (Rendered, bool) + Send + 'static {
        move |worker: &Worker| (self.run(worker.decode_budget), worker.reserved)
    }

    /// Check the store once more, render within `budget`, persist.
    fn run(self, budget: u64) -> Rendered {
        let RenderJob {
            source,
            store,
            cache,
            settings,
            copy_key,
            prepared,
        } = self;
        let key = prepared.key;
        if let Some(hit) = store.recheck(&key, prepared.canonical.format().extension()) {
            if let Some(bytes) = hit.bytes {
                let found = Produced {
                    bytes,
                    stored: true,
                    found: true,
                };
                return Ok((found, false, false, Duration::ZERO));
            }
        }
        let started = Instant::now();
        let canonical = &prepared.canonical;
        let fingerprint = &prepared.source.object.fingerprint;
        // A tiled copy's tiles are JPEG: a lossless output (png, tif, gif) is always rendered from
        // the source, so its pixels do not depend on whether the copy exists yet.
        let copy_readable = canonical.format().is_lossy();
        let copy = copy_key.and_then(|k| store.open_object(&k, tiled_copy::EXTENSION));
        // Pixels already in memory beat reading tiles from disk: the copy is for the sessions
        // that come after the decoded cache has moved on.
        let from_copy = copy
            .as_ref()
            .filter(|_| copy_readable)
            .filter(|_| !render::level_in_memory(&cache, fingerprint, canonical))
            .and_then(|c| render::render_tiled_copy(&**c, canonical, &settings.encode, budget));
        let (bytes, used_copy, wants_copy) = match from_copy {
            Some(result) => (result?, true, false),
            None => {
                let reader = source.open(&prepared.source.object)?;
                let src = SourceRef {
                    reader: &*reader,
                    fingerprint,
                };
                let bytes = render::render(src, &cache, canonical, &settings.encode, budget)?;
                let wants = copy_key.is_some() && copy.is_none() && render::copy_helps(&*reader);
                (bytes, false, wants)
            }
        };
        let elapsed = started.elapsed();
        let stored = match store.put(
            &key,
            canonical.format().extension(),
            &bytes,
            &prepared.identifier,
        ) {
            Ok(()) => true,
            Err(e) => {
                // Flask-IIIF's IIIF_CACHE_IGNORE_ERRORS, as the default: the viewer still gets
                // its image.
                tracing::warn!(key = %key.to_hex(), "could not store derivative: {e}");
                false
            }
        };
        let produced = Produced {
            bytes: Bytes::from(bytes),
            stored,
            found: false,
        };
        Ok((produced, used_copy, wants_copy, elapsed))
    }
}

/// Run blocking work on tokio's blocking threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))
}
