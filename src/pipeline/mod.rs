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
mod prepare;
mod produce;

use crate::access::{stricter, Degrade, Policy};
use crate::admission::{Admission, ClientKey, Lane};
use crate::bounded::{BoundedCache, CacheReport, ENTRY_OVERHEAD};
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
use crate::render::{self, tiled_copy, EncodeSettings, RenderError, Route, SourceRef};
use crate::source::{Backend, Object, SourceError};
use crate::store::{Hit, ProbeRecord, Store};
use bytes::Bytes;
use flight::{Flights, Role};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of located sources kept in memory (about 20,000 of them; the sled probe cache behind it
/// keeps everything).
const LOCATED_BYTES: u64 = 8 << 20;

/// Bytes of source versions found corrupt, and of versions known to have a tiled copy, kept.
const MARKS_BYTES: u64 = 2 << 20;

/// Bytes of identifiers known to name nothing (about 8,000 of them): a flood of guesses beyond
/// that evicts the oldest, which then cost one more lookup each.
const MISSING_BYTES: u64 = 1 << 20;

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
    /// How long an identifier that named nothing is answered 404 without asking the source
    /// (`source.negative_secs`).
    pub(crate) negative: Duration,
}

/// A located, probed source.
#[derive(Clone, Debug)]
pub(crate) struct Located {
    pub(crate) object: Object,
    pub(crate) probe: Probe,
}

impl Located {
    /// What it weighs in the located cache under `identifier`.
    fn weight(&self, identifier: &str) -> u64 {
        (identifier.len()
            + self.object.name.len()
            + self.object.fingerprint.as_str().len()
            + std::mem::size_of::<Located>()) as u64
            + ENTRY_OVERHEAD
    }

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

/// What is told of a changed source: its identifier.
pub(crate) type ChangeListener = Box<dyn Fn(&str) + Send + Sync>;

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
    /// Identifiers that named nothing, and when the source said so (the negative cache).
    missing: BoundedCache<String, Instant>,
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
    /// Told the identifier whenever its source is seen to have changed (the CDN purge).
    on_change: std::sync::OnceLock<ChangeListener>,
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
            located: BoundedCache::new("located", LOCATED_BYTES),
            missing: BoundedCache::new("missing", MISSING_BYTES),
            corrupt: BoundedCache::new("corrupt", MARKS_BYTES),
            metrics,
            encoders: Format::ALL.map(|f| settings.encode.describe(f)),
            settings,
            admission,
            copies_building: Mutex::new(HashSet::new()),
            copies_known: BoundedCache::new("copies_known", MARKS_BYTES),
            on_change: std::sync::OnceLock::new(),
        }
    }

    /// The caches the pipeline reads through: its own, the renderer's and the source backend's.
    pub(crate) fn caches(&self) -> Vec<CacheReport> {
        let mut out = vec![
            self.located.report(),
            self.missing.report(),
            self.corrupt.report(),
            self.copies_known.report(),
        ];
        out.extend(self.decoded.reports());
        out.extend(self.source.caches());
        out
    }

    /// Have `listener` told of every source seen to have changed (set once; later calls are
    /// ignored).
    pub(crate) fn on_source_change(&self, listener: ChangeListener) {
        let _ = self.on_change.set(listener);
    }

    /// Remember `located` as what `identifier` names.
    fn remember_located(&self, identifier: &str, located: &Located) {
        let weight = located.weight(identifier);
        self.located
            .insert(identifier.to_owned(), located.clone(), weight);
    }

    /// Remember that the source version `fp` is corrupt (`why`).
    fn mark_corrupt(&self, fp: String, why: String) {
        let weight = (fp.len() + why.len()) as u64 + ENTRY_OVERHEAD;
        self.corrupt.insert(fp, why, weight);
    }

    /// Remember that the source version `fp` has a tiled copy.
    fn mark_copy(&self, fp: String) {
        let weight = fp.len() as u64 + ENTRY_OVERHEAD;
        self.copies_known.insert(fp, (), weight);
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
}

/// Run blocking work on tokio's blocking threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))
}
